"""Backups as every scenario sees them: the repository, the listing, a fresh base backup.

Repository layout::

    <repo>/<target>/<database>/<backup_id>/{toc.dat, NNNN.dat.gz, ..., manifest.json}
    <repo>/<target>/base/<backup_id>/{base.tar, backup_manifest, manifest.json}
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prefect.cache_policies import NO_CACHE

from dr.config import DRConfig
from dr.secretscan import configured_secrets
from dr.tasking import dr_task
from flows.common.backup_staging import (
    DatabaseBackupResult,
    resolve_password,
    stage_and_upload,
    staging_root,
    tool_conninfo,
)
from tasks.backups import manifest as backups_manifest
from tasks.backups import retention as backups_retention
from tasks.pitr import base_backup
from tasks.postgres import assess
from tasks.postgres import client as postgres_client
from tasks.storage import client as storage_client

__all__ = [
    "BASE_FOLDER",
    "backup_id_time",
    "base_backup_target",
    "base_backup_target_task",
    "list_backups",
    "open_target_repository",
]

#: Base backups of a target live under ``<target>/base/``.
BASE_FOLDER = "base"


def open_target_repository(config: DRConfig, url: str) -> storage_client.Repository:
    """Open a repository URL of the config, with the config's S3 endpoint and credentials."""
    if url.startswith("s3://"):
        return storage_client.open_repository(
            url, s3_client=storage_client.make_s3_client(config.aws)
        )
    return storage_client.open_repository(url)


def backup_id_time(backup_id: str) -> datetime | None:
    """The start time encoded in a backup id (``20250101T120000Z-...``), or None."""
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def list_backups(
    repo: storage_client.Repository, folder: str
) -> list[backups_retention.BackupEntry]:
    """Every backup under ``<folder>/``: complete when its manifest is there.

    ``folder`` is ``<target>/<database>`` or ``<target>/base``. Start times come from the
    ids (no manifest is downloaded); ids that encode none use the oldest object's time.
    """
    grouped: dict[str, list[storage_client.ObjectInfo]] = {}
    for obj in repo.list(folder.rstrip("/") + "/"):
        rest = obj.key[len(folder.rstrip("/")) + 1 :]
        if "/" not in rest:
            continue
        backup_id, _, _name = rest.partition("/")
        grouped.setdefault(backup_id, []).append(obj)
    entries = []
    for backup_id, objs in grouped.items():
        names = {o.key.rsplit("/", 1)[-1] for o in objs}
        started = backup_id_time(backup_id) or min(o.mtime for o in objs)
        entries.append(
            backups_retention.BackupEntry(
                backup_id=backup_id,
                started_at=started,
                complete=backups_manifest.MANIFEST_NAME in names,
                verified=backups_manifest.VERIFIED_NAME in names,
            )
        )
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def base_backup_target(
    config: DRConfig,
    target_name: str,
    *,
    staging_dir: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> DatabaseBackupResult:
    """Take a physical base backup of the target's primary (tar + backup_manifest), upload it.

    Its manifest records the start and stop LSN: with the WAL archive it is the starting
    point of point-in-time recovery.
    """
    target = config.target(target_name)
    pgc = target.postgres
    repo = open_target_repository(config, target.backup.repository)
    password = resolve_password(pgc)
    report = progress or (lambda fraction, message="": None)

    def make(backup_id: str, out_dir: Path) -> tuple[backups_manifest.Manifest, float]:
        info = base_backup.base_backup(
            tool_conninfo(pgc, pgc.maintenance_db),
            out_dir,
            password=password,
            bin_dir=pgc.primary.bin_dir,
            label=f"dr-pipelines {target_name} {backup_id}",
            secrets=configured_secrets(config),
        )
        server_version = assess.health(
            postgres_client.conninfo(
                pgc.primary, user=pgc.user, dbname=pgc.maintenance_db, password=password
            )
        ).server_version
        manifest = backups_manifest.build_manifest(
            out_dir,
            target=target_name,
            database="*",
            server_version=server_version or "",
            tool_version=info.tool_version,
            started_at=info.started_at,
            ended_at=info.ended_at,
            wal_lsn=info.start_lsn,
            wal_stop_lsn=info.stop_lsn,
            timeline=info.timeline,
            row_counts={},
            backup_id=backup_id,
            kind=backups_manifest.BASE_KIND,
        )
        return manifest, info.duration_seconds

    stage = staging_root(staging_dir) / target_name / BASE_FOLDER
    return stage_and_upload(
        repo, f"{target_name}/{BASE_FOLDER}", stage, make, report, label=f"{target_name} base"
    )


base_backup_target_task = dr_task(
    base_backup_target, name="base-backup", retries=2, cache_policy=NO_CACHE
)
