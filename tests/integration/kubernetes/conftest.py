"""Fixtures for the Kubernetes adapter: kmock's KubernetesEmulator on loopback.

No Kubernetes API server can run on these machines (no kube-apiserver, kind or k3s on
Debian or PyPI), so the tests use kmock's in-memory emulator as a stand-in. The adapter's
code path is the production one: the client is built by ``tasks.kubernetes.client.make_client``
from a kubeconfig file that points at the emulator's loopback URL.

The emulator is asyncio-based and the kubernetes client is synchronous, so the emulator
runs on its own event loop in a background thread. Stand-in caveats
(``shared/lab/stand-ins.md``): it stores and serves objects only (no uid,
resourceVersion, status, validation or controllers); it has no PUT (the adapter patches);
list calls need the resource declared (done below for every resource the adapter lists).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tasks.kubernetes.client import make_client

NAMESPACE = "dr-test"

# Resources the adapter touches, declared so that listing them works while empty.
RESOURCES = {
    "apps/v1/deployments": kmock.ResourceInfo(kind="Deployment", namespaced=True),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", namespaced=True),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True),
    "networking.k8s.io/v1/networkpolicies": kmock.ResourceInfo(
        kind="NetworkPolicy", namespaced=True
    ),
}


class EmulatorThread:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a background event loop."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to the test thread by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for key, info in RESOURCES.items():
                emulator.resources[key] = info
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise RuntimeError(f"kmock emulator did not start: {self._error!r}")
        return self.url

    def stop(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _on_loop(self, fn: Any) -> Any:
        """Run ``fn()`` on the emulator's loop (its state is not thread-safe)."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    def seed(self, resource: str, namespace: str | None, name: str, body: dict) -> None:
        """Store an object as if it had been created through the API."""
        body = {
            **body,
            "metadata": {"name": name, "namespace": namespace, **body.get("metadata", {})},
        }
        self._on_loop(lambda: self.emulator.objects.__setitem__((resource, namespace, name), body))

    def object(self, resource: str, namespace: str | None, name: str) -> dict | None:
        """The stored object as a plain dict (None if absent or deleted)."""

        def read() -> dict | None:
            try:  # `in` does not parse string resources; indexing does
                obj = self.emulator.objects[resource, namespace, name]
            except KeyError:
                return None
            return None if obj.deleted else dict(obj.raw)

        return self._on_loop(read)

    def request_methods(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request served so far."""
        return self._on_loop(
            lambda: [(str(r.method.value), r.url.path) for r in list(self.emulator)]
        )


@pytest.fixture
def k8s_emulator() -> Iterator[EmulatorThread]:
    emulator = EmulatorThread()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def kubeconfig(k8s_emulator: EmulatorThread, tmp_path: Path) -> Path:
    """A kubeconfig whose only context points at the emulator (as for a real cluster)."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": k8s_emulator.url}}],
                "users": [{"name": "drill", "user": {"token": "not-a-real-token"}}],
                "contexts": [
                    {
                        "name": "dr-test",
                        "context": {
                            "cluster": "emulator",
                            "user": "drill",
                            "namespace": NAMESPACE,
                        },
                    }
                ],
                "current-context": "dr-test",
            }
        )
    )
    return path


@pytest.fixture
def k8s_api(kubeconfig: Path) -> Iterator[Any]:
    api = make_client(kubeconfig, "dr-test")
    yield api
    api.close()
