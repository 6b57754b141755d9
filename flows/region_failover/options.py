"""Options of a region failover."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from flows.common.options import AlertOptions

__all__ = ["FailoverOptions"]


class FailoverOptions(AlertOptions):
    """Options of a region failover (``dr drill region-failover --option k=v``).

    Severity, auto approve, declared at and the alert's fingerprint and labels are the
    options every scenario shares (set by an alert route, or by hand).
    """

    inject: Literal["kill", "immediate", "app-cannot-connect"] = Field(
        "kill",
        description="Drills: kill = freeze and SIGKILL every server process (a crash); "
        "immediate = pg_ctl stop -m immediate; app-cannot-connect = the red twin: the "
        "replicas refuse app_role (pg_hba reject), then kill, so the end-to-end check fails.",
    )
    app_role: str = Field(
        "dr_app", description="Drills: the application's database role (app-cannot-connect)."
    )
    warmup_seconds: float = Field(
        1.0, ge=0, le=60, description="Drills: heartbeat writes before the failure is injected."
    )
    failback: bool | None = Field(
        None, description="Rejoin (and switch back) at the end; default: yes in drills only."
    )
    switch_back: bool = Field(True, description="Failback also restores the configured roles.")
    rejoin_method: Literal["rewind", "base_backup"] = Field(
        "rewind",
        description="How failback rejoins the old primary: pg_rewind, or a new base backup.",
    )
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
    promote_timeout_seconds: float = Field(
        30, gt=0, description="Longest the chosen replica may take to accept writes."
    )
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
    heartbeat_interval_seconds: float = Field(
        0.05, gt=0, description="Seconds between the drill probe's heartbeat writes."
    )
    failure_at: datetime | None = Field(
        None, description="Incidents: when the primary failed (lag reference), if known."
    )
