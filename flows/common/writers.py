"""The application's writers: stop, start, repoint (every system in parallel), first write.

Shared by the scenarios that stop the application (failback's switch-back, data corruption)
or move it to another primary (region failover, failback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from dr.changes import Change
from dr.config import DockerService, KubernetesService, PostgresNode, Target
from dr.errors import DRError, PostgresError
from dr.tasking import dr_task
from flows.common.recorder import Recorder
from flows.common.systems import Systems
from tasks.aws import route53
from tasks.containers import lifecycle as containers_lifecycle
from tasks.containers import recreate
from tasks.health.service import wait_service_healthy_task
from tasks.kubernetes import deployments as kubernetes_deployments
from tasks.kubernetes import secrets as kubernetes_secrets
from tasks.postgres import checks as postgres_checks

__all__ = [
    "DB_HOST_ENV",
    "DB_PORT_ENV",
    "HEARTBEAT_TABLE",
    "Writer",
    "repoint_application",
    "repoint_kubernetes_writer",
    "repoint_kubernetes_writer_task",
    "restart_undo",
    "restore_writer",
    "split_writers",
    "start_writer",
    "stop_writer",
    "wait_for_app_write",
    "wait_healthy",
    "writer_services",
]

#: The environment variables a Docker writer reads its database from (twelve-factor style).
DB_HOST_ENV = "DB_HOST"
DB_PORT_ENV = "DB_PORT"
POLL_SECONDS = 0.05
HEARTBEAT_TABLE = "public.dr_heartbeat"

Writer = DockerService | KubernetesService


def writer_services(target: Target) -> list[Writer]:
    """The target's writer services in start order (``start_order``, then config order)."""
    return sorted((s for s in target.services if s.role == "writer"), key=lambda s: s.start_order)


def split_writers(target: Target) -> tuple[list[DockerService], list[KubernetesService]]:
    """The target's writers in start order: Docker containers, then Kubernetes deployments."""
    writers = writer_services(target)
    docker = [s for s in writers if isinstance(s, DockerService)]
    k8s = [s for s in writers if isinstance(s, KubernetesService)]
    return docker, k8s


def wait_healthy(svc: Writer) -> float | None:
    """After a start: wait for the service's ``health_url`` (None when it declares none)."""
    if svc.health_url is None:
        return None
    return wait_service_healthy_task(svc.name, svc.health_url, svc.health_timeout_seconds)


def stop_writer(systems: Systems, svc: Writer) -> Change:
    """Stop one writer: its container stopped, or its deployment scaled to 0."""
    if isinstance(svc, DockerService):
        return containers_lifecycle.ensure_stopped_task(systems.docker, svc.name)
    return kubernetes_deployments.scale_deployment_task(
        systems.k8s, svc.namespace, svc.deployment, 0
    )


def restart_undo(systems: Systems, svc: Writer, change: Change) -> Callable[[], Change]:
    """The undo of :func:`stop_writer`: the container or the scale as it was."""
    if isinstance(svc, DockerService):
        return lambda: containers_lifecycle.restore_state(systems.docker, change)
    return lambda: kubernetes_deployments.restore_scale(systems.k8s, change)


def start_writer(systems: Systems, svc: Writer, change: Change) -> Change:
    """Start a writer :func:`stop_writer` stopped (container started, scale restored)."""
    if isinstance(svc, DockerService):
        return containers_lifecycle.ensure_started_task(systems.docker, svc.name)
    return kubernetes_deployments.restore_scale_task(systems.k8s, change)


def restore_writer(systems: Systems, svc: Writer, change: Change) -> Change:
    """Put a writer back as it was before :func:`stop_writer` (its recorded state)."""
    if isinstance(svc, DockerService):
        return containers_lifecycle.restore_state_task(systems.docker, change)
    return kubernetes_deployments.restore_scale_task(systems.k8s, change)


def repoint_kubernetes_writer(
    k8s: Any, namespace: str, secret: str, key: str, deployment: str, host: str
) -> list[Change]:
    """Put the new host in the deployment's secret, then roll its pods."""
    changed = kubernetes_secrets.replace_secret_key(k8s, namespace, secret, key, host)
    changes = [changed]
    if changed.changed:
        changes.append(kubernetes_deployments.rollout_restart(k8s, namespace, deployment))
    return changes


def repoint_application(
    rec: Recorder,
    systems: Systems,
    target: Target,
    node: PostgresNode,
    *,
    extra: Sequence[tuple[str, Callable[[], Any]]] = (),
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
        extra: more ``(name, submit)`` pairs for the same parallel batch (scale-ups); each
            ``submit`` submits a task and returns its future.

    Returns:
        The changes made.
    """
    steps = [
        *_docker_steps(rec, systems, target, node),
        *_kubernetes_steps(rec, systems, target, node),
        *_dns_steps(rec, systems, target, node),
        *extra,
    ]
    return _run_parallel(rec, steps)


def _docker_steps(
    rec: Recorder, systems: Systems, target: Target, node: PostgresNode
) -> list[tuple[str, Callable[[], Any]]]:
    steps: list[tuple[str, Callable[[], Any]]] = []
    for svc in split_writers(target)[0]:
        obj = f"container {svc.name} to {node.host}:{node.port}"
        if rec.plan("repoint", obj):
            steps.append(
                (
                    f"repoint {obj}",
                    lambda svc=svc: recreate.recreate_with_env_task.submit(
                        systems.docker,
                        svc.name,
                        {DB_HOST_ENV: node.host, DB_PORT_ENV: str(node.port)},
                    ),
                )
            )
    return steps


def _kubernetes_steps(
    rec: Recorder, systems: Systems, target: Target, node: PostgresNode
) -> list[tuple[str, Callable[[], Any]]]:
    steps: list[tuple[str, Callable[[], Any]]] = []
    for svc in split_writers(target)[1]:
        if svc.db_host_secret is None:
            continue
        obj = (
            f"deployment {svc.name} (secret {svc.db_host_secret}.{svc.db_host_key}) to {node.host}"
        )
        if rec.plan("repoint", obj):
            steps.append(
                (
                    f"repoint {obj}",
                    lambda svc=svc: repoint_kubernetes_writer_task.submit(
                        systems.k8s,
                        svc.namespace,
                        svc.db_host_secret,
                        svc.db_host_key,
                        svc.deployment,
                        node.host,
                    ),
                )
            )
    return steps


def _dns_steps(
    rec: Recorder, systems: Systems, target: Target, node: PostgresNode
) -> list[tuple[str, Callable[[], Any]]]:
    if target.dns is None:
        return []
    dns = target.dns
    obj = f"DNS {dns.name} {dns.type} to {node.host}"
    if not rec.plan("UPSERT", obj):
        return []
    return [
        (
            f"repoint {obj}",
            lambda: route53.ensure_record_task.submit(
                systems.route53,
                dns.zone_id,
                dns.name,
                dns.type,
                node.host,
                dns.ttl_seconds,
                poll_seconds=1.0,
            ),
        )
    ]


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
            result = postgres_checks.run_sql_check(
                conninfo_primary, query, [writer, after], name="app write"
            )
        except PostgresError as exc:
            if not exc.transient:
                raise
            result = None
        if result is not None and result.value is not None:
            return datetime.fromtimestamp(float(result.value), UTC)
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_SECONDS)


repoint_kubernetes_writer_task = dr_task(
    repoint_kubernetes_writer, name="repoint-kubernetes-writer"
)
