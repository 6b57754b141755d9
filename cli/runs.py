"""``dr drill``, ``dr run``, ``dr report`` and ``dr approve``: scenario runs from a terminal or CI.

``dr drill SCENARIO --target T`` and ``dr run SCENARIO --target T [--dry-run]`` run the
scenario's flow in this process (against the Prefect API of ``PREFECT_API_URL``, else the
config's ``prefect_api_url``, else an ephemeral one) and print its result; with ``--json``
exactly one JSON object (the flow's ``RunResult``) goes to standard output, logs go to
standard error. Exit codes, so a drill can gate a CI pipeline: 0 when the outcome is
``passed`` and the objectives are met (a dry run only needs to pass), 1 otherwise, 2 for
bad input, found before any flow run, history row or Slack message exists (config, unknown
target or scenario, a drill on a target that refuses drills, an unknown or invalid option or
injection, a severity outside the config's ``severities``, a recovery time in the future, an
unknown ``drill_table``: one line per problem, see :mod:`cli.run_input`). A run that started
ends ``passed``, ``failed`` or ``refused`` (impossible for a reason found at run time,
nothing changed) and its Prefect flow run ends Failed unless it passed.

``dr report`` prints past runs from the drill history and writes an HTML report with the
RTO/RPO trend chart. ``dr approve RUN_ID`` answers a paused approval gate.

Prefect is imported only inside the commands, after ``PREFECT_API_URL`` is settled: Prefect
reads its settings once, at import.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    err,
    load,
    out,
    prefect_api,
    print_config_error,
)
from cli.run_input import check_run_input
from dr.config import CONFIG_ENV_VAR, DRConfig, Mode, Scenario
from dr.errors import ConfigError, UnsafeTargetError, redact

__all__ = ["parse_options", "register"]


# ---------------------------------------------------------------------- helpers


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["k=v", ...]`` into a dict; values are read as YAML scalars (1, true, text).

    Args:
        items: ``--option`` values.

    Returns:
        The options.

    Raises:
        ConfigError: an item is not ``key=value``.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--option {item!r}: expected key=value", [("--option", f"{item!r}: no '='")]
            )
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            options[key] = raw
    return options


@contextlib.contextmanager
def _config_env(path: Path) -> Iterator[None]:
    """Make the chosen config the flow's config too ($DR_CONFIG), for the call only."""
    previous = os.environ.get(CONFIG_ENV_VAR)
    os.environ[CONFIG_ENV_VAR] = str(path.absolute())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CONFIG_ENV_VAR, None)
        else:
            os.environ[CONFIG_ENV_VAR] = previous


def _failure_object(
    scenario: str,
    target: str,
    mode: str,
    reason: str,
    flow_run_id: str | None = None,
    outcome: str = "failed",
) -> dict[str, Any]:
    """A RunResult-shaped object for a run that ended (or never began) without a result."""
    return {
        "scenario": scenario,
        "target": target,
        "mode": mode,
        "outcome": outcome,
        "objectives_met": False,
        "rto_seconds": None,
        "rpo_seconds": None,
        "lost_rows": None,
        "objectives": None,
        "phases": [],
        "reason": redact(reason),
        "flow_run_id": flow_run_id,
    }


def _refuse(
    json_out: bool, code: int, exc: Exception, scenario: str, target: str, mode: str
) -> typer.Exit:
    if isinstance(exc, ConfigError):
        print_config_error(exc)
    else:
        err.print(f"[bold red]refused:[/] {escape(redact(str(exc)))}")
    if json_out:
        # Refused before any run existed: exit 2 tells CI it was the input, not a drill.
        obj = _failure_object(scenario, target, mode, str(exc), outcome="refused")
        obj["problems"] = [
            {"key": k, "problem": redact(v)} for k, v in getattr(exc, "problems", [])
        ]
        typer.echo(json.dumps(obj))
    return typer.Exit(code)


def _flow_kwargs(
    flow_obj: Any,
    *,
    target: str,
    mode: Mode,
    severity: str | None,
    options: dict[str, Any],
    path: Path,
) -> dict[str, Any]:
    """Arguments for a scenario flow: only those its signature takes."""
    fn = getattr(flow_obj, "fn", flow_obj)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"target": target, "mode": mode.value}
    if severity is not None:
        if "severity" not in params:
            raise ConfigError("this scenario takes no severity", [("--severity", severity)])
        kwargs["severity"] = severity
    if "config_path" in params:
        kwargs["config_path"] = str(path.absolute())
    if "options" in params:
        kwargs["options"] = options
    elif options:
        raise ConfigError(
            "this scenario takes no options", [("--option", ", ".join(sorted(options)))]
        )
    if "fail_flow" in params:
        kwargs["fail_flow"] = True  # the flow run ends Failed unless the outcome is passed
    return kwargs


def _result_from_state(state: Any) -> tuple[Any, str | None]:
    """The RunResult of a finished flow run's state, or why there is none."""
    from flows.lifecycle import RunFailed, RunResult, result_for

    flow_run_id = getattr(state.state_details, "flow_run_id", None)
    kept = result_for(flow_run_id) if flow_run_id else None
    if kept is not None:
        return kept, None
    data = state.result(raise_on_failure=False)
    if isinstance(data, RunFailed):
        return data.result, None
    if isinstance(data, RunResult):
        return data, None
    if isinstance(data, dict) and "outcome" in data:
        return RunResult.model_validate(data), None
    if isinstance(data, BaseException):
        return None, f"{type(data).__name__}: {data}"
    return None, state.message or f"the flow ended {state.type.value} without a result"


def _exit_code_for(exc_text: str | None) -> int:
    if exc_text and exc_text.startswith(("ConfigError", "UnsafeTargetError")):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def _print_result(result: Any) -> None:
    table = Table(title=f"{result.mode} {result.scenario} on {result.target}")
    for column in ("phase", "start (UTC)", "duration", "outcome", "detail"):
        table.add_column(column)
    for phase in result.phases:
        duration = phase.duration_seconds
        table.add_row(
            escape(phase.name),
            phase.started_at.strftime("%H:%M:%S.%f")[:-3],
            "" if duration is None else f"{duration:.2f} s",
            phase.outcome,
            escape(phase.detail),
        )
    out.print(table)
    if result.plan:
        out.print("[bold]Plan (dry run, nothing changed):[/]")
        for i, step in enumerate(result.plan, 1):
            out.print(f"  {i}. {escape(step)}")
    color = {"passed": "green", "failed": "red", "refused": "magenta"}.get(result.outcome, "yellow")
    out.print(f"Outcome: [bold {color}]{result.outcome.upper()}[/]")
    for label, value, objective, basis in (
        ("RTO", result.rto_seconds, result.objectives.rto_seconds, result.rto_basis),
        ("RPO", result.rpo_seconds, result.objectives.rpo_seconds, result.rpo_basis),
    ):
        shown = "not measured" if value is None else f"{value:.2f} s"
        verdict = "" if value is None else (" met" if value <= objective else " MISSED")
        out.print(f"{label}: {shown} (objective {objective:g} s){verdict}  [dim]{escape(basis)}[/]")
    if result.reason:
        out.print(f"Reason: {escape(result.reason)}")
    for item in result.not_undone:
        out.print(f"[yellow]Not undone:[/] {escape(item)}")
    for failure in result.slack_failures:
        out.print(f"[yellow]Slack:[/] {escape(failure)}")
    for note in result.notes:
        out.print(f"Note: {escape(note)}")
    if result.flow_run_url or result.flow_run_id:
        out.print(f"Flow run: {escape(result.flow_run_url or result.flow_run_id)}")


def _execute(
    scenario: Scenario,
    target: str,
    mode: Mode,
    *,
    options: dict[str, Any],
    severity: str | None,
    config: Path | None,
    json_out: bool,
) -> None:
    """Run a scenario flow in this process and exit with the CI-friendly code."""
    try:
        path, cfg = load(config)
        tgt = cfg.target(target)
        if mode == Mode.drill and not tgt.drills_allowed:
            raise UnsafeTargetError(
                f"drill refused: target {target!r} does not allow drills"
                f" (set targets.{target}.drills_allowed: true)"
            )
    except (ConfigError, UnsafeTargetError) as exc:
        raise _refuse(json_out, EXIT_BAD_INPUT, exc, scenario.value, target, mode.value) from None
    with prefect_api(cfg), _config_env(path):
        from flows.registry import load_flow

        try:
            flow_obj = load_flow(scenario)
            kwargs = _flow_kwargs(
                flow_obj, target=target, mode=mode, severity=severity, options=options, path=path
            )
            checked = check_run_input(
                flow_obj, cfg, target=target, mode=mode, severity=severity, options=options
            )
            if checked is not None:
                kwargs["severity"] = checked
        except ConfigError as exc:
            raise _refuse(
                json_out, EXIT_BAD_INPUT, exc, scenario.value, target, mode.value
            ) from None
        state = flow_obj(**kwargs, return_state=True)
        result, problem = _result_from_state(state)
    if result is None:
        flow_run_id = getattr(state.state_details, "flow_run_id", None)
        err.print(f"[bold red]{mode.value} did not complete:[/] {escape(redact(problem or ''))}")
        if json_out:
            obj = _failure_object(
                scenario.value,
                target,
                mode.value,
                problem or "",
                str(flow_run_id) if flow_run_id else None,
            )
            typer.echo(json.dumps(obj))
        raise typer.Exit(_exit_code_for(problem))
    if json_out:
        typer.echo(json.dumps(result.model_dump(mode="json")))
    else:
        _print_result(result)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


# ---------------------------------------------------------------------- commands


def drill(
    scenario: Scenario = typer.Argument(..., help="The scenario to rehearse."),
    target: str = typer.Option(..., "--target", "-t", help="Target name in dr.yaml."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    inject: str | None = typer.Option(
        None, "--inject", help="Which failure to inject (scenario-specific)."
    ),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Scenario option key=value (repeatable)."
    ),
    severity: str | None = typer.Option(
        None, "--severity", help="Severity shown in Slack (default: the scenario's)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file."),
    via_alert: bool = typer.Option(
        False,
        "--via-alert",
        help="region-failover on the lab with monitoring: only kill the primary; the alert "
        "chain recovers; measure each stage.",
    ),
    failback: bool = typer.Option(
        True, "--failback/--no-failback", help="--via-alert: put the lab back afterwards."
    ),
) -> None:
    """Rehearse a scenario on a target: inject the failure, recover, measure RTO/RPO."""
    if via_alert:
        from cli.drill_alert import drill_via_alert_command

        drill_via_alert_command(
            scenario, target, config=config, json_out=json_out, failback=failback
        )
    try:
        options = parse_options(option)
    except ConfigError as exc:
        raise _refuse(json_out, EXIT_BAD_INPUT, exc, scenario.value, target, "drill") from None
    if inject is not None:
        options["inject"] = inject
    _execute(
        scenario,
        target,
        Mode.drill,
        options=options,
        severity=severity,
        config=config,
        json_out=json_out,
    )


def run(
    scenario: Scenario = typer.Argument(..., help="The scenario to run."),
    target: str = typer.Option(..., "--target", "-t", help="Target name in dr.yaml."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    severity: str | None = typer.Option(
        None, "--severity", help="Incident severity (default: the scenario's)."
    ),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Scenario option key=value (repeatable)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file."),
) -> None:
    """Run a scenario as a real incident response (approval gates apply), or --dry-run."""
    mode = Mode.dry_run if dry_run else Mode.incident
    try:
        options = parse_options(option)
    except ConfigError as exc:
        raise _refuse(json_out, EXIT_BAD_INPUT, exc, scenario.value, target, mode.value) from None
    _execute(
        scenario,
        target,
        mode,
        options=options,
        severity=severity,
        config=config,
        json_out=json_out,
    )


def approve(
    run_id: str = typer.Argument(..., help="The paused flow run's id."),
    reject: bool = typer.Option(False, "--reject", help="Stop the run instead."),
    who: str = typer.Option(..., "--who", help="Who decides."),
    why: str = typer.Option(..., "--why", help="Why (recorded in the report)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file."),
) -> None:
    """Answer a paused approval gate: approve (default) or --reject."""
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        err.print(f"[bold red]error:[/] {escape(run_id)} is not a flow run id")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    cfg: DRConfig | None = None
    with contextlib.suppress(ConfigError):
        _, cfg = load(config)
    with prefect_api(cfg):
        decision = "reject" if reject else "approve"
        code, message = _resume(flow_run_id, {"approve": decision, "who": who, "why": why})
    if code == EXIT_OK:
        out.print(message)
    else:
        err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``drill``, ``run``, ``report`` and ``approve`` to the ``dr`` application.

    Args:
        app: the Typer application (``cli.main.app``, or a test's own).
    """
    from cli.report import report_cmd

    app.command("drill")(drill)
    app.command("run")(run)
    app.command("report")(report_cmd)
    app.command("approve")(approve)


def _crashed_while_paused(client: Any, flow_run_id: str) -> str | None:
    """Why a paused run can never resume (its process is gone; now marked Crashed), or None."""
    from flows.lifecycle.lock_holders import holder_of_flow_run, mark_crashed, why_dead

    holder = holder_of_flow_run(client, flow_run_id)
    reason = why_dead(client, holder) if holder is not None else None
    if holder is None or reason is None:
        return None
    mark_crashed(client, holder, reason)
    return reason


def _resume(flow_run_id: UUID, run_input: dict[str, Any]) -> tuple[int, str]:
    """Resume a paused run with an approval answer; check that the server accepted it."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound

    verdict = "approved" if run_input["approve"] == "approve" else "rejected"
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return EXIT_BAD_INPUT, f"no flow run {flow_run_id}"
        if flow_run.state is None or not flow_run.state.is_paused():
            state = flow_run.state.name if flow_run.state else "no state"
            why = (
                f": {flow_run.state.message}"
                if flow_run.state and flow_run.state.is_crashed()
                else ""
            )
            return EXIT_FAILED, f"flow run {flow_run_id} is not waiting for approval ({state}{why})"
        crashed = _crashed_while_paused(client, str(flow_run_id))
        if crashed:
            return EXIT_FAILED, f"flow run {flow_run_id} is Crashed ({crashed}): start a new run"
        response = client.resume_flow_run(flow_run_id, run_input=run_input)
    if response.status != SetStateStatus.ACCEPT:
        if response.state is not None and response.state.type == StateType.FAILED:
            return EXIT_FAILED, f"the approval gate of {flow_run_id} already timed out"
        reason = getattr(response.details, "reason", None) or response.status.value
        return EXIT_FAILED, f"resume refused by the server: {reason}"
    return EXIT_OK, f"flow run {flow_run_id} {verdict} by {run_input['who']}"
