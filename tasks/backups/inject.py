"""Drills only: make a bad backup on purpose, to prove verification catches it."""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel

from dr.errors import ConfigError, UnsafeTargetError, VerificationError
from dr.tasking import dr_task
from tasks.backups.manifest import (
    MANIFEST_NAME,
    VERIFIED_NAME,
    ManifestFile,
    backup_files,
    read_manifest,
    sha256_file,
    write_manifest,
)

log = logging.getLogger(__name__)


class InjectionInfo(BaseModel):
    """Where a drill corrupted its copy of a backup, and how."""

    kind: Literal["flip", "truncate"]
    file: str
    offset: int
    original_size: int
    new_size: int
    resealed: bool


def _victim(folder: Path) -> Path:
    """The file to corrupt: the largest table-data file, else the largest non-manifest file."""
    files = [
        p
        for p in backup_files(folder, exclude=(MANIFEST_NAME, VERIFIED_NAME))
        if p.stat().st_size > 0
    ]
    data = [p for p in files if re.match(r"^\d+\.dat", p.name)]
    pool = data or [p for p in files if p.name not in ("toc.dat", "backup_manifest")] or files
    if not pool:
        raise VerificationError(f"{folder} holds no file to corrupt")
    return max(pool, key=lambda p: (p.stat().st_size, p.name))


def inject_bad_backup(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    kind: Literal["flip", "truncate"] = "flip",
    *,
    reseal_manifest: bool = False,
) -> InjectionInfo:
    """Make a corrupted COPY of a backup folder for a drill; the source is never written.

    ``flip`` inverts one byte in the middle of the largest data file; ``truncate`` cuts it
    to half its size. With ``reseal_manifest`` the copy's manifest is rewritten to match
    the damaged bytes, as if the dump had been bad when it was written: the checksum gate
    then passes and the restore or the integrity checks must catch it.

    Args:
        src_dir: the real backup folder (read only).
        dst_dir: a folder that does not exist or is empty, outside ``src_dir``.

    Returns:
        An :class:`InjectionInfo` naming the damaged file.

    Raises:
        UnsafeTargetError: ``dst_dir`` is ``src_dir``, inside it, holds it, or is not empty.
    """
    src = Path(src_dir).resolve()
    dst = Path(dst_dir).resolve()
    if not src.is_dir():
        raise VerificationError(f"backup folder {src} does not exist")
    if dst == src or src in dst.parents or dst in src.parents:
        raise UnsafeTargetError(f"corrupted copy {dst} would overlap the real backup {src}")
    if dst.exists() and any(dst.iterdir()):
        raise UnsafeTargetError(f"{dst} is not empty; refusing to corrupt into it")
    if dst.exists():
        dst.rmdir()
    shutil.copytree(src, dst)
    victim = _victim(dst)
    size = victim.stat().st_size
    if kind == "flip":
        offset = size // 2
        with open(victim, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        new_size = size
    elif kind == "truncate":
        offset = new_size = size // 2
        with open(victim, "r+b") as fh:
            fh.truncate(new_size)
    else:
        raise ConfigError(f"unknown injection kind {kind!r}", [("kind", "flip or truncate")])
    rel = victim.relative_to(dst).as_posix()
    manifest_path = dst / MANIFEST_NAME
    if reseal_manifest and manifest_path.exists():
        manifest = read_manifest(manifest_path)
        digest, new_len = sha256_file(victim)
        manifest.files = [
            ManifestFile(path=f.path, size=new_len, sha256=digest) if f.path == rel else f
            for f in manifest.files
        ]
        write_manifest(manifest, manifest_path)
    log.info("injected %s into copy %s at byte %s of %s", kind, dst, offset, rel)
    return InjectionInfo(
        kind=kind,
        file=rel,
        offset=offset,
        original_size=size,
        new_size=new_size,
        resealed=reseal_manifest and manifest_path.exists(),
    )


class PlainCutInfo(BaseModel):
    """Where a drill cut its copy of a plain dump."""

    table: str
    kept_bytes: int
    original_bytes: int
    tables_without_data: list[str]


_COPY_RE = re.compile(rb"^COPY\s+(\S+)")


def cut_plain_dump(src: IO[bytes], dst: IO[bytes], *, gzipped: bool) -> PlainCutInfo:
    """Copy a plain dump cut cleanly after the first table's data, re-gzipped if it was.

    What a cron job leaves when ``pg_dump`` dies and ``gzip`` closes the file: every
    statement kept is valid SQL, but the later tables' data, the constraints and indexes
    (written after the data) and the completion trailer are missing.

    Raises:
        VerificationError: the dump holds no table data to cut after.
    """
    reader: IO[bytes] = gzip.GzipFile(fileobj=src) if gzipped else src  # type: ignore[assignment]
    writer: IO[bytes] = gzip.GzipFile(fileobj=dst, mode="wb") if gzipped else dst  # type: ignore[assignment]
    table, kept, total, later = None, 0, 0, []
    current: str | None = None
    for line in reader:
        total += len(line)
        if table is None:
            writer.write(line)
            kept += len(line)
        match = _COPY_RE.match(line) if current is None else None
        if match and line.rstrip().upper().endswith(b"FROM STDIN;"):
            current = match[1].decode("utf-8", "replace")
        elif current is not None and line.rstrip(b"\r\n") == b"\\.":
            if table is None:
                table = current
            else:
                later.append(current)
            current = None
    if gzipped:
        writer.close()
    if table is None:
        raise VerificationError("the plain dump holds no table data to cut after")
    log.info("cut plain dump after %s: kept %d of %d bytes", table, kept, total)
    return PlainCutInfo(
        table=table, kept_bytes=kept, original_bytes=total, tables_without_data=later
    )


inject_bad_backup_task = dr_task(
    inject_bad_backup, name="backups-inject-bad-backup", retries=0, timeout_seconds=600
)
