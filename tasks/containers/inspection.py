"""Reading containers: find them by name or labels, their health, their logs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import docker
import docker.errors

from dr.tasking import dr_task
from tasks.containers.client import boundary, get_container
from tasks.containers.state import ContainerHealth, ContainerState, read_state


def find_containers(
    client: docker.DockerClient,
    *,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[ContainerState]:
    """List containers (running or not) with exactly this name and/or all these labels.

    Args:
        client: from :func:`~tasks.containers.client.make_client`.
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
    with boundary(client, "list containers"):
        containers = client.containers.list(all=True, filters=filters)
        states = [read_state(c) for c in containers]
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
    container = get_container(client, name)
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
        client: from :func:`~tasks.containers.client.make_client`.
        name: container name or id.
        since: only lines after this time (datetime or UNIX seconds).
        tail: only the last N lines.

    Returns:
        The raw log bytes (stdout and stderr interleaved).

    Raises:
        ContainerError: unknown container (permanent) or engine failure.
    """
    container = get_container(client, name)
    kwargs: dict[str, Any] = {"stdout": True, "stderr": True}
    if since is not None:
        kwargs["since"] = since
    if tail is not None:
        kwargs["tail"] = tail
    with boundary(client, f"read logs of {name!r}", name):
        return container.logs(**kwargs)


find_containers_task = dr_task(find_containers, name="containers-find-containers")
health_task = dr_task(health, name="containers-health")
container_logs_task = dr_task(container_logs, name="containers-logs")
