"""What PostgreSQL steps answer: a node's health, its replication, fence proofs, checks.

LSNs are PostgreSQL's text form (``0/3000148``); every ``checked_at`` is aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow

#: The ``system`` of every Change this package records.
SYSTEM = "postgres"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeHealth(_Model):
    """What one server looks like right now.

    ``reachable=False`` carries the reason in ``error``; every other field is then None.
    LSNs are PostgreSQL's text form (``0/3000148``).
    """

    target: str = Field(description="user@host:port/dbname (never a password).")
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    server_version: str | None = None
    server_version_num: int | None = None
    timeline_id: int | None = None
    current_lsn: str | None = Field(None, description="Primary: pg_current_wal_lsn().")
    received_lsn: str | None = Field(None, description="Standby: last WAL received.")
    replayed_lsn: str | None = Field(None, description="Standby: last WAL replayed.")
    replay_lag_seconds: float | None = Field(
        None,
        description="Standby: 0 when everything received is replayed, else now() minus "
        "the last replayed transaction's commit time.",
    )
    is_accepting_writes: bool = False
    checked_at: datetime = Field(default_factory=utcnow)

    @property
    def role(self) -> Literal["primary", "standby", "unreachable"]:
        if not self.reachable:
            return "unreachable"
        return "standby" if self.in_recovery else "primary"


class ReplicaStatus(_Model):
    """One standby as its primary sees it (a row of ``pg_stat_replication``)."""

    application_name: str
    client_addr: str | None = None
    state: str | None = None
    sync_state: str | None = None
    sent_lsn: str | None = None
    write_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    lag_bytes: int | None = Field(None, description="Primary's current LSN minus replay_lsn.")
    write_lag_seconds: float | None = None
    flush_lag_seconds: float | None = None
    replay_lag_seconds: float | None = None


class StandbyStatus(_Model):
    """A standby as it sees itself (``pg_stat_wal_receiver`` and its replay position)."""

    target: str
    in_recovery: bool
    receiver_status: str | None = Field(
        None, description="'streaming' when healthy; None when no WAL receiver runs."
    )
    sender_host: str | None = None
    sender_port: int | None = None
    slot_name: str | None = None
    received_tli: int | None = None
    flushed_lsn: str | None = None
    latest_end_lsn: str | None = None
    last_msg_receipt_at: datetime | None = None
    replayed_lsn: str | None = None
    last_replay_at: datetime | None = Field(
        None, description="Commit time of the last replayed transaction."
    )
    replay_lag_seconds: float | None = None
    replay_backlog_bytes: int | None = Field(None, description="Received but not replayed.")
    checked_at: datetime = Field(default_factory=utcnow)


FenceMethod = Literal[
    "refused",
    "unreachable",
    "not_accepting_connections",
    "in_recovery",
    "read_only",
    "write_succeeded",
    "unknown",
]


class FenceProof(_Model):
    """Whether a node was shown unable to take writes, how, and why (or why not)."""

    target: str
    proven: bool
    method: FenceMethod
    reason: str
    checked_at: datetime = Field(default_factory=utcnow)


class CheckResult(_Model):
    """One SQL check: ``ok`` is the answer, ``detail`` explains it for a person."""

    name: str
    ok: bool
    value: Any = None
    detail: str = ""
    duration_seconds: float
