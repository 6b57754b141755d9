"""Failback, the runbook: rejoin every node, switch back, check the roles."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from prefect import flow

from dr.config import load_config
from dr.errors import redact
from flows.common.failback.models import FailbackOptions, FailbackReport
from flows.common.failback.recorder import FailbackRun
from flows.common.failback.runbook import run_failback
from flows.registry import find_config_path

__all__ = ["failback_flow"]


log = logging.getLogger(__name__)


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
        options: how to rejoin the old primary and whether to switch back.
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
