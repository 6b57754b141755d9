"""Failback: make the old primary a standby again, then switch back with no data loss.

After a failover the old primary is down (fenced) and holds WAL the new primary never saw.
This flow is the runbook's "return to normal" (seed 002: "update applications to use ...
resources" in reverse; seed 003's quarterly drill: "procedures followed, recovery verified"):

1. **rejoin** every configured node that is not a streaming standby of the current primary:
   stop it if it runs, ``CHECKPOINT`` on the primary, ``pg_rewind --restore-target-wal`` (exit
   code checked), falling back to a fresh base backup when the rewind fails or the rewound
   node does not stream; its own configuration kept; ``standby.signal`` and
   ``primary_conninfo`` (with the node's name as ``application_name``, so
   ``synchronous_standby_names`` still matches) written; started; streaming confirmed on the
   primary's ``pg_stat_replication``;
2. **switch back** (optional; what drills do so the next drill starts from the configured
   roles): stop the application's writers, wait until the configured primary has replayed
   everything, stop the current primary cleanly (its shutdown checkpoint is then the last
   record it wrote), *prove* the configured primary replayed past that checkpoint (so not
   one acknowledged write is lost), promote it, rejoin the other node as its standby,
   repoint the application (container environment, Kubernetes secret, DNS) and start it;
3. **verify**: the application's writes land on the configured primary, and every replica
   streams from it.

Every change is recorded with its undo (through the incident lifecycle when run inside a
drill, or in this flow's own report when run alone). Run alone, the flow takes the target's
lock like every DR run, so it never races a failover.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from prefect import flow
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.config import (
    DockerService,
    DRConfig,
    KubernetesService,
    PostgresConfig,
    PostgresNode,
    Target,
    load_config,
)
from dr.errors import (
    DRError,
    PostgresError,
    PreconditionError,
    VerificationError,
    redact,
)
from dr.tasking import dr_task
from flows.registry import find_config_path
from tasks import cloud, containers, kubernetes, standby
from tasks import postgres as pg

__all__ = [
    "DB_HOST_ENV",
    "DB_PORT_ENV",
    "FailbackOptions",
    "FailbackReport",
    "FailbackRun",
    "NodeRejoin",
    "Recorder",
    "Systems",
    "failback_flow",
    "find_primary",
    "node_conninfo",
    "rejoin_as_standby",
    "repoint_application",
    "run_failback",
    "wait_for_app_write",
]

log = logging.getLogger(__name__)

#: The environment variables a Docker writer reads its database from (twelve-factor style).
DB_HOST_ENV = "DB_HOST"
DB_PORT_ENV = "DB_PORT"
POLL_SECONDS = 0.05
#: How long a rejoined node may take to report streaming before the base-backup fallback.
STREAMING_TIMEOUT_SECONDS = 60.0
HEARTBEAT_TABLE = "public.dr_heartbeat"


# --------------------------------------------------------------------------- recording


class Recorder(Protocol):
    """What failback needs from a run: the lifecycle's RunContext, or :class:`FailbackRun`."""

    @property
    def dry_run(self) -> bool: ...

    def phase(self, name: str, *, detail: str = "") -> contextlib.AbstractContextManager[Any]: ...

    def plan(self, action: str, obj: str) -> bool: ...

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None: ...

    def record_check(
        self,
        name: str,
        ok: bool,
        *,
        critical: bool = True,
        detail: str = "",
        value: Any = None,
    ) -> Any: ...

    def note(self, text: str) -> None: ...


class PhaseLog(BaseModel):
    """One phase of a standalone failback (UTC)."""

    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: Literal["ok", "failed", "planned"] = "ok"
    detail: str = ""


class CheckLog(BaseModel):
    name: str
    ok: bool
    critical: bool = True
    detail: str = ""


class FailbackRun:
    """The recorder of a standalone failback: phases, changes, checks, notes, dry-run plan.

    Args:
        dry_run: record "would ..." steps instead of acting.
    """

    def __init__(self, *, dry_run: bool = False) -> None:
        self._dry_run = dry_run
        self.phases: list[PhaseLog] = []
        self.changes: list[Change] = []
        self.checks: list[CheckLog] = []
        self.notes: list[str] = []
        self.plan_steps: list[str] = []
        self._undo: list[tuple[Change, Callable[[], Any]]] = []
        self.undone: list[str] = []
        self.not_undone: list[str] = []

    @property
    def dry_run(self) -> bool:
        """True when nothing may change."""
        return self._dry_run

    @contextlib.contextmanager
    def phase(self, name: str, *, detail: str = "") -> Iterator[PhaseLog]:
        """Record a phase; an exception inside marks it failed and is re-raised."""
        record = PhaseLog(name=name, started_at=datetime.now(UTC), detail=detail)
        self.phases.append(record)
        log.info("failback phase %s: started", name)
        try:
            yield record
        except BaseException as exc:
            record.outcome = "failed"
            record.detail = redact("; ".join(p for p in (record.detail, str(exc)) if p))
            raise
        else:
            if self._dry_run:
                record.outcome = "planned"
        finally:
            record.ended_at = datetime.now(UTC)
            log.info("failback phase %s: %s", name, record.outcome)

    def plan(self, action: str, obj: str) -> bool:
        """In a dry run record "would <action> <obj>" and say no; else say yes."""
        if not self._dry_run:
            return True
        self.plan_steps.append(redact(f"would {action} {obj}"))
        return False

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None:
        """Keep a change; push its undo when it is compensable."""
        self.changes.append(change)
        if change.changed and change.compensable and undo is not None:
            self._undo.append((change, undo))
        log.info("failback change: %s", redact(change.summary()))

    def record_check(
        self, name: str, ok: bool, *, critical: bool = True, detail: str = "", value: Any = None
    ) -> CheckLog:
        """Keep a check's answer."""
        record = CheckLog(name=name, ok=ok, critical=critical, detail=redact(detail))
        self.checks.append(record)
        log.log(logging.INFO if ok else logging.WARNING, "failback check %s: %s", name, ok)
        return record

    def note(self, text: str) -> None:
        """Keep a remark for the report."""
        self.notes.append(redact(text))
        log.info("failback note: %s", redact(text))

    def compensate(self) -> None:
        """Undo compensable changes in reverse order (after a failure)."""
        for change, undo in reversed(self._undo):
            what = f"{change.system} {change.action} {change.object}"
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - every undo gets its chance
                self.not_undone.append(redact(f"{what}: {exc}; by hand: {change.undo}"))
            else:
                self.undone.append(redact(what))
        self._undo.clear()


# --------------------------------------------------------------------------- options & results


class FailbackOptions(BaseModel):
    """Options of a failback (``--option k=v`` or the flow's ``options`` parameter)."""

    model_config = ConfigDict(extra="forbid")

    switch_back: bool = Field(
        True, description="After rejoining, make the configured primary the primary again."
    )
    rejoin_method: Literal["rewind", "base_backup"] = Field(
        "rewind", description="rewind (falls back to a base backup) or base_backup directly."
    )
    catch_up_timeout_seconds: float = Field(60, gt=0)
    streaming_timeout_seconds: float = Field(STREAMING_TIMEOUT_SECONDS, gt=0)
    start_timeout_seconds: float = Field(60, gt=0)
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer name in dr_heartbeat; None: not checked."
    )
    verify_timeout_seconds: float = Field(60, gt=0)


class NodeRejoin(BaseModel):
    """How one node became a standby again."""

    node: str
    primary: str
    method: Literal["rewind", "base_backup", "already_streaming", "planned"]
    rewind_required: bool | None = None
    fallback_reason: str = ""
    seconds: float = 0.0


class FailbackReport(BaseModel):
    """What a failback did (also ``details["failback"]`` of a drill)."""

    target: str
    primary_before: str | None = None
    primary_after: str | None = None
    rejoined: list[NodeRejoin] = Field(default_factory=list)
    switched_back: bool = False
    switch_back_seconds: float | None = None
    switch_back_lost_nothing: bool | None = None
    app_write_on_primary_at: datetime | None = None
    roles_as_configured: bool | None = None
    ok: bool = False
    reason: str = ""
    dry_run: bool = False
    phases: list[dict[str, Any]] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    not_undone: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- systems


class Systems:
    """The external systems' clients, built on first use from the config (one per system)."""

    def __init__(self, config: DRConfig) -> None:
        self.config = config
        self._docker: Any = None
        self._k8s: Any = None
        self._route53: Any = None

    @property
    def docker(self) -> Any:
        """The Docker (or Podman) API client."""
        if self._docker is None:
            self._docker = containers.make_client(self.config.docker.base_url)
        return self._docker

    @property
    def k8s(self) -> Any:
        """The Kubernetes API client."""
        if self._k8s is None:
            self._k8s = kubernetes.make_client(
                self.config.kubernetes.kubeconfig, self.config.kubernetes.context
            )
        return self._k8s

    @property
    def route53(self) -> Any:
        """The Route 53 client."""
        if self._route53 is None:
            self._route53 = cloud.make_client(self.config.aws, "route53")
        return self._route53

    def close(self) -> None:
        """Close what was opened."""
        for client in (self._docker, self._k8s):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._docker = self._k8s = self._route53 = None


# --------------------------------------------------------------------------- helpers


def node_conninfo(
    pgc: PostgresConfig, node: PostgresNode, password: str | None, dbname: str | None = None
) -> str:
    """A conninfo for one node of the target (the maintenance database by default).

    Args:
        pgc: the target's PostgreSQL section.
        node: the node.
        password: the resolved password, if any.
        dbname: the database; default ``maintenance_db``.

    Returns:
        A libpq conninfo (with the password: never log it).
    """
    return pg.conninfo(
        node,
        user=pgc.user,
        dbname=dbname or pgc.maintenance_db,
        password=password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name="dr-pipelines-failover",
    )


def _local(node: PostgresNode) -> bool:
    return node.data_directory is not None and node.bin_dir is not None


def find_primary(
    pgc: PostgresConfig, password: str | None
) -> tuple[PostgresNode | None, dict[str, pg.NodeHealth]]:
    """Find the one node that takes writes now.

    Args:
        pgc: the target's PostgreSQL section.
        password: the resolved password, if any.

    Returns:
        ``(primary or None, {node name: health})``.

    Raises:
        PreconditionError: more than one node takes writes (split brain: a person decides).
    """
    healths = {n.name: pg.health(node_conninfo(pgc, n, password)) for n in pgc.nodes}
    writable = [n for n in pgc.nodes if healths[n.name].is_accepting_writes]
    if len(writable) > 1:
        names = ", ".join(n.name for n in writable)
        raise PreconditionError(
            f"more than one node takes writes ({names}): fence all but one before failing back"
        )
    return (writable[0] if writable else None), healths


def _streaming_names(pgc: PostgresConfig, primary: PostgresNode, password: str | None) -> set[str]:
    rows = pg.replication_status(node_conninfo(pgc, primary, password))
    return {r.application_name for r in rows if r.state == "streaming" and r.replay_lsn}


def _wait(
    what: str, check: Callable[[], bool], timeout_seconds: float, poll: float = POLL_SECONDS
) -> float:
    """Poll ``check`` until it is true; returns the seconds waited; raises on timeout."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except PostgresError as exc:
            if not exc.transient:
                raise
        if time.monotonic() - started > timeout_seconds:
            raise VerificationError(f"{what}: not reached within {timeout_seconds:g} s")
        time.sleep(poll)


def wait_for_app_write(
    conninfo_primary: str, writer: str, after: datetime, timeout_seconds: float
) -> datetime | None:
    """Wait for the application's first heartbeat row written on a server after ``after``.

    Args:
        conninfo_primary: the server (its heartbeat database).
        writer: the application's ``writer`` in ``dr_heartbeat``.
        after: only rows with a later ``ts`` count.
        timeout_seconds: give up after this long.

    Returns:
        The row's ``ts`` (the server's clock at the insert), or None at the timeout.
    """
    query = (
        f"SELECT extract(epoch FROM pg_catalog.min(ts))::float8 FROM {HEARTBEAT_TABLE} "
        "WHERE writer = %s AND ts > %s"
    )
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            result = pg.run_sql_check(conninfo_primary, query, [writer, after], name="app write")
        except PostgresError as exc:
            if not exc.transient:
                raise
            result = None
        if result is not None and result.value is not None:
            return datetime.fromtimestamp(float(result.value), UTC)
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_SECONDS)


def _task(fn: Any) -> Any:
    """A Prefect task from another module, never cached (each call acts on the world now)."""
    return fn.with_options(cache_policy=NO_CACHE)


# --------------------------------------------------------------------------- rejoin


def _start(rec: Recorder, node: PostgresNode, opts: FailbackOptions) -> None:
    change = _task(pg.start_local_server_task)(
        str(node.data_directory),
        str(node.bin_dir),
        node.os_user,
        timeout_seconds=opts.start_timeout_seconds,
    )
    rec.record_change(change)


def _stop(rec: Recorder, node: PostgresNode, mode: Literal["fast", "immediate"]) -> Change:
    change = _task(pg.stop_local_server_task)(
        str(node.data_directory), str(node.bin_dir), node.os_user, mode
    )
    rec.record_change(change)
    return change


def rejoin_as_standby(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
) -> NodeRejoin:
    """Make ``node`` a streaming standby of ``primary`` (rewind, else a fresh base backup).

    Args:
        rec: where changes, checks and notes go.
        pgc: the target's PostgreSQL section.
        node: the node to rejoin; needs ``data_directory`` and ``bin_dir`` (local).
        primary: the current primary.
        password: the resolved password, if any.
        opts: timeouts and the method.

    Returns:
        A :class:`NodeRejoin`.

    Raises:
        PreconditionError: the node is not local (it must be rebuilt by hand).
        PostgresError, VerificationError: both methods failed.
    """
    if not _local(node):
        raise PreconditionError(
            f"{node.name} has no data_directory/bin_dir in the config: rebuild it as a standby"
            f" of {primary.name} by hand"
        )
    started = time.monotonic()
    obj = f"{node.name} ({node.host}:{node.port}) as a standby of {primary.name}"
    if not rec.plan("rejoin", f"{obj} (pg_rewind, else a fresh base backup)"):
        return NodeRejoin(node=node.name, primary=primary.name, method="planned")
    primary_ci = node_conninfo(pgc, primary, password)
    slot = standby.slot_name_for(node.name)
    # A node running now is either the diverged old primary (it must not take writes) or a
    # standby of something else: either way it is stopped before its data is touched.
    _stop(rec, node, "fast")
    _task(standby.checkpoint_task)(primary_ci)
    rec.record_change(_task(standby.ensure_physical_slot_task)(primary_ci, slot))
    method: Literal["rewind", "base_backup"] = opts.rejoin_method
    fallback_reason = ""
    rewind_required: bool | None = None
    if method == "rewind":
        try:
            change = _task(standby.rewind_task)(
                str(node.data_directory),
                str(node.bin_dir),
                node.os_user,
                source_conninfo=primary_ci,
            )
        except (PostgresError, PreconditionError) as exc:
            fallback_reason = f"pg_rewind failed: {exc}"
            rec.note(f"{node.name}: {fallback_reason}; falling back to a fresh base backup")
            method = "base_backup"
        else:
            rec.record_change(change)
            rewind_required = change.changed
            try:
                _configure_start_and_wait(rec, pgc, node, primary, password, slot, opts)
            except (PostgresError, VerificationError) as exc:
                fallback_reason = f"the rewound node did not stream: {exc}"
                rec.note(f"{node.name}: {fallback_reason}; falling back to a fresh base backup")
                _stop(rec, node, "immediate")
                method = "base_backup"
    if method == "base_backup":
        change = _task(standby.rebuild_from_base_backup_task)(
            str(node.data_directory),
            str(node.bin_dir),
            node.os_user,
            source_conninfo=primary_ci,
        )
        rec.record_change(change)
        _configure_start_and_wait(rec, pgc, node, primary, password, slot, opts)
    # The slot this node's standby used while it was primary is a leftover now.
    with contextlib.suppress(PostgresError):
        leftover = _task(standby.drop_inactive_slot_task)(
            node_conninfo(pgc, node, password), standby.slot_name_for(primary.name)
        )
        if leftover.changed:
            rec.record_change(leftover)
    result = NodeRejoin(
        node=node.name,
        primary=primary.name,
        method=method,
        rewind_required=rewind_required,
        fallback_reason=redact(fallback_reason),
        seconds=round(time.monotonic() - started, 3),
    )
    rec.record_check(
        f"{node.name} streams from {primary.name}",
        True,
        detail=f"rejoined by {method} in {result.seconds:.2f} s",
    )
    return result


def _configure_start_and_wait(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
    slot: str,
    opts: FailbackOptions,
) -> None:
    change = _task(standby.configure_standby_task)(
        str(node.data_directory),
        primary_host=primary.host,
        primary_port=primary.port,
        user=pgc.user,
        application_name=node.name,
        slot_name=slot,
        password=password,
    )
    rec.record_change(change)
    _start(rec, node, opts)
    _wait(
        f"{node.name} streaming from {primary.name}",
        lambda: node.name in _streaming_names(pgc, primary, password),
        opts.streaming_timeout_seconds,
    )


# --------------------------------------------------------------------------- application


def _writers(target: Target) -> tuple[list[DockerService], list[KubernetesService]]:
    docker = [s for s in target.services if isinstance(s, DockerService) and s.role == "writer"]
    k8s = [s for s in target.services if isinstance(s, KubernetesService) and s.role == "writer"]
    return docker, k8s


def repoint_application(
    rec: Recorder,
    systems: Systems,
    target: Target,
    node: PostgresNode,
    *,
    extra: Sequence[tuple[str, Callable[[], Change]]] = (),
) -> list[Change]:
    """Point the application at ``node``, every system in parallel.

    Docker writers are recreated with ``DB_HOST``/``DB_PORT`` (a stopped one stays stopped);
    Kubernetes writers with ``db_host_secret`` get the host in that secret and a rollout
    restart; the target's DNS record is UPSERTed to the node's host. Each failure becomes a
    failed critical check naming the system; the others go on.

    Args:
        rec: where changes and checks go.
        systems: the clients.
        target: the target (services, DNS).
        node: the new primary.
        extra: more ``(name, step)`` pairs to run in the same parallel batch (scale-ups).

    Returns:
        The changes made.
    """
    docker, k8s = _writers(target)
    steps: list[tuple[str, Callable[[], Any]]] = []
    for svc in docker:
        obj = f"container {svc.name} to {node.host}:{node.port}"
        if rec.plan("repoint", obj):
            steps.append(
                (
                    f"repoint {obj}",
                    lambda svc=svc: _task(containers.recreate_with_env_task).submit(
                        systems.docker,
                        svc.name,
                        {DB_HOST_ENV: node.host, DB_PORT_ENV: str(node.port)},
                    ),
                )
            )
    for svc in k8s:
        if svc.db_host_secret is None:
            continue
        obj = (
            f"deployment {svc.name} (secret {svc.db_host_secret}.{svc.db_host_key}) to {node.host}"
        )
        if rec.plan("repoint", obj):
            steps.append(
                (f"repoint {obj}", lambda svc=svc: k8s_repoint_task.submit(systems, svc, node))
            )
    if target.dns is not None:
        dns = target.dns
        obj = f"DNS {dns.name} {dns.type} to {node.host}"
        if rec.plan("UPSERT", obj):
            steps.append(
                (
                    f"repoint {obj}",
                    lambda: _task(cloud.ensure_record_task).submit(
                        systems.route53,
                        dns.zone_id,
                        dns.name,
                        dns.type,
                        node.host,
                        dns.ttl_seconds,
                        poll_seconds=1.0,
                    ),
                )
            )
    steps.extend((name, lambda step=step: direct_step_task.submit(step)) for name, step in extra)
    return _run_parallel(rec, steps)


def _run_parallel(rec: Recorder, steps: Sequence[tuple[str, Callable[[], Any]]]) -> list[Change]:
    """Submit every step, then collect: each success recorded, each failure a failed check."""
    futures = []
    for name, submit in steps:
        try:
            futures.append((name, submit()))
        except DRError as exc:  # a client that cannot even be built
            rec.record_check(name, False, detail=str(exc))
    changes: list[Change] = []
    for name, future in futures:
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - each system's failure is reported, not fatal
            rec.record_check(name, False, detail=f"{type(exc).__name__}: {exc}")
            continue
        for change in result if isinstance(result, list) else [result]:
            rec.record_change(change)
            changes.append(change)
        rec.record_check(name, True, detail="; ".join(c.summary() for c in changes[-1:]))
    return changes


def _k8s_repoint(systems: Systems, svc: KubernetesService, node: PostgresNode) -> list[Change]:
    """Put the new host in the deployment's secret, then roll its pods."""
    assert svc.db_host_secret is not None
    secret = kubernetes.replace_secret_key(
        systems.k8s, svc.namespace, svc.db_host_secret, svc.db_host_key, node.host
    )
    changes = [secret]
    if secret.changed:
        changes.append(kubernetes.rollout_restart(systems.k8s, svc.namespace, svc.deployment))
    return changes


def _direct(step: Callable[[], Any]) -> Any:
    """Run a prepared step inside a task (so it runs in parallel with the others)."""
    return step()


def stop_writers(rec: Recorder, systems: Systems, target: Target) -> list[tuple[Any, Change]]:
    """Stop every writer of the application (containers stopped, deployments scaled to 0).

    Args:
        rec: where changes go (each with its undo: start again).
        systems: the clients.
        target: the target's services.

    Returns:
        ``(service, change)`` pairs, for :func:`start_writers`.
    """
    docker, k8s = _writers(target)
    stopped: list[tuple[Any, Change]] = []
    for svc in docker:
        if rec.plan("stop", f"container {svc.name} (no writes during the switch-back)"):
            change = _task(containers.ensure_stopped_task)(systems.docker, svc.name)
            rec.record_change(
                change, undo=lambda c=change: containers.restore_state(systems.docker, c)
            )
            stopped.append((svc, change))
    for svc in k8s:
        if rec.plan("scale to 0", f"deployment {svc.name} (no writes during the switch-back)"):
            change = _task(kubernetes.scale_deployment_task)(
                systems.k8s, svc.namespace, svc.deployment, 0
            )
            rec.record_change(
                change, undo=lambda c=change: kubernetes.restore_scale(systems.k8s, c)
            )
            stopped.append((svc, change))
    return stopped


def start_writers(rec: Recorder, systems: Systems, stopped: Sequence[tuple[Any, Change]]) -> None:
    """Start again what :func:`stop_writers` stopped (containers started, scale restored).

    Args:
        rec: where changes go.
        systems: the clients.
        stopped: from :func:`stop_writers`.
    """
    for svc, change in stopped:
        if not change.changed:
            continue
        if isinstance(svc, DockerService):
            rec.record_change(_task(containers.ensure_started_task)(systems.docker, svc.name))
        else:
            rec.record_change(kubernetes.restore_scale(systems.k8s, change))


# --------------------------------------------------------------------------- switch back


def switch_over(
    rec: Recorder,
    systems: Systems,
    target: Target,
    to_node: PostgresNode,
    from_node: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    report: FailbackReport,
) -> None:
    """Planned switchover from ``from_node`` (primary) to ``to_node`` (its standby), losing nothing.

    Why the proof after the stop: a clean shutdown writes a shutdown checkpoint and sends it
    to the standbys; a standby that replayed past it holds everything the old primary ever
    acknowledged, so promoting it loses nothing even if a writer was missed.

    Args:
        rec: where phases, changes and checks go.
        systems: the clients.
        target: the target.
        to_node: the standby to promote (the configured primary).
        from_node: the current primary (stopped cleanly; needs data_directory/bin_dir).
        password: the resolved password, if any.
        opts: timeouts.
        report: filled in (``switched_back``, ``switch_back_seconds``...).

    Raises:
        VerificationError: the standby did not catch up; the old primary is started again.
    """
    pgc = target.postgres
    if not _local(from_node):
        raise PreconditionError(f"{from_node.name} is not local: it cannot be stopped cleanly")
    started = time.monotonic()
    to_ci = node_conninfo(pgc, to_node, password)
    from_ci = node_conninfo(pgc, from_node, password)
    with rec.phase("stop writes", detail="the application stops writing during the switch-back"):
        stopped = stop_writers(rec, systems, target)
    promoted = False
    try:
        with rec.phase(
            "catch up", detail=f"{to_node.name} replays everything {from_node.name} has"
        ):
            if not rec.dry_run:
                lsn = pg.current_wal_lsn(from_ci)
                waited = _wait(
                    f"{to_node.name} replaying up to {lsn}",
                    lambda: _replayed_at_least(to_ci, lsn),
                    opts.catch_up_timeout_seconds,
                )
                rec.record_check(
                    f"{to_node.name} caught up", True, detail=f"replayed {lsn} in {waited:.2f} s"
                )
        with rec.phase("stop current primary", detail=f"{from_node.name}: clean shutdown"):
            if rec.plan("stop (fast, clean)", f"{from_node.name} ({from_node.data_directory})"):
                _stop(rec, from_node, "fast")
                proof = _task(pg.prove_not_writable_task)(
                    node_conninfo(pgc, from_node, password, pgc.databases[0])
                )
                rec.record_check(
                    f"{from_node.name} takes no writes", proof.proven, detail=proof.reason
                )
                if not proof.proven:
                    raise VerificationError(f"{from_node.name} still takes writes: {proof.reason}")
                control = standby.last_checkpoint(
                    str(from_node.data_directory), str(from_node.bin_dir), from_node.os_user
                )
                checkpoint_lsn = control["checkpoint_lsn"]
                _wait(
                    f"{to_node.name} replaying past the shutdown checkpoint {checkpoint_lsn}",
                    lambda: _replayed_at_least(to_ci, checkpoint_lsn),
                    opts.catch_up_timeout_seconds,
                )
                report.switch_back_lost_nothing = "shut down" in control["state"]
                rec.record_check(
                    "switch-back loses nothing",
                    report.switch_back_lost_nothing,
                    detail=f"{to_node.name} replayed past {from_node.name}'s shutdown checkpoint "
                    f"{checkpoint_lsn} ({control['state']})",
                )
        with rec.phase("promote", detail=f"{to_node.name} becomes the primary again"):
            if rec.plan("promote", f"{to_node.name} ({to_node.host}:{to_node.port})"):
                rec.record_change(_task(pg.ensure_promoted_task)(to_ci))
                promoted = True
    except BaseException:
        if not promoted and not rec.dry_run:
            rec.note(f"switch-back abandoned before promotion: {from_node.name} stays primary")
            with contextlib.suppress(Exception):
                _start(rec, from_node, opts)
            with contextlib.suppress(Exception):
                start_writers(rec, systems, stopped)
        raise
    with rec.phase("rejoin", detail=f"{from_node.name} becomes a standby of {to_node.name}"):
        report.rejoined.append(rejoin_as_standby(rec, pgc, from_node, to_node, password, opts))
    switched_at = datetime.now(UTC)
    with rec.phase("repoint", detail=f"the application writes to {to_node.name} again"):
        repoint_application(rec, systems, target, to_node)
        start_writers(rec, systems, stopped)
    report.switched_back = not rec.dry_run
    report.switch_back_seconds = round(time.monotonic() - started, 3)
    _verify_app(rec, target, to_node, password, opts, switched_at, report)


def _replayed_at_least(conninfo_standby: str, lsn: str) -> bool:
    status = pg.standby_status(conninfo_standby)
    position = status.replayed_lsn
    if not status.in_recovery:
        # Promoted meanwhile: its current position counts.
        position = pg.current_wal_lsn(conninfo_standby)
    return position is not None and pg.wal_lsn_diff(position, lsn) >= 0


def _verify_app(
    rec: Recorder,
    target: Target,
    primary: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    since: datetime,
    report: FailbackReport,
) -> None:
    docker, k8s = _writers(target)
    if rec.dry_run or opts.app_heartbeat_writer is None or not (docker or k8s):
        return
    with rec.phase("verify", detail=f"application writes land on {primary.name}"):
        pgc = target.postgres
        conninfo = node_conninfo(pgc, primary, password, pgc.heartbeat_db)
        ever = wait_for_app_write(
            conninfo, opts.app_heartbeat_writer, datetime.min.replace(tzinfo=UTC), 0
        )
        if ever is None:
            rec.note(
                f"the application never wrote dr_heartbeat rows as "
                f"'{opts.app_heartbeat_writer}': its writes are not checked"
            )
            return
        landed = wait_for_app_write(
            conninfo, opts.app_heartbeat_writer, since, opts.verify_timeout_seconds
        )
        report.app_write_on_primary_at = landed
        rec.record_check(
            f"application writes on {primary.name}",
            landed is not None,
            detail=f"first write at {landed.isoformat()}"
            if landed
            else f"no write by {opts.app_heartbeat_writer} within {opts.verify_timeout_seconds:g} s",
        )


# --------------------------------------------------------------------------- the whole


def run_failback(
    rec: Recorder,
    config: DRConfig,
    target_name: str,
    opts: FailbackOptions,
    *,
    systems: Systems | None = None,
    password: str | None = None,
) -> FailbackReport:
    """Rejoin every node as a standby of the current primary, then optionally switch back.

    Args:
        rec: the run's recorder (the lifecycle's RunContext in a drill).
        config: the config.
        target_name: the target.
        opts: options.
        systems: clients to reuse; built from the config otherwise.
        password: the resolved database password (resolved from the config otherwise).

    Returns:
        A :class:`FailbackReport` (``ok`` when the configured roles hold at the end).

    Raises:
        PreconditionError: no primary, or two; a node that cannot be rejoined.
        PostgresError, VerificationError: a step failed (see the recorder).
    """
    target = config.target(target_name)
    pgc = target.postgres
    if password is None and pgc.password is not None:
        password = pgc.password.resolve()
    own_systems = systems is None
    systems = systems or Systems(config)
    report = FailbackReport(target=target_name, dry_run=rec.dry_run)
    try:
        with rec.phase("find primary", detail="which node takes writes now"):
            primary, healths = find_primary(pgc, password)
            if primary is None:
                raise PreconditionError(
                    "no node takes writes: fail over first (region-failover), then fail back"
                )
            report.primary_before = primary.name
        streaming = _streaming_names(pgc, primary, password)
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
        configured = pgc.primary
        if opts.switch_back and primary.name != configured.name:
            switch_over(rec, systems, target, configured, primary, password, opts, report)
            report.primary_after = configured.name if not rec.dry_run else primary.name
        else:
            report.primary_after = primary.name
        if not rec.dry_run:
            with rec.phase("check roles", detail="the configured primary leads, replicas stream"):
                now_primary, _ = find_primary(pgc, password)
                streaming = _streaming_names(pgc, now_primary, password) if now_primary else set()
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
        report.ok = True
        return report
    except Exception as exc:
        report.reason = redact(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if own_systems:
            systems.close()


@flow(name="failback")
def failback_flow(
    target: str,
    options: FailbackOptions | None = None,
    config_path: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Fail back after a failover: rejoin the old primary as a standby, then switch back.

    Args:
        target: a target of the config.
        options: see :class:`FailbackOptions`.
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        dry_run: list the steps without acting.

    Returns:
        The :class:`FailbackReport` as a JSON-ready dict.
    """
    from flows.lifecycle import target_lock

    opts = options or FailbackOptions()
    cfg = load_config(find_config_path(config_path))
    cfg.target(target)
    rec = FailbackRun(dry_run=dry_run)
    lock = contextlib.nullcontext() if dry_run else target_lock(cfg, target)
    report = FailbackReport(target=target, dry_run=dry_run)
    with lock:
        try:
            report = run_failback(rec, cfg, target, opts)
        except Exception as exc:  # noqa: BLE001 - reported in the result, then compensated
            report.reason = redact(f"{type(exc).__name__}: {exc}")
            rec.compensate()
    report.phases = [p.model_dump(mode="json") for p in rec.phases]
    report.changes = rec.changes
    report.checks = [c.model_dump(mode="json") for c in rec.checks]
    report.notes = rec.notes
    report.plan = rec.plan_steps
    report.not_undone = rec.not_undone
    failed = [c.name for c in rec.checks if c.critical and not c.ok]
    report.ok = not report.reason and not failed
    if failed and not report.reason:
        report.reason = "check(s) failed: " + ", ".join(failed)
    return report.model_dump(mode="json")


# Parallel branches run as tasks (one thread each); never cached: they act on the world now.
k8s_repoint_task = dr_task(_k8s_repoint, name="repoint-kubernetes-writer", cache_policy=NO_CACHE)
direct_step_task = dr_task(_direct, name="dr-parallel-step", retries=0, cache_policy=NO_CACHE)
