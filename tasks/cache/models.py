"""What the cache steps report: plain pydantic values, no I/O."""

from __future__ import annotations

from pydantic import BaseModel, Field


class _Model(BaseModel):
    model_config = {"extra": "forbid"}


class FlushReport(_Model):
    """Keys removed from one cache: all of its database, or those matching patterns."""

    cache: str
    mode: str = Field(description="all, patterns or none")
    keys_flushed: int = 0
    by_pattern: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0

    def sentence(self) -> str:
        if self.mode == "none":
            return f"cache {self.cache}: left as it was (after_recovery.flush: none)"
        return f"cache {self.cache}: flushed {self.keys_flushed} key(s) ({self.mode})"


class WarmReport(_Model):
    """Keys written by a warm-up, and how long it took."""

    cache: str
    source: str = Field(description="sql, command or none")
    keys_written: int = 0
    seconds: float = 0.0


class HitRate(_Model):
    """A sample of reads: how many of the keys were there."""

    cache: str
    sampled: int
    hits: int
    missing: list[str] = Field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.sampled if self.sampled else 1.0


class CacheRecovery(_Model):
    """Everything done to one cache after a recovery, for the run's report."""

    cache: str
    flush: FlushReport
    warm: WarmReport
    hit_rate: HitRate
    min_hit_rate: float
    passed: bool

    def sentence(self) -> str:
        verdict = "ok" if self.passed else f"below {self.min_hit_rate:.0%}"
        return (
            f"{self.flush.sentence()}; warmed {self.warm.keys_written} key(s) in "
            f"{self.warm.seconds:.1f}s; hit rate {self.hit_rate.rate:.0%} of "
            f"{self.hit_rate.sampled} ({verdict})"
        )
