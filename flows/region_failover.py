"""Region failover: the runbook for "data center / region failure" and "primary database failure".

The runbooks it replaces (seed 002 "Fusion Bitcoin Bridge", *Full Region Failover*: update
DNS to the DR region, scale up the DR infrastructure, point the applications at the DR
resources; seeds 000 and 003, *Database Failure*: "if a replica is available, promote it to
primary", ``kubectl set env deployment/... DB_HOST=new-primary``). As a flow:

1. **assess**, in parallel: every PostgreSQL node (role, timeline, replayed WAL position,
   lag, newest heartbeat it holds), what the primary reports of its standbys, the
   application's containers and deployments, its health checks, the DR region's readiness;
   then **declare the severity** (SEV1: the primary takes no writes);
2. **choose** the replica that loses the least: the highest WAL position (received or
   replayed: WAL received is replayed at promotion), ties broken by region (outside the
   failed region first, then ``preferred_regions``), then config order. No healthy replica
   stops the run here, with nothing changed. A replica further behind than the RPO
   objective needs a person's approval, and the question says how far;
3. **fence** the old primary before anything else changes: stop it where it runs on this
   machine, else make it read-only, close its databases and end its sessions; then *prove*
   it takes no writes (a refused connection, a standby, a rejected write). Unproven, a
   person must approve: policy never auto-approves it, drills refuse it, and only the
   explicit ``allow_unproven_fence`` option lets a run go on without proof;
4. **promote** the chosen replica (idempotent; waits until it leaves recovery), right after
   checking once more that the old primary is still fenced (re-fencing it if it came back);
5. **repoint and scale**, in parallel: the DNS record (Route 53 UPSERT), Docker writers
   recreated with the new ``DB_HOST``/``DB_PORT``, Kubernetes writers' secret + rollout
   restart, DR-region deployments scaled up to their configured replicas;
6. **verify** end to end: the application's own writes land on the new primary, the
   health checks and validation queries pass, and exactly one node takes writes;
7. **measure**: RTO from the failure to the first application write on the new primary,
   with a breakdown (assessed, fenced, promoted, repointed, first write); RPO from the
   heartbeat: rows the old primary acknowledged that the new one lacks. With synchronous
   replication configured, that must be zero.

Drills (``mode=drill``) inject the failure themselves, on the lab or any target that allows
drills: they check first that a healthy replica exists (so nothing is broken for nothing),
start the heartbeat probe, crash the primary at a stamped moment (``inject=kill``: every
process frozen then SIGKILLed; ``inject=immediate``: ``pg_ctl stop -m immediate``), run the
same recovery as an incident, and end with the failback flow (``failback``, on by default in
drills) so the next drill starts from the configured roles.

Every change is recorded with its undo. Until a replica is promoted, the compensation stack
can restart the old primary; after, nothing automatic may do so (the guarded undo refuses):
the old primary comes back only as a standby, through failback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.config import (
    DockerService,
    KubernetesService,
    Mode,
    PostgresConfig,
    PostgresNode,
    Scenario,
    Target,
)
from dr.errors import (
    ApprovalError,
    DRError,
    PreconditionError,
    redact,
)
from dr.tasking import dr_task
from flows import failback as fb
from flows.lifecycle import RunContext, run_scenario
from tasks import containers, faults, kubernetes, measure
from tasks import postgres as pg

__all__ = [
    "Assessment",
    "Failover",
    "FailoverOptions",
    "NodeView",
    "ReplicaChoice",
    "ServiceView",
    "assess_node",
    "choose_replica",
    "declare_severity",
    "estimate_lag_seconds",
    "identify_old_primary",
    "node_position",
    "region_failover_flow",
    "rto_breakdown",
]

log = logging.getLogger(__name__)

#: Proof methods that show a node cannot take writes from anywhere, not just from here.
STRONG_PROOFS = frozenset({"refused", "not_accepting_connections", "in_recovery", "read_only"})
HEARTBEAT_SQL = (
    "SELECT extract(epoch FROM pg_catalog.max(ts))::float8 FROM public.dr_heartbeat"
    " WHERE %s::text IS NULL OR writer = %s"
)


# --------------------------------------------------------------------------- options


class FailoverOptions(BaseModel):
    """Options of a region failover (``dr drill region-failover --option k=v``).

    Alert-started runs also carry ``severity``, ``auto_approve``, ``alert_fingerprint`` and
    ``alert_labels`` (see ``deployments/alerts.py``); ``declared_at`` is when the incident
    was declared.
    """

    model_config = ConfigDict(extra="forbid")

    inject: Literal["kill", "immediate"] = Field(
        "kill",
        description="Drills: kill = freeze and SIGKILL every server process (a crash); "
        "immediate = pg_ctl stop -m immediate.",
    )
    warmup_seconds: float = Field(
        1.0, ge=0, le=60, description="Drills: heartbeat writes before the failure is injected."
    )
    failback: bool | None = Field(
        None, description="Rejoin (and switch back) at the end; default: yes in drills only."
    )
    switch_back: bool = Field(True, description="Failback also restores the configured roles.")
    rejoin_method: Literal["rewind", "base_backup"] = "rewind"
    allow_unproven_fence: bool = Field(
        False,
        description="Go on when the old primary cannot be proven fenced. Risks two primaries.",
    )
    fence_by_connections: bool = Field(
        True, description="Fence a primary that cannot be stopped by closing it to clients."
    )
    unreachable_is_fenced: bool = Field(
        False,
        description="Count 'unreachable from this runner' (a timeout) as proof. Clients on "
        "another network path may still reach it.",
    )
    max_lag_seconds: float | None = Field(
        None, ge=0, description="A replica further behind needs approval; default: the RPO."
    )
    preferred_regions: list[str] = Field(
        default_factory=list, description="Tie-break among equally advanced replicas."
    )
    promote_timeout_seconds: float = Field(30, gt=0)
    verify_timeout_seconds: float | None = Field(
        None, gt=0, description="How long to wait for the application; default: the RTO."
    )
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer in dr_heartbeat; None: not measured."
    )
    heartbeat_interval_seconds: float = Field(0.05, gt=0)
    failure_at: datetime | None = Field(
        None, description="Incidents: when the primary failed (lag reference), if known."
    )
    severity: str | None = None
    auto_approve: bool = False
    declared_at: datetime | None = None
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] | None = None


# --------------------------------------------------------------------------- assessment


class NodeView(BaseModel):
    """One PostgreSQL node as assessed."""

    name: str
    region: str
    configured_role: Literal["primary", "replica"]
    state: Literal["primary", "standby", "unreachable", "unknown"]
    error: str | None = None
    writable: bool = False
    timeline: int | None = None
    current_lsn: str | None = None
    received_lsn: str | None = None
    replayed_lsn: str | None = None
    replay_lag_seconds: float | None = None
    receiver_status: str | None = None
    last_replay_at: datetime | None = None
    newest_heartbeat_at: datetime | None = None
    newest_app_write_at: datetime | None = None
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ServiceView(BaseModel):
    """One application service as assessed."""

    kind: str
    name: str
    region: str
    role: str
    ok: bool
    detail: str = ""


class Assessment(BaseModel):
    """Everything assessment saw, and what it concluded."""

    nodes: dict[str, NodeView]
    standbys_seen_by_primary: list[dict[str, Any]] = Field(default_factory=list)
    services: list[ServiceView] = Field(default_factory=list)
    health_checks: list[dict[str, Any]] = Field(default_factory=list)
    old_primary: str
    failed_region: str
    dr_region_ready: bool = False
    severity: str = "SEV1"
    severity_reason: str = ""
    seconds: float = 0.0


class ReplicaChoice(BaseModel):
    """The replica to promote, and why; ``chosen`` None when there is none."""

    chosen: str | None
    position: str | None = None
    lag_seconds: float | None = None
    lag_basis: str = ""
    ranked: list[str] = Field(default_factory=list)
    excluded: dict[str, str] = Field(default_factory=dict)
    reason: str = ""


def _lsn(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return pg.wal_lsn_diff(value, "0/0")
    except ValueError:
        return None


def _lsn_text(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def node_position(view: NodeView) -> int | None:
    """How much WAL a node holds, as a byte position.

    A primary's current position; a standby's newest of received and replayed (WAL received
    but not yet replayed is replayed when it is promoted, so it is not lost).

    Args:
        view: the assessed node.

    Returns:
        The position, or None when unknown (unreachable).
    """
    if view.state == "primary":
        return _lsn(view.current_lsn)
    values = [v for v in (_lsn(view.received_lsn), _lsn(view.replayed_lsn)) if v is not None]
    return max(values) if values else None


def estimate_lag_seconds(view: NodeView, reference_at: datetime | None) -> tuple[float | None, str]:
    """How far behind a replica's data is, in seconds, against a reference moment.

    The replica's newest data is its newest heartbeat row (any writer) or, without one, the
    commit time of its last replayed transaction. The reference is the newest moment the
    old primary is known to have acknowledged a write (see :func:`choose_replica`). With
    no write for a while the estimate errs on the side of "behind" (it asks a person).

    Args:
        view: the assessed replica.
        reference_at: the newest acknowledged moment on the old primary, if known.

    Returns:
        ``(seconds or None, basis)``; 0 for a node that is already primary.
    """
    if view.state == "primary":
        return 0.0, "already the primary"
    data_at = view.newest_heartbeat_at or view.last_replay_at
    what = "newest heartbeat" if view.newest_heartbeat_at else "last replayed commit"
    if reference_at is None or data_at is None:
        return None, "unknown: no reference moment or no data timestamp on the replica"
    seconds = max(0.0, (reference_at - data_at).total_seconds())
    return seconds, f"{what} {data_at.isoformat(timespec='milliseconds')} vs reference"


def _region_rank(region: str, failed_region: str, preferred: Sequence[str]) -> tuple[int, int]:
    if region in preferred:
        return (0, list(preferred).index(region))
    if region != failed_region:
        return (1, 0)
    return (2, 0)


def choose_replica(
    views: Sequence[NodeView],
    *,
    old_primary: str,
    failed_region: str,
    preferred_regions: Sequence[str] = (),
    reference_at: datetime | None = None,
) -> ReplicaChoice:
    """Pick the replica to promote: the least data loss first, then region preference.

    Why this order: the highest WAL position loses the fewest transactions; among equal
    ones, a node outside the failed region is the one that survives a region failure. A
    node already promoted (a previous, interrupted run) is the choice: promoting another
    would make two primaries.

    Args:
        views: every node (the old primary is skipped).
        old_primary: the node failing over from.
        failed_region: its region.
        preferred_regions: tie-break order among regions.
        reference_at: the lag reference (see :func:`estimate_lag_seconds`).

    Returns:
        A :class:`ReplicaChoice`; ``chosen`` None (with ``excluded`` saying why for each)
        when no replica is healthy.

    Raises:
        PreconditionError: more than one replica already takes writes (split brain).
    """
    excluded: dict[str, str] = {}
    healthy: list[tuple[int, NodeView]] = []
    order = {v.name: i for i, v in enumerate(views)}
    for view in views:
        if view.name == old_primary:
            continue
        if view.state == "unreachable":
            excluded[view.name] = f"unreachable ({view.error or 'no answer'})"
        elif view.state == "unknown":
            excluded[view.name] = f"cannot be assessed ({view.error or 'unknown error'})"
        elif node_position(view) is None:
            excluded[view.name] = "no WAL position reported"
        else:
            healthy.append((order[view.name], view))
    promoted = [v for _, v in healthy if v.state == "primary"]
    if len(promoted) > 1:
        raise PreconditionError(
            "more than one replica already takes writes ("
            + ", ".join(v.name for v in promoted)
            + "): a person must decide which one stays primary"
        )
    if not healthy:
        detail = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "no replica configured"
        return ReplicaChoice(
            chosen=None, excluded=excluded, reason=f"no healthy replica to promote ({detail})"
        )

    def key(item: tuple[int, NodeView]) -> tuple[Any, ...]:
        index, view = item
        return (
            0 if view.state == "primary" else 1,
            -(node_position(view) or 0),
            _region_rank(view.region, failed_region, preferred_regions),
            index,
        )

    ranked = [v for _, v in sorted(healthy, key=key)]
    best = ranked[0]
    if reference_at is None:
        # Relative: the freshest data among the candidates.
        stamps = [v.newest_heartbeat_at or v.last_replay_at for v in ranked]
        known = [s for s in stamps if s is not None]
        reference_at = max(known) if known else None
    lag, basis = estimate_lag_seconds(best, reference_at)
    if best.state == "primary":
        why = f"{best.name} already takes writes (resuming an earlier failover)"
    else:
        why = f"{best.name} holds the most WAL ({_lsn_text(node_position(best))})"
        ties = [v.name for v in ranked[1:] if node_position(v) == node_position(best)]
        if ties:
            why += f"; tie with {', '.join(ties)} broken by region ({best.region})"
    return ReplicaChoice(
        chosen=best.name,
        position=_lsn_text(node_position(best)),
        lag_seconds=lag,
        lag_basis=basis,
        ranked=[v.name for v in ranked],
        excluded=excluded,
        reason=why,
    )


def identify_old_primary(views: Sequence[NodeView], configured_primary: str) -> str:
    """The node to fail over from: the configured primary, unless another node leads now.

    After a failover without failback the configured primary is a standby (or down) and
    another node takes writes: failing over again means failing over from *that* one.

    Args:
        views: every node.
        configured_primary: ``postgres.primary.name``.

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
    if configured.state == "standby" and writable:
        return writable[0].name
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


# --------------------------------------------------------------------------- assessment tasks


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
    ci = fb.node_conninfo(pgc, node, password)
    view = NodeView(
        name=node.name, region=node.region, configured_role=configured_role, state="unknown"
    )
    try:
        health = pg.health(ci)
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
            status = pg.standby_status(ci)
            view.receiver_status = status.receiver_status
            view.last_replay_at = status.last_replay_at
        hb_ci = fb.node_conninfo(pgc, node, password, pgc.heartbeat_db)
        newest = pg.run_sql_check(hb_ci, HEARTBEAT_SQL, [None, None], name="newest heartbeat")
        view.newest_heartbeat_at = _ts(newest.value)
        if app_writer:
            app = pg.run_sql_check(
                hb_ci, HEARTBEAT_SQL, [app_writer, app_writer], name="newest app write"
            )
            view.newest_app_write_at = _ts(app.value)
    return view


def assess_services(systems: fb.Systems, target: Target) -> list[ServiceView]:
    """Each Docker container and Kubernetes deployment of the target: running or not."""
    out: list[ServiceView] = []
    for svc in target.services:
        try:
            if isinstance(svc, DockerService):
                h = containers.health(systems.docker, svc.name)
                ok, detail = h.ok, f"{h.status}" + (f", {h.health}" if h.health else "")
            else:
                d = kubernetes.read_deployment(systems.k8s, svc.namespace, svc.deployment)
                ok = True
                detail = f"{d.replicas} replica(s) wanted, {d.ready_replicas or 0} ready"
        except Exception as exc:  # noqa: BLE001 - assessment reports, it never stops the run
            ok, detail = False, redact(f"{type(exc).__name__}: {exc}")
        out.append(
            ServiceView(
                kind=svc.kind, name=svc.name, region=svc.region, role=svc.role, ok=ok, detail=detail
            )
        )
    return out


def assess_health_checks(target: Target, password: str | None) -> list[dict[str, Any]]:
    """The target's HTTP, SQL and validation checks, once (through whichever primary answers)."""
    outcomes, _primary = measure.run_health_checks(target, password=password)
    return [{"name": o.name, "kind": o.kind, "ok": o.ok, "detail": o.detail} for o in outcomes]


assess_node_task = dr_task(
    assess_node, name="assess-postgres-node", retries=0, timeout_seconds=60, cache_policy=NO_CACHE
)
assess_services_task = dr_task(
    assess_services, name="assess-services", retries=0, timeout_seconds=60, cache_policy=NO_CACHE
)
assess_health_checks_task = dr_task(
    assess_health_checks,
    name="assess-health-checks",
    retries=0,
    timeout_seconds=120,
    cache_policy=NO_CACHE,
)


def _task(fn: Any) -> Any:
    return fn.with_options(cache_policy=NO_CACHE)


# --------------------------------------------------------------------------- the run


class Failover:
    """One region failover run: the state the phases share, and the phases themselves."""

    def __init__(self, ctx: RunContext, opts: FailoverOptions) -> None:
        self.ctx = ctx
        self.opts = opts
        self.target = ctx.target
        self.pgc = ctx.target.postgres
        self.password = self.pgc.password.resolve() if self.pgc.password else None
        self.systems = fb.Systems(ctx.config)
        self.assessment: Assessment | None = None
        self.choice: ReplicaChoice | None = None
        self.old: PostgresNode | None = None
        self.new: PostgresNode | None = None
        self.promoted = False
        self.failed_back = False
        self.milestones: dict[str, datetime | None] = {}
        self.scaled: list[Change] = []
        self.details: dict[str, Any] = {}
        ctx.details["failover"] = self.details

    # ------------------------------------------------------------------ helpers

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
        return fb.node_conninfo(self.pgc, node, self.password, dbname)

    def mark(self, milestone: str, at: datetime | None = None) -> None:
        """Record when a milestone of the RTO breakdown was reached."""
        self.milestones[milestone] = at or datetime.now(UTC)

    def guarded(self, what: str, undo: Callable[[], Any]) -> Callable[[], Any]:
        """An undo that may only run while no replica has been promoted."""

        def run() -> Any:
            if self.failed_back:
                log.info("%s: not needed, the failback already put the roles back", what)
                return None
            if self.promoted:
                raise PreconditionError(
                    f"not undone: a replica was promoted, so {what} would make a second "
                    "primary; rejoin the old primary as a standby (failback) instead"
                )
            return undo()

        return run

    # ------------------------------------------------------------------ assess

    def assess(self, old_primary: str | None = None) -> Assessment:
        """Every node, the application and its checks, in parallel.

        Args:
            old_primary: the node failing over from, when already known (a re-assessment).
        """
        started = time.monotonic()
        pgc = self.pgc
        writer = self.opts.app_heartbeat_writer if self.has_app_writers else None
        futures = {
            n.name: assess_node_task.submit(
                n,
                "primary" if n.name == pgc.primary.name else "replica",
                pgc,
                self.password,
                writer,
            )
            for n in pgc.nodes
        }
        services_f = (
            assess_services_task.submit(self.systems, self.target) if self.target.services else None
        )
        checks_f = assess_health_checks_task.submit(self.target, self.password)
        views = {name: f.result() for name, f in futures.items()}
        old_name = old_primary or identify_old_primary(list(views.values()), pgc.primary.name)
        standbys: list[dict[str, Any]] = []
        if views[old_name].state == "primary":
            with contextlib.suppress(DRError):
                rows = pg.replication_status(self.ci(self.node(old_name)))
                standbys = [r.model_dump(mode="json") for r in rows]
        services = services_f.result() if services_f is not None else []
        try:
            checks = checks_f.result()
        except Exception as exc:  # noqa: BLE001 - checks are informative during assessment
            checks = [{"name": "health checks", "ok": False, "detail": redact(str(exc))}]
        old_region = self.node(old_name).region
        dr_nodes = [
            v
            for v in views.values()
            if v.region != old_region and v.state in ("standby", "primary")
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

    def record_assessment(self, a: Assessment) -> None:
        """Put what assessment saw in the run's checks and details."""
        ctx = self.ctx
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
        self.details["assessment"] = a.model_dump(mode="json")

    # ------------------------------------------------------------------ drill

    def preflight(self) -> None:
        """Drills only: break nothing unless the recovery can succeed."""
        a = self.assess()
        self.assessment = a
        self.details["preflight"] = {
            name: v.model_dump(
                mode="json", include={"state", "timeline", "current_lsn", "replayed_lsn"}
            )
            for name, v in a.nodes.items()
        }
        old = a.nodes[a.old_primary]
        node = self.node(a.old_primary)
        problems: list[str] = []
        if not old.writable:
            problems.append(f"the primary {old.name} takes no writes now ({old.state})")
        if not (node.data_directory and node.bin_dir):
            problems.append(
                f"{node.name} has no data_directory/bin_dir: this runner cannot crash it"
            )
        choice = choose_replica(
            list(a.nodes.values()),
            old_primary=a.old_primary,
            failed_region=a.failed_region,
            preferred_regions=self.opts.preferred_regions,
        )
        if choice.chosen is None:
            problems.append(choice.reason)
        streaming = {
            s["application_name"]
            for s in a.standbys_seen_by_primary
            if s.get("state") == "streaming"
        }
        if choice.chosen and choice.chosen not in streaming:
            problems.append(f"{choice.chosen} is not streaming from {old.name}")
        if self.pgc.synchronous:
            sync = [
                s["application_name"]
                for s in a.standbys_seen_by_primary
                if s.get("sync_state") == "sync"
            ]
            self.ctx.record_check(
                "replication is synchronous",
                bool(sync),
                detail=f"synchronous standbys: {', '.join(sync) or 'none'} (config says synchronous)",
            )
        if problems:
            raise PreconditionError("drill not started, nothing changed: " + "; ".join(problems))
        self.ctx.record_check(
            "drill preconditions",
            True,
            detail=f"{old.name} takes writes; {choice.chosen} streams and would be promoted",
        )

    def inject(self) -> None:
        """Drills only: the heartbeat probe, then the crash of the primary at a stamped moment."""
        ctx = self.ctx
        node = (
            self.pgc.primary if self.assessment is None else self.node(self.assessment.old_primary)
        )
        probe = ctx.start_heartbeat(interval_seconds=self.opts.heartbeat_interval_seconds)
        if probe is not None and self.opts.warmup_seconds:
            # The probe needs acknowledged writes before the failure to measure the RPO.
            deadline = time.monotonic() + self.opts.warmup_seconds
            while time.monotonic() < deadline:
                time.sleep(0.05)
        what = (
            "kill (SIGSTOP then SIGKILL every process of)"
            if self.opts.inject == "kill"
            else "stop -m immediate"
        )
        if not ctx.plan(what, f"the primary {node.name} ({node.data_directory})"):
            return
        before = datetime.now(UTC)
        if self.opts.inject == "kill":
            change = _task(faults.kill_local_server_task)(str(node.data_directory))
            failure_at = (
                datetime.fromisoformat(change.after["killed_at"]) if change.changed else before
            )
        else:
            change = _task(pg.stop_local_server_task)(
                str(node.data_directory), str(node.bin_dir), node.os_user, "immediate"
            )
            failure_at = before
        ctx.stamp_failure(failure_at)
        ctx.record_change(
            change,
            undo=self.guarded(
                f"starting {node.name} again",
                lambda: pg.start_local_server(
                    str(node.data_directory), str(node.bin_dir), node.os_user
                ),
            ),
        )
        if not change.changed:
            raise PreconditionError(f"{node.name} was not running: nothing was injected")

    # ------------------------------------------------------------------ choose

    def reference_moment(self, a: Assessment) -> tuple[datetime | None, str]:
        """The newest moment the old primary is known to have acknowledged a write."""
        candidates: list[tuple[datetime, str]] = []
        probe = self.ctx.heartbeat
        if probe is not None and self.ctx.failure_at is not None:
            last = probe.last_acked_before(self.ctx.failure_at)
            if last is not None:
                candidates.append(
                    (last.ts, "the probe's last write acknowledged before the failure")
                )
        old = a.nodes[a.old_primary]
        if old.newest_heartbeat_at is not None and old.state == "primary":
            candidates.append((old.newest_heartbeat_at, f"newest heartbeat on {old.name}"))
        if self.opts.failure_at is not None:
            at = (
                self.opts.failure_at
                if self.opts.failure_at.tzinfo
                else self.opts.failure_at.replace(tzinfo=UTC)
            )
            candidates.append((at, "the failure time given"))
        if not candidates:
            return None, "the freshest replica (the old primary's last write is unknown)"
        return max(candidates)

    def choose(self, a: Assessment) -> ReplicaChoice:
        """Choose the replica against the best known reference moment."""
        reference, basis = self.reference_moment(a)
        choice = choose_replica(
            list(a.nodes.values()),
            old_primary=a.old_primary,
            failed_region=a.failed_region,
            preferred_regions=self.opts.preferred_regions,
            reference_at=reference,
        )
        if choice.chosen is not None:
            choice.lag_basis = f"{choice.lag_basis} ({basis})"
        return choice

    def lag_gate(self, choice: ReplicaChoice) -> None:
        """A replica further behind than allowed needs a person; the question says how far."""
        limit = self.opts.max_lag_seconds
        if limit is None:
            limit = self.ctx.objectives.rpo_seconds
        lag = choice.lag_seconds
        if lag is None:
            self.ctx.note(f"{choice.chosen}'s lag is unknown: {choice.lag_basis}")
            return
        ok = lag <= limit
        self.ctx.record_check(
            f"{choice.chosen} within the RPO",
            ok,
            critical=False,
            detail=f"about {lag:.2f} s behind (limit {limit:g} s): {choice.lag_basis}",
            value=round(lag, 3),
        )
        if not ok:
            self.ctx.approve(
                f"promote {choice.chosen} although it is about {lag:.1f} s behind the old "
                f"primary (limit {limit:g} s): promoting it loses that data"
            )

    # ------------------------------------------------------------------ fence

    def prove(self, node: PostgresNode) -> pg.FenceProof:
        """Prove on every application database that ``node`` takes no writes."""
        proofs = [_task(pg.prove_not_writable_task)(self.ci(node, db)) for db in self.pgc.databases]
        for proof in proofs:
            strong = proof.method in STRONG_PROOFS or (
                proof.method == "unreachable" and self.opts.unreachable_is_fenced
            )
            if not (proof.proven and strong):
                reason = proof.reason
                if proof.proven and proof.method == "unreachable":
                    reason = (
                        f"{proof.reason}; unreachable from this runner only: clients on another "
                        "path may still write to it (option unreachable_is_fenced accepts this)"
                    )
                return proof.model_copy(update={"proven": False, "reason": reason})
        return proofs[0]

    def fence(self, node: PostgresNode, *, again: bool = False) -> pg.FenceProof:
        """Stop the old primary, or close it to clients; then prove it takes no writes."""
        ctx = self.ctx
        view = self.assessment.nodes.get(node.name) if self.assessment else None
        stopped = False
        local = node.data_directory is not None and node.bin_dir is not None
        if local and ctx.plan("stop -m immediate", f"the old primary {node.name}"):
            stopped = self._stop_old(node)
        reachable = again or (view is not None and view.state in ("primary", "standby"))
        # A dry run plans the stop of a local node; closing it to clients is the fallback.
        planned_stop = ctx.dry_run and local
        if not stopped and not planned_stop and reachable and self.opts.fence_by_connections:
            if ctx.plan("fence by connections", f"the old primary {node.name}"):
                self._fence_by_connections(node)
        if ctx.dry_run:
            return pg.FenceProof(target=node.name, proven=True, method="unknown", reason="dry run")
        proof = self.prove(node)
        ctx.record_check(
            f"{node.name} fenced{' again' if again else ''}",
            proof.proven,
            critical=False,
            detail=f"{proof.method}: {proof.reason}",
        )
        self.details.setdefault("fence_proofs", []).append(proof.model_dump(mode="json"))
        if not proof.proven:
            self.unproven_gate(node, proof)
        return proof

    def _stop_old(self, node: PostgresNode) -> bool:
        """Stop a local old primary (immediate); True when nothing of it runs any more."""
        ctx = self.ctx
        if self._no_live_process(node):
            ctx.record_check(
                f"{node.name} has no live process",
                True,
                critical=False,
                detail=f"nothing runs from {node.data_directory}: nothing to stop",
            )
            return True
        try:
            change = _task(pg.stop_local_server_task)(
                str(node.data_directory), str(node.bin_dir), node.os_user, "immediate"
            )
        except DRError as exc:
            ctx.note(f"{node.name} could not be stopped here: {exc}")
            return False
        ctx.record_change(
            change,
            undo=self.guarded(
                f"starting {node.name} again",
                lambda: pg.start_local_server(
                    str(node.data_directory), str(node.bin_dir), node.os_user
                ),
            ),
        )
        return True

    @staticmethod
    def _no_live_process(node: PostgresNode) -> bool:
        """True when no process of the node's server is alive (zombies count as dead).

        Why not only ``pg_ctl status``: it counts a killed postmaster that was not reaped yet
        as running, and ``pg_ctl stop`` then waits for the reaping (seconds on some hosts).
        """
        try:
            return not faults.server_processes(str(node.data_directory))
        except DRError:
            return False

    def _fence_by_connections(self, node: PostgresNode) -> None:
        """Read-only by default, databases closed, sessions ended: for a node not stoppable here."""
        ctx = self.ctx
        ci = self.ci(node)
        try:
            change = _task(pg.fence_by_connections_task)(ci, dbnames=list(self.pgc.databases))
        except DRError as exc:
            ctx.note(f"{node.name} could not be fenced by connections: {exc}")
            return
        ctx.record_change(
            change,
            undo=self.guarded(
                f"opening {node.name} to clients again",
                lambda: pg.unfence_by_connections(
                    ci,
                    dbnames=change.undo_data.get("dbnames", []),
                    reset_read_only=change.undo_data.get("reset_read_only", True),
                ),
            ),
        )

    def unproven_gate(self, node: PostgresNode, proof: pg.FenceProof) -> None:
        """No proof, no promotion: only a person (or ``allow_unproven_fence``) may go on.

        Why policy may not approve this one: promoting while the old primary may still take
        writes can give two primaries, and their data can never be merged back.
        """
        step = (
            f"promote while {node.name} is NOT proven fenced ({proof.method}: {proof.reason});"
            " two primaries are possible"
        )
        ctx = self.ctx
        if self.opts.allow_unproven_fence:
            ctx.note(f"going on without a fence proof (allow_unproven_fence): {step}")
            ctx.approve(step)
            return
        if ctx.is_drill:
            raise ApprovalError(
                f"refused: {node.name} could not be proven fenced ({proof.reason}); drills never"
                " approve this by themselves (option allow_unproven_fence overrides); nothing"
                " was promoted"
            )
        # Incident: a person decides, whatever the auto-approval policy says.
        ctx.approve(step, always_ask=True)
        ctx.note(f"a person approved going on without a fence proof of {node.name}")

    def recheck_fence(self, node: PostgresNode) -> None:
        """Right before promoting: the old primary must still take no writes."""
        if self.ctx.dry_run:
            return
        proof = self.prove(node)
        if proof.proven:
            self.ctx.record_check(
                f"{node.name} still fenced before promotion", True, detail=proof.reason
            )
            return
        self.ctx.note(f"{node.name} came back before promotion ({proof.reason}): fencing it again")
        self.fence(node, again=True)

    # ------------------------------------------------------------------ promote

    def promote(self, node: PostgresNode) -> None:
        """Approval, one more fence check, then the promotion (idempotent)."""
        ctx = self.ctx
        ctx.approve(f"promote {node.name} ({node.host}:{node.port}) to primary")
        self.recheck_fence(self.old)  # type: ignore[arg-type]
        if not ctx.plan("promote", f"{node.name} ({node.host}:{node.port})"):
            return
        change = _task(pg.ensure_promoted_task)(
            self.ci(node), wait_seconds=self.opts.promote_timeout_seconds
        )
        self.promoted = True
        self.mark("promoted")
        ctx.record_change(change)

    # ------------------------------------------------------------------ repoint

    def repoint(self, node: PostgresNode) -> None:
        """Application and DNS to the new primary, DR-region services scaled up: in parallel."""
        extra: list[tuple[str, Callable[[], Change]]] = []
        for svc in self.target.services:
            if (
                isinstance(svc, KubernetesService)
                and svc.replicas is not None
                and svc.region == node.region
            ):
                obj = f"deployment {svc.name} to {svc.replicas} replica(s) in {svc.region}"
                if self.ctx.plan("scale up", obj):
                    extra.append(
                        (
                            f"scale up {obj}",
                            lambda svc=svc: kubernetes.scale_deployment(
                                self.systems.k8s, svc.namespace, svc.deployment, svc.replicas or 0
                            ),
                        )
                    )
        changes = fb.repoint_application(self.ctx, self.systems, self.target, node, extra=extra)
        self.details["scaled"] = [c.model_dump(mode="json") for c in changes if c.action == "scale"]
        self.scaled = [c for c in changes if c.action == "scale" and c.changed]
        # When the last system was repointed (its call returned); the application may
        # already have written by then (its container starts before the call returns).
        self.mark("repointed", max((c.at for c in changes), default=None))

    # ------------------------------------------------------------------ verify & measure

    def verify(self, node: PostgresNode) -> None:
        """The application's writes on the new primary, the end-to-end checks, one primary."""
        ctx = self.ctx
        if ctx.dry_run:
            ctx.plan("wait for", f"the application's writes on {node.name}")
            return
        timeout = self.opts.verify_timeout_seconds or ctx.objectives.rto_seconds
        # Only the new primary can hold rows written after the old one was proven fenced.
        since = self.milestones.get("fenced") or ctx.failure_at or ctx.declared_at
        app_write: datetime | None = None
        writer = self.opts.app_heartbeat_writer
        wrote_before = self.assessment is not None and any(
            v.newest_app_write_at is not None for v in self.assessment.nodes.values()
        )
        if writer and self.has_app_writers and wrote_before:
            app_write = fb.wait_for_app_write(
                self.ci(node, self.pgc.heartbeat_db), writer, since, timeout
            )
            self.mark("first_app_write", app_write)
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
            self.mark(
                "first_probe_write",
                ctx.heartbeat.first_write_after(ctx.failure_at, server=f"{node.host}:{node.port}"),
            )
        # Exactly one primary: the old one still takes no writes.
        proof = self.prove(self.old)  # type: ignore[arg-type]
        ctx.record_check(
            "only one primary",
            proof.proven,
            detail=f"{self.old.name}: {proof.method}: {proof.reason}",  # type: ignore[union-attr]
        )
        if app_write is not None:
            ctx.stamp_restored(app_write)

    def measure(self, node: PostgresNode) -> None:
        """RTO (to the first application write), RPO (heartbeat), and the breakdown."""
        ctx = self.ctx
        if ctx.dry_run:
            return
        app_write = self.milestones.get("first_app_write")
        start = ctx.failure_at or ctx.declared_at
        if app_write is not None:
            ctx.measure(
                rto_seconds=(app_write - start).total_seconds(),
                rto_basis=f"{'failure_at' if ctx.failure_at else 'declared_at'} -> first "
                f"application write ({self.opts.app_heartbeat_writer}) on the new primary "
                f"{node.name}",
            )
        elif self.milestones.get("first_probe_write") is not None and ctx.failure_at is not None:
            probe_write = self.milestones["first_probe_write"]
            ctx.measure(
                rto_seconds=(probe_write - ctx.failure_at).total_seconds(),  # type: ignore[operator]
                rto_basis=f"failure_at -> first heartbeat-probe write on the new primary {node.name}"
                " (no application writer configured)",
            )
        rpo = ctx.measure_heartbeat_rpo()
        if rpo is not None:
            self.details["rpo"] = rpo._asdict()
            if self.pgc.synchronous:
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
        elif self.choice is not None and self.choice.lag_seconds is not None:
            ctx.measure(
                rpo_seconds=self.choice.lag_seconds,
                rpo_basis=f"estimated: {self.choice.chosen}'s data lag at promotion "
                f"({self.choice.lag_basis})",
            )
        self.details["rto_breakdown"] = rto_breakdown(
            ctx.failure_at or ctx.declared_at, self.milestones
        )
        self.details["milestones"] = {
            k: v.isoformat() if v else None for k, v in self.milestones.items()
        }

    # ------------------------------------------------------------------ failback

    def failback(self) -> None:
        """Stop the probe (a writer), then rejoin the old primary and switch back."""
        ctx = self.ctx
        probe = ctx.heartbeat
        if probe is not None:
            probe.stop()  # the probe is a writer too: none may write during a switch-back
        opts = fb.FailbackOptions(
            switch_back=self.opts.switch_back,
            rejoin_method=self.opts.rejoin_method,
            app_heartbeat_writer=self.opts.app_heartbeat_writer,
        )
        report = fb.run_failback(
            ctx, ctx.config, ctx.target_name, opts, systems=self.systems, password=self.password
        )
        if report.switched_back:
            for change in self.scaled:
                with contextlib.suppress(DRError):
                    ctx.record_change(kubernetes.restore_scale(self.systems.k8s, change))
        self.failed_back = report.switched_back
        ctx.details["failback"] = report.model_dump(mode="json", exclude={"changes"})

    # ------------------------------------------------------------------ the runbook

    def run(self) -> None:
        """The runbook, phase by phase."""
        ctx = self.ctx
        if ctx.is_drill:
            with ctx.phase("preflight", detail="a healthy replica exists before anything breaks"):
                self.preflight()
            with ctx.phase("inject failure", detail=f"{self.opts.inject} the primary"):
                self.inject()
        with ctx.phase("assess", detail="nodes, replicas, application and DR region, in parallel"):
            a = self.assess()
            self.assessment = a
            self.record_assessment(a)
            self.mark("assessed")
            ctx.severity = self.opts.severity or a.severity
            ctx.note(f"severity {ctx.severity}: {a.severity_reason}")
        self.old = self.node(a.old_primary)
        with ctx.phase("choose replica", detail="least data loss, then region"):
            choice = self.choose(a)
            self.details["choice"] = choice.model_dump(mode="json")
            if choice.chosen is None:
                raise PreconditionError(f"nothing changed: {choice.reason}")
            self.choice = choice
            ctx.record_check("replica chosen", True, detail=choice.reason, value=choice.chosen)
            self.lag_gate(choice)
        with ctx.phase("fence old primary", detail=f"{self.old.name} must take no writes"):
            self.fence(self.old)
            self.mark("fenced")
            if a.nodes[a.old_primary].state == "primary" and not ctx.dry_run:
                # It was alive: replicas may have received more until it stopped. Choose again.
                self.assessment = self.assess(a.old_primary)
                choice = self.choose(self.assessment)
                if choice.chosen is None:
                    raise PreconditionError(f"after fencing: {choice.reason}")
                self.choice = choice
                self.details["choice"] = choice.model_dump(mode="json")
        self.new = self.node(self.choice.chosen)  # type: ignore[arg-type]
        with ctx.phase("promote", detail=f"{self.new.name} becomes the primary"):
            self.promote(self.new)
        with ctx.phase("repoint", detail="application, DNS and DR-region services, in parallel"):
            self.repoint(self.new)
        with ctx.phase("verify", detail=f"the application writes to {self.new.name}"):
            self.verify(self.new)
        with ctx.phase("measure", detail="RTO, RPO and their breakdown"):
            self.measure(self.new)
        self.details["old_primary"] = self.old.name
        self.details["new_primary"] = self.new.name


def _make_body(opts: FailoverOptions) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        run = Failover(ctx, opts)
        try:
            try:
                run.run()
            except Exception:
                if ctx.is_drill and run.promoted and run.wants_failback:
                    # Leave the lab usable even after a failed drill: rejoin and switch back.
                    ctx.note("the drill failed after promotion: failing back anyway")
                    with (
                        contextlib.suppress(Exception),
                        ctx.phase("failback", detail="after a failure"),
                    ):
                        run.failback()
                raise
            if run.wants_failback and not ctx.dry_run:
                with ctx.phase("failback", detail="rejoin the old primary, switch roles back"):
                    run.failback()
            elif ctx.dry_run and run.wants_failback:
                ctx.plan("fail back", "rejoin the old primary as a standby and switch back")
        finally:
            run.systems.close()

    return body


@flow(name="region-failover")
def region_failover_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: FailoverOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV1",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Fail a target over to its best replica, verify the application, measure RTO and RPO.

    Args:
        target: a target of the config.
        mode: ``drill`` (inject the failure, recover, fail back), ``incident`` (recover from a
            real failure; approval gates apply) or ``dry-run`` (assess and print the plan).
        options: see :class:`FailoverOptions`.
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: the initial severity (the flow declares its own after assessing, unless
            ``options.severity`` is given).
        fail_flow: end the flow run Failed when the outcome is not ``passed``.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details.failover`` holds the
        assessment, the choice, the fence proofs, ``rto_breakdown`` and ``rpo``;
        ``details.failback`` the failback report.
    """
    opts = options or FailoverOptions()
    result = run_scenario(
        Scenario.region_failover,
        target,
        mode,
        _make_body(opts),
        config_path=config_path,
        severity=opts.severity or severity,
        options=opts.model_dump(mode="json"),
        fail_flow=fail_flow,
    )
    return result.model_dump(mode="json")
