"""The external systems' clients for one run, built on first use."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from dr.config import (
    DRConfig,
)
from tasks.aws import client as aws_client
from tasks.containers import client as containers_client
from tasks.kubernetes import client as kubernetes_client
from tasks.storage import client as storage_client


class Systems:
    """The external systems' clients, built on first use from the config (one per system)."""

    def __init__(self, config: DRConfig) -> None:
        self.config = config
        self._clients: dict[str, Any] = {}

    def _get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._clients:
            self._clients[key] = build()
        return self._clients[key]

    @property
    def docker(self) -> Any:
        return self._get(
            "docker", lambda: containers_client.make_client(self.config.docker.base_url)
        )

    @property
    def k8s(self) -> Any:
        k = self.config.kubernetes
        return self._get("k8s", lambda: kubernetes_client.make_client(k.kubeconfig, k.context))

    def aws(self, service: str) -> Any:
        return self._get(service, lambda: aws_client.make_client(self.config.aws, service))

    def repository(self, url: str) -> storage_client.Repository:
        def build() -> storage_client.Repository:
            if url.startswith("s3://"):
                return storage_client.open_repository(
                    url, s3_client=storage_client.make_s3_client(self.config.aws)
                )
            return storage_client.open_repository(url)

        return self._get(f"repo:{url}", build)  # type: ignore[no-any-return]

    def close(self) -> None:
        for key in ("docker", "k8s"):
            client = self._clients.get(key)
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._clients.clear()
