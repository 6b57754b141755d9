"""Measure: RTO to the first application write (with its breakdown) and RPO."""

from __future__ import annotations

from datetime import datetime, timedelta

from dr.config import PostgresNode
from dr.errors import ConfigError, PostgresError
from flows.lifecycle.measure import HeartbeatRPO, lost_app_acks
from flows.region_failover.run import Failover
from tasks.postgres.ack_log import read_ack_log
from tasks.postgres.heartbeat import Ack, heartbeat_rows_present, newest_heartbeat_before_task

#: Incidents: the old primary's acknowledgements this long before the outage are checked.
INCIDENT_ACK_WINDOW = timedelta(seconds=30)

__all__ = ["measure", "rto_breakdown"]


def rto_breakdown(
    failure_at: datetime | None, milestones: dict[str, datetime | None]
) -> dict[str, float | None]:
    """Seconds from the failure to each milestone (the RTO's phase breakdown).

    Args:
        failure_at: when the failure happened.
        milestones: name -> moment (None when not reached).

    Returns:
        name -> seconds after ``failure_at`` (None when not reached or no failure time).
    """
    if failure_at is None:
        return {name: None for name in milestones}
    return {
        name: None if at is None else round((at - failure_at).total_seconds(), 3)
        for name, at in milestones.items()
    }


def _app_acks(run: Failover) -> list[Ack]:
    """The application's acknowledgement log, when the options or the target name one."""
    path = run.opts.app_ack_log or run.ctx.target.app_ack_log
    if not path:
        return []
    try:
        return read_ack_log(path)
    except ConfigError as exc:
        run.ctx.note(f"application acknowledgement log not read: {exc}")
        return []


def _survived_at(run: Failover) -> tuple[datetime | None, str]:
    """The new primary's newest replayed data at promotion (its WAL position, as a time)."""
    if run.assessment is None or run.choice is None or run.choice.chosen is None:
        return None, ""
    view = run.assessment.nodes.get(run.choice.chosen)
    if view is None or view.last_replay_at is None:
        return None, ""
    return view.last_replay_at, f"{view.name}'s last replayed commit (its WAL position)"


def _incident_outage_start(run: Failover, node: PostgresNode) -> None:
    """Incidents: the last application write before the alert/declaration (the write gap)."""
    ctx, writer = run.ctx, run.opts.app_heartbeat_writer
    if ctx.is_drill or not writer:
        return
    ref = min(t for t in (run.opts.failure_at, run.opts.alert_starts_at, ctx.declared_at) if t)
    acks = [a.ts for a in _app_acks(run) if a.ts < ref]
    try:
        row = newest_heartbeat_before_task(run.ci(node, run.pgc.heartbeat_db), writer, ref)
    except PostgresError as exc:
        ctx.note(f"the start of the application's write gap is unknown: {exc}")
        row = None
    last = max([*acks, *([row] if row else [])], default=None)
    if last is not None:
        ctx.measure(
            failure_at=last,
            failure_at_basis=f"last acknowledged {writer} write before the outage (heartbeat "
            f"rows on {node.name}"
            + (" and the application's acknowledgement log)" if acks else ")"),
        )


def _incident_app_loss(run: Failover, node: PostgresNode) -> bool:
    """Incidents: the old primary's acknowledged application writes missing on the new one.

    Why: without the drill's probe the only other figure is the chosen replica's lag at
    promotion, and a run resuming after a killed one finds the replica already promoted
    ("0 s behind"), which says nothing about what was lost. The application's own
    acknowledgement log does: each write names the server that acknowledged it.

    Returns:
        True when the RPO was measured this way.
    """
    ctx, writer = run.ctx, run.opts.app_heartbeat_writer
    start, old = ctx.measurement.failure_at, run.old
    if ctx.is_drill or not writer or start is None or old is None:
        return False
    server = f"{old.host}:{old.port}"
    acks = [
        a
        for a in _app_acks(run)
        if a.server == server and start - INCIDENT_ACK_WINDOW <= a.acked_at <= start
    ]
    if not acks:
        return False
    try:
        present = heartbeat_rows_present(
            run.ci(node, run.pgc.heartbeat_db),
            writer,
            min(a.seq for a in acks),
            max(a.seq for a in acks),
        )
    except PostgresError as exc:
        ctx.note(f"the application's lost writes were not counted: {exc}")
        return False
    lost, kept = lost_app_acks(acks, present)
    seconds = (lost[-1].ts - kept[-1].ts).total_seconds() if lost and kept else 0.0
    bound = "lower" if lost and not kept else "exact"
    ctx.measure(
        rpo_seconds=max(0.0, seconds),
        lost_rows=len(lost),
        rpo_bound=bound,
        rpo_basis=f"application acknowledgement log: {len(lost)} of {len(acks)} write(s) "
        f"{old.name} acknowledged in the {INCIDENT_ACK_WINDOW.seconds} s before the outage "
        f"missing on {node.name}",
        lost_rows_basis=f"{writer} writes acknowledged by {old.name}, missing on {node.name}",
    )
    ctx.record_check(
        "acknowledged writes lost (asynchronous replication)",
        True,
        critical=False,
        detail=f"{len(lost)} application write(s) acknowledged by {old.name} missing on "
        f"{node.name}",
        value=len(lost),
    )
    return True


def measure(run: Failover, node: PostgresNode) -> None:
    """RTO (the application's write gap, with its breakdown) and RPO (every lost ack)."""
    ctx = run.ctx
    if ctx.dry_run:
        return
    app_write = run.milestones.get("first_app_write")
    if app_write is not None:
        ctx.measure(
            restored_at_basis=f"first application write ({run.opts.app_heartbeat_writer}) on "
            f"the new primary {node.name}"
        )
    elif run.milestones.get("first_probe_write") is not None:
        ctx.measure(
            restored_at_basis=f"first heartbeat-probe write on the new primary {node.name}"
            " (no application writer configured)"
        )
    _incident_outage_start(run, node)
    if ctx.is_drill and run.milestones.get("assessed") is not None:
        ctx.measure(
            detected_at=run.milestones["assessed"],
            detected_at_basis="the assessment observed the primary down",
        )
    survived_at, survived_basis = _survived_at(run)
    rpo = ctx.measure_heartbeat_rpo(
        app_writer=run.opts.app_heartbeat_writer,
        app_acks=_app_acks(run),
        survived_at=survived_at,
        survived_basis=survived_basis,
    )
    if rpo is not None:
        _record_loss(run, node, rpo)
    elif _incident_app_loss(run, node):
        pass
    elif run.choice is not None and run.choice.lag_seconds is not None:
        ctx.measure(
            rpo_seconds=run.choice.lag_seconds,
            rpo_basis=f"estimated: {run.choice.chosen}'s data lag at promotion "
            f"({run.choice.lag_basis})",
        )
    start = ctx.failure_at or ctx.declared_at
    breakdown = rto_breakdown(start, run.milestones)
    run.details["rto_breakdown"] = breakdown
    ctx.measure(rto_phases={f"failure -> {k}": v for k, v in breakdown.items()})
    run.details["milestones"] = {k: v.isoformat() if v else None for k, v in run.milestones.items()}


def _record_loss(run: Failover, node: PostgresNode, rpo: HeartbeatRPO) -> None:
    ctx = run.ctx
    run.details["rpo"] = rpo._asdict()
    if run.pgc.synchronous:
        ctx.record_check(
            "synchronous replication lost no acknowledged write",
            rpo.lost_rows == 0,
            detail=f"{rpo.lost_rows} acknowledged heartbeat row(s) missing on {node.name}",
            value=rpo.lost_rows,
        )
    else:
        bound = " (lower bound)" if rpo.bound == "lower" else ""
        ctx.record_check(
            "acknowledged writes lost (asynchronous replication)",
            True,
            critical=False,
            detail=f"{rpo.lost_rows} row(s), {rpo.seconds or 0:.3f} s of writes{bound}",
            value=rpo.lost_rows,
        )
