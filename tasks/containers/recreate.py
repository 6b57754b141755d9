"""Recreating a container with a changed environment (how a rotated credential reaches it).

The new container keeps the old one's image, command, ports, mounts, labels and restart
policy; environment values are never logged nor put in the Change, only their names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from dr.changes import Change
from dr.errors import ContainerError
from dr.tasking import dr_task
from tasks.containers.client import boundary, get_container
from tasks.containers.state import (
    ACTIVE_STATUSES,
    DEFAULT_STOP_TIMEOUT_SECONDS,
    env_dict,
    make_change,
)

log = logging.getLogger(__name__)


# Set by the engine for each container; carrying them over would pin the old container's.
ENGINE_SET_ENV = frozenset({"HOSTNAME"})

#: What an old container is renamed to while its replacement starts: ``<name>-dr-old-<time>``.
ASIDE_MARK = "-dr-old-"


def remove_stale_asides(client: docker.DockerClient, name: str) -> list[str]:
    """Remove ``<name>-dr-old-*`` containers an interrupted recreate left behind.

    Why: the engine keeps a container's environment in its stored config, so an old
    container still holds the password that was rotated away.
    """
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"name": f"{name}{ASIDE_MARK}"}):
        if container.name.startswith(f"{name}{ASIDE_MARK}"):
            container.remove(force=True)
            removed.append(container.name)
    if removed:
        log.info("removed old containers of %s (they held old values): %s", name, removed)
    return removed


def current_or_aside(client: docker.DockerClient, name: str) -> Container:
    """The container ``name``, or the one an interrupted recreate renamed aside, put back.

    Why: a recreate killed between "rename aside" and "create the new one" leaves no
    container of that name, only ``<name>-dr-old-*`` (stopped, with its whole spec); the
    next run must find the application again, not fail on "not found".
    """
    try:
        return get_container(client, name)
    except ContainerError as exc:
        if exc.transient:
            raise
        with boundary(client, f"look for an aside of {name!r}", name):
            asides = [
                c
                for c in client.containers.list(all=True, filters={"name": f"{name}{ASIDE_MARK}"})
                if c.name.startswith(f"{name}{ASIDE_MARK}")
            ]
            if not asides:
                raise
            newest = max(asides, key=lambda c: c.name)
            newest.rename(name)
            newest.reload()
        log.warning(
            "container %s was missing: put back %s (an interrupted recreate)", name, newest.id
        )
        return newest


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


def recreate_container(
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
    old = current_or_aside(client, name)
    old_env = env_dict((old.attrs.get("Config") or {}).get("Env"))
    wanted = dict(env_set)
    differing = sorted(k for k, v in wanted.items() if old_env.get(k) != v)
    before = {"status": old.status, "id": old.id, "env_names": sorted(old_env)}
    if not differing:
        log.info(
            "container %s already has the wanted values of %s: unchanged", name, sorted(wanted)
        )
        with boundary(client, f"remove old containers of {name!r}", name):
            stale = remove_stale_asides(client, name)
        outcome = "changed" if stale else "unchanged"
        after = before | ({"removed_old_containers": stale} if stale else {})
        return make_change(name, "recreate-with-env", outcome, before=before, after=after)

    new_env = {k: v for k, v in old_env.items() if k not in ENGINE_SET_ENV}
    for key, value in wanted.items():
        if value is None:
            new_env.pop(key, None)
        else:
            new_env[key] = value
    spec = _run_spec(old)
    was_active = old.status in ACTIVE_STATUSES
    aside = f"{name}{ASIDE_MARK}{int(time.time())}"
    started = time.monotonic()
    with boundary(client, f"recreate container {name!r}", name):
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
        stale = remove_stale_asides(client, name)
    log.info(
        "recreated container %s with new values for %s in %.2f s (%s)",
        name,
        differing,
        time.monotonic() - started,
        new.status,
    )
    return make_change(
        name,
        "recreate-with-env",
        "changed",
        before=before | {"changed_keys": differing},
        after={"status": new.status, "id": new.id, "env_names": sorted(new_env)}
        | ({"removed_old_containers": stale} if stale else {}),
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
        client: from :func:`~tasks.containers.client.make_client`.
        name: container name.
        env_updates: variables to set; their values are never logged or recorded.
        timeout_seconds: stop grace period for the old container.

    Returns:
        A Change whose ``before`` lists variable names and which keys changed; the old
        values are kept only in ``undo_data`` (not serialized) for
        :func:`~tasks.containers.lifecycle.restore_state`.

    Raises:
        ContainerError: unknown container (permanent) or engine failure; on failure the
            old container is put back.
    """
    return recreate_container(client, name, dict(env_updates), timeout_seconds=timeout_seconds)


recreate_with_env_task = dr_task(recreate_with_env, name="containers-recreate-with-env")
