"""Backup identities and manifests: every file of a backup with its size and SHA-256.

A backup is a ``pg_dump -Fd`` directory plus a ``manifest.json`` (:class:`Manifest`) that
lists every file with its size and SHA-256, the per-table row counts taken in the dump's own
snapshot, the server and tool versions, start and end times and the WAL position. A backup
without its manifest is incomplete.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow
from dr.errors import ConfigError, VerificationError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Written next to a manifest after a green drill (the manifest itself is immutable).
VERIFIED_NAME = "verified.json"
DUMP_KIND = "pg_dump-directory"
BASE_KIND = "basebackup"
BackupKindName = Literal["pg_dump-directory", "basebackup", "foreign"]
HASH_CHUNK_BYTES = 1024 * 1024
#: PostgreSQL identifiers are at most 63 bytes (NAMEDATALEN - 1).
MAX_IDENTIFIER_BYTES = 63
SCRATCH_PREFIX = "dr_verify_"


def new_backup_id(at: datetime | None = None) -> str:
    """A backup id that sorts by time: ``20250101T120000Z-1a2b3c``."""
    moment = (at or utcnow()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


def scratch_database_name(database: str, short_id: str) -> str:
    """The isolated database a drill restores into: ``dr_verify_<db>_<shortid>``.

    The database part is reduced to ``[a-z0-9_]`` and shortened so the whole name fits
    PostgreSQL's 63-byte limit; the id part is kept whole (it is what makes it unique).
    """
    clean_id = re.sub(r"[^a-z0-9]", "", short_id.lower())
    if not clean_id:
        raise ConfigError("scratch id must contain letters or digits", [("short_id", short_id)])
    clean_db = re.sub(r"[^a-z0-9_]+", "_", database.lower()).strip("_") or "db"
    room = MAX_IDENTIFIER_BYTES - len(SCRATCH_PREFIX) - len(clean_id) - 1
    return f"{SCRATCH_PREFIX}{clean_db[: max(room, 1)]}_{clean_id}"


class ManifestFile(BaseModel):
    """One file of a backup: its path relative to the backup folder, size and SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """What a backup holds and how to check it; written last, so its presence = complete.

    ``row_counts`` are taken in the same snapshot as the dump, so a restore must match
    them exactly. ``wal_lsn`` is the WAL insert position at the snapshot (logical dumps)
    or the base backup's start LSN; ``wal_stop_lsn`` the base backup's stop LSN.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    backup_id: str
    target: str
    database: str
    kind: BackupKindName
    files: list[ManifestFile]
    row_counts: dict[str, int] = Field(default_factory=dict)
    server_version: str = ""
    tool_version: str = ""
    started_at: datetime
    ended_at: datetime
    wal_lsn: str | None = None
    wal_stop_lsn: str | None = None
    timeline: int | None = None
    schema_fingerprint: str | None = None
    verified_at: datetime | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> ManifestFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def backup_files(folder: Path, exclude: Iterable[str]) -> list[Path]:
    skip = set(exclude)
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip
    )


def build_manifest(
    dump_dir: str | os.PathLike[str],
    *,
    target: str,
    database: str,
    server_version: str,
    tool_version: str,
    started_at: datetime,
    ended_at: datetime,
    wal_lsn: str | None,
    row_counts: Mapping[str, int],
    backup_id: str | None = None,
    kind: BackupKindName = DUMP_KIND,
    wal_stop_lsn: str | None = None,
    timeline: int | None = None,
    schema_fingerprint: str | None = None,
) -> Manifest:
    """Describe a finished backup folder: every file's size and SHA-256, plus provenance.

    Args:
        dump_dir: the folder written by pg_dump -Fd or pg_basebackup -Ft.
        target, database: what was backed up (a drill refuses a backup of another target).
        server_version, tool_version: ``server_version`` setting and ``pg_dump --version``.
        started_at, ended_at: when the backup ran (UTC).
        wal_lsn: WAL position at the dump's snapshot, or the base backup's start LSN.
        row_counts: ``{"schema.table": rows}`` counted in the dump's snapshot.
        backup_id: defaults to one made from ``started_at``.
        kind: ``pg_dump-directory``, ``basebackup`` or ``foreign``.

    Returns:
        The manifest (not yet written anywhere).

    Raises:
        VerificationError: the folder is missing or empty.
    """
    folder = Path(dump_dir)
    if not folder.is_dir():
        raise VerificationError(f"backup folder {folder} does not exist")
    files = []
    for path in backup_files(folder, exclude=(MANIFEST_NAME, VERIFIED_NAME)):
        digest, size = sha256_file(path)
        files.append(
            ManifestFile(path=path.relative_to(folder).as_posix(), size=size, sha256=digest)
        )
    if not files:
        raise VerificationError(f"backup folder {folder} is empty")
    return Manifest(
        backup_id=backup_id or new_backup_id(started_at),
        target=target,
        database=database,
        kind=kind,
        files=files,
        row_counts=dict(row_counts),
        server_version=server_version,
        tool_version=tool_version,
        started_at=started_at.astimezone(UTC),
        ended_at=ended_at.astimezone(UTC),
        wal_lsn=wal_lsn,
        wal_stop_lsn=wal_stop_lsn,
        timeline=timeline,
        schema_fingerprint=schema_fingerprint,
    )


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write a manifest as JSON (atomically: a torn manifest would look complete)."""
    dest = Path(path)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, dest)
    return dest


def read_manifest(data: bytes | str | os.PathLike[str]) -> Manifest:
    """Parse a manifest from its bytes (as downloaded) or from a local path.

    Raises:
        VerificationError: not JSON, or not a manifest this version understands.
    """
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VerificationError(f"manifest is unreadable or of an unknown format: {first}") from exc


def verify_local_files(folder: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Compare a local backup folder with its manifest.

    Returns:
        Problems, one sentence each (empty when every file is present and identical).
    """
    base = Path(folder)
    problems = []
    for entry in manifest.files:
        path = base / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        digest, size = sha256_file(path)
        if size != entry.size:
            problems.append(f"{entry.path}: {size} bytes, manifest says {entry.size}")
        elif digest != entry.sha256:
            problems.append(
                f"{entry.path}: sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}…"
            )
    return problems


def diagnose_dump_dir(folder: str | os.PathLike[str]) -> list[str]:
    """Explain a failed restore: which compressed files of a dump are broken, and how.

    pg_restore reports a truncated gzip file as ``could not close data file ...: Success``;
    decompressing each ``.gz`` file names the culprit. Used after a failure only, so a good
    restore pays nothing for it.

    Returns:
        One sentence per broken file (empty when every ``.gz`` file decompresses).
    """
    problems = []
    for path in sorted(Path(folder).rglob("*.gz")):
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(HASH_CHUNK_BYTES):
                    decomp.decompress(chunk)
                    if decomp.eof:
                        break
        except zlib.error as exc:
            problems.append(f"{path.name}: corrupt gzip data ({exc})")
            continue
        except OSError as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        if not decomp.eof:
            problems.append(f"{path.name}: truncated gzip stream (ends before its end marker)")
    return problems
