"""The drill's RTO (restore and check wall time) and RPO (age of the newest backups)."""

from __future__ import annotations

from datetime import datetime, timedelta

from flows.backup_verification.models import DatabaseVerification
from flows.lifecycle import RunContext

__all__ = ["measure_restore"]


def _checked_at(r: DatabaseVerification) -> datetime:
    assert r.restored_at is not None
    return r.restored_at + timedelta(seconds=r.checks_seconds or 0.0)


def measure_restore(ctx: RunContext, results: list[DatabaseVerification]) -> None:
    """RTO: first download start to the last copy passing every check; RPO: backup age."""
    restored = [r for r in results if r.restored_at and r.fetch_started_at]
    own = [r for r in results if r.source == "repository" and r.age_seconds is not None]
    ages = [r.age_seconds for r in (own or results) if r.age_seconds is not None]
    if restored:
        start = min(r.fetch_started_at for r in restored if r.fetch_started_at)
        # Usable only once every check passed: restore end + the checks' own time.
        end = max(_checked_at(r) for r in restored)
        ctx.measure(
            rto_seconds=round((end - start).total_seconds(), 3),
            rto_basis="download + SHA-256 verification + pg_restore of the newest backup "
            f"into a scratch database + every check ({len(restored)} in parallel, wall time)",
            restored_at_basis="the last copy restored (pg_restore) passed every check (counts, "
            "schema, validation, amcheck)",
            rto_phases={
                "restore": round(
                    (max(r.restored_at for r in restored if r.restored_at) - start).total_seconds(),
                    3,
                ),
                "checks": max((r.checks_seconds or 0.0) for r in restored),
            },
        )
        if all(r.ok for r in results):
            ctx.stamp_restored(end)
    if ages:
        ctx.measure(
            rpo_seconds=round(max(ages), 3),
            rpo_basis="age of the newest backup at the drill: drill start - the dump's "
            "snapshot time (manifest started_at; file mtime for foreign dumps)",
        )
