"""Repoint the application and DNS to the new primary; scale up the DR region."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dr.config import DockerService, KubernetesService, PostgresNode
from flows.common.writers import repoint_application, wait_healthy, writer_services
from flows.region_failover.run import Failover
from tasks.containers import lifecycle as containers_lifecycle
from tasks.kubernetes import deployments as kubernetes_deployments

__all__ = ["repoint", "start_stopped_writers"]


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
    start_stopped_writers(run)
    # When the last system was repointed (its call returned); the application may
    # already have written by then (its container starts before the call returns).
    run.mark("repointed", max((c.at for c in changes), default=None))


def start_stopped_writers(run: Failover) -> None:
    """Start the writer containers assessment found stopped, in start order, each healthy.

    Why: a run killed during a switch-back (or any run that stops the writers) leaves them
    stopped; repointing keeps a stopped container stopped, so without this the application
    would never write to the new primary and the run would wait for it until its timeout.
    """
    views = run.assessment.services if run.assessment else []
    # Found stopped, or missing (an interrupted recreate: repointing put it back, stopped).
    stopped = {v.name for v in views if v.kind == "docker" and v.running is not True}
    for svc in writer_services(run.target):
        if svc.name not in stopped or not isinstance(svc, DockerService):
            continue
        if run.ctx.plan("start", f"writer container {svc.name} (found stopped)"):
            run.ctx.record_change(
                containers_lifecycle.ensure_started_task(run.systems.docker, svc.name)
            )
            wait_healthy(svc)
