"""Failback's options and report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change

__all__ = ["STREAMING_TIMEOUT_SECONDS", "FailbackOptions", "FailbackReport", "NodeRejoin"]


#: How long a rejoined node may take to report streaming before the base-backup fallback.
STREAMING_TIMEOUT_SECONDS = 60.0


class FailbackOptions(BaseModel):
    """Options of a failback (``--option k=v`` or the flow's ``options`` parameter)."""

    model_config = ConfigDict(extra="forbid")

    switch_back: bool = Field(
        True, description="After rejoining, make the configured primary the primary again."
    )
    rejoin_method: Literal["rewind", "base_backup"] = Field(
        "rewind", description="rewind (falls back to a base backup) or base_backup directly."
    )
    catch_up_timeout_seconds: float = Field(60, gt=0)
    streaming_timeout_seconds: float = Field(STREAMING_TIMEOUT_SECONDS, gt=0)
    start_timeout_seconds: float = Field(60, gt=0)
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer name in dr_heartbeat; None: not checked."
    )
    verify_timeout_seconds: float = Field(60, gt=0)


class NodeRejoin(BaseModel):
    """How one node became a standby again."""

    node: str
    primary: str
    method: Literal["rewind", "base_backup", "already_streaming", "planned"]
    rewind_required: bool | None = None
    fallback_reason: str = ""
    seconds: float = 0.0


class FailbackReport(BaseModel):
    """What a failback did (also ``details["failback"]`` of a drill)."""

    target: str
    primary_before: str | None = None
    primary_after: str | None = None
    rejoined: list[NodeRejoin] = Field(default_factory=list)
    switched_back: bool = False
    switch_back_seconds: float | None = None
    switch_back_lost_nothing: bool | None = None
    app_write_on_primary_at: datetime | None = None
    roles_as_configured: bool | None = None
    ok: bool = False
    reason: str = ""
    dry_run: bool = False
    phases: list[dict[str, Any]] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    not_undone: list[str] = Field(default_factory=list)
