"""Repoint the application and DNS to the new primary; scale up the DR region."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dr.config import KubernetesService, PostgresNode
from flows.common.writers import repoint_application
from flows.region_failover.run import Failover
from tasks.kubernetes import deployments as kubernetes_deployments

__all__ = ["repoint"]


def repoint(run: Failover, node: PostgresNode) -> None:
    """Application and DNS to the new primary, DR-region services scaled up: in parallel."""
    extra: list[tuple[str, Callable[[], Any]]] = []
    for svc in run.target.services:
        if (
            isinstance(svc, KubernetesService)
            and svc.replicas is not None
            and svc.region == node.region
        ):
            obj = f"deployment {svc.name} to {svc.replicas} replica(s) in {svc.region}"
            if run.ctx.plan("scale up", obj):
                extra.append(
                    (
                        f"scale up {obj}",
                        lambda svc=svc: kubernetes_deployments.scale_deployment_task.submit(
                            run.systems.k8s, svc.namespace, svc.deployment, svc.replicas or 0
                        ),
                    )
                )
    changes = repoint_application(run.ctx, run.systems, run.target, node, extra=extra)
    run.details["scaled"] = [c.model_dump(mode="json") for c in changes if c.action == "scale"]
    run.scaled = [c for c in changes if c.action == "scale" and c.changed]
    # When the last system was repointed (its call returned); the application may
    # already have written by then (its container starts before the call returns).
    run.mark("repointed", max((c.at for c in changes), default=None))
