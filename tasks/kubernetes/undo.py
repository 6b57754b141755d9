"""Undo any compensable Kubernetes Change (for rollback hooks), dispatching on its action."""

from __future__ import annotations

from kubernetes import client as k8s

from dr.changes import Change
from dr.errors import PreconditionError
from dr.tasking import dr_task
from tasks.kubernetes.changes import SYSTEM, make_change
from tasks.kubernetes.config_maps import restore_config_map_key
from tasks.kubernetes.deployments import restore_scale
from tasks.kubernetes.network_policies import apply_isolation_policy, remove_isolation_policy
from tasks.kubernetes.secrets import restore_secret_key


def undo_change(api: k8s.ApiClient, change: Change) -> Change:
    """Undo any compensable Change made by :mod:`tasks.kubernetes` (for rollback hooks).

    Returns:
        The Change made by undoing (``unchanged`` when there was nothing to undo).

    Raises:
        PreconditionError: the change cannot be undone automatically.
        KubernetesError: API failure.
    """
    if change.system != SYSTEM:
        raise PreconditionError(f"undo_change got a {change.system} change")
    if change.outcome == "unchanged":
        return make_change(change.object, f"undo-{change.action}", "unchanged")
    if not change.compensable:
        raise PreconditionError(f"cannot undo {change.action} of {change.object}")
    namespace, name = change.object.split("/", 1)
    if change.action == "scale":
        return restore_scale(api, change)
    if change.action == "replace-secret-key":
        return restore_secret_key(api, change)
    if change.action == "patch-config-map-key":
        return restore_config_map_key(api, change)
    if change.action == "apply-isolation-policy":
        if change.outcome == "updated":
            return apply_isolation_policy(api, namespace, change.before["pod_selector"], name)
        return remove_isolation_policy(api, namespace, name)
    if change.action == "remove-isolation-policy":
        return apply_isolation_policy(api, namespace, change.before["pod_selector"], name)
    raise PreconditionError(f"undo_change does not know how to undo {change.action!r}")


undo_change_task = dr_task(undo_change, name="kubernetes-undo-change")
