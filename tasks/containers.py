"""Containers through the Docker Engine API (Docker, or Podman's Docker-compatible service).

The only module that imports the docker SDK. Functions take an explicit client built by
:func:`make_client`; each mutating step reads the container's state first, acts only when
it differs and returns a :class:`dr.changes.Change` saying how to undo it, so a flow can put
the world back exactly as it found it (:func:`restore_state`).

Environment values may hold secrets (database passwords, tokens): they are never logged
and never put in a ``Change``'s serialized fields; only variable names are.

Errors: a missing container raises :class:`ContainerError` (permanent) naming the
containers that do exist; connection failures, timeouts and 5xx answers raise
:class:`ContainerError` with ``transient=True``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.errors import ContainerError, PreconditionError
from dr.tasking import dr_task

__all__ = [
    "ContainerHealth",
    "ContainerState",
    "container_logs",
    "container_logs_task",
    "ensure_started",
    "ensure_started_task",
    "ensure_stopped",
    "ensure_stopped_task",
    "find_containers",
    "find_containers_task",
    "health",
    "health_task",
    "make_client",
    "recreate_with_env",
    "recreate_with_env_task",
    "restart",
    "restart_task",
    "restore_state",
    "restore_state_task",
]

log = logging.getLogger(__name__)

SYSTEM = "docker"
CLIENT_TIMEOUT_SECONDS = 60
DEFAULT_STOP_TIMEOUT_SECONDS = 10
# Statuses in which a container's processes exist (``docker stop`` has something to stop).
ACTIVE_STATUSES = frozenset({"running", "paused", "restarting"})
# Set by the engine for each container; carrying them over would pin the old container's.
ENGINE_SET_ENV = frozenset({"HOSTNAME"})
# How many names an error message lists before it says "and N more".
MAX_NAMES_IN_ERRORS = 20


class ContainerState(BaseModel):
    """What a container is, as read from the engine.

    ``env`` holds the values (needed to recreate a container) but is excluded from
    ``model_dump()`` and ``repr()``; ``env_names`` is what logs and reports show.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    status: str
    image: str
    labels: dict[str, str] = Field(default_factory=dict)
    restart_policy: str = "no"
    env_names: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    entrypoint: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def running(self) -> bool:
        """True when the container's status is ``running``."""
        return self.status == "running"


class ContainerHealth(BaseModel):
    """A container's liveness, plus its healthcheck verdict when it has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    status: str
    running: bool
    health: str | None = Field(
        None, description="healthy, unhealthy or starting; None without a healthcheck."
    )
    failing_streak: int = 0
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        """Running, and healthy if a healthcheck exists."""
        return self.running and self.health in (None, "healthy")


# --------------------------------------------------------------------------- client


def make_client(
    base_url: str | None, *, timeout_seconds: int = CLIENT_TIMEOUT_SECONDS
) -> docker.DockerClient:
    """Build the docker SDK client; the only place one is created.

    Args:
        base_url: the engine's address (``unix:///run/podman/podman.sock``,
            ``tcp://host:2376``); None reads ``DOCKER_HOST`` and friends (``from_env``).
        timeout_seconds: HTTP timeout for each API call.

    Returns:
        A connected ``docker.DockerClient`` (the API version is negotiated on creation).

    Raises:
        ContainerError: the engine cannot be reached (transient) or the address is invalid.
    """
    where = base_url or "the environment's DOCKER_HOST"
    try:
        if base_url is None:
            return docker.from_env(timeout=timeout_seconds)
        return docker.DockerClient(base_url=base_url, timeout=timeout_seconds)
    except docker.errors.DockerException as exc:
        # The SDK wraps connection failures during API version negotiation.
        cause = exc.__cause__ or exc.__context__
        transient = isinstance(cause, _TRANSIENT_TRANSPORT_ERRORS) or "Connection" in str(exc)
        raise ContainerError(
            f"cannot reach the container engine at {where}: {exc}", transient=transient
        ) from exc


_TRANSIENT_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def _known_names(client: docker.DockerClient) -> str:
    """The names of all containers, for error messages (best effort)."""
    try:
        listed = client.containers.list(all=True, sparse=True)
        # Sparse listings carry "Names" (with a leading slash), not "Name".
        names = sorted({n.lstrip("/") for c in listed for n in (c.attrs.get("Names") or [])})
    except (docker.errors.DockerException, *_TRANSIENT_TRANSPORT_ERRORS):
        return "(could not list containers)"
    if not names:
        return "(none)"
    shown = ", ".join(names[:MAX_NAMES_IN_ERRORS])
    if len(names) > MAX_NAMES_IN_ERRORS:
        shown += f" and {len(names) - MAX_NAMES_IN_ERRORS} more"
    return shown


@contextmanager
def _boundary(client: docker.DockerClient, what: str, name: str | None = None) -> Iterator[None]:
    """Translate docker SDK and transport errors into :class:`ContainerError`."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ContainerError(f"{what}: image not found: {exc.explanation}") from exc
    except docker.errors.NotFound as exc:
        subject = f"container {name!r}" if name else "object"
        raise ContainerError(
            f"{what}: {subject} not found; known containers: {_known_names(client)}"
        ) from exc
    except docker.errors.APIError as exc:
        raise ContainerError(
            f"{what}: engine answered {exc.status_code}: {exc.explanation or exc}",
            transient=bool(exc.is_server_error()),
        ) from exc
    except _TRANSIENT_TRANSPORT_ERRORS as exc:
        raise ContainerError(f"{what}: engine unreachable: {exc}", transient=True) from exc
    except docker.errors.DockerException as exc:
        raise ContainerError(f"{what}: {exc}") from exc


def _get(client: docker.DockerClient, name: str) -> Container:
    with _boundary(client, f"look up container {name!r}", name):
        return client.containers.get(name)


# --------------------------------------------------------------------------- reading


def _env_dict(env_list: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in env_list or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _restart_policy_text(policy: Mapping[str, Any] | None) -> str:
    name = (policy or {}).get("Name") or "no"
    retries = (policy or {}).get("MaximumRetryCount") or 0
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _state(container: Container) -> ContainerState:
    attrs = container.attrs
    config = attrs.get("Config") or {}
    env = _env_dict(config.get("Env"))
    return ContainerState(
        id=container.id,
        name=container.name,
        status=(attrs.get("State") or {}).get("Status") or container.status,
        image=config.get("Image") or attrs.get("Image") or "",
        labels=dict(config.get("Labels") or {}),
        restart_policy=_restart_policy_text((attrs.get("HostConfig") or {}).get("RestartPolicy")),
        env_names=sorted(env),
        command=list(config.get("Cmd") or []),
        entrypoint=list(config.get("Entrypoint") or []),
        env=env,
    )


def find_containers(
    client: docker.DockerClient,
    *,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[ContainerState]:
    """List containers (running or not) with exactly this name and/or all these labels.

    Args:
        client: from :func:`make_client`.
        name: exact container name (not a pattern).
        labels: every one of these ``key: value`` labels must be present.

    Returns:
        Their states, sorted by name.

    Raises:
        ContainerError: the engine failed (transient for connection errors and 5xx).
    """
    filters: dict[str, Any] = {}
    if labels:
        filters["label"] = [f"{key}={value}" for key, value in labels.items()]
    if name:
        filters["name"] = name  # a server-side regex pre-filter; exact match below
    with _boundary(client, "list containers"):
        containers = client.containers.list(all=True, filters=filters)
        states = [_state(c) for c in containers]
    if name:
        states = [s for s in states if s.name == name]
    if labels:  # double-check: some engines treat label filters loosely
        states = [s for s in states if all(s.labels.get(k) == v for k, v in labels.items())]
    return sorted(states, key=lambda s: s.name)


def health(client: docker.DockerClient, name: str) -> ContainerHealth:
    """Read whether a container runs and, if it has a healthcheck, its verdict.

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = _get(client, name)
    state = container.attrs.get("State") or {}
    health_info = state.get("Health") or {}
    verdict = health_info.get("Status") or None
    return ContainerHealth(
        name=container.name,
        status=state.get("Status") or container.status,
        running=bool(state.get("Running")),
        health=verdict,
        failing_streak=int(health_info.get("FailingStreak") or 0),
        exit_code=None if state.get("Running") else state.get("ExitCode"),
    )


def container_logs(
    client: docker.DockerClient,
    name: str,
    since: datetime | int | None = None,
    *,
    tail: int | None = None,
) -> bytes:
    """Read a container's stdout and stderr, as evidence for the incident report.

    Args:
        client: from :func:`make_client`.
        name: container name or id.
        since: only lines after this time (datetime or UNIX seconds).
        tail: only the last N lines.

    Returns:
        The raw log bytes (stdout and stderr interleaved).

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = _get(client, name)
    kwargs: dict[str, Any] = {"stdout": True, "stderr": True}
    if since is not None:
        kwargs["since"] = since
    if tail is not None:
        kwargs["tail"] = tail
    with _boundary(client, f"read logs of {name!r}", name):
        return container.logs(**kwargs)


# --------------------------------------------------------------------------- acting


def _change(name: str, action: str, outcome: str, **fields: Any) -> Change:
    return Change(system=SYSTEM, action=action, object=name, outcome=outcome, **fields)


def ensure_stopped(
    client: docker.DockerClient, name: str, *, timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS
) -> Change:
    """Stop a container unless it already is; record its status so it can be restored.

    Args:
        client: from :func:`make_client`.
        name: container name or id.
        timeout_seconds: grace period after SIGTERM before the engine sends SIGKILL.

    Returns:
        A Change with ``before["status"]``; ``unchanged`` if it was not running.

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = _get(client, name)
    before = container.status
    if before not in ACTIVE_STATUSES:
        log.info("container %s already stopped (%s): unchanged", name, before)
        return _change(
            name, "stop", "unchanged", before={"status": before}, after={"status": before}
        )
    started = time.monotonic()
    with _boundary(client, f"stop container {name!r}", name):
        container.stop(timeout=timeout_seconds)
        container.reload()
    log.info("stopped container %s (was %s) in %.2f s", name, before, time.monotonic() - started)
    return _change(
        name,
        "stop",
        "changed",
        before={"status": before, "id": container.id},
        after={"status": container.status},
        undo=f"docker start {name}",
    )


def ensure_started(client: docker.DockerClient, name: str) -> Change:
    """Start (or unpause) a container unless it already runs.

    Returns:
        A Change with ``before["status"]``; ``unchanged`` if it was running.

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = _get(client, name)
    before = container.status
    if before in ("running", "restarting"):
        log.info("container %s already %s: unchanged", name, before)
        return _change(
            name, "start", "unchanged", before={"status": before}, after={"status": before}
        )
    started = time.monotonic()
    with _boundary(client, f"start container {name!r}", name):
        if before == "paused":
            container.unpause()
        else:
            container.start()
        container.reload()
    log.info("started container %s (was %s) in %.2f s", name, before, time.monotonic() - started)
    undo = f"docker pause {name}" if before == "paused" else f"docker stop {name}"
    return _change(
        name,
        "start",
        "changed",
        before={"status": before, "id": container.id},
        after={"status": container.status},
        undo=undo,
    )


def restart(
    client: docker.DockerClient, name: str, *, timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS
) -> Change:
    """Restart a container (stop with a grace period, then start).

    Returns:
        A Change that cannot be compensated (a restart cannot be undone).

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = _get(client, name)
    before = container.status
    started = time.monotonic()
    with _boundary(client, f"restart container {name!r}", name):
        container.restart(timeout=timeout_seconds)
        container.reload()
    log.info("restarted container %s in %.2f s", name, time.monotonic() - started)
    return _change(
        name,
        "restart",
        "changed",
        before={"status": before},
        after={"status": container.status},
        compensable=False,
    )


def _set_status(client: docker.DockerClient, name: str, target: str) -> Change:
    """Bring a container to ``target`` status (running, paused or stopped)."""
    if target in ("running", "restarting"):
        return ensure_started(client, name)
    if target == "paused":
        change = ensure_started(client, name)
        container = _get(client, name)
        with _boundary(client, f"pause container {name!r}", name):
            container.pause()
        log.info("paused container %s", name)
        return change.model_copy(update={"after": {"status": "paused"}})
    return ensure_stopped(client, name)


def restore_state(client: docker.DockerClient, change: Change) -> Change:
    """Undo a Change made by this module: put the container back exactly as it was.

    A container that ran before :func:`ensure_stopped` is started again; one that was
    already stopped stays stopped. A :func:`recreate_with_env` change is undone by
    recreating the container with its previous environment values.

    Args:
        client: from :func:`make_client`.
        change: a Change returned by :func:`ensure_stopped`, :func:`ensure_started` or
            :func:`recreate_with_env` in this process.

    Returns:
        The Change made by restoring (``unchanged`` when there was nothing to undo).

    Raises:
        PreconditionError: the change cannot be undone automatically (a restart, another
            system's change, or a recreate whose previous values were not kept).
        ContainerError: engine failure.
    """
    if change.system != SYSTEM:
        raise PreconditionError(f"restore_state got a {change.system} change, not a docker one")
    name = change.object
    if change.outcome == "unchanged":
        log.info("container %s: nothing to restore (%s was unchanged)", name, change.action)
        return _change(name, "restore", "unchanged", before=change.after, after=change.after)
    if not change.compensable:
        raise PreconditionError(f"cannot undo {change.action} of container {name!r}")
    if change.action in ("stop", "start"):
        target = change.before.get("status", "exited")
        restored = _set_status(client, name, target)
        return restored.model_copy(update={"action": "restore"})
    if change.action == "recreate-with-env":
        if "env_before" not in change.undo_data:
            raise PreconditionError(
                f"cannot undo the recreate of {name!r}: its previous environment values "
                "were not kept (the Change was serialized or made by another process)"
            )
        restored = _recreate(client, name, change.undo_data["env_before"])
        return restored.model_copy(update={"action": "restore-env"})
    raise PreconditionError(f"restore_state does not know how to undo {change.action!r}")


# --------------------------------------------------------------------------- recreate


def _ports(port_bindings: Mapping[str, Any] | None) -> dict[str, Any]:
    ports: dict[str, Any] = {}
    for container_port, bindings in (port_bindings or {}).items():
        host_ports = []
        for binding in bindings or []:
            host_port = binding.get("HostPort")
            if not host_port:
                continue
            host_ip = binding.get("HostIp")
            host_ports.append((host_ip, int(host_port)) if host_ip else int(host_port))
        if host_ports:
            ports[container_port] = host_ports if len(host_ports) > 1 else host_ports[0]
    return ports


def _volumes(mounts: list[dict[str, Any]] | None) -> dict[str, dict[str, str]]:
    """Bind mounts and named volumes as the SDK's ``volumes=`` mapping.

    Read from ``Mounts`` rather than ``HostConfig.Binds``: Podman reports binds with
    options (``rw,rprivate,rbind``) that the SDK would misparse when passed back.
    """
    volumes: dict[str, dict[str, str]] = {}
    for mount in mounts or []:
        if mount.get("Type") == "volume" and mount.get("Name"):
            source = mount["Name"]
        elif mount.get("Type") == "bind":
            source = mount["Source"]
        else:
            continue
        mode = "rw" if mount.get("RW", True) else "ro"
        volumes[source] = {"bind": mount["Destination"], "mode": mode}
    return volumes


def _run_spec(container: Container) -> dict[str, Any]:
    """The ``containers.create`` arguments that reproduce ``container`` (minus env)."""
    attrs = container.attrs
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    spec: dict[str, Any] = {
        "image": config.get("Image") or attrs.get("Image"),
        "command": config.get("Cmd") or None,
        "entrypoint": config.get("Entrypoint") or None,
        "labels": dict(config.get("Labels") or {}),
        "volumes": _volumes(attrs.get("Mounts")),
        "tmpfs": dict(host.get("Tmpfs") or {}) or None,
        "network_mode": host.get("NetworkMode") or None,
        "init": bool(host.get("Init")),
        "working_dir": config.get("WorkingDir") or None,
        "user": config.get("User") or None,
        "ports": _ports(host.get("PortBindings")),
        "extra_hosts": list(host.get("ExtraHosts") or []) or None,
        "cap_add": list(host.get("CapAdd") or []) or None,
        "cap_drop": list(host.get("CapDrop") or []) or None,
        "privileged": bool(host.get("Privileged")),
    }
    policy = host.get("RestartPolicy") or {}
    if policy.get("Name") not in (None, "", "no"):
        spec["restart_policy"] = {
            "Name": policy["Name"],
            "MaximumRetryCount": policy.get("MaximumRetryCount") or 0,
        }
    healthcheck = config.get("Healthcheck")
    if healthcheck and healthcheck.get("Test"):
        spec["healthcheck"] = healthcheck
    return {key: value for key, value in spec.items() if value is not None}


def _recreate(
    client: docker.DockerClient,
    name: str,
    env_set: Mapping[str, str | None],
    *,
    timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS,
) -> Change:
    """Recreate ``name`` with ``env_set`` applied (None removes a variable).

    Safe order: stop the old container, rename it aside, create and start the new one,
    and only then remove the old one. If creating or starting fails, the new container is
    removed and the old one is renamed back and started again, so a failed recreate
    leaves the application as it was.
    """
    old = _get(client, name)
    old_env = _env_dict((old.attrs.get("Config") or {}).get("Env"))
    wanted = dict(env_set)
    differing = sorted(k for k, v in wanted.items() if old_env.get(k) != v)
    before = {"status": old.status, "id": old.id, "env_names": sorted(old_env)}
    if not differing:
        log.info(
            "container %s already has the wanted values of %s: unchanged", name, sorted(wanted)
        )
        return _change(name, "recreate-with-env", "unchanged", before=before, after=before)

    new_env = {k: v for k, v in old_env.items() if k not in ENGINE_SET_ENV}
    for key, value in wanted.items():
        if value is None:
            new_env.pop(key, None)
        else:
            new_env[key] = value
    spec = _run_spec(old)
    was_active = old.status in ACTIVE_STATUSES
    aside = f"{name}-dr-old-{int(time.time())}"
    started = time.monotonic()
    with _boundary(client, f"recreate container {name!r}", name):
        if was_active:
            old.stop(timeout=timeout_seconds)
        old.rename(aside)
        new: Container | None = None
        try:
            new = client.containers.create(name=name, environment=new_env, **spec)
            if was_active:
                new.start()
            new.reload()
        except BaseException:
            log.warning("recreate of container %s failed: putting the old one back", name)
            if new is not None:
                new.remove(force=True)
            old.rename(name)
            if was_active:
                old.start()
            raise
        old.remove(force=True)
    log.info(
        "recreated container %s with new values for %s in %.2f s (%s)",
        name,
        differing,
        time.monotonic() - started,
        new.status,
    )
    return _change(
        name,
        "recreate-with-env",
        "changed",
        before=before | {"changed_keys": differing},
        after={"status": new.status, "id": new.id, "env_names": sorted(new_env)},
        undo=(
            f"recreate container {name} with the previous values of {', '.join(differing)} "
            "(kept in this run's memory only; values are never recorded)"
        ),
        undo_data={"env_before": {k: old_env.get(k) for k in differing}},
    )


def recreate_with_env(
    client: docker.DockerClient,
    name: str,
    env_updates: Mapping[str, str],
    *,
    timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS,
) -> Change:
    """Recreate a container with some environment variables changed (e.g. the DB host).

    The new container gets the same image, command, entrypoint, labels, bind mounts,
    network mode, ports, restart policy, init, user and working directory; it is started
    only if the old one was running. Nothing happens when the variables already hold
    these values.

    Args:
        client: from :func:`make_client`.
        name: container name.
        env_updates: variables to set; their values are never logged or recorded.
        timeout_seconds: stop grace period for the old container.

    Returns:
        A Change whose ``before`` lists variable names and which keys changed; the old
        values are kept only in ``undo_data`` (not serialized) for :func:`restore_state`.

    Raises:
        ContainerError: unknown container (permanent) or engine failure; on failure the
            old container is put back.
    """
    return _recreate(client, name, dict(env_updates), timeout_seconds=timeout_seconds)


# --------------------------------------------------------------------------- tasks

find_containers_task = dr_task(find_containers, name="find-containers")
health_task = dr_task(health, name="container-health")
container_logs_task = dr_task(container_logs, name="container-logs")
ensure_stopped_task = dr_task(ensure_stopped, name="ensure-container-stopped")
ensure_started_task = dr_task(ensure_started, name="ensure-container-started")
restart_task = dr_task(restart, name="restart-container")
restore_state_task = dr_task(restore_state, name="restore-container-state")
recreate_with_env_task = dr_task(recreate_with_env, name="recreate-container-with-env")
