"""Base backups: take one (``pg_basebackup -Ft``), list them in the repository, choose one.

:func:`choose_base_backup` refuses (:class:`~dr.errors.PreconditionError`, with the reason) a
point in the future, a point after the damage, a point before the oldest base backup, or no
base backup at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow
from dr.errors import RecoveryRefused, StorageError, UnsafeTargetError
from dr.localexec import find_tool, run_tool, tool_version
from dr.secretscan import ensure_no_secrets
from dr.tasking import dr_task
from tasks.pitr.lsn import parse_lsn
from tasks.pitr.target import RecoveryTarget

if TYPE_CHECKING:
    from tasks.storage.client import Repository

log = logging.getLogger(__name__)


#: Names of base backup files (``pg_basebackup -Ft``) this module restores.
BASE_TAR = "base.tar"
WAL_TAR = "pg_wal.tar"
PG_MANIFEST = "backup_manifest"
DR_MANIFEST = "manifest.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseBackup(_Model):
    """One complete base backup in the repository, as its ``manifest.json`` describes it."""

    backup_id: str
    prefix: str = Field(description="Repository key prefix, ending with '/'.")
    location: str
    target: str
    started_at: datetime
    ended_at: datetime
    start_lsn: str
    stop_lsn: str
    timeline: int
    server_version: str = ""
    files: dict[str, str] = Field(description="file name -> SHA-256")
    sizes: dict[str, int] = Field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def read_small(repo: Repository, key: str) -> bytes:
    """A small object (a manifest, a history file) read whole."""
    with repo.open_read(key) as stream:
        return stream.read()


def list_base_backups(repo: Repository, target_name: str, folder: str = "base") -> list[BaseBackup]:
    """Every complete base backup of a target, newest first.

    A backup is complete when its ``manifest.json`` is there (it is written last); one of
    another target or kind, or without start/stop positions, is skipped with a warning.

    Args:
        repo: the target's backup repository.
        target_name: the target (backups live under ``<target>/<folder>/<id>/``).
        folder: the base-backup folder name.

    Returns:
        The backups, newest ``ended_at`` first.

    Raises:
        StorageError: the repository failed.
    """
    root = f"{target_name}/{folder}/"
    manifests = [o.key for o in repo.list(root) if o.key.endswith("/" + DR_MANIFEST)]
    out: list[BaseBackup] = []
    for key in manifests:
        prefix = key[: -len(DR_MANIFEST)]
        try:
            data = json.loads(read_small(repo, key))
        except (ValueError, StorageError) as exc:
            log.warning("skipping %s: unreadable manifest (%s)", repo.url_for(key), exc)
            continue
        if data.get("kind") != "basebackup" or data.get("target") != target_name:
            log.warning("skipping %s: not a base backup of %s", repo.url_for(key), target_name)
            continue
        if not data.get("wal_lsn") or not data.get("wal_stop_lsn") or not data.get("timeline"):
            log.warning("skipping %s: no start/stop WAL position recorded", repo.url_for(key))
            continue
        files = {f["path"]: f["sha256"] for f in data.get("files", [])}
        if BASE_TAR not in files:
            log.warning("skipping %s: no %s", repo.url_for(key), BASE_TAR)
            continue
        out.append(
            BaseBackup(
                backup_id=str(data["backup_id"]),
                prefix=prefix,
                location=repo.url_for(prefix.rstrip("/")),
                target=target_name,
                started_at=datetime.fromisoformat(str(data["started_at"])),
                ended_at=datetime.fromisoformat(str(data["ended_at"])),
                start_lsn=str(data["wal_lsn"]),
                stop_lsn=str(data["wal_stop_lsn"]),
                timeline=int(data["timeline"]),
                server_version=str(data.get("server_version") or ""),
                files=files,
                sizes={f["path"]: int(f["size"]) for f in data.get("files", [])},
            )
        )
    out.sort(key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)), reverse=True)
    log.info("base backups of %s in %s: %d complete", target_name, repo.url, len(out))
    return out


def choose_base_backup(
    backups: Sequence[BaseBackup],
    target: RecoveryTarget,
    *,
    damage_at: datetime | None = None,
    damage_lsn: str | None = None,
    now: datetime | None = None,
    current_lsn: str | None = None,
) -> BaseBackup:
    """The newest base backup that ended before the recovery point; refuse unsafe points.

    Args:
        backups: from :func:`list_base_backups`.
        target: the recovery point.
        damage_at: when the damage began (commit time of the damaging transaction), if known.
        damage_lsn: its commit LSN, if known.
        now: the present (default: the clock); a time target after it is refused.
        current_lsn: the live server's WAL position; an LSN target after it is refused.

    Returns:
        The chosen backup.

    Raises:
        PreconditionError: the point is in the future, after the damage, before the oldest
            base backup, or there is no base backup; the message says which and why.
    """
    _refuse_unsafe_point(target, damage_at, damage_lsn, now, current_lsn)
    if not backups:
        raise RecoveryRefused(
            "no base backup in the repository: point-in-time recovery needs one taken before "
            "the recovery point (take one: dr backup --kind base)"
        )

    def usable(b: BaseBackup) -> bool:
        if target.time is not None:
            return b.ended_at.astimezone(UTC) <= target.time.astimezone(UTC)
        return parse_lsn(b.stop_lsn) <= parse_lsn(target.lsn or "0/0")

    candidates = [b for b in backups if usable(b)]
    if not candidates:
        oldest = min(backups, key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)))
        raise RecoveryRefused(
            f"no base backup before the recovery point ({target.describe()}): the oldest, "
            f"{oldest.backup_id}, ended at {oldest.ended_at.astimezone(UTC).isoformat()} "
            f"(WAL {oldest.stop_lsn}); the point is before the oldest base backup"
        )
    chosen = max(candidates, key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)))
    log.info(
        "base backup for recovery %s: %s (ended %s, WAL %s..%s, timeline %s)",
        target.describe(),
        chosen.backup_id,
        chosen.ended_at.isoformat(),
        chosen.start_lsn,
        chosen.stop_lsn,
        chosen.timeline,
    )
    return chosen


def file_sha256(path: Path) -> str:
    """The SHA-256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_unsafe_point(
    target: RecoveryTarget,
    damage_at: datetime | None,
    damage_lsn: str | None,
    now: datetime | None,
    current_lsn: str | None,
) -> None:
    """Refuse a recovery point in the future or after the damage (it would bring it back)."""
    moment = (now or utcnow()).astimezone(UTC)
    if target.time is not None:
        when = target.time.astimezone(UTC)
        if when > moment:
            raise RecoveryRefused(
                f"recovery point {when.isoformat()} is in the future (now {moment.isoformat()}):"
                " nothing can be recovered to a moment that has not happened"
            )
        if damage_at is not None and when > damage_at.astimezone(UTC):
            raise RecoveryRefused(
                f"recovery point {when.isoformat()} is after the damage began "
                f"({damage_at.astimezone(UTC).isoformat()}): recovering there would bring the "
                "damage back; choose a point before it"
            )
    else:
        assert target.lsn is not None
        lsn = parse_lsn(target.lsn)
        if current_lsn is not None and lsn > parse_lsn(current_lsn):
            raise RecoveryRefused(
                f"recovery LSN {target.lsn} is in the future: the server is at {current_lsn}"
            )
        if damage_lsn is not None and lsn > parse_lsn(damage_lsn):
            raise RecoveryRefused(
                f"recovery LSN {target.lsn} is after the damage (commit at {damage_lsn}): "
                "recovering there would bring the damage back; choose a position before it"
            )


class BaseBackupInfo(BaseModel):
    """What one ``pg_basebackup -Ft`` run produced."""

    out_dir: str
    files: list[str]
    wal_method: str
    start_lsn: str | None
    stop_lsn: str | None
    timeline: int | None
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    tool_version: str
    bytes: int


def base_backup(
    conninfo: str,
    out_dir: str | os.PathLike[str],
    *,
    wal_method: Literal["fetch", "stream"] = "fetch",
    label: str = "dr-pipelines base backup",
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    timeout_seconds: float | None = None,
    secrets: Mapping[str, str] | None = None,
) -> BaseBackupInfo:
    """Take a physical base backup as tar files with PostgreSQL's ``backup_manifest``.

    ``-X fetch`` puts the WAL needed for consistency inside ``base.tar`` (one file to
    restore from); ``-X stream`` writes it to ``pg_wal.tar`` as it is generated. The
    start and stop LSN are read from ``backup_manifest``'s WAL ranges. With data checksums
    on, pg_basebackup verifies every page and fails on a bad one. The copy is then
    scanned for ``secrets`` (default: those this process resolved) before anyone stores it.

    Raises:
        UnsafeTargetError: ``out_dir`` exists and is not empty.
        PostgresError: pg_basebackup failed (checksum errors included).
        SecretFoundError: a secret is in the copy in plain text (the copy is removed).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UnsafeTargetError(f"base backup folder {out} is not empty; refusing to write")
    out.mkdir(parents=True, exist_ok=True)
    tool = find_tool("pg_basebackup", bin_dir)
    argv = [
        str(tool),
        f"--pgdata={out}",
        "--format=tar",
        f"--wal-method={wal_method}",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        f"--label={label}",
        "--no-password",  # never prompt: a password comes through PGPASSWORD
        f"--dbname={conninfo}",
    ]
    started = utcnow()
    t0 = time.perf_counter()
    try:
        run_tool(argv, password=password, timeout_seconds=timeout_seconds)
        ensure_no_secrets([out], f"base backup {label!r}", secrets)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    duration = time.perf_counter() - t0
    start_lsn = stop_lsn = None
    timeline = None
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        ranges = json.loads((out / "backup_manifest").read_text())["WAL-Ranges"]
        start_lsn = ranges[0]["Start-LSN"]
        stop_lsn = ranges[-1]["End-LSN"]
        timeline = int(ranges[-1]["Timeline"])
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    info = BaseBackupInfo(
        out_dir=str(out),
        files=files,
        wal_method=wal_method,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        timeline=timeline,
        started_at=started,
        ended_at=utcnow(),
        duration_seconds=round(duration, 3),
        tool_version=tool_version(tool),
        bytes=sum((out / f).stat().st_size for f in files),
    )
    log.info(
        "base backup: %s bytes in %.1f s, WAL %s..%s", info.bytes, duration, start_lsn, stop_lsn
    )
    return info


list_base_backups_task = dr_task(list_base_backups, name="pitr-list-base-backups")
base_backup_task = dr_task(base_backup, name="pitr-base-backup")
