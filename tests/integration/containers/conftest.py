"""Fixtures for the container adapter: one private Podman API service per test session.

The service lives in a session temp folder with its own storage, so the tests never touch
the machine's Podman or any other engine. Without podman/runc/busybox-static the tests
skip with the reason (CI installs them, so there they run).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.podman import DEFAULT_IMAGE, PodmanService, available, ensure_busybox_image
from tasks.containers.client import make_client

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    ok, reason = available()
    if not ok:
        pytest.skip(f"container tests need Podman: {reason}")
    service = PodmanService(tmp_path_factory.mktemp("podman"))
    started = time.monotonic()
    service.start()
    log.info("podman service up in %.2f s", time.monotonic() - started)
    yield service
    service.stop()
    assert not service.running()


@pytest.fixture(scope="session")
def docker_client(podman_service: PodmanService) -> Iterator[Any]:
    client = make_client(podman_service.base_url)
    ensure_busybox_image(client)
    yield client
    client.close()


@pytest.fixture
def run_labels(docker_client: Any) -> Iterator[dict[str, str]]:
    """A unique ``dr-test`` label; every container carrying it is removed after the test."""
    labels = {"dr-test": uuid.uuid4().hex}
    yield labels
    for container in docker_client.containers.list(
        all=True, filters={"label": f"dr-test={labels['dr-test']}"}
    ):
        container.remove(force=True)


@pytest.fixture
def run_busybox(docker_client: Any, run_labels: dict[str, str]) -> Callable[..., Any]:
    """Start a detached busybox container (``sleep`` by default) labelled for cleanup."""

    def run(name: str, command: list[str] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("network_mode", "none")  # no bridge interfaces on the host
        kwargs.setdefault("init", True)
        labels = {**run_labels, **kwargs.pop("labels", {})}
        return docker_client.containers.run(
            DEFAULT_IMAGE,
            command or ["sleep", "300"],
            name=name,
            detach=True,
            labels=labels,
            **kwargs,
        )

    return run


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Container names unique to this test run (names are global to the engine)."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"dr-{base}-{suffix}"
