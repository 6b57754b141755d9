"""Take backups of a target: ``pg_dump -Fd`` of every database, or a physical base backup.

The runbook it replaces (seed 003): hourly ``pg_dump`` to S3, 48 hourly / 30 daily / 52
weekly retention, WAL archiving for point-in-time recovery. Steps, per database and in
parallel: dump in the dump's own exported snapshot (so the manifest's row counts are
exactly what the dump holds) into a local staging folder; describe it in a manifest; upload
every file by streaming with its SHA-256, then the manifest LAST (a backup without a
manifest is incomplete and no drill will pick it); apply retention. Then the WAL archive's
age is compared with the target's RPO.

Repository layout::

    <repo>/<target>/<database>/<backup_id>/{toc.dat, NNNN.dat.gz, ..., manifest.json}
    <repo>/<target>/base/<backup_id>/{base.tar, backup_manifest, manifest.json}

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
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from dr.config import DRConfig, PostgresConfig, Target, load_config
from dr.errors import ConfigError, DRError, PreconditionError, StorageError
from dr.tasking import dr_task
from flows.registry import find_config_path
from tasks import backups as bk
from tasks import postgres as pg
from tasks import report, storage

__all__ = [
    "BASE_FOLDER",
    "BackupFailed",
    "BackupKind",
    "BackupRunResult",
    "DatabaseBackupResult",
    "ProgressBoard",
    "RetentionResult",
    "backup_flow",
    "backup_id_time",
    "list_backups",
    "open_target_repository",
    "run_backup",
]

log = logging.getLogger(__name__)

#: Base backups of a target live under ``<target>/base/``.
BASE_FOLDER = "base"
PARTIAL_MARKER = ".partial"
LOCK_FILE = ".lock"
#: A staged dump older than this is not resumed: uploading it would make an old snapshot
#: look like this hour's backup; a fresh dump is taken instead.
RESUME_MAX_AGE = timedelta(hours=6)
STAGING_ENV = "DR_STAGING_DIR"
#: Progress artifacts and bars are refreshed at most this often.
PROGRESS_INTERVAL_SECONDS = 0.5


class BackupKind(StrEnum):
    """``logical``: pg_dump of every database; ``base``: pg_basebackup of the cluster (PITR)."""

    logical = "logical"
    base = "base"


# --------------------------------------------------------------------------- results


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


class RetentionResult(BaseModel):
    folder: str
    kept: list[str]
    deleted: list[str]


class BackupRunResult(BaseModel):
    """What ``backup_flow`` returns (``dr backup --json`` prints it)."""

    target: str
    kind: str
    ok: bool
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    backups: list[DatabaseBackupResult] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)
    retention: list[RetentionResult] = Field(default_factory=list)
    wal_archive_age_seconds: float | None = None
    wal_newest_segment: str | None = None
    rpo_objective_seconds: float
    wal_within_rpo: bool | None = None
    warnings: list[str] = Field(default_factory=list)


class BackupFailed(DRError):
    """A database's backup failed; raised after the report, carrying the whole result."""

    def __init__(self, result: BackupRunResult) -> None:
        super().__init__(
            f"{result.kind} backup of {result.target} failed for "
            + "; ".join(f"{name}: {reason}" for name, reason in result.failures.items())
        )
        self.result = result


# --------------------------------------------------------------------------- progress


class ProgressBoard:
    """Progress of parallel branches: rich bars on a terminal and one Prefect progress
    artifact; branches report from their threads, the flow thread refreshes the display."""

    def __init__(
        self, key: str | None, description: str, names: list[str], *, bars: bool = True
    ) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, str]] = {n: (0.0, "waiting") for n in names}
        self._artifact = (
            report.ProgressArtifact(key, description)
            if key and FlowRunContext.get() is not None
            else None
        )
        self._last_pct = -1.0
        self._rich: Any = None
        self._bars: dict[str, Any] = {}
        if bars and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn("{task.fields[name]:<16}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                transient=False,
            )
            self._rich.start()
            for n in names:
                self._bars[n] = self._rich.add_task("waiting", total=100, name=n)

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (a Dask worker): state only, no display or lock.

        Progress reported in another process stays there; the flow's display shows the
        branches' results when they come back.
        """
        state = self.__dict__.copy()
        state.update(_lock=None, _rich=None, _bars={}, _artifact=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def update(self, name: str, fraction: float, message: str = "") -> None:
        """Record a branch's progress (thread-safe; cheap)."""
        with self._lock:
            self._state[name] = (max(0.0, min(1.0, fraction)), message)

    def callback(self, name: str) -> Callable[[float, str], None]:
        """A ``progress(fraction, message)`` function for one branch."""
        return lambda fraction, message="": self.update(name, fraction, message)

    @property
    def overall(self) -> float:
        with self._lock:
            values = [f for f, _ in self._state.values()]
        return sum(values) / len(values) if values else 1.0

    def latest(self) -> str:
        """A one-line summary: each branch's percentage and message."""
        with self._lock:
            return "; ".join(f"{n} {f * 100:.0f}% {m}" for n, (f, m) in self._state.items())

    def refresh(self) -> None:
        """Push the current state to the bars and the artifact (call from the flow thread)."""
        with self._lock:
            state = dict(self._state)
        if self._rich is not None:
            for name, (fraction, message) in state.items():
                self._rich.update(self._bars[name], completed=fraction * 100, description=message)
        pct = round(self.overall * 100, 1)
        if self._artifact is not None and abs(pct - self._last_pct) >= 1.0:
            with contextlib.suppress(Exception):  # a progress display never fails a backup
                self._artifact.update(self.overall, self.latest()[:200])
                self._last_pct = pct

    def wait(self, futures: list[Any]) -> None:
        """Refresh until every future is done (returns as soon as the last one is)."""
        pending = list(futures)
        while pending:
            pending[0].wait(timeout=PROGRESS_INTERVAL_SECONDS)
            pending = [f for f in pending if not f.state.is_final()]
            self.refresh()

    def close(self) -> None:
        self.refresh()
        if self._rich is not None:
            self._rich.stop()


# --------------------------------------------------------------------------- helpers


def open_target_repository(config: DRConfig, url: str) -> storage.Repository:
    """Open a repository URL of the config, with the config's S3 endpoint and credentials."""
    if url.startswith("s3://"):
        return storage.open_repository(url, s3_client=storage.make_s3_client(config.aws))
    return storage.open_repository(url)


def backup_id_time(backup_id: str) -> datetime | None:
    """The start time encoded in a backup id (``20250101T120000Z-...``), or None."""
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def list_backups(repo: storage.Repository, folder: str) -> list[bk.BackupEntry]:
    """Every backup under ``<folder>/``: complete when its manifest is there.

    ``folder`` is ``<target>/<database>`` or ``<target>/base``. Start times come from the
    ids (no manifest is downloaded); ids that encode none use the oldest object's time.
    """
    grouped: dict[str, list[storage.ObjectInfo]] = {}
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
            bk.BackupEntry(
                backup_id=backup_id,
                started_at=started,
                complete=bk.MANIFEST_NAME in names,
                verified=bk.VERIFIED_NAME in names,
            )
        )
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def _staging_root(staging_dir: str | None) -> Path:
    if staging_dir:
        return Path(staging_dir)
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV])
    return Path.home() / ".cache" / "dr-pipelines" / "staging"


def _password(pgc: PostgresConfig) -> str | None:
    return pgc.password.resolve() if pgc.password else None


def _tool_conninfo(pgc: PostgresConfig, dbname: str) -> str:
    """Conninfo for the command-line tools: no password (it goes in PGPASSWORD, not argv)."""
    return pg.conninfo(
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


def _usable_partial(stage: Path, marker: _Marker | None) -> bk.Manifest | None:
    """The manifest of a staged, complete, unchanged dump the marker names; else None."""
    if marker is None:
        return None
    folder = stage / marker.backup_id
    manifest_path = folder / bk.MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = bk.read_manifest(manifest_path)
    except DRError:
        return None
    problems = bk.verify_local_files(folder, manifest)
    if problems:
        log.warning("staged backup %s changed on disk (%s); discarding it", folder, problems[0])
        return None
    return manifest


def _upload(
    repo: storage.Repository,
    prefix: str,
    folder: Path,
    manifest: bk.Manifest,
    progress: Callable[[float, str], None],
) -> tuple[int, int]:
    """Stream every file up with its SHA-256, then the manifest. Returns (sent, unchanged)."""
    total = max(1, manifest.total_bytes)
    done = 0
    sent = unchanged = 0
    for entry in manifest.files:
        with open(folder / entry.path, "rb") as fh:
            result = repo.put_stream(f"{prefix}/{entry.path}", fh, expected_sha256=entry.sha256)
        if result.outcome == "unchanged":
            unchanged += 1
        else:
            sent += 1
        done += entry.size
        progress(0.3 + 0.7 * done / total, f"uploaded {entry.path}")
    # Last: only now is the backup complete for drills and retention.
    repo.put_bytes(
        f"{prefix}/{bk.MANIFEST_NAME}", (manifest.model_dump_json(indent=2) + "\n").encode()
    )
    return sent, unchanged


def _stage_and_upload(
    repo: storage.Repository,
    folder_key: str,
    stage: Path,
    make: Callable[[str, Path], tuple[bk.Manifest, float]],
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


def _stage_and_upload_locked(
    repo: storage.Repository,
    folder_key: str,
    stage: Path,
    make: Callable[[str, Path], tuple[bk.Manifest, float]],
    progress: Callable[[float, str], None],
    *,
    label: str,
) -> DatabaseBackupResult:
    t0 = time.perf_counter()
    marker_path = stage / PARTIAL_MARKER
    marker = _read_marker(marker_path)
    if marker is not None and datetime.now(UTC) - marker.created_at > RESUME_MAX_AGE:
        log.warning(
            "staged backup %s of %s is older than %s: taking a fresh one instead",
            marker.backup_id,
            label,
            RESUME_MAX_AGE,
        )
        marker = None
    manifest = _usable_partial(stage, marker)
    resumed = manifest is not None
    if manifest is not None and marker is not None:
        dump_seconds = marker.dump_seconds
        log.info("resuming upload of staged backup %s of %s", marker.backup_id, label)
        progress(0.3, f"resuming {marker.backup_id}")
    else:
        # Anything left in staging without a usable marker is an interrupted dump: useless.
        marker_path.unlink(missing_ok=True)
        for leftover in stage.iterdir():
            if leftover.name == LOCK_FILE:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        backup_id = bk.new_backup_id()
        progress(0.02, "dumping")
        manifest, dump_seconds = make(backup_id, stage / backup_id)
        bk.write_manifest(manifest, stage / backup_id / bk.MANIFEST_NAME)
        marker_path.write_text(
            _Marker(
                backup_id=backup_id,
                folder=str(stage / backup_id),
                dump_seconds=dump_seconds,
                created_at=datetime.now(UTC),
            ).model_dump_json()
        )
        progress(0.3, "dumped; uploading")
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
    password = _password(pgc)
    bin_dir = pgc.primary.bin_dir
    report = progress or (lambda fraction, message="": None)

    def make(backup_id: str, out_dir: Path) -> tuple[bk.Manifest, float]:
        db_conninfo = _tool_conninfo(pgc, database)
        with bk.SnapshotSession(db_conninfo, password=password, bin_dir=bin_dir) as snap:
            counts = snap.row_counts()
            info = bk.dump_database(
                _tool_conninfo(pgc, database),
                database,
                out_dir,
                jobs=target.backup.dump_jobs,
                snapshot=snap.snapshot_id,
                password=password,
                bin_dir=bin_dir,
            )
        fingerprint = pg.schema_fingerprint(
            pg.conninfo(pgc.primary, user=pgc.user, dbname=database, password=password)
        )["sha256"]
        manifest = bk.build_manifest(
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

    stage = _staging_root(staging_dir) / target_name / database
    return _stage_and_upload(
        repo, f"{target_name}/{database}", stage, make, report, label=f"{target_name}/{database}"
    )


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
    password = _password(pgc)
    report = progress or (lambda fraction, message="": None)

    def make(backup_id: str, out_dir: Path) -> tuple[bk.Manifest, float]:
        info = bk.base_backup(
            _tool_conninfo(pgc, pgc.maintenance_db),
            out_dir,
            password=password,
            bin_dir=pgc.primary.bin_dir,
            label=f"dr-pipelines {target_name} {backup_id}",
        )
        server_version = pg.health(
            pg.conninfo(pgc.primary, user=pgc.user, dbname=pgc.maintenance_db, password=password)
        ).server_version
        manifest = bk.build_manifest(
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
            kind=bk.BASE_KIND,
        )
        return manifest, info.duration_seconds

    stage = _staging_root(staging_dir) / target_name / BASE_FOLDER
    return _stage_and_upload(
        repo, f"{target_name}/{BASE_FOLDER}", stage, make, report, label=f"{target_name} base"
    )


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
    keep, delete = bk.plan_retention(entries, target.backup.retention, now or datetime.now(UTC))
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
    newest = bk.newest_wal_segment(repo)
    if newest is None:
        return None, None
    name, archived_at = newest
    return max(0.0, (datetime.now(UTC) - archived_at).total_seconds()), name


backup_database_task = dr_task(
    backup_database, name="backup-database", retries=2, cache_policy=NO_CACHE
)
base_backup_target_task = dr_task(
    base_backup_target, name="base-backup", retries=2, cache_policy=NO_CACHE
)
apply_retention_task = dr_task(apply_retention, name="apply-retention", cache_policy=NO_CACHE)
wal_archive_status_task = dr_task(wal_archive_status, name="wal-archive-age", cache_policy=NO_CACHE)


# --------------------------------------------------------------------------- the flow


def _check_layout(target_name: str, target: Target) -> None:
    if BASE_FOLDER in target.postgres.databases:
        raise ConfigError(
            f"targets.{target_name}.postgres.databases: a database named {BASE_FOLDER!r} "
            f"would share the base-backup folder <repo>/{target_name}/{BASE_FOLDER}/",
            [(f"targets.{target_name}.postgres.databases", f"{BASE_FOLDER!r} is reserved")],
        )


def run_backup(
    target: str,
    kind: BackupKind = BackupKind.logical,
    *,
    config: DRConfig | None = None,
    config_path: str | None = None,
    staging_dir: str | None = None,
) -> BackupRunResult:
    """The body of :func:`backup_flow` (call it inside a flow run)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    cfg = config or load_config(find_config_path(config_path))
    tgt = cfg.target(target)
    _check_layout(target, tgt)
    objectives = cfg.objectives(target)
    kind = BackupKind(kind)
    flog = get_run_logger()
    names = list(tgt.postgres.databases) if kind is BackupKind.logical else [BASE_FOLDER]
    board = ProgressBoard(
        report.artifact_key("backup", target, "progress"), f"{kind.value} backup of {target}", names
    )
    futures = []
    try:
        if kind is BackupKind.logical:
            for db in names:
                futures.append(
                    backup_database_task.with_options(name=f"backup-{db}").submit(
                        cfg, target, db, staging_dir=staging_dir, progress=board.callback(db)
                    )
                )
        else:
            futures.append(
                base_backup_target_task.submit(
                    cfg, target, staging_dir=staging_dir, progress=board.callback(BASE_FOLDER)
                )
            )
        wal_future = wal_archive_status_task.submit(cfg, target)
        board.wait(futures)
    finally:
        board.close()
    backups: list[DatabaseBackupResult] = []
    failures: dict[str, str] = {}
    for name, fut in zip(names, futures, strict=True):
        try:
            backups.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - every branch's failure is reported
            failures[name] = str(exc)
            flog.error("backup of %s/%s failed: %s", target, name, exc)
    retention: list[RetentionResult] = []
    warnings: list[str] = []
    for result in backups:
        folder = f"{target}/{result.database if kind is BackupKind.logical else BASE_FOLDER}"
        try:
            retention.append(apply_retention_task(cfg, target, folder))
        except (StorageError, DRError) as exc:
            warnings.append(f"retention of {folder} failed: {exc}")
    try:
        wal_age, wal_segment = wal_future.result()
    except Exception as exc:  # noqa: BLE001 - a WAL archive problem is a finding, not a crash
        wal_age, wal_segment = None, None
        warnings.append(f"WAL archive could not be read: {exc}")
    wal_ok: bool | None = None
    if tgt.backup.wal_archive:
        if wal_age is None:
            wal_ok = False
            warnings.append("WAL archive holds no segment: point-in-time recovery is impossible")
        else:
            wal_ok = wal_age <= objectives.rpo_seconds
            if not wal_ok:
                warnings.append(
                    f"newest archived WAL segment {wal_segment} is {wal_age:.0f} s old, "
                    f"beyond the RPO of {objectives.rpo_seconds:.0f} s"
                )
    for text in warnings:
        flog.warning("%s", text)
    result = BackupRunResult(
        target=target,
        kind=kind.value,
        ok=not failures,
        started_at=started,
        ended_at=datetime.now(UTC),
        duration_seconds=round(time.perf_counter() - t0, 3),
        backups=backups,
        failures=failures,
        retention=retention,
        wal_archive_age_seconds=None if wal_age is None else round(wal_age, 1),
        wal_newest_segment=wal_segment,
        rpo_objective_seconds=objectives.rpo_seconds,
        wal_within_rpo=wal_ok,
        warnings=warnings,
    )
    with contextlib.suppress(Exception):
        create_markdown_artifact(
            markdown=render_markdown(result),
            key=report.artifact_key("backup", target, "report"),
            description=f"{kind.value} backup of {target}",
        )
    return result


def render_markdown(result: BackupRunResult) -> str:
    """A short report of a backup run for the Prefect UI."""
    lines = [
        f"# {result.kind} backup of `{result.target}`: {'ok' if result.ok else 'FAILED'}",
        "",
        f"{result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.duration_seconds:.1f} s",
        "",
        "| database | backup id | files | sent | unchanged | MiB | dump s | upload s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in result.backups:
        lines.append(
            f"| {b.database} | `{b.backup_id}` | {b.files} | {b.uploaded} | {b.unchanged} "
            f"| {b.bytes / 2**20:.1f} | {b.dump_seconds:.1f} | {b.upload_seconds:.1f} |"
        )
    for name, reason in result.failures.items():
        lines.append(f"| {name} | FAILED: {reason} | | | | | | |")
    if result.wal_archive_age_seconds is not None:
        lines += [
            "",
            f"Newest archived WAL segment `{result.wal_newest_segment}`: "
            f"{result.wal_archive_age_seconds:.0f} s old (RPO {result.rpo_objective_seconds:.0f} s).",
        ]
    for r in result.retention:
        if r.deleted:
            lines.append(f"\nRetention on `{r.folder}` deleted: {', '.join(r.deleted)}")
    for w in result.warnings:
        lines.append(f"\n**Warning:** {w}")
    return "\n".join(lines) + "\n"


@flow(name="backup", log_prints=False)
def backup_flow(
    target: str,
    kind: BackupKind = BackupKind.logical,
    config_path: str | None = None,
    staging_dir: str | None = None,
) -> dict[str, Any]:
    """Back up every database of a target (``logical``) or take a base backup (``base``).

    Args:
        target: a target of the config.
        kind: ``logical`` (pg_dump, hourly) or ``base`` (pg_basebackup, daily, for PITR).
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        staging_dir: local folder for dumps before upload (kept across runs to resume).

    Returns:
        The :class:`BackupRunResult` as a JSON-ready dict.

    Raises:
        BackupFailed: a database's backup failed (after the report was written); carries
            the result, so the command line can still show what did succeed.
    """
    result = run_backup(target, kind, config_path=config_path, staging_dir=staging_dir)
    if not result.ok:
        raise BackupFailed(result)
    return json.loads(result.model_dump_json())
