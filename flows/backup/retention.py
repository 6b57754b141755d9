"""After the backups: retention per folder, and the WAL archive's age against the RPO."""

from __future__ import annotations

import logging
from datetime import datetime

from prefect.cache_policies import NO_CACHE

from dr.clock import utcnow
from dr.config import DRConfig
from dr.tasking import dr_task
from flows.backup.models import RetentionResult
from flows.common.backups import list_backups, open_target_repository
from tasks.backups import retention as backups_retention
from tasks.pitr import archiving

__all__ = [
    "apply_retention",
    "apply_retention_task",
    "wal_archive_status",
    "wal_archive_status_task",
]

log = logging.getLogger(__name__)


def apply_retention(
    config: DRConfig, target_name: str, folder: str, *, now: datetime | None = None
) -> RetentionResult:
    """Delete the backups of one folder that the target's retention policy does not keep.

    Never deletes the newest verified backup nor the newest complete one
    (:func:`tasks.backups.plan_retention`).
    """
    target = config.target(target_name)
    repo = open_target_repository(config, target.backup.repository)
    entries = list_backups(repo, folder)
    keep, delete = backups_retention.plan_retention(
        entries, target.backup.retention, now or utcnow()
    )
    for entry in delete:
        count = repo.delete_prefix(f"{folder}/{entry.backup_id}/")
        log.info("retention: deleted backup %s/%s (%s objects)", folder, entry.backup_id, count)
    return RetentionResult(
        folder=folder, kept=[e.backup_id for e in keep], deleted=[e.backup_id for e in delete]
    )


def wal_archive_status(config: DRConfig, target_name: str) -> tuple[float | None, str | None]:
    """Age of the newest archived WAL segment of the target (None when no archive is set)."""
    target = config.target(target_name)
    if not target.backup.wal_archive:
        return None, None
    repo = open_target_repository(config, target.backup.wal_archive)
    newest = archiving.newest_wal_segment(repo)
    if newest is None:
        return None, None
    name, archived_at = newest
    return max(0.0, (utcnow() - archived_at).total_seconds()), name


apply_retention_task = dr_task(apply_retention, name="apply-retention", cache_policy=NO_CACHE)
wal_archive_status_task = dr_task(wal_archive_status, name="wal-archive-age", cache_policy=NO_CACHE)
