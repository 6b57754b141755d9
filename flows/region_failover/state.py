"""After the failover: the caches flushed and warmed from the new primary, the links checked.

The old primary's last writes may be lost (the RPO), and a cache filled before the failure
may still serve them; the rows on the new primary must still name objects that exist.
"""

from __future__ import annotations

from dr.config import PostgresNode
from flows.common.state import check_target_links, recover_caches
from flows.region_failover.run import Failover

__all__ = ["recover_state"]


def recover_state(run: Failover, node: PostgresNode) -> None:
    """Caches and links of the target against the new primary, each in a parallel branch."""
    ctx = run.ctx
    if not (ctx.target.caches or ctx.target.links):
        return
    with ctx.phase("caches and links", detail=f"flush and warm from {node.name}, check links"):
        recover_caches(ctx, lambda db: run.ci(node, db), run.password)
        check_target_links(ctx, lambda db: run.ci(node, db), run.password, when="after failover")
