"""Verify a backup made by something else (``backup.foreign``): no manifest to compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from prefect.cache_policies import NO_CACHE

from dr.clock import utcnow
from dr.config import DRConfig, ForeignBackups, Target
from dr.errors import DRError, ObjectNotFound, VerificationError
from dr.tasking import dr_task
from flows.backup_verification.checks import check_backup_age, post_restore_checks
from flows.backup_verification.coverage import check_completion_trailer, check_coverage
from flows.backup_verification.models import DatabaseVerification
from flows.backup_verification.scratch import scratch_database
from flows.common.backups import open_target_repository
from tasks.backups import plain as backups_plain
from tasks.backups import restore as backups_restore
from tasks.backups import retention as backups_retention
from tasks.postgres import client as postgres_client
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = [
    "restore_foreign_dump",
    "restore_foreign_dump_task",
    "verify_foreign_backup",
    "verify_foreign_backup_task",
]

HEAD_BYTES = 512


def verify_foreign_backup(
    config: DRConfig,
    target_name: str,
    entry: ForeignBackups,
    *,
    short_id: str,
    rpo_seconds: float,
    progress: Callable[[float, str], None] | None = None,
    now: datetime | None = None,
    age_critical: bool = True,
    dump_key: str | None = None,
) -> DatabaseVerification:
    """Verify the newest dump matching a foreign entry as strictly as one of our own.

    Age, restorable, pg_dump's completion trailer (plain dumps), every table of the live
    source restored with its constraints (row counts shown next to the source's),
    validation queries, amcheck. The newest dump is the one with the newest timestamp in
    its name (modification time when no name has one).

    Args:
        age_critical: False when point-in-time recovery covers the RPO (the age is shown).
        dump_key: verify this object instead of the newest (a drill's corrupted copy).
    """
    target = config.target(target_name)
    report_progress = progress or (lambda fraction, message="": None)
    database = (
        entry.database
        or backups_retention.foreign_database_hint(entry.pattern)
        or target.postgres.databases[0]
    )
    result = DatabaseVerification(
        database=database,
        label=f"foreign {entry.pattern} ({database})",
        source="foreign",
        location=entry.location,
    )
    repo = open_target_repository(config, entry.location)
    newest = _find_dump(repo, entry, dump_key, result)
    if newest is None:
        return result
    check_backup_age(
        result,
        newest.mtime,
        now or utcnow(),
        rpo_seconds,
        seen="file modified",
        critical=age_critical,
    )
    try:
        head = storage_operations.read_object_task(repo, newest.key, HEAD_BYTES)
        fmt = backups_restore.detect_dump_format(head)
    except (VerificationError, ObjectNotFound) as exc:
        result.check("restore", False, str(exc))
        return result
    with scratch_database(target, database, short_id, result) as scratch:
        restored = _restore(target, repo, newest, fmt, scratch, result, report_progress)
        if restored is None:
            return result
        if fmt in ("plain", "plain-gzip"):
            check_completion_trailer(result, restored.trailer)
        check_coverage(target, database, scratch, result)
        post_restore_checks(
            target,
            database,
            scratch,
            result,
            expected_counts=None,
            expected_schema=None,
            heapallindexed=False,
        )
    report_progress(1.0, "done")
    return result


def _find_dump(
    repo: storage_client.Repository,
    entry: ForeignBackups,
    dump_key: str | None,
    result: DatabaseVerification,
) -> storage_client.ObjectInfo | None:
    """The dump to verify (the newest by name, or ``dump_key``); None: a failed check."""
    if dump_key is not None:
        listed = storage_operations.list_objects_task(repo, dump_key)
        newest = next((o for o in listed if o.key == dump_key), None)
    else:
        found = storage_operations.glob_objects_task(repo, entry.pattern)
        newest = backups_retention.pick_newest_by_name(found)
    if newest is None:
        result.check(
            "newest foreign dump",
            False,
            f"nothing in {entry.location} matches {dump_key or entry.pattern!r}",
        )
        return None
    result.location = repo.url_for(newest.key)
    result.backup_id = newest.key
    result.backup_started_at = newest.mtime
    result.files = 1
    result.bytes = newest.size
    result.check("newest foreign dump", True, f"{newest.key} ({newest.size} bytes)")
    return newest


def _restore(
    target: Target,
    repo: storage_client.Repository,
    newest: storage_client.ObjectInfo,
    fmt: str,
    scratch: str,
    result: DatabaseVerification,
    report_progress: Callable[[float, str], None],
) -> backups_restore.RestoreInfo | None:
    """Restore the foreign dump into the scratch database; None when it failed."""
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    tool_conn = postgres_client.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
    result.fetch_started_at = utcnow()
    t0 = time.perf_counter()
    try:
        restored = restore_foreign_dump_task(
            repo,
            newest.key,
            fmt,
            tool_conn,
            password=password,
            bin_dir=pgc.primary.bin_dir,
            total_bytes=newest.size,
            progress=lambda f, m="": report_progress(0.9 * f, m),
        )
    except DRError as exc:
        result.restore_seconds = round(time.perf_counter() - t0, 3)
        result.check("restore", False, f"{fmt} dump: {exc}")
        return None
    result.restore_seconds = round(time.perf_counter() - t0, 3)
    result.restored_at = utcnow()
    result.restore_jobs = restored.jobs
    result.check(
        "restore",
        True,
        f"{fmt} dump restored into {scratch} in {result.restore_seconds:.2f} s",
        value=result.restore_seconds,
    )
    return restored


verify_foreign_backup_task = dr_task(
    verify_foreign_backup, name="verify-foreign-backup", retries=0, cache_policy=NO_CACHE
)


def restore_foreign_dump(
    repo: storage_client.Repository,
    key: str,
    fmt: str,
    tool_conninfo: str,
    *,
    password: str | None,
    bin_dir: Path | None,
    total_bytes: int,
    progress: Callable[[float, str], None],
) -> backups_restore.RestoreInfo:
    """Stream a foreign dump from the repository into the scratch database.

    Plain SQL goes through psql (gunzip on the fly), a custom-format archive through
    pg_restore; gzip's CRC catches a corrupt or truncated ``.gz`` while it streams.
    """
    with repo.open_read(key) as fh:
        if fmt in ("plain", "plain-gzip"):
            return backups_plain.restore_plain(
                fh,
                tool_conninfo,
                gzipped=fmt == "plain-gzip",
                password=password,
                bin_dir=bin_dir,
                progress_cb=progress,
                total_bytes=total_bytes,
            )
        return backups_restore.restore_custom(
            fh,
            tool_conninfo,
            gzipped=fmt == "custom-gzip",
            password=password,
            bin_dir=bin_dir,
            progress_cb=progress,
        )


restore_foreign_dump_task = dr_task(
    restore_foreign_dump, name="restore-foreign-dump", retries=0, cache_policy=NO_CACHE
)
