"""Drills only: check a recovery can succeed, then crash the primary at a stamped moment."""

from __future__ import annotations

import time
from datetime import datetime

from dr.clock import utcnow
from dr.errors import DRError, PreconditionError
from flows.region_failover.assess import assess
from flows.region_failover.choose import choose_replica
from flows.region_failover.run import Failover
from tasks import faults
from tasks.postgres import hba, local_server

__all__ = ["inject", "lift_injection", "preflight"]


def preflight(run: Failover) -> None:
    """Drills only: break nothing unless the recovery can succeed."""
    a = assess(run)
    run.assessment = a
    run.details["preflight"] = {
        name: v.model_dump(
            mode="json", include={"state", "timeline", "current_lsn", "replayed_lsn"}
        )
        for name, v in a.nodes.items()
    }
    old = a.nodes[a.old_primary]
    node = run.node(a.old_primary)
    problems: list[str] = []
    if not old.writable:
        problems.append(f"the primary {old.name} takes no writes now ({old.state})")
    if not (node.data_directory and node.bin_dir):
        problems.append(f"{node.name} has no data_directory/bin_dir: this runner cannot crash it")
    choice = choose_replica(
        list(a.nodes.values()),
        old_primary=a.old_primary,
        failed_region=a.failed_region,
        preferred_regions=run.opts.preferred_regions,
    )
    if choice.chosen is None:
        problems.append(choice.reason)
    streaming = {
        s["application_name"] for s in a.standbys_seen_by_primary if s.get("state") == "streaming"
    }
    if choice.chosen and choice.chosen not in streaming:
        problems.append(f"{choice.chosen} is not streaming from {old.name}")
    if run.pgc.synchronous:
        sync = [
            s["application_name"]
            for s in a.standbys_seen_by_primary
            if s.get("sync_state") == "sync"
        ]
        run.ctx.record_check(
            "replication is synchronous",
            bool(sync),
            detail=f"synchronous standbys: {', '.join(sync) or 'none'} (config says synchronous)",
        )
    if problems:
        raise PreconditionError("drill not started, nothing changed: " + "; ".join(problems))
    run.ctx.record_check(
        "drill preconditions",
        True,
        detail=f"{old.name} takes writes; {choice.chosen} streams and would be promoted",
    )


def inject(run: Failover) -> None:
    """Drills only: the heartbeat probe, then the crash of the primary at a stamped moment."""
    ctx = run.ctx
    node = run.pgc.primary if run.assessment is None else run.node(run.assessment.old_primary)
    probe = ctx.start_heartbeat(interval_seconds=run.opts.heartbeat_interval_seconds)
    if probe is not None and run.opts.warmup_seconds:
        # The probe needs acknowledged writes before the failure to measure the RPO.
        deadline = time.monotonic() + run.opts.warmup_seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    crash = run.opts.inject != "immediate"
    what = "kill (SIGSTOP then SIGKILL every process of)" if crash else "stop -m immediate"
    if run.opts.inject == "app-cannot-connect":
        refuse_app_on_replicas(run)
    if not ctx.plan(what, f"the primary {node.name} ({node.data_directory})"):
        return
    before = utcnow()
    if crash:
        change = faults.kill_local_server_task(str(node.data_directory))
        failure_at = datetime.fromisoformat(change.after["killed_at"]) if change.changed else before
    else:
        change = local_server.stop_local_server_task(
            str(node.data_directory), str(node.bin_dir), node.os_user, "immediate"
        )
        failure_at = before
    ctx.stamp_failure(failure_at)
    ctx.record_change(
        change,
        undo=run.guarded(
            f"starting {node.name} again",
            lambda: local_server.start_local_server(
                str(node.data_directory), str(node.bin_dir), node.os_user
            ),
            node.name,
        ),
    )
    if not change.changed:
        raise PreconditionError(f"{node.name} was not running: nothing was injected")


def refuse_app_on_replicas(run: Failover) -> None:
    """The red twin: every replica refuses the application's role, so after promotion the
    end-to-end check ("application writes land on ...") must fail."""
    ctx, role = run.ctx, run.opts.app_role
    for node in run.pgc.replicas:
        if not ctx.plan("refuse", f"role {role} on {node.name} (pg_hba reject line, drill)"):
            continue
        change = hba.inject_hba_rules_task(
            run.ci(node), [f'host all "{role}" all reject'], reason="app-cannot-connect"
        )
        run.injected_hba.append((node, change))
        ctx.record_change(change, undo=lambda n=node, c=change: hba.remove_hba_rules(run.ci(n), c))


def lift_injection(run: Failover) -> None:
    """Take out the red twin's reject lines (before any failback), whatever happened."""
    while run.injected_hba:
        node, change = run.injected_hba.pop()
        try:
            run.ctx.record_change(hba.remove_hba_rules_task(run.ci(node), change))
        except DRError as exc:
            run.ctx.record_check(
                f"drill: {node.name} accepts {run.opts.app_role} again", False, detail=str(exc)
            )
