"""Compatibility facade (removed when the layout lands): containers code moved.

Now in :mod:`tasks.containers.client`, ``state``, ``inspection``, ``lifecycle``, ``recreate``.
"""

from tasks.containers.client import make_client
from tasks.containers.inspection import (
    container_logs,
    container_logs_task,
    find_containers,
    find_containers_task,
    health,
    health_task,
)
from tasks.containers.lifecycle import (
    ensure_started,
    ensure_started_task,
    ensure_stopped,
    ensure_stopped_task,
    restart,
    restart_task,
    restore_state,
    restore_state_task,
)
from tasks.containers.recreate import recreate_with_env, recreate_with_env_task
from tasks.containers.state import ContainerHealth, ContainerState

__all__ = [
    "ContainerHealth",
    "ContainerState",
    "container_logs",
    "container_logs_task",
    "ensure_started",
    "ensure_started_task",
    "ensure_stopped",
    "ensure_stopped_task",
    "find_containers",
    "find_containers_task",
    "health",
    "health_task",
    "make_client",
    "recreate_with_env",
    "recreate_with_env_task",
    "restart",
    "restart_task",
    "restore_state",
    "restore_state_task",
]
