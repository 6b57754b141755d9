"""The drill's RTO (restore wall time) and RPO (age of the newest backups)."""

from __future__ import annotations

from flows.backup_verification.models import DatabaseVerification
from flows.lifecycle import RunContext

__all__ = ["measure_restore"]


def measure_restore(ctx: RunContext, results: list[DatabaseVerification]) -> None:
    """RTO: first download start to last restore end; RPO: the oldest newest backup's age."""
    restored = [r for r in results if r.restored_at and r.fetch_started_at]
    own = [r for r in results if r.source == "repository" and r.age_seconds is not None]
    ages = [r.age_seconds for r in (own or results) if r.age_seconds is not None]
    if restored:
        start = min(r.fetch_started_at for r in restored if r.fetch_started_at)
        end = max(r.restored_at for r in restored if r.restored_at)
        ctx.measure(
            rto_seconds=round((end - start).total_seconds(), 3),
            rto_basis="download + SHA-256 verification + pg_restore of the newest backup "
            f"into a scratch database ({len(restored)} in parallel, wall time)",
        )
        if all(r.ok for r in results):
            ctx.stamp_restored(end)
    if ages:
        ctx.measure(
            rpo_seconds=round(max(ages), 3),
            rpo_basis="age of the newest backup at the drill: drill start - the dump's "
            "snapshot time (manifest started_at; file mtime for foreign dumps)",
        )
