"""Stage a backup locally, then upload it: resumable, one run per staging folder.

Every file is uploaded and checked against its manifest SHA-256, then the manifest LAST (a backup
without a manifest is incomplete and no drill will pick it).

Resuming after an interruption: the local staging folder keeps a ``.partial`` marker
naming the backup id whose dump and manifest are complete on disk but not yet uploaded.
The next run finds it, re-uploads with the repository's idempotent put (identical objects
are ``unchanged`` and not sent again) and writes the manifest. Why not "find the newest
manifest-less folder in the repository" instead: a new ``pg_dump`` writes other bytes
(another snapshot, other gzip streams), so the files already uploaded could never be
reused without the local dump that produced them; the marker names exactly that dump.
A marker whose local files no longer match their manifest, or older than
:data:`RESUME_MAX_AGE`, is discarded and a fresh backup is taken; the orphaned upload is
removed later by retention. A lock file in the staging folder keeps two runs of the same
target from sharing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from dr.clock import utcnow
from dr.config import PostgresConfig
from dr.errors import DRError, PreconditionError
from tasks.backups import manifest as backups_manifest
from tasks.postgres.client import conninfo
from tasks.storage import client as storage_client

__all__ = [
    "LOCK_FILE",
    "PARTIAL_MARKER",
    "RESUME_MAX_AGE",
    "STAGING_ENV",
    "DatabaseBackupResult",
    "resolve_password",
    "stage_and_upload",
    "staging_root",
    "tool_conninfo",
]

log = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial"
LOCK_FILE = ".lock"
#: A staged dump older than this is not resumed: uploading it would make an old snapshot
#: look like this hour's backup; a fresh dump is taken instead.
RESUME_MAX_AGE = timedelta(hours=6)
STAGING_ENV = "DR_STAGING_DIR"


class DatabaseBackupResult(BaseModel):
    """One database's (or the cluster's, for base backups) backup."""

    database: str
    backup_id: str
    location: str
    kind: str
    files: int
    bytes: int
    uploaded: int = Field(description="files sent in this run")
    unchanged: int = Field(description="files already stored, identical, not sent again")
    resumed: bool
    dump_seconds: float
    upload_seconds: float
    total_seconds: float
    rows: int
    wal_lsn: str | None = None
    wal_stop_lsn: str | None = None


def staging_root(staging_dir: str | None) -> Path:
    if staging_dir:
        return Path(staging_dir)
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV])
    return Path.home() / ".cache" / "dr-pipelines" / "staging"


def resolve_password(pgc: PostgresConfig) -> str | None:
    return pgc.password.resolve() if pgc.password else None


def tool_conninfo(pgc: PostgresConfig, dbname: str) -> str:
    """Conninfo for the command-line tools: no password (it goes in PGPASSWORD, not argv)."""
    return conninfo(
        pgc.primary,
        user=pgc.user,
        dbname=dbname,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name="dr-pipelines-backup",
    )


# --------------------------------------------------------------------------- one backup


class _Marker(BaseModel):
    backup_id: str
    folder: str
    dump_seconds: float
    created_at: datetime


def _read_marker(path: Path) -> _Marker | None:
    try:
        return _Marker.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def _usable_partial(stage: Path, marker: _Marker | None) -> backups_manifest.Manifest | None:
    """The manifest of a staged, complete, unchanged dump the marker names; else None."""
    if marker is None:
        return None
    folder = stage / marker.backup_id
    manifest_path = folder / backups_manifest.MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = backups_manifest.read_manifest(manifest_path)
    except DRError:
        return None
    problems = backups_manifest.verify_local_files(folder, manifest)
    if problems:
        log.warning("staged backup %s changed on disk (%s); discarding it", folder, problems[0])
        return None
    return manifest


def _upload(
    repo: storage_client.Repository,
    prefix: str,
    folder: Path,
    manifest: backups_manifest.Manifest,
    progress: Callable[[float, str], None],
) -> tuple[int, int]:
    """Every file up, checked against its manifest SHA-256, then the manifest.

    By file name (``put_file``), not as a stream: a ``file://`` repository on the staging
    folder's filesystem links the file instead of copying it, and S3 reads the parts of
    a file in parallel; both still verify what they stored against ``entry.sha256``.

    Returns:
        (sent, unchanged).
    """
    total = max(1, manifest.total_bytes)
    done = 0
    sent = unchanged = 0
    for entry in manifest.files:
        result = repo.put_file(
            f"{prefix}/{entry.path}", folder / entry.path, expected_sha256=entry.sha256
        )
        if result.outcome == "unchanged":
            unchanged += 1
        else:
            sent += 1
        done += entry.size
        progress(0.3 + 0.7 * done / total, f"uploaded {entry.path}")
    # Last: only now is the backup complete for drills and retention.
    repo.put_bytes(
        f"{prefix}/{backups_manifest.MANIFEST_NAME}",
        (manifest.model_dump_json(indent=2) + "\n").encode(),
    )
    return sent, unchanged


def stage_and_upload(
    repo: storage_client.Repository,
    folder_key: str,
    stage: Path,
    make: Callable[[str, Path], tuple[backups_manifest.Manifest, float]],
    progress: Callable[[float, str], None],
    *,
    label: str,
) -> DatabaseBackupResult:
    """Resume a staged backup or make a new one, upload it, then clear the staging folder."""
    stage.mkdir(parents=True, exist_ok=True)
    with _stage_lock(stage, label):
        return _stage_and_upload_locked(repo, folder_key, stage, make, progress, label=label)


@contextlib.contextmanager
def _stage_lock(stage: Path, label: str) -> Iterator[None]:
    """One backup per staging folder at a time (an hourly run overlapping a manual one)."""
    with open(stage / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreconditionError(
                f"another backup of {label} is running (staging folder {stage} is locked)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fresh_marker(marker_path: Path, label: str) -> _Marker | None:
    """The staging marker, unless it is missing, unreadable or too old to resume."""
    marker = _read_marker(marker_path)
    if marker is not None and utcnow() - marker.created_at > RESUME_MAX_AGE:
        log.warning(
            "staged backup %s of %s is older than %s: taking a fresh one instead",
            marker.backup_id,
            label,
            RESUME_MAX_AGE,
        )
        marker = None
    return marker


def _fresh_dump(
    stage: Path,
    make: Callable[[str, Path], tuple[backups_manifest.Manifest, float]],
    progress: Callable[[float, str], None],
) -> tuple[backups_manifest.Manifest, float]:
    """Clear the staging folder, make a new backup in it, and mark it resumable."""
    marker_path = stage / PARTIAL_MARKER
    # Anything left in staging without a usable marker is an interrupted dump: useless.
    marker_path.unlink(missing_ok=True)
    for leftover in stage.iterdir():
        if leftover.name == LOCK_FILE:
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    backup_id = backups_manifest.new_backup_id()
    progress(0.02, "dumping")
    manifest, dump_seconds = make(backup_id, stage / backup_id)
    backups_manifest.write_manifest(manifest, stage / backup_id / backups_manifest.MANIFEST_NAME)
    marker_path.write_text(
        _Marker(
            backup_id=backup_id,
            folder=str(stage / backup_id),
            dump_seconds=dump_seconds,
            created_at=utcnow(),
        ).model_dump_json()
    )
    progress(0.3, "dumped; uploading")
    return manifest, dump_seconds


def _stage_and_upload_locked(
    repo: storage_client.Repository,
    folder_key: str,
    stage: Path,
    make: Callable[[str, Path], tuple[backups_manifest.Manifest, float]],
    progress: Callable[[float, str], None],
    *,
    label: str,
) -> DatabaseBackupResult:
    t0 = time.perf_counter()
    marker_path = stage / PARTIAL_MARKER
    marker = _fresh_marker(marker_path, label)
    manifest = _usable_partial(stage, marker)
    resumed = manifest is not None
    if manifest is not None and marker is not None:
        dump_seconds = marker.dump_seconds
        log.info("resuming upload of staged backup %s of %s", marker.backup_id, label)
        progress(0.3, f"resuming {marker.backup_id}")
    else:
        manifest, dump_seconds = _fresh_dump(stage, make, progress)
    folder = stage / manifest.backup_id
    prefix = f"{folder_key}/{manifest.backup_id}"
    t_up = time.perf_counter()
    sent, unchanged = _upload(repo, prefix, folder, manifest, progress)
    upload_seconds = time.perf_counter() - t_up
    marker_path.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    progress(1.0, "done")
    result = DatabaseBackupResult(
        database=manifest.database,
        backup_id=manifest.backup_id,
        location=repo.url_for(prefix),
        kind=manifest.kind,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        uploaded=sent,
        unchanged=unchanged,
        resumed=resumed,
        dump_seconds=round(dump_seconds, 3),
        upload_seconds=round(upload_seconds, 3),
        total_seconds=round(time.perf_counter() - t0, 3),
        rows=sum(manifest.row_counts.values()),
        wal_lsn=manifest.wal_lsn,
        wal_stop_lsn=manifest.wal_stop_lsn,
    )
    log.info(
        "backup %s of %s: %s files (%s sent, %s unchanged), %s bytes, %s",
        result.backup_id,
        label,
        result.files,
        sent,
        unchanged,
        result.bytes,
        "resumed" if resumed else "new",
    )
    return result
