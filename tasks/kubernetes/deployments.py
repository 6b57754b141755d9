"""Deployments: read, scale, restore the scale, and restart their pods.

Writes are patches (strategic merge), never read-modify-PUT: they need no resourceVersion
and cannot overwrite a concurrent change to other fields.
"""

from __future__ import annotations

import logging

from kubernetes import client as k8s
from pydantic import BaseModel, ConfigDict

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import PreconditionError
from dr.tasking import dr_task
from tasks.kubernetes.changes import expect_change, make_change
from tasks.kubernetes.client import REQUEST_TIMEOUT_SECONDS, boundary

log = logging.getLogger(__name__)


# The annotation `kubectl rollout restart` sets; changing it rolls the pods.
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"


class DeploymentState(BaseModel):
    """What a Deployment asks for and, where the API reports it, what it has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    name: str
    replicas: int
    ready_replicas: int | None = None
    restarted_at: str | None = None


def _now() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


def read_deployment(api: k8s.ApiClient, namespace: str, name: str) -> DeploymentState:
    """Read a Deployment's replica count, ready replicas and last restart stamp.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    obj = f"deployment {namespace}/{name}"
    with boundary("read", obj):
        dep = k8s.AppsV1Api(api).read_namespaced_deployment(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    annotations = {}
    if dep.spec and dep.spec.template and dep.spec.template.metadata:
        annotations = dep.spec.template.metadata.annotations or {}
    return DeploymentState(
        namespace=namespace,
        name=name,
        replicas=(dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1),
        ready_replicas=dep.status.ready_replicas if dep.status else None,
        restarted_at=annotations.get(RESTARTED_AT_ANNOTATION),
    )


def scale_deployment(api: k8s.ApiClient, namespace: str, name: str, replicas: int) -> Change:
    """Set a Deployment's replica count unless it already has it.

    Args:
        api: from :func:`~tasks.kubernetes.client.make_client`.
        namespace: the Deployment's namespace.
        name: the Deployment's name.
        replicas: the wanted count (0 stops the application).

    Returns:
        A Change with ``before["replicas"]``; ``unchanged`` when already at that count.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    if replicas < 0:
        raise PreconditionError(f"cannot scale deployment {namespace}/{name} to {replicas}")
    obj = f"{namespace}/{name}"
    current = read_deployment(api, namespace, name).replicas
    if current == replicas:
        log.info("deployment %s already has %s replicas: unchanged", obj, replicas)
        return make_change(
            obj, "scale", "unchanged", before={"replicas": current}, after={"replicas": current}
        )
    with boundary("scale", f"deployment {obj}"):
        k8s.AppsV1Api(api).patch_namespaced_deployment(
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    log.info("scaled deployment %s from %s to %s replicas", obj, current, replicas)
    return make_change(
        obj,
        "scale",
        "updated",
        before={"replicas": current},
        after={"replicas": replicas},
        undo=f"kubectl -n {namespace} scale deployment/{name} --replicas={current}",
    )


def restore_scale(api: k8s.ApiClient, change: Change) -> Change:
    """Put a Deployment back to the replica count recorded by :func:`scale_deployment`.

    Returns:
        The Change made by restoring (``unchanged`` when there is nothing to undo).

    Raises:
        PreconditionError: ``change`` is not a scale change.
        KubernetesError: not found (permanent) or API failure.
    """
    expect_change(change, "scale")
    namespace, name = change.object.split("/", 1)
    if change.outcome == "unchanged":
        return make_change(change.object, "restore-scale", "unchanged", before=change.after)
    restored = scale_deployment(api, namespace, name, int(change.before["replicas"]))
    return restored.model_copy(update={"action": "restore-scale"})


def rollout_restart(api: k8s.ApiClient, namespace: str, name: str) -> Change:
    """Restart a Deployment's pods the way ``kubectl rollout restart`` does.

    Stamps the pod template with ``kubectl.kubernetes.io/restartedAt``; the Deployment
    controller then replaces the pods gradually, under the Deployment's rollout rules.

    Returns:
        A Change that cannot be compensated (a restart cannot be undone).

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    obj = f"{namespace}/{name}"
    previous = read_deployment(api, namespace, name).restarted_at
    stamp = _now()
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}
    with boundary("rollout restart", f"deployment {obj}"):
        k8s.AppsV1Api(api).patch_namespaced_deployment(
            name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    log.info("rollout restart of deployment %s at %s", obj, stamp)
    return make_change(
        obj,
        "rollout-restart",
        "updated",
        before={"restarted_at": previous},
        after={"restarted_at": stamp},
        compensable=False,
    )


read_deployment_task = dr_task(
    read_deployment, name="kubernetes-read-deployment", timeout_seconds=60
)
scale_deployment_task = dr_task(scale_deployment, name="kubernetes-scale-deployment")
restore_scale_task = dr_task(restore_scale, name="kubernetes-restore-scale", timeout_seconds=120)
rollout_restart_task = dr_task(rollout_restart, name="kubernetes-rollout-restart")
