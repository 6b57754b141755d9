"""Run a scenario's body inside the shared lifecycle (DESIGN.md, "Lifecycle of every run")."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dr.clock import utcnow
from dr.config import DRConfig, Mode, Scenario, Target, load_config
from dr.errors import ConfigError, UnsafeTargetError, redact
from flows.lifecycle.context import RunContext
from flows.lifecycle.finish import finish_run
from flows.lifecycle.locks import target_lock
from flows.lifecycle.models import RunFailed, RunResult
from flows.lifecycle.runlog import run_logger
from flows.lifecycle.timeline import StatusTicker
from flows.registry import find_config_path
from tasks.notify import blocks as notify_blocks
from tasks.notify import thread as notify_thread

__all__ = ["SLACK_RETRY_BUDGET_SECONDS", "run_scenario"]

#: How long one Slack message is retried in the background before it is given up.
SLACK_RETRY_BUDGET_SECONDS = 60.0


def _flow_run_identity(config: DRConfig) -> tuple[str | None, str | None]:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id is None:
        return None, None
    if config.prefect_ui_url:
        return run_id, f"{config.prefect_ui_url.rstrip('/')}/runs/flow-run/{run_id}"
    try:
        return run_id, flow_run.get_flow_run_ui_url()
    except Exception:  # noqa: BLE001 - a link is a convenience, never a reason to fail
        return run_id, None


def _parse_names(scenario: Scenario | str, mode: Mode | str) -> tuple[Scenario, Mode]:
    try:
        return Scenario(scenario), Mode(mode)
    except ValueError as exc:
        raise ConfigError(str(exc), [("parameters", str(exc))]) from None


def _check_mode(name: str, target: Target, mode: Mode) -> None:
    if mode == Mode.drill and not target.drills_allowed:
        kind = "a production target" if target.production else "this target"
        raise UnsafeTargetError(
            f"drill refused: {kind} {name!r} does not allow drills;"
            f" set targets.{name}.drills_allowed: true to rehearse on it"
        )


def _declared_at(options: dict[str, Any]) -> datetime:
    # An alert-started run counts from when its alert began firing.
    value = options.get("declared_at") or options.get("alert_starts_at")
    if value is None:
        return utcnow()
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_scenario(
    scenario: Scenario | str,
    target: str,
    mode: Mode | str,
    body: Callable[[RunContext], Any],
    *,
    config: DRConfig | None = None,
    config_path: str | None = None,
    severity: str = "SEV2",
    options: dict[str, Any] | None = None,
    fail_flow: bool = False,
) -> RunResult:
    """Run a scenario's body inside the shared lifecycle; call it from the scenario's flow.

    Args:
        scenario: which scenario this is.
        target: the target's name in dr.yaml.
        mode: ``incident``, ``drill`` or ``dry-run``.
        body: the scenario's phases; gets a :class:`RunContext`.
        config: an already-loaded config; else read from ``config_path``.
        config_path: where the config is (else ``$DR_CONFIG``, ``./dr.yaml``, ``./.lab/dr.yaml``).
        severity: one of the config's ``severities`` (e.g. ``SEV1``); may auto-approve gates
            (``approval.auto_approve_severities``).
        options: scenario options; ``auto_approve`` (from an alert route) and ``declared_at``
            (ISO time the incident was declared) are read here.
        fail_flow: raise :class:`RunFailed` after reporting when the outcome is not passed
            (``failed``, ``refused`` or ``aborted``), so the flow run ends Failed with the
            reason as its state message (the CLI and every deployment set it).

    Returns:
        The :class:`RunResult` (also kept for :func:`result_for`).

    Raises:
        ConfigError: bad config, unknown target, scenario, mode or severity.
        UnsafeTargetError: a drill on a target that does not allow drills.
        PreconditionError: the target is busy (``refuse``, or waited too long).
        RunFailed: only with ``fail_flow``, when the outcome is not passed.
    """
    scenario, mode = _parse_names(scenario, mode)
    options = dict(options or {})
    cfg = config or load_config(find_config_path(config_path))
    tgt = cfg.target(target)
    _check_mode(target, tgt, mode)
    severity = cfg.severity(severity)  # a closed set: auto-approval means one thing
    declared_at = _declared_at(options)
    flow_run_id, flow_run_url = _flow_run_identity(cfg)
    run_logger().info(
        "%s %s on %s (%s) declared at %s", mode.value, scenario.value, target, severity,
        declared_at.isoformat(),
    )  # fmt: skip
    lock = (
        contextlib.nullcontext(None)
        if mode == Mode.dry_run
        else target_lock(cfg, target, flow_run_id)
    )
    with lock:
        ctx = RunContext(
            config=cfg,
            target_name=target,
            scenario=scenario,
            mode=mode,
            severity=severity,
            options=options,
            declared_at=declared_at,
            flow_run_id=flow_run_id,
            flow_run_url=flow_run_url,
            slack=notify_thread.slack_thread_for(
                cfg.slack, tgt.slack_channel, retry_budget_seconds=SLACK_RETRY_BUDGET_SECONDS
            ),
        )
        _open_incident(ctx)
        error = _run_body(ctx, body)
        if error is not None:
            ctx._compensate()
    # The target is free again: reporting (Slack flush, history, artifacts) holds no lock.
    result = finish_run(ctx, error)
    if fail_flow and result.outcome != "passed":
        raise RunFailed(result)
    return result


def _open_incident(ctx: RunContext) -> None:
    """Open the Slack thread with the run's opening message."""
    mode, scenario, target = ctx.mode.value, ctx.scenario.value, ctx.target_name
    ctx.slack.open(
        f"DR {mode}: {scenario} on {target} ({ctx.severity}) started"
        + (f": {ctx.flow_run_url}" if ctx.flow_run_url else ""),
        notify_blocks.incident_opening_blocks(
            scenario, target, mode, ctx.severity, ctx.flow_run_url, "in_progress"
        ),
    )


def _run_body(ctx: RunContext, body: Callable[[RunContext], Any]) -> Exception | None:
    """Run the body with status updates ticking; return its error (reported, not raised)."""
    ticker = StatusTicker(ctx, ctx.config.slack.status_cadence_seconds)
    ticker.start()
    try:
        body(ctx)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then compensated
        run_logger().error(
            "%s %s on %s: %s",
            ctx.mode.value,
            ctx.scenario.value,
            ctx.target_name,
            redact(str(exc)),
        )
        return exc
    finally:
        ticker.stop()
        ctx._stop_probe()
    return None
