"""What a region failover assesses and chooses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from dr.clock import utcnow

__all__ = ["Assessment", "NodeView", "ReplicaChoice", "ServiceView"]


class NodeView(BaseModel):
    """One PostgreSQL node as assessed."""

    name: str
    region: str
    configured_role: Literal["primary", "replica"]
    state: Literal["primary", "standby", "unreachable", "unknown"]
    error: str | None = None
    writable: bool = False
    timeline: int | None = None
    current_lsn: str | None = None
    received_lsn: str | None = None
    replayed_lsn: str | None = None
    replay_lag_seconds: float | None = None
    receiver_status: str | None = None
    last_replay_at: datetime | None = None
    newest_heartbeat_at: datetime | None = None
    newest_app_write_at: datetime | None = None
    checked_at: datetime = Field(default_factory=utcnow)


class ServiceView(BaseModel):
    """One application service as assessed."""

    kind: str
    name: str
    region: str
    role: str
    ok: bool
    detail: str = ""
    #: Docker containers: whether it runs (None: unknown, or a Kubernetes deployment).
    running: bool | None = None


class Assessment(BaseModel):
    """Everything assessment saw, and what it concluded."""

    nodes: dict[str, NodeView]
    standbys_seen_by_primary: list[dict[str, Any]] = Field(default_factory=list)
    services: list[ServiceView] = Field(default_factory=list)
    health_checks: list[dict[str, Any]] = Field(default_factory=list)
    old_primary: str
    failed_region: str
    dr_region_ready: bool = False
    severity: str = "SEV1"
    severity_reason: str = ""
    seconds: float = 0.0


class ReplicaChoice(BaseModel):
    """The replica to promote, and why; ``chosen`` None when there is none."""

    chosen: str | None
    position: str | None = None
    lag_seconds: float | None = None
    lag_basis: str = ""
    ranked: list[str] = Field(default_factory=list)
    excluded: dict[str, str] = Field(default_factory=dict)
    reason: str = ""
