"""Promote the chosen replica, right after checking the old primary is still fenced."""

from __future__ import annotations

from dr.config import PostgresNode
from flows.region_failover.fence import recheck_fence
from flows.region_failover.run import Failover
from tasks.postgres import fence

__all__ = ["promote"]


def promote(run: Failover, node: PostgresNode) -> None:
    """Approval, one more fence check, then the promotion (idempotent).

    A planned failover approved this promotion at its gate before the fence; a new choice
    made after the fence is asked again.
    """
    ctx = run.ctx
    view = run.assessment.nodes.get(node.name) if run.assessment else None
    already = view is not None and view.state == "primary"  # an interrupted run promoted it
    if run.approved_promotion != node.name and not already:
        ctx.approve(f"promote {node.name} ({node.host}:{node.port}) to primary")
    recheck_fence(run, run.old)  # type: ignore[arg-type]
    if not ctx.plan("promote", f"{node.name} ({node.host}:{node.port})"):
        return
    change = fence.ensure_promoted_task(run.ci(node), wait_seconds=run.opts.promote_timeout_seconds)
    run.promoted = True
    run.mark("promoted")
    ctx.record_change(change)
