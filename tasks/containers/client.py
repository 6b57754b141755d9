"""The docker SDK client (Docker, or Podman's Docker-compatible service) and its errors.

The only module that builds a ``docker.DockerClient`` (:func:`make_client`) and decides
which engine errors are transient (:func:`boundary`): connection failures, timeouts and 5xx
answers raise :class:`ContainerError` with ``transient=True``; a missing container raises it
(permanent) naming the containers that do exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from dr.errors import ContainerError

CLIENT_TIMEOUT_SECONDS = 60
# How many names an error message lists before it says "and N more".
MAX_NAMES_IN_ERRORS = 20


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
def boundary(client: docker.DockerClient, what: str, name: str | None = None) -> Iterator[None]:
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


def get_container(client: docker.DockerClient, name: str) -> Container:
    """The container named ``name``; a missing one raises a ContainerError listing the others."""
    with boundary(client, f"look up container {name!r}", name):
        return client.containers.get(name)
