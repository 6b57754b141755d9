"""What the drill leaves behind: ``verified.json`` markers, and its checks in the run."""

from __future__ import annotations

import json

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import VerificationError
from flows.backup_verification.models import DatabaseVerification
from flows.backup_verification.scratch import drop_scratch_database
from flows.lifecycle import RunContext
from tasks.backups import manifest as backups_manifest
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = ["mark_verified", "record_results"]


def mark_verified(
    ctx: RunContext, repo: storage_client.Repository, result: DatabaseVerification, folder: str
) -> None:
    """Write ``verified.json`` next to a backup that passed (retention keeps the newest one)."""
    if result.backup_id is None:
        raise ValueError(f"{result.database}: no backup id to mark verified")
    prefix = f"{folder}/{result.backup_id}"
    if not ctx.plan("mark verified", repo.url_for(prefix)):
        return
    body = {
        "verified_at": utcnow().isoformat(),
        "flow_run_id": ctx.flow_run_id,
        "restore_seconds": result.restore_seconds,
        "checks": [c.model_dump(mode="json") for c in result.checks],
    }
    # Not a change to compensate: the backup was verified, whatever else fails later.
    put = storage_operations.put_bytes_task(
        repo,
        f"{prefix}/{backups_manifest.VERIFIED_NAME}",
        json.dumps(body, indent=2).encode(),
        overwrite=True,
    )
    ctx.note(f"{result.database}: backup {result.backup_id} marked verified ({put.url})")


def _record_scratch(ctx: RunContext, name: str, dropped: bool) -> None:
    """The scratch database as a change: net nothing when dropped, else undone by the run."""
    pgc = ctx.target.postgres
    where = f"database {name} on {pgc.primary.host}:{pgc.primary.port}"
    if dropped:
        ctx.record_change(
            Change(
                system="postgres",
                action="restore-into-scratch",
                object=where,
                outcome="unchanged",
                before={"exists": False},
                after={"exists": False},
                undo="",
                compensable=False,
            )
        )
        return
    target = ctx.target
    ctx.record_change(
        Change(
            system="postgres",
            action="create-database",
            object=where,
            outcome="created",
            before={"exists": False},
            after={"exists": True},
            undo=f"DROP DATABASE {name}",
        ),
        undo=lambda: drop_scratch_database(target, name),
    )


def record_results(ctx: RunContext, results: list[DatabaseVerification]) -> None:
    """Put every check and change into the run, the per-database details into the report."""
    for r in results:
        for c in r.checks:
            ctx.record_check(c.name, c.ok, critical=c.critical, detail=c.detail, value=c.value)
        if r.scratch_database:
            _record_scratch(ctx, r.scratch_database, r.scratch_dropped)
    ctx.details["databases"] = [
        r.model_dump(mode="json", exclude={"changes", "checks"}) for r in results
    ]
    failed = [c for r in results for c in r.checks if c.critical and not c.ok]
    if failed:
        raise VerificationError(
            "; ".join(f"{c.name}: {c.detail}" for c in failed[:4])
            + (f" (and {len(failed) - 4} more)" if len(failed) > 4 else "")
        )
