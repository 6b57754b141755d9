"""Compatibility facade (removed when the layout lands): Kubernetes code moved.

Now in :mod:`tasks.kubernetes.client`, ``deployments``, ``secrets``, ``config_maps``,
``network_policies``, ``events``, ``undo``.
"""

from tasks.kubernetes.client import make_client
from tasks.kubernetes.config_maps import (
    patch_config_map_key,
    patch_config_map_key_task,
    read_config_map,
    restore_config_map_key,
)
from tasks.kubernetes.deployments import (
    DeploymentState,
    read_deployment,
    restore_scale,
    rollout_restart,
    rollout_restart_task,
    scale_deployment,
    scale_deployment_task,
)
from tasks.kubernetes.events import list_events, list_events_task
from tasks.kubernetes.network_policies import (
    apply_isolation_policy,
    apply_isolation_policy_task,
    remove_isolation_policy,
    remove_isolation_policy_task,
)
from tasks.kubernetes.secrets import (
    read_secret,
    replace_secret_key,
    replace_secret_key_task,
    restore_secret_key,
)
from tasks.kubernetes.undo import undo_change, undo_change_task

__all__ = [
    "DeploymentState",
    "apply_isolation_policy",
    "apply_isolation_policy_task",
    "list_events",
    "list_events_task",
    "make_client",
    "patch_config_map_key",
    "patch_config_map_key_task",
    "read_config_map",
    "read_deployment",
    "read_secret",
    "remove_isolation_policy",
    "remove_isolation_policy_task",
    "replace_secret_key",
    "replace_secret_key_task",
    "restore_config_map_key",
    "restore_scale",
    "restore_secret_key",
    "rollout_restart",
    "rollout_restart_task",
    "scale_deployment",
    "scale_deployment_task",
    "undo_change",
    "undo_change_task",
]
