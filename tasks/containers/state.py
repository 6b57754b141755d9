"""What a container is, as read from the engine, and the Change every container step records.

``ContainerState.env`` holds values (they may be secrets) only to recreate a container: it
is excluded from dumps and ``repr()``; logs and Changes carry variable names only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from docker.models.containers import Container
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change

SYSTEM = "docker"
DEFAULT_STOP_TIMEOUT_SECONDS = 10
# Statuses in which a container's processes exist (``docker stop`` has something to stop).
ACTIVE_STATUSES = frozenset({"running", "paused", "restarting"})


class ContainerState(BaseModel):
    """What a container is, as read from the engine.

    ``env`` holds the values (needed to recreate a container) but is excluded from
    ``model_dump()`` and ``repr()``; ``env_names`` is what logs and reports show.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    status: str
    image: str
    labels: dict[str, str] = Field(default_factory=dict)
    restart_policy: str = "no"
    env_names: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    entrypoint: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def running(self) -> bool:
        """True when the container's status is ``running``."""
        return self.status == "running"


class ContainerHealth(BaseModel):
    """A container's liveness, plus its healthcheck verdict when it has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    status: str
    running: bool
    health: str | None = Field(
        None, description="healthy, unhealthy or starting; None without a healthcheck."
    )
    failing_streak: int = 0
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        """Running, and healthy if a healthcheck exists."""
        return self.running and self.health in (None, "healthy")


def env_dict(env_list: list[str] | None) -> dict[str, str]:
    """``KEY=value`` items as a dict (the engine's ``Config.Env``)."""
    env: dict[str, str] = {}
    for item in env_list or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _restart_policy_text(policy: Mapping[str, Any] | None) -> str:
    name = (policy or {}).get("Name") or "no"
    retries = (policy or {}).get("MaximumRetryCount") or 0
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def read_state(container: Container) -> ContainerState:
    """The container's state from its (already fetched) attributes."""
    attrs = container.attrs
    config = attrs.get("Config") or {}
    env = env_dict(config.get("Env"))
    return ContainerState(
        id=container.id,
        name=container.name,
        status=(attrs.get("State") or {}).get("Status") or container.status,
        image=config.get("Image") or attrs.get("Image") or "",
        labels=dict(config.get("Labels") or {}),
        restart_policy=_restart_policy_text((attrs.get("HostConfig") or {}).get("RestartPolicy")),
        env_names=sorted(env),
        command=list(config.get("Cmd") or []),
        entrypoint=list(config.get("Entrypoint") or []),
        env=env,
    )


def make_change(name: str, action: str, outcome: str, **fields: Any) -> Change:
    """A Change of container ``name`` (``fields``: before, after, undo, ...)."""
    return Change(system=SYSTEM, action=action, object=name, outcome=outcome, **fields)
