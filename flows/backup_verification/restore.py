"""Verify one database's newest backup: download with checksums, restore, check."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from prefect.cache_policies import NO_CACHE

from dr.clock import utcnow
from dr.config import DRConfig, Target
from dr.errors import ChecksumMismatch, DRError, ObjectNotFound, VerificationError
from dr.tasking import dr_task
from flows.backup_verification.checks import check_backup_age, post_restore_checks
from flows.backup_verification.links import read_scratch_link_rows
from flows.backup_verification.models import DatabaseVerification, NewestBackup
from flows.backup_verification.newest import find_newest_backup_task
from flows.backup_verification.scratch import scratch_database
from flows.common.backups import open_target_repository
from tasks.backups import manifest as backups_manifest
from tasks.backups import restore as backups_restore
from tasks.postgres import client as postgres_client
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = ["verify_database_backup", "verify_database_backup_task"]


def fetch_backup_files(
    repo: storage_client.Repository,
    prefix: str,
    manifest: backups_manifest.Manifest,
    dest: Path,
    progress: Callable[[float, str], None],
) -> None:
    """Download every manifest file, verifying SHA-256 while streaming (ChecksumMismatch)."""
    total = max(1, manifest.total_bytes)
    done = 0
    for entry in manifest.files:
        storage_operations.get_to_file_task(
            repo, f"{prefix}/{entry.path}", dest / entry.path, expected_sha256=entry.sha256
        )
        local_size = (dest / entry.path).stat().st_size
        if local_size != entry.size:
            raise ChecksumMismatch(
                f"{repo.url_for(prefix + '/' + entry.path)}: {local_size} bytes, "
                f"manifest says {entry.size}"
            )
        done += entry.size
        progress(0.3 * done / total, f"verified {entry.path}")


def verify_database_backup(
    config: DRConfig,
    target_name: str,
    database: str,
    *,
    short_id: str,
    rpo_seconds: float,
    newest: NewestBackup | None = None,
    work_dir: str | None = None,
    heapallindexed: bool = False,
    progress: Callable[[float, str], None] | None = None,
    now: datetime | None = None,
    age_critical: bool = True,
) -> DatabaseVerification:
    """Verify one database's newest backup end to end; every finding becomes a check.

    Args:
        config: the validated config.
        target_name: the target.
        database: the database whose backup is verified.
        short_id: makes the scratch database's name unique (the drill's run id).
        rpo_seconds: the tier's RPO, for the age check.
        newest: the backup to verify (a corrupted copy when injecting); default the newest
            complete backup in the target's repository.
        work_dir: where the backup is downloaded (a temporary folder inside it).
        heapallindexed: deeper pg_amcheck.
        progress: called with (fraction, message).
        now: the drill's time, for the backup's age.
        age_critical: False when point-in-time recovery covers the RPO (the age is shown).

    Returns:
        A :class:`DatabaseVerification`; its checks say what passed and failed.

    Raises:
        UnsafeTargetError: the scratch name is a target database or exists already.
    """
    target = config.target(target_name)
    report_progress = progress or (lambda fraction, message="": None)
    result = DatabaseVerification(database=database)
    repo = open_target_repository(config, target.backup.repository)
    try:
        chosen = newest or find_newest_backup_task(repo, target_name, database)
    except VerificationError as exc:
        result.check("newest backup", False, str(exc))
        return result
    manifest = chosen.manifest
    _record_chosen(result, chosen)
    check_backup_age(
        result, manifest.started_at, now or utcnow(), rpo_seconds, seen="snapshot at",
        critical=age_critical,
    )  # fmt: skip
    prefix = f"{chosen.folder}/{chosen.backup_id}"
    local = Path(tempfile.mkdtemp(prefix=f"dr-verify-{database}-", dir=work_dir))
    try:
        result.fetch_started_at = utcnow()
        t0 = time.perf_counter()
        try:
            fetch_backup_files(repo, prefix, manifest, local, report_progress)
        except (ChecksumMismatch, ObjectNotFound) as exc:
            result.check("checksums", False, str(exc))
            return result
        result.fetch_seconds = round(time.perf_counter() - t0, 3)
        result.check("checksums", True, f"{len(manifest.files)} files match the manifest's SHA-256")
        with scratch_database(target, database, short_id, result) as scratch:
            if _restore(target, scratch, local, result, report_progress):
                report_progress(0.9, "checking the restored copy")
                post_restore_checks(
                    target,
                    database,
                    scratch,
                    result,
                    expected_counts=manifest.row_counts,
                    expected_schema=manifest.schema_fingerprint,
                    heapallindexed=heapallindexed,
                )
                read_scratch_link_rows(target, database, scratch, result)  # while it exists
    finally:
        shutil.rmtree(local, ignore_errors=True)
        report_progress(1.0, "done")
    return result


def _record_chosen(result: DatabaseVerification, chosen: NewestBackup) -> None:
    manifest = chosen.manifest
    result.location = chosen.location
    result.backup_id = chosen.backup_id
    result.backup_started_at = manifest.started_at
    result.files = len(manifest.files)
    result.bytes = manifest.total_bytes
    result.check("newest backup", True, f"{chosen.backup_id} ({manifest.total_bytes} bytes)")


def _restore(
    target: Target,
    scratch: str,
    local: Path,
    result: DatabaseVerification,
    report_progress: Callable[[float, str], None],
) -> bool:
    """``pg_restore`` the downloaded dump into the scratch database; False when it failed."""
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    tool_conn = postgres_client.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
    t1 = time.perf_counter()
    try:
        restored = backups_restore.restore_dump_task(
            local,
            tool_conn,
            password=password,
            bin_dir=pgc.primary.bin_dir,
            progress_cb=lambda f, m="": report_progress(0.3 + 0.6 * f, m),
        )
    except DRError as exc:
        result.restore_seconds = round(time.perf_counter() - t1, 3)
        found = backups_manifest.diagnose_dump_dir(local)
        result.check("restore", False, str(exc) + (f" [{'; '.join(found[:3])}]" if found else ""))
        return False
    result.restore_seconds = restored.duration_seconds
    result.restored_at = utcnow()
    result.restore_jobs = restored.jobs
    result.check(
        "restore",
        True,
        f"pg_restore -j {restored.jobs} into {scratch} in {restored.duration_seconds:.2f} s",
        value=restored.duration_seconds,
    )
    return True


verify_database_backup_task = dr_task(
    verify_database_backup, name="verify-database-backup", retries=0, cache_policy=NO_CACHE
)
