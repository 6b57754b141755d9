"""Region failover repointing Kubernetes: the database host secret, a rollout, DR scale-up.

The Kubernetes API is kmock's emulator on loopback (no kube-apiserver can run here, see
shared/lab/stand-ins.md); the flow builds its client from a kubeconfig pointing at it, as
for a real cluster. The database side is a pair of our own.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from flows.region_failover.flow import region_failover_flow
from flows.region_failover.options import FailoverOptions

from .conftest import Pair, in_recovery

pytestmark = pytest.mark.integration

NAMESPACE = "shop"
RESOURCES = {
    "apps/v1/deployments": kmock.ResourceInfo(kind="Deployment", namespaced=True),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True),
}


class Emulator:
    """kmock's KubernetesEmulator served from a background event loop."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.update(RESOURCES)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(timeout=30), "kmock did not start"

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    def seed(self, resource: str, name: str, body: dict[str, Any]) -> None:
        body = {**body, "metadata": {"name": name, "namespace": NAMESPACE}}
        self._on_loop(lambda: self.emulator.objects.__setitem__((resource, NAMESPACE, name), body))

    def get(self, resource: str, name: str) -> dict[str, Any]:
        return self._on_loop(lambda: dict(self.emulator.objects[resource, NAMESPACE, name].raw))


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[tuple[Emulator, Path]]:
    emulator = Emulator()
    emulator.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": emulator.url}}],
                "users": [{"name": "drill", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "dr", "context": {"cluster": "emu", "user": "drill"}}],
                "current-context": "dr",
            }
        )
    )
    try:
        yield emulator, kubeconfig
    finally:
        emulator.stop()


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {}},
                "spec": {"containers": [{"name": name, "image": "busybox"}]},
            },
        },
    }


def test_kubernetes_writers_repointed_dr_region_scaled_up_then_put_back(
    make_pair: Callable[..., Pair], prefect_lab: None, k8s: tuple[Emulator, Path]
) -> None:
    emulator, kubeconfig = k8s
    emulator.seed("apps/v1/deployments", "api", deployment("api", 2))
    emulator.seed("apps/v1/deployments", "api-dr", deployment("api-dr", 0))
    old_host = base64.b64encode(b"10.0.0.1").decode()
    emulator.seed(
        "v1/secrets",
        "api-db",
        {"apiVersion": "v1", "kind": "Secret", "data": {"DB_HOST": old_host}},
    )
    pair = make_pair()
    services = [
        {"kind": "kubernetes", "namespace": NAMESPACE, "deployment": "api", "role": "writer",
         "region": "primary-region", "db_host_secret": "api-db"},
        {"kind": "kubernetes", "namespace": NAMESPACE, "deployment": "api-dr", "role": "writer",
         "region": "dr-region", "replicas": 3},
    ]  # fmt: skip
    config = pair.write_config(
        kubernetes={"kubeconfig": str(kubeconfig), "context": "dr"},
        target={"services": services},
    )

    result = region_failover_flow(
        target="pair",
        mode="drill",
        options=FailoverOptions(warmup_seconds=0.3),
        config_path=config,
    )

    assert result["outcome"] == "passed", result["reason"]
    actions = [(c["action"], c["object"]) for c in result["changes"]]
    assert ("replace-secret-key", f"{NAMESPACE}/api-db") in actions
    assert ("rollout-restart", f"{NAMESPACE}/api") in actions
    scale_ups = [
        c for c in result["changes"] if c["action"] == "scale" and c["after"]["replicas"] == 3
    ]
    assert [c["object"] for c in scale_ups] == [f"{NAMESPACE}/api-dr"]
    # The switch-back stopped the writers (scaled to 0) and brought them back; the DR
    # scale-up was undone once the configured roles held again.
    assert emulator.get("apps/v1/deployments", "api")["spec"]["replicas"] == 2
    assert emulator.get("apps/v1/deployments", "api-dr")["spec"]["replicas"] == 0
    restarted = emulator.get("apps/v1/deployments", "api")["spec"]["template"]["metadata"]
    assert "kubectl.kubernetes.io/restartedAt" in restarted["annotations"]
    secret = emulator.get("v1/secrets", "api-db")["data"]["DB_HOST"]
    assert base64.b64decode(secret) == b"127.0.0.1"
    assert result["details"]["failback"]["roles_as_configured"] is True
    assert in_recovery(pair.primary) is False and in_recovery(pair.replica) is True
