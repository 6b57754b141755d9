"""The clients of one run: each external system's client built once, on first use."""

from __future__ import annotations

import contextlib
from typing import Any

from dr.config import DRConfig, PostgresConfig, PostgresNode
from tasks.aws import client as aws_client
from tasks.containers import client as containers_client
from tasks.kubernetes import client as kubernetes_client
from tasks.postgres import client as postgres_client

__all__ = ["Systems", "node_conninfo"]


class Systems:
    """The external systems' clients, built on first use from the config (one per system)."""

    def __init__(self, config: DRConfig) -> None:
        self.config = config
        self._docker: Any = None
        self._k8s: Any = None
        self._route53: Any = None

    @property
    def docker(self) -> Any:
        """The Docker (or Podman) API client."""
        if self._docker is None:
            self._docker = containers_client.make_client(self.config.docker.base_url)
        return self._docker

    @property
    def k8s(self) -> Any:
        """The Kubernetes API client."""
        if self._k8s is None:
            self._k8s = kubernetes_client.make_client(
                self.config.kubernetes.kubeconfig, self.config.kubernetes.context
            )
        return self._k8s

    @property
    def route53(self) -> Any:
        """The Route 53 client."""
        if self._route53 is None:
            self._route53 = aws_client.make_client(self.config.aws, "route53")
        return self._route53

    def close(self) -> None:
        """Close what was opened."""
        for client in (self._docker, self._k8s):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._docker = self._k8s = self._route53 = None


def node_conninfo(
    pgc: PostgresConfig, node: PostgresNode, password: str | None, dbname: str | None = None
) -> str:
    """A conninfo for one node of the target (the maintenance database by default).

    Args:
        pgc: the target's PostgreSQL section.
        node: the node.
        password: the resolved password, if any.
        dbname: the database; default ``maintenance_db``.

    Returns:
        A libpq conninfo (with the password: never log it).
    """
    return postgres_client.conninfo(
        node,
        user=pgc.user,
        dbname=dbname or pgc.maintenance_db,
        password=password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name="dr-pipelines-failover",
    )
