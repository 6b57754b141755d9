"""Finish a data-corruption run that was killed after its repair: writers stopped, no damage.

A run killed at "restart writers" (or right after its switch) leaves the damage repaired and
the application stopped. The rerun's assessment then finds nothing damaged, and without this
it would refuse ("no recovery point") and leave the application down. What the world says
is enough to finish: no check names a damaged relation, no damaging transaction is in the
WAL, and writer containers exist that do not run. Then the rerun starts them, verifies end
to end, and measures the outage from the last application write before they stopped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService
from dr.errors import DRError, PostgresError
from flows.common.writers import wait_healthy, writer_services
from flows.data_corruption.prove import wait_writers_healthy
from flows.data_corruption.run import CorruptionRun
from flows.data_corruption.switch import heartbeat
from flows.lifecycle.measure import lost_app_acks
from tasks.containers import inspection as containers_inspection
from tasks.containers import lifecycle as containers_lifecycle
from tasks.postgres.ack_log import read_ack_log
from tasks.postgres.heartbeat import heartbeat_rows_present

__all__ = ["finish_interrupted", "nothing_to_recover", "stopped_writers"]

#: The application's acknowledgements this long before the writers stopped are checked.
ACK_WINDOW = timedelta(seconds=30)
#: The application's writer in dr_heartbeat (region failover's option default, the lab's).
APP_WRITER = "app"


def stopped_writers(run: CorruptionRun) -> list[DockerService]:
    """The writer containers that exist and do not run, in start order."""
    out: list[DockerService] = []
    for svc in writer_services(run.target):
        if not isinstance(svc, DockerService):
            continue
        try:
            running = containers_inspection.health(run.systems.docker, svc.name).running
        except DRError as exc:  # a writer that cannot be inspected is not "stopped"
            run.ctx.note(f"writer {svc.name} not inspected: {exc}")
            continue
        if not running:
            out.append(svc)
    return out


def nothing_to_recover(run: CorruptionRun) -> bool:
    """No damage found or given: no relation named, no damaging transaction, no point."""
    opts = run.opts
    given = opts.recovery_time or opts.recovery_lsn or opts.relations or opts.whole_database
    return not (run.damaged or run.suspected_lsn or run.damage_lsn or given)


def finish_interrupted(run: CorruptionRun) -> bool:
    """Start the writers a killed run left stopped when nothing is damaged any more.

    Returns:
        True when this run finished that way (the caller skips the recovery), False when the
        world is not that state (a real incident goes on as usual).
    """
    ctx = run.ctx
    if ctx.is_drill or ctx.dry_run or not nothing_to_recover(run):
        return False
    stopped = stopped_writers(run)
    if not stopped:
        return False
    names = ", ".join(s.name for s in stopped)
    ctx.note(
        f"resuming: nothing is damaged and the writers {names} are stopped: an interrupted run"
        " repaired the data and did not restart them; starting them"
    )
    hb_ci = run.conninfo(run.pgc.heartbeat_db)
    last = max((s["max_ts"] for s in heartbeat(hb_ci).values()), default=None)
    with ctx.phase("restart writers", detail=f"{names} (left stopped by an interrupted run)"):
        run.writers_started_at = utcnow()
        for svc in stopped:
            if ctx.plan("start", f"writer container {svc.name}"):
                change = _start(run, svc)
                run.writer_changes.append((svc, change))
                ctx.record_change(change)
                wait_healthy(svc)
    run.recovered = None
    healthy_at = _verify(run)
    with ctx.phase("measure", detail="the outage from the last write before the writers stopped"):
        if last is not None:
            ctx.measure(
                failure_at=last,
                failure_at_basis="last application heartbeat before an interrupted run stopped"
                " the writers",
                restored_at_basis="first heartbeat the restarted application wrote",
            )
        _measure_lost_acks(run, last)
    run.details["resume"] = {"writers_started": [s.name for s in stopped], "healthy_at": healthy_at}
    return True


def _start(run: CorruptionRun, svc: DockerService) -> Change:
    return containers_lifecycle.ensure_started_task(run.systems.docker, svc.name)


def _verify(run: CorruptionRun) -> str | None:
    """The writers' first heartbeat after the start, then the target's end-to-end checks."""
    ctx = run.ctx
    with ctx.phase("verify end to end", detail="writers, health, validation") as record:
        healthy_at = wait_writers_healthy(run, run.conninfo(run.pgc.heartbeat_db))
        ctx.record_check(
            "writers healthy again (heartbeat written after the restart)",
            healthy_at is not None,
            detail=f"first heartbeat at {healthy_at}" if healthy_at else "no heartbeat",
        )
        ctx.verify_health(timeout_seconds=run.opts.heartbeat_wait_seconds)
        if healthy_at is not None and ctx.restored_at is not None:
            ctx.restored_at = max(ctx.restored_at, healthy_at)
        record.detail = f"restored at {ctx.restored_at}" if ctx.restored_at else "not restored"
    return healthy_at.isoformat() if healthy_at else None


def _measure_lost_acks(run: CorruptionRun, last: datetime | None) -> None:
    """RPO: the application's acknowledged writes before the stop that are missing now."""
    ctx = run.ctx
    path = ctx.target.app_ack_log
    writers = list(heartbeat(run.conninfo(run.pgc.heartbeat_db)))
    writer = APP_WRITER if APP_WRITER in writers else (writers[0] if len(writers) == 1 else None)
    if not path or last is None or writer is None:
        ctx.note("the application's lost writes were not counted: no acknowledgement log")
        return
    acks = [a for a in read_ack_log(path) if last - ACK_WINDOW <= a.acked_at <= last]
    if not acks:
        return
    try:
        present = heartbeat_rows_present(
            run.conninfo(run.pgc.heartbeat_db),
            writer,
            min(a.seq for a in acks),
            max(a.seq for a in acks),
        )
    except PostgresError as exc:
        ctx.note(f"the application's lost writes were not counted: {exc}")
        return
    lost, _kept = lost_app_acks(acks, present)
    ctx.measure(
        rpo_seconds=0.0 if not lost else (last - lost[0].ts).total_seconds(),
        lost_rows=len(lost),
        rpo_basis=f"application acknowledgement log: {len(lost)} of {len(acks)} write(s)"
        f" acknowledged in the {ACK_WINDOW.seconds} s before the writers stopped missing now"
        " (what the interrupted run's restore discarded is in that run's evidence)",
        lost_rows_basis="application writes acknowledged before the stop, missing now",
    )
