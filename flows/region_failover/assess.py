"""Assess, in parallel: every node, the application, its checks; declare the severity."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from dr.config import DockerService, PostgresConfig, PostgresNode, Target
from dr.errors import DRError, PreconditionError, redact
from dr.tasking import dr_task
from flows.common.systems import Systems, node_conninfo
from flows.region_failover.models import Assessment, NodeView, ServiceView
from flows.region_failover.run import Failover
from tasks.containers import inspection as containers_inspection
from tasks.health import checks as health_checks
from tasks.kubernetes import deployments as kubernetes_deployments
from tasks.postgres import assess as postgres_assess
from tasks.postgres import checks as postgres_checks

__all__ = [
    "assess",
    "assess_health_checks",
    "assess_health_checks_task",
    "assess_node",
    "assess_node_task",
    "assess_services",
    "assess_services_task",
    "declare_severity",
    "half_done",
    "identify_old_primary",
    "record_assessment",
    "stopped_writers",
]


HEARTBEAT_SQL = (
    "SELECT extract(epoch FROM pg_catalog.max(ts))::float8 FROM public.dr_heartbeat"
    " WHERE %s::text IS NULL OR writer = %s"
)


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(float(value), UTC)


def assess_node(
    node: PostgresNode,
    configured_role: Literal["primary", "replica"],
    pgc: PostgresConfig,
    password: str | None,
    app_writer: str | None = None,
) -> NodeView:
    """Look at one node: role, timeline, WAL positions, lag, the newest heartbeat it holds.

    Never raises for the node's own failures: an authentication error is ``unknown`` (a
    wrong password must never read as "the primary is dead"), a refused connection
    ``unreachable``.

    Args:
        node: the node.
        configured_role: its role in the config.
        pgc: the target's PostgreSQL section.
        password: the resolved password, if any.
        app_writer: also read the newest row of this writer (the application's).

    Returns:
        A :class:`NodeView`.
    """
    ci = node_conninfo(pgc, node, password)
    view = NodeView(
        name=node.name, region=node.region, configured_role=configured_role, state="unknown"
    )
    try:
        health = postgres_assess.health(ci)
    except DRError as exc:
        view.error = redact(str(exc))
        return view
    if not health.reachable:
        view.state = "unreachable"
        view.error = health.error
        return view
    view.state = "standby" if health.in_recovery else "primary"
    view.writable = health.is_accepting_writes
    view.timeline = health.timeline_id
    view.current_lsn = health.current_lsn
    view.received_lsn = health.received_lsn
    view.replayed_lsn = health.replayed_lsn
    view.replay_lag_seconds = health.replay_lag_seconds
    with contextlib.suppress(DRError):
        if health.in_recovery:
            status = postgres_assess.standby_status(ci)
            view.receiver_status = status.receiver_status
            view.last_replay_at = status.last_replay_at
        hb_ci = node_conninfo(pgc, node, password, pgc.heartbeat_db)
        newest = postgres_checks.run_sql_check(
            hb_ci, HEARTBEAT_SQL, [None, None], name="newest heartbeat"
        )
        view.newest_heartbeat_at = _ts(newest.value)
        if app_writer:
            app = postgres_checks.run_sql_check(
                hb_ci, HEARTBEAT_SQL, [app_writer, app_writer], name="newest app write"
            )
            view.newest_app_write_at = _ts(app.value)
    return view


def assess_services(systems: Systems, target: Target) -> list[ServiceView]:
    """Each Docker container and Kubernetes deployment of the target: running or not."""
    out: list[ServiceView] = []
    for svc in target.services:
        running: bool | None = None
        try:
            if isinstance(svc, DockerService):
                h = containers_inspection.health(systems.docker, svc.name)
                ok, detail = h.ok, f"{h.status}" + (f", {h.health}" if h.health else "")
                running = h.running
            else:
                d = kubernetes_deployments.read_deployment(
                    systems.k8s, svc.namespace, svc.deployment
                )
                ok = True
                detail = f"{d.replicas} replica(s) wanted, {d.ready_replicas or 0} ready"
        except Exception as exc:  # noqa: BLE001 - assessment reports, it never stops the run
            ok, detail = False, redact(f"{type(exc).__name__}: {exc}")
        out.append(
            ServiceView(
                kind=svc.kind,
                name=svc.name,
                region=svc.region,
                role=svc.role,
                ok=ok,
                detail=detail,
                running=running,
            )
        )
    return out


def assess_health_checks(target: Target, password: str | None) -> list[dict[str, Any]]:
    """The target's HTTP, SQL and validation checks, once (through whichever primary answers)."""
    outcomes, _primary = health_checks.run_health_checks(target, password=password)
    return [{"name": o.name, "kind": o.kind, "ok": o.ok, "detail": o.detail} for o in outcomes]


def stopped_writers(services: Sequence[ServiceView]) -> list[str]:
    """The writer containers that exist but do not run (a killed run may have stopped them)."""
    return [s.name for s in services if s.role == "writer" and s.running is False]


def identify_old_primary(
    views: Sequence[NodeView], configured_primary: str, *, writers_stopped: bool = False
) -> str:
    """The node to fail over from: the configured primary, unless another node leads now.

    After a failover without failback the configured primary is a standby (or down) and
    another node takes writes: failing over again means failing over from *that* one.

    Why not when the writers are stopped: one healthy primary and stopped writers is what a
    run killed during a switch-back (or after its promotion) leaves. The failover is done;
    finishing it means starting the writers on that primary, not stopping the only node
    that takes writes. The node to "fail over from" is then one that does not lead.

    Args:
        views: every node.
        configured_primary: ``postgres.primary.name``.
        writers_stopped: writer containers exist that do not run.

    Returns:
        The node's name.

    Raises:
        PreconditionError: more than one node takes writes (split brain).
    """
    writable = [v for v in views if v.writable]
    if len(writable) > 1:
        raise PreconditionError(
            "more than one node takes writes ("
            + ", ".join(v.name for v in writable)
            + "): fence all but one by hand first"
        )
    configured = next(v for v in views if v.name == configured_primary)
    if writers_stopped and len(writable) == 1 and len(views) > 1:
        leader = writable[0].name
        others = [v for v in views if v.name != leader]
        # The configured primary when it does not lead, else the node that is down.
        others.sort(key=lambda v: (v.name != configured_primary, v.state == "standby"))
        return others[0].name
    if configured.state == "standby" and writable:
        return writable[0].name
    if configured.state == "standby":
        # Nothing takes writes and the configured primary is a standby: the primary was
        # another node, now down (a switch-back killed after stopping it). Fail over from it.
        down = [v.name for v in views if v.state in ("unreachable", "unknown")]
        if len(down) == 1:
            return down[0]
    return configured_primary


def declare_severity(assessment: Assessment) -> tuple[str, str]:
    """The incident's severity, by the seeds' scale (seed 002: SEV1 = complete outage).

    Args:
        assessment: what was seen.

    Returns:
        ``(severity, reason)``: SEV1 when the primary takes no writes, SEV2 when it does but
        the application or its region is degraded, SEV3 otherwise (a planned failover).
    """
    old = assessment.nodes[assessment.old_primary]
    if not old.writable:
        return "SEV1", f"the primary {old.name} takes no writes ({old.state})"
    failing = [s.name for s in assessment.services if not s.ok]
    failing += [c["name"] for c in assessment.health_checks if not c.get("ok")]
    if failing:
        return "SEV2", f"the primary takes writes but these fail: {', '.join(failing)}"
    return "SEV3", "everything answers: a planned failover"


def half_done(a: Assessment, configured_primary: str) -> dict[str, Any]:
    """What an earlier, interrupted run left, read from the world (not from any run's memory).

    Returns:
        ``{"found": [...], "failure_at": ISO or None, "writers_stopped": [...]}``:
        ``failure_at`` is the newest write any node holds when the old primary takes no
        writes: the real failure happened after it, whenever this run started.
    """
    old = a.nodes[a.old_primary]
    others = [v for v in a.nodes.values() if v.name != a.old_primary]
    found: list[str] = []
    promoted = [v.name for v in others if v.state == "primary"]
    stopped = stopped_writers(a.services)
    if stopped:
        found.append(
            f"writer(s) {', '.join(stopped)} stopped: started again once the application"
            " points at the primary"
        )
    if promoted and not old.writable:
        found.append(
            f"{', '.join(promoted)} already promoted, {old.name} {old.state}:"
            " finishing the failover (fence, repoint, verify)"
        )
    if a.old_primary != configured_primary:
        found.append(f"{a.old_primary} leads instead of {configured_primary} (no failback yet)")
    if not old.writable and not promoted and old.state != "unknown":
        found.append(f"{old.name} {old.state} and no replica promoted yet")
    failure_at = None
    if not old.writable:
        stamps = [v.newest_heartbeat_at for v in a.nodes.values() if v.newest_heartbeat_at]
        if promoted:
            # The promoted node keeps taking writes: only standbys hold the moment it stopped.
            stamps = [
                v.newest_heartbeat_at
                for v in a.nodes.values()
                if v.newest_heartbeat_at and v.state != "primary"
            ] or stamps
        failure_at = max(stamps).isoformat() if stamps else None
    return {"found": found, "failure_at": failure_at, "writers_stopped": stopped}


def assess(run: Failover, old_primary: str | None = None) -> Assessment:
    """Every node, the application and its checks, in parallel.

    Args:
        old_primary: the node failing over from, when already known (a re-assessment).
    """
    started = time.monotonic()
    pgc = run.pgc
    writer = run.opts.app_heartbeat_writer if run.has_app_writers else None
    futures = {
        n.name: assess_node_task.submit(
            n,
            "primary" if n.name == pgc.primary.name else "replica",
            pgc,
            run.password,
            writer,
        )
        for n in pgc.nodes
    }
    services_f = (
        assess_services_task.submit(run.systems, run.target) if run.target.services else None
    )
    checks_f = assess_health_checks_task.submit(run.target, run.password)
    views = {name: f.result() for name, f in futures.items()}
    services = services_f.result() if services_f is not None else []
    old_name = old_primary or identify_old_primary(
        list(views.values()), pgc.primary.name, writers_stopped=bool(stopped_writers(services))
    )
    standbys: list[dict[str, Any]] = []
    if views[old_name].state == "primary":
        with contextlib.suppress(DRError):
            rows = postgres_assess.replication_status_task(run.ci(run.node(old_name)))
            standbys = [r.model_dump(mode="json") for r in rows]
    try:
        checks = checks_f.result()
    except Exception as exc:  # noqa: BLE001 - checks are informative during assessment
        checks = [{"name": "health checks", "ok": False, "detail": redact(str(exc))}]
    old_region = run.node(old_name).region
    dr_nodes = [
        v for v in views.values() if v.region != old_region and v.state in ("standby", "primary")
    ]
    dr_services = [s for s in services if s.region != old_region]
    assessment = Assessment(
        nodes=views,
        standbys_seen_by_primary=standbys,
        services=services,
        health_checks=checks,
        old_primary=old_name,
        failed_region=old_region,
        dr_region_ready=bool(dr_nodes) and all(s.ok for s in dr_services),
        seconds=round(time.monotonic() - started, 3),
    )
    assessment.severity, assessment.severity_reason = declare_severity(assessment)
    return assessment


def record_assessment(run: Failover, a: Assessment) -> None:
    """Put what assessment saw in the run's checks and details."""
    ctx = run.ctx
    for v in a.nodes.values():
        ctx.record_check(
            f"assess {v.name}",
            v.state != "unknown",
            critical=False,
            detail=f"{v.state}"
            + (f", timeline {v.timeline}" if v.timeline else "")
            + (
                f", lsn {v.current_lsn or v.replayed_lsn}"
                if (v.current_lsn or v.replayed_lsn)
                else ""
            )
            + (f", receiver {v.receiver_status}" if v.receiver_status else "")
            + (f": {v.error}" if v.error else ""),
        )
    for s in a.services:
        ctx.record_check(f"assess {s.kind} {s.name}", s.ok, critical=False, detail=s.detail)
    ctx.record_check(
        "DR region ready",
        a.dr_region_ready,
        critical=False,
        detail=f"replicas and services outside {a.failed_region}",
    )
    run.details["assessment"] = a.model_dump(mode="json")
    resume = half_done(a, run.pgc.primary.name)
    run.details["resume"] = resume
    for line in resume["found"]:
        ctx.note(f"resuming: {line}")


assess_node_task = dr_task(assess_node, name="assess-postgres-node", retries=0, timeout_seconds=60)


assess_services_task = dr_task(
    assess_services, name="assess-services", retries=0, timeout_seconds=60
)


assess_health_checks_task = dr_task(
    assess_health_checks,
    name="assess-health-checks",
    retries=0,
    timeout_seconds=120,
)
