"""Options of a region failover."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FailoverOptions"]


class FailoverOptions(BaseModel):
    """Options of a region failover (``dr drill region-failover --option k=v``).

    Alert-started runs also carry ``severity``, ``auto_approve``, ``alert_fingerprint`` and
    ``alert_labels`` (see ``deployments/alerts.py``); ``declared_at`` is when the incident
    was declared.
    """

    model_config = ConfigDict(extra="forbid")

    inject: Literal["kill", "immediate"] = Field(
        "kill",
        description="Drills: kill = freeze and SIGKILL every server process (a crash); "
        "immediate = pg_ctl stop -m immediate.",
    )
    warmup_seconds: float = Field(
        1.0, ge=0, le=60, description="Drills: heartbeat writes before the failure is injected."
    )
    failback: bool | None = Field(
        None, description="Rejoin (and switch back) at the end; default: yes in drills only."
    )
    switch_back: bool = Field(True, description="Failback also restores the configured roles.")
    rejoin_method: Literal["rewind", "base_backup"] = "rewind"
    allow_unproven_fence: bool = Field(
        False,
        description="Go on when the old primary cannot be proven fenced. Risks two primaries.",
    )
    fence_by_connections: bool = Field(
        True, description="Fence a primary that cannot be stopped by closing it to clients."
    )
    unreachable_is_fenced: bool = Field(
        False,
        description="Count 'unreachable from this runner' (a timeout) as proof. Clients on "
        "another network path may still reach it.",
    )
    max_lag_seconds: float | None = Field(
        None, ge=0, description="A replica further behind needs approval; default: the RPO."
    )
    preferred_regions: list[str] = Field(
        default_factory=list, description="Tie-break among equally advanced replicas."
    )
    promote_timeout_seconds: float = Field(30, gt=0)
    verify_timeout_seconds: float | None = Field(
        None, gt=0, description="How long to wait for the application; default: the RTO."
    )
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer in dr_heartbeat; None: not measured."
    )
    app_ack_log: str | None = Field(
        None,
        description="The application's acknowledgement log (one JSON line per acknowledged "
        "write, lab/heartbeat_app.py's HEARTBEAT_ACK_LOG): its lost writes are counted too.",
    )
    heartbeat_interval_seconds: float = Field(0.05, gt=0)
    failure_at: datetime | None = Field(
        None, description="Incidents: when the primary failed (lag reference), if known."
    )
    severity: str | None = None
    auto_approve: bool = False
    declared_at: datetime | None = None
    alert_fingerprint: str | None = None
    alert_started_at: datetime | None = None
    alert_labels: dict[str, str] | None = None
