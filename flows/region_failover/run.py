"""One region failover run: the state its phases share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService, KubernetesService, PostgresNode
from dr.errors import PreconditionError
from flows.common.systems import Systems, node_conninfo
from flows.lifecycle import RunContext
from flows.region_failover.models import Assessment, ReplicaChoice
from flows.region_failover.options import FailoverOptions
from tasks.postgres import assess as postgres_assess

__all__ = ["Failover"]

log = logging.getLogger(__name__)


class Failover:
    """One region failover run: the state the phases share, and the phases themselves."""

    def __init__(self, ctx: RunContext, opts: FailoverOptions) -> None:
        self.ctx = ctx
        self.opts = opts
        self.target = ctx.target
        self.pgc = ctx.target.postgres
        self.password = self.pgc.password.resolve() if self.pgc.password else None
        self.systems = Systems(ctx.config)
        self.assessment: Assessment | None = None
        self.choice: ReplicaChoice | None = None
        self.old: PostgresNode | None = None
        self.new: PostgresNode | None = None
        self.promoted = False
        # The replica a planned-failover gate approved promoting (before the fence).
        self.approved_promotion: str | None = None
        self.failed_back = False
        self.milestones: dict[str, datetime | None] = {}
        self.scaled: list[Change] = []
        self.injected_hba: list[tuple[PostgresNode, Change]] = []
        self.details: dict[str, Any] = {}
        ctx.details["failover"] = self.details

    @property
    def wants_failback(self) -> bool:
        """Fail back at the end: the option, else yes in drills only."""
        if self.opts.failback is None:
            return self.ctx.is_drill
        return self.opts.failback

    @property
    def has_app_writers(self) -> bool:
        """True when the target names a writer service (container or deployment)."""
        return any(
            s.role == "writer" and isinstance(s, DockerService | KubernetesService)
            for s in self.target.services
        )

    def node(self, name: str) -> PostgresNode:
        """The configured node of that name."""
        return self.pgc.node(name)

    def ci(self, node: PostgresNode, dbname: str | None = None) -> str:
        """A conninfo for a node (maintenance database by default)."""
        return node_conninfo(self.pgc, node, self.password, dbname)

    def mark(self, milestone: str, at: datetime | None = None) -> None:
        """Record when a milestone of the RTO breakdown was reached."""
        self.milestones[milestone] = at or utcnow()

    def writable_others(self, name: str) -> list[str]:
        """The nodes other than ``name`` that take writes now (asked, not remembered)."""
        return [
            n.name
            for n in self.pgc.nodes
            if n.name != name and postgres_assess.health(self.ci(n)).is_accepting_writes
        ]

    def guarded(
        self, what: str, undo: Callable[[], Any], node: str | None = None
    ) -> Callable[[], Any]:
        """An undo that may only run while no replica has been promoted.

        Why ask the world too: a promotion that timed out here may still have happened
        (``promoted`` stays False), and starting the old primary then makes two.
        """

        def run() -> Any:
            if self.failed_back:
                log.info("%s: not needed, the failback already put the roles back", what)
                return None
            leading = self.writable_others(node) if node is not None else []
            if self.promoted or leading:
                raise PreconditionError(
                    f"not undone: a replica was promoted ({', '.join(leading) or 'this run'}),"
                    f" so {what} would make a second primary; rejoin the old primary as a"
                    " standby (failback) instead"
                )
            return undo()

        return run
