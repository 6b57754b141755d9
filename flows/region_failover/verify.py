"""Verify end to end: the application writes to the new primary, one primary only."""

from __future__ import annotations

from datetime import datetime

from dr.config import PostgresNode
from flows.common.writers import wait_for_app_write
from flows.region_failover.fence import prove
from flows.region_failover.run import Failover

__all__ = ["verify"]


def verify(run: Failover, node: PostgresNode) -> None:
    """The application's writes on the new primary, the end-to-end checks, one primary."""
    ctx = run.ctx
    if ctx.dry_run:
        ctx.plan("wait for", f"the application's writes on {node.name}")
        return
    timeout = run.opts.verify_timeout_seconds or ctx.objectives.rto_seconds
    # Only the new primary can hold rows written after the old one was proven fenced.
    since = run.milestones.get("fenced") or ctx.failure_at or ctx.declared_at
    app_write: datetime | None = None
    writer = run.opts.app_heartbeat_writer
    wrote_before = run.assessment is not None and any(
        v.newest_app_write_at is not None for v in run.assessment.nodes.values()
    )
    if writer and run.has_app_writers and wrote_before:
        app_write = wait_for_app_write(run.ci(node, run.pgc.heartbeat_db), writer, since, timeout)
        run.mark("first_app_write", app_write)
        ctx.record_check(
            f"application writes land on {node.name}",
            app_write is not None,
            detail=f"first {writer} write at {app_write.isoformat(timespec='milliseconds')}"
            if app_write
            else f"no {writer} write on {node.name} within {timeout:g} s",
        )
    elif writer:
        ctx.note(
            f"the application's own writes are not measured (no writer service, or no "
            f"'{writer}' rows in dr_heartbeat): the heartbeat probe stands in for it"
        )
    health = ctx.verify_health(timeout_seconds=timeout)
    if health is not None and ctx.heartbeat is not None and ctx.failure_at is not None:
        run.mark(
            "first_probe_write",
            ctx.heartbeat.first_write_after(ctx.failure_at, server=f"{node.host}:{node.port}"),
        )
    # Exactly one primary: the old one still takes no writes.
    proof = prove(run, run.old)  # type: ignore[arg-type]
    ctx.record_check(
        "only one primary",
        proof.proven,
        detail=f"{run.old.name}: {proof.method}: {proof.reason}",  # type: ignore[union-attr]
    )
    if app_write is not None:
        ctx.stamp_restored(app_write)
