"""Stopping, starting, restarting and pausing containers, and putting their status back.

Each step reads the container's status first, acts only when it differs and returns a
:class:`dr.changes.Change` saying how to undo it (:func:`restore_state`).
"""

from __future__ import annotations

import logging
import time

import docker
import docker.errors

from dr.changes import Change
from dr.errors import PreconditionError
from dr.tasking import dr_task
from tasks.containers.client import boundary, get_container
from tasks.containers.recreate import recreate_container
from tasks.containers.state import (
    ACTIVE_STATUSES,
    DEFAULT_STOP_TIMEOUT_SECONDS,
    SYSTEM,
    make_change,
)

log = logging.getLogger(__name__)


def ensure_stopped(
    client: docker.DockerClient, name: str, *, timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS
) -> Change:
    """Stop a container unless it already is; record its status so it can be restored.

    Args:
        client: from :func:`~tasks.containers.client.make_client`.
        name: container name or id.
        timeout_seconds: grace period after SIGTERM before the engine sends SIGKILL.

    Returns:
        A Change with ``before["status"]``; ``unchanged`` if it was not running.

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = get_container(client, name)
    before = container.status
    if before not in ACTIVE_STATUSES:
        log.info("container %s already stopped (%s): unchanged", name, before)
        return make_change(
            name, "stop", "unchanged", before={"status": before}, after={"status": before}
        )
    started = time.monotonic()
    with boundary(client, f"stop container {name!r}", name):
        container.stop(timeout=timeout_seconds)
        container.reload()
    log.info("stopped container %s (was %s) in %.2f s", name, before, time.monotonic() - started)
    return make_change(
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
    container = get_container(client, name)
    before = container.status
    if before in ("running", "restarting"):
        log.info("container %s already %s: unchanged", name, before)
        return make_change(
            name, "start", "unchanged", before={"status": before}, after={"status": before}
        )
    started = time.monotonic()
    with boundary(client, f"start container {name!r}", name):
        if before == "paused":
            container.unpause()
        else:
            container.start()
        container.reload()
    log.info("started container %s (was %s) in %.2f s", name, before, time.monotonic() - started)
    undo = f"docker pause {name}" if before == "paused" else f"docker stop {name}"
    return make_change(
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
    container = get_container(client, name)
    before = container.status
    started = time.monotonic()
    with boundary(client, f"restart container {name!r}", name):
        container.restart(timeout=timeout_seconds)
        container.reload()
    log.info("restarted container %s in %.2f s", name, time.monotonic() - started)
    return make_change(
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
        container = get_container(client, name)
        with boundary(client, f"pause container {name!r}", name):
            container.pause()
        log.info("paused container %s", name)
        return change.model_copy(update={"after": {"status": "paused"}})
    return ensure_stopped(client, name)


def restore_state(client: docker.DockerClient, change: Change) -> Change:
    """Undo a Change made by a container step: put the container back exactly as it was.

    A container that ran before :func:`ensure_stopped` is started again; one that was
    already stopped stays stopped. A
    :func:`~tasks.containers.recreate.recreate_with_env` change is undone by recreating the
    container with its previous environment values.

    Args:
        client: from :func:`~tasks.containers.client.make_client`.
        change: a Change returned by :func:`ensure_stopped`, :func:`ensure_started` or
            :func:`~tasks.containers.recreate.recreate_with_env` in this process.

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
        return make_change(name, "restore", "unchanged", before=change.after, after=change.after)
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
        restored = recreate_container(client, name, change.undo_data["env_before"])
        return restored.model_copy(update={"action": "restore-env"})
    raise PreconditionError(f"restore_state does not know how to undo {change.action!r}")


ensure_stopped_task = dr_task(ensure_stopped, name="containers-ensure-stopped")
ensure_started_task = dr_task(ensure_started, name="containers-ensure-started")
restart_task = dr_task(restart, name="containers-restart")
restore_state_task = dr_task(restore_state, name="containers-restore-state")
