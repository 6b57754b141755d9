"""One database's logical backup: ``pg_dump -Fd`` in its own exported snapshot, uploaded.

The row counts and the schema fingerprint are read while ``pg_dump`` runs, not before and
after it: the counts in the exported snapshot's transaction (exactly the dump's rows), the
fingerprint while the dump's locks keep the tables' definitions from changing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect.cache_policies import NO_CACHE

from dr.config import DRConfig
from dr.tasking import dr_task
from flows.common.backup_staging import (
    DatabaseBackupResult,
    resolve_password,
    stage_and_upload,
    staging_root,
    tool_conninfo,
)
from flows.common.backups import open_target_repository
from tasks.backups import dump as backups_dump
from tasks.backups import manifest as backups_manifest
from tasks.postgres import checks as postgres_checks
from tasks.postgres import client as postgres_client

__all__ = ["backup_database", "backup_database_task"]


def backup_database(
    config: DRConfig,
    target_name: str,
    database: str,
    *,
    staging_dir: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> DatabaseBackupResult:
    """Dump one database in its own exported snapshot, describe it, upload it (resumable).

    Args:
        config: the validated config.
        target_name: the target.
        database: one of the target's databases.
        staging_dir: local staging root (default ``$DR_STAGING_DIR`` or ~/.cache/...).
        progress: called with (fraction, message).

    Returns:
        A :class:`DatabaseBackupResult`.
    """
    target = config.target(target_name)
    pgc = target.postgres
    repo = open_target_repository(config, target.backup.repository)
    password = resolve_password(pgc)
    bin_dir = pgc.primary.bin_dir
    report = progress or (lambda fraction, message="": None)

    def make(backup_id: str, out_dir: Path) -> tuple[backups_manifest.Manifest, float]:
        db_conninfo = tool_conninfo(pgc, database)
        live = postgres_client.conninfo(
            pgc.primary, user=pgc.user, dbname=database, password=password
        )
        # The counts (in the snapshot's own transaction, so the dump's rows) and the schema
        # fingerprint need nothing from the dump: they run while pg_dump does.
        with (
            backups_dump.SnapshotSession(db_conninfo, password=password, bin_dir=bin_dir) as snap,
            ThreadPoolExecutor(2, thread_name_prefix=f"backup-{database}") as pool,
        ):
            counting = pool.submit(snap.row_counts)
            fingerprinting = pool.submit(postgres_checks.schema_fingerprint, live)
            info = backups_dump.dump_database(
                db_conninfo,
                database,
                out_dir,
                jobs=target.backup.dump_jobs,
                snapshot=snap.snapshot_id,
                password=password,
                bin_dir=bin_dir,
            )
            counts = counting.result()
            fingerprint = fingerprinting.result()["sha256"]
        manifest = backups_manifest.build_manifest(
            out_dir,
            target=target_name,
            database=database,
            server_version=snap.server_version,
            tool_version=info.tool_version,
            started_at=info.started_at,
            ended_at=info.ended_at,
            wal_lsn=snap.wal_lsn,
            row_counts=counts,
            backup_id=backup_id,
            schema_fingerprint=fingerprint,
        )
        return manifest, info.duration_seconds

    stage = staging_root(staging_dir) / target_name / database
    return stage_and_upload(
        repo, f"{target_name}/{database}", stage, make, report, label=f"{target_name}/{database}"
    )


backup_database_task = dr_task(
    backup_database, name="backup-database", retries=2, cache_policy=NO_CACHE
)
