"""Where a point-in-time recovery stops: a time or a WAL position."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import ConfigError
from tasks.pitr.lsn import parse_lsn


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecoveryTarget(_Model):
    """Where recovery stops: a time or a WAL position, never both.

    ``inclusive=False`` (the default here) stops *just before* the target: with a damage
    commit's LSN as target, everything committed before the damage comes back, the damage
    does not.
    """

    time: datetime | None = None
    lsn: str | None = None
    inclusive: bool = False
    timeline: int | None = Field(None, description="recovery_target_timeline; None: latest")

    def model_post_init(self, _context: Any) -> None:
        if (self.time is None) == (self.lsn is None):
            raise ConfigError(
                "give exactly one of a recovery time or a recovery LSN",
                [("recovery_target", "time and lsn")],
            )
        if self.time is not None and self.time.tzinfo is None:
            raise ConfigError(
                "the recovery time needs a time zone (e.g. 2025-01-01T12:00:00+00:00)",
                [("recovery_time", self.time.isoformat())],
            )
        if self.lsn is not None:
            parse_lsn(self.lsn)

    def describe(self) -> str:
        where = f"time {self.time.astimezone(UTC).isoformat()}" if self.time else f"LSN {self.lsn}"
        return f"{'up to and including' if self.inclusive else 'just before'} {where}"
