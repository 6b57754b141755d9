"""Measure: RTO to the first application write (with its breakdown) and RPO."""

from __future__ import annotations

from datetime import datetime

from dr.config import PostgresNode
from flows.region_failover.run import Failover

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


def measure(run: Failover, node: PostgresNode) -> None:
    """RTO (to the first application write), RPO (heartbeat), and the breakdown."""
    ctx = run.ctx
    if ctx.dry_run:
        return
    app_write = run.milestones.get("first_app_write")
    start = ctx.failure_at or ctx.declared_at
    if app_write is not None:
        ctx.measure(
            rto_seconds=(app_write - start).total_seconds(),
            rto_basis=f"{'failure_at' if ctx.failure_at else 'declared_at'} -> first "
            f"application write ({run.opts.app_heartbeat_writer}) on the new primary "
            f"{node.name}",
        )
    elif run.milestones.get("first_probe_write") is not None and ctx.failure_at is not None:
        probe_write = run.milestones["first_probe_write"]
        ctx.measure(
            rto_seconds=(probe_write - ctx.failure_at).total_seconds(),  # type: ignore[operator]
            rto_basis=f"failure_at -> first heartbeat-probe write on the new primary {node.name}"
            " (no application writer configured)",
        )
    rpo = ctx.measure_heartbeat_rpo()
    if rpo is not None:
        run.details["rpo"] = rpo._asdict()
        if run.pgc.synchronous:
            ctx.record_check(
                "synchronous replication lost no acknowledged write",
                rpo.lost_rows == 0,
                detail=f"{rpo.lost_rows} acknowledged heartbeat row(s) missing on {node.name}",
                value=rpo.lost_rows,
            )
        else:
            ctx.record_check(
                "acknowledged writes lost (asynchronous replication)",
                True,
                critical=False,
                detail=f"{rpo.lost_rows} row(s), {rpo.seconds or 0:.3f} s of writes",
                value=rpo.lost_rows,
            )
    elif run.choice is not None and run.choice.lag_seconds is not None:
        ctx.measure(
            rpo_seconds=run.choice.lag_seconds,
            rpo_basis=f"estimated: {run.choice.chosen}'s data lag at promotion "
            f"({run.choice.lag_basis})",
        )
    run.details["rto_breakdown"] = rto_breakdown(ctx.failure_at or ctx.declared_at, run.milestones)
    run.details["milestones"] = {k: v.isoformat() if v else None for k, v in run.milestones.items()}
