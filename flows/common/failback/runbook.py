"""Failback, shared: rejoin every node as a standby of the current primary, then switch back.

Both the failback flow and the region-failover drill's last phase run this runbook, so it
lives here rather than in either scenario.
"""

from __future__ import annotations

from dr.config import DRConfig
from dr.errors import PreconditionError, redact
from flows.common.failback.models import FailbackOptions, FailbackReport
from flows.common.failback.nodes import find_primary
from flows.common.failback.resume import restart_writers, resume_interrupted_switch_back
from flows.common.failback.roles import check_roles, rejoin_others
from flows.common.failback.switch_back import switch_over
from flows.common.recorder import Recorder
from flows.common.systems import Systems

__all__ = ["run_failback"]


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
        resumed = False
        with rec.phase("find primary", detail="which node takes writes now"):
            primary, healths = find_primary(pgc, password)
            if primary is None:
                # A crashed switch-back: finish it, then look again (roles changed).
                primary = resume_interrupted_switch_back(rec, pgc, healths, password)
                resumed = primary is not None
                if resumed and not rec.dry_run:
                    primary, healths = find_primary(pgc, password)
            if primary is None:
                raise PreconditionError(
                    "no node takes writes: fail over first (region-failover), then fail back"
                )
            report.primary_before = primary.name
        # One phase per node: "rejoin <node>".
        rejoin_others(rec, pgc, primary, healths, password, opts, report)
        if resumed:
            with rec.phase("repoint", detail=f"the application writes to {primary.name} again"):
                restart_writers(rec, systems, target, primary)
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
