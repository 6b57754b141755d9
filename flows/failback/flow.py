"""Failback, the runbook: rejoin every node, switch back, check the roles."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from prefect import flow

from dr.config import DRConfig, load_config
from dr.errors import PreconditionError, redact
from flows.common.recorder import Recorder
from flows.common.systems import Systems
from flows.failback.models import FailbackOptions, FailbackReport
from flows.failback.nodes import find_primary
from flows.failback.recorder import FailbackRun
from flows.failback.roles import check_roles, rejoin_others
from flows.failback.switch_back import switch_over
from flows.registry import find_config_path

__all__ = ["failback_flow", "run_failback"]


log = logging.getLogger(__name__)


def run_failback(
    rec: Recorder,
    config: DRConfig,
    target_name: str,
    opts: FailbackOptions,
    *,
    systems: Systems | None = None,
    password: str | None = None,
) -> FailbackReport:
    """Rejoin every node as a standby of the current primary, then optionally switch back.

    Args:
        rec: the run's recorder (the lifecycle's RunContext in a drill).
        config: the config.
        target_name: the target.
        opts: options.
        systems: clients to reuse; built from the config otherwise.
        password: the resolved database password (resolved from the config otherwise).

    Returns:
        A :class:`FailbackReport` (``ok`` when the configured roles hold at the end).

    Raises:
        PreconditionError: no primary, or two; a node that cannot be rejoined.
        PostgresError, VerificationError: a step failed (see the recorder).
    """
    target = config.target(target_name)
    pgc = target.postgres
    if password is None and pgc.password is not None:
        password = pgc.password.resolve()
    own_systems = systems is None
    systems = systems or Systems(config)
    report = FailbackReport(target=target_name, dry_run=rec.dry_run)
    try:
        with rec.phase("find primary", detail="which node takes writes now"):
            primary, healths = find_primary(pgc, password)
            if primary is None:
                raise PreconditionError(
                    "no node takes writes: fail over first (region-failover), then fail back"
                )
            report.primary_before = primary.name
        # One phase per node: "rejoin <node>".
        rejoin_others(rec, pgc, primary, healths, password, opts, report)
        configured = pgc.primary
        if opts.switch_back and primary.name != configured.name:
            switch_over(rec, systems, target, configured, primary, password, opts, report)
            report.primary_after = configured.name if not rec.dry_run else primary.name
        else:
            report.primary_after = primary.name
        if not rec.dry_run:
            with rec.phase("check roles", detail="the configured primary leads, replicas stream"):
                check_roles(rec, pgc, password, opts, report)
        report.ok = True
        return report
    except Exception as exc:
        report.reason = redact(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if own_systems:
            systems.close()


@flow(name="failback")
def failback_flow(
    target: str,
    options: FailbackOptions | None = None,
    config_path: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Fail back after a failover: rejoin the old primary as a standby, then switch back.

    Args:
        target: a target of the config.
        options: see :class:`FailbackOptions`.
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        dry_run: list the steps without acting.

    Returns:
        The :class:`FailbackReport` as a JSON-ready dict.
    """
    from flows.lifecycle import target_lock

    opts = options or FailbackOptions()
    cfg = load_config(find_config_path(config_path))
    cfg.target(target)
    rec = FailbackRun(dry_run=dry_run)
    lock = contextlib.nullcontext() if dry_run else target_lock(cfg, target)
    report = FailbackReport(target=target, dry_run=dry_run)
    with lock:
        try:
            report = run_failback(rec, cfg, target, opts)
        except Exception as exc:  # noqa: BLE001 - reported in the result, then compensated
            report.reason = redact(f"{type(exc).__name__}: {exc}")
            rec.compensate()
    report.phases = [p.model_dump(mode="json") for p in rec.phases]
    report.changes = rec.changes
    report.checks = [c.model_dump(mode="json") for c in rec.checks]
    report.notes = rec.notes
    report.plan = rec.plan_steps
    report.not_undone = rec.not_undone
    failed = [c.name for c in rec.checks if c.critical and not c.ok]
    report.ok = not report.reason and not failed
    if failed and not report.reason:
        report.reason = "check(s) failed: " + ", ".join(failed)
    return report.model_dump(mode="json")
