"""Roles: rejoin every node that does not stream from the primary; check the roles at the end."""

from __future__ import annotations

from dr.config import PostgresConfig, PostgresNode
from flows.common.failback.models import FailbackOptions, FailbackReport, NodeRejoin
from flows.common.failback.nodes import find_primary, streaming_names
from flows.common.failback.rejoin import rejoin_as_standby
from flows.common.recorder import Recorder
from tasks.postgres import models as postgres_models

__all__ = ["check_roles", "rejoin_others"]


def rejoin_others(
    rec: Recorder,
    pgc: PostgresConfig,
    primary: PostgresNode,
    healths: dict[str, postgres_models.NodeHealth],
    password: str | None,
    opts: FailbackOptions,
    report: FailbackReport,
) -> None:
    """Every node but the primary becomes its streaming standby (one phase per node).

    Args:
        rec: where phases, changes and checks go.
        pgc: the target's PostgreSQL section.
        primary: the node that takes writes now.
        healths: from :func:`find_primary`.
        password: the resolved password, if any.
        opts: timeouts and the method.
        report: ``rejoined`` filled in.
    """
    streaming = streaming_names(pgc, primary, password)
    for node in pgc.nodes:
        if node.name == primary.name:
            continue
        if node.name in streaming and healths[node.name].in_recovery:
            report.rejoined.append(
                NodeRejoin(node=node.name, primary=primary.name, method="already_streaming")
            )
            continue
        with rec.phase(f"rejoin {node.name}", detail=f"as a standby of {primary.name}"):
            report.rejoined.append(rejoin_as_standby(rec, pgc, node, primary, password, opts))


def check_roles(
    rec: Recorder,
    pgc: PostgresConfig,
    password: str | None,
    opts: FailbackOptions,
    report: FailbackReport,
) -> None:
    """The configured primary leads and every replica streams from it (critical on switch-back).

    Args:
        rec: where the check goes.
        pgc: the target's PostgreSQL section.
        password: the resolved password, if any.
        opts: ``switch_back`` makes the check critical.
        report: ``roles_as_configured`` filled in.
    """
    configured = pgc.primary
    now_primary, _ = find_primary(pgc, password)
    streaming = streaming_names(pgc, now_primary, password) if now_primary else set()
    as_configured = (
        now_primary is not None
        and now_primary.name == configured.name
        and all(r.name in streaming for r in pgc.replicas)
    )
    report.roles_as_configured = as_configured
    rec.record_check(
        "roles as configured",
        as_configured or not opts.switch_back,
        critical=opts.switch_back,
        detail=f"primary {now_primary.name if now_primary else 'none'}, "
        f"streaming: {', '.join(sorted(streaming)) or 'none'}",
    )
