"""Prove a files backup restores: every object into a scratch folder, every checksum and count.

Verification is explicit states, never "no exception, so fine": the result lists what was
missing, what did not match and what was there without being in the manifest, and passes
only when the three are empty and the counts agree. A verification that passes leaves
``verified.json``, which restores from a backup look for. The red twin
(:func:`inject_bad_object`) changes one stored object's bytes so that it must fail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dr.clock import utcnow
from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ChecksumMismatch, ObjectNotFound
from dr.tasking import dr_task
from tasks.files.client import Repository, repository
from tasks.files.manifest import (
    FilesManifest,
    backup_prefix,
    newest_backup,
    object_key,
    read_manifest,
    verified_key,
)
from tasks.files.sources import CHUNK_BYTES

logger = logging.getLogger(__name__)

#: Keys listed per kind of problem in a report (the counts are always complete).
LIST_LIMIT = 100


class FilesVerification(BaseModel):
    """The outcome of restoring one files backup into a scratch folder."""

    source: str
    backup_id: str
    state: str = Field(description="passed or failed")
    expected_count: int
    restored_count: int
    total_bytes: int
    missing: list[str] = Field(default_factory=list)
    mismatched: list[str] = Field(default_factory=list)
    unexpected: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.state == "passed"

    def sentence(self) -> str:
        return (
            f"files {self.source}/{self.backup_id}: {self.state}, {self.restored_count} of "
            f"{self.expected_count} restored, {len(self.mismatched)} checksum mismatch(es), "
            f"{len(self.missing)} missing"
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _restore_entries(
    repo: Repository, manifest: FilesManifest, scratch: Path
) -> tuple[int, list[str], list[str]]:
    """Download every entry, verified by the repository, then hashed again from the disk."""
    restored, missing, mismatched = 0, [], []
    for entry in manifest.entries:
        dest = scratch / entry.key
        try:
            repo.get_to_file(
                object_key(manifest.source, manifest.backup_id, entry.key),
                dest,
                expected_sha256=entry.sha256,
            )
        except ObjectNotFound:
            missing.append(entry.key)
            continue
        except ChecksumMismatch:
            mismatched.append(entry.key)
            continue
        if _file_sha256(dest) != entry.sha256 or dest.stat().st_size != entry.size:
            mismatched.append(entry.key)
            continue
        restored += 1
    return restored, missing, mismatched


def _tarball_problems(source: FileSource | None, scratch: Path) -> list[str]:
    if source is None or source.tarball is None:
        return []
    path = scratch / source.tarball.name
    try:
        with tarfile.open(path) as tar:
            tar.getmembers()
    except (OSError, tarfile.TarError) as exc:
        return [f"{source.tarball.name}: not a readable tarball ({exc})"]
    return []


def verify_files_backup(
    source: FileSource,
    repository_url: str,
    scratch_dir: str | Path,
    *,
    backup_id: str | None = None,
    aws: AWSConfig | None = None,
    mark: bool = True,
) -> FilesVerification:
    """Restore one files backup (the newest complete one by default) and check all of it.

    Args:
        source: the ``files:`` entry whose backup is checked.
        repository_url: the backup repository.
        scratch_dir: an empty folder to restore into (left for inspection; the caller cleans).
        backup_id: a given backup instead of the newest.
        aws: the ``aws`` section for S3 repositories.
        mark: write ``verified.json`` when it passed; a drill passes False and marks with
            :func:`mark_files_verified` only once the whole drill passed.

    Raises:
        ObjectNotFound: no complete backup of the entry.
        StorageError: the repository failed (other than one object's content).
    """
    repo = repository(repository_url, aws)
    backup_id = backup_id or newest_backup(repo, source.name)
    manifest = read_manifest(repo, source.name, backup_id)
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    restored, missing, mismatched = _restore_entries(repo, manifest, scratch)
    objects = f"{backup_prefix(source.name, backup_id)}objects/"
    listed = {info.key[len(objects) :] for info in repo.list(objects)}
    unexpected = sorted(listed - {e.key for e in manifest.entries})
    problems = _tarball_problems(source, scratch)
    on_disk = sum(1 for p in scratch.rglob("*") if p.is_file())
    if on_disk < restored:
        problems.append(f"{on_disk} file(s) on disk for {restored} restored")
    ok = not (missing or mismatched or unexpected or problems) and restored == manifest.count
    result = FilesVerification(
        source=source.name,
        backup_id=backup_id,
        state="passed" if ok else "failed",
        expected_count=manifest.count,
        restored_count=restored,
        total_bytes=manifest.total_bytes,
        missing=missing[:LIST_LIMIT],
        mismatched=mismatched[:LIST_LIMIT],
        unexpected=unexpected[:LIST_LIMIT],
        problems=problems,
    )
    if ok and mark:
        _write_marker(repo, source.name, backup_id, manifest.count)
    logger.info("%s", result.sentence())
    return result


def _write_marker(repo: Any, name: str, backup_id: str, count: int) -> None:
    marker = {"verified_at": utcnow().isoformat(), "count": count}
    repo.put_bytes(verified_key(name, backup_id), json.dumps(marker).encode(), overwrite=True)


def mark_files_verified(
    source: FileSource,
    repository_url: str,
    backup_id: str,
    count: int,
    *,
    aws: AWSConfig | None = None,
) -> None:
    """Record a files backup as verified (restores prefer verified backups)."""
    _write_marker(repository(repository_url, aws), source.name, backup_id, count)


def inject_bad_object(
    source: FileSource,
    repository_url: str,
    *,
    backup_id: str | None = None,
    key: str | None = None,
    aws: AWSConfig | None = None,
) -> str:
    """The red twin's damage: one stored object's bytes changed (the manifest left as it was).

    Returns:
        The key of the damaged entry (the first one unless ``key`` is given).

    Raises:
        ObjectNotFound: no backup, or no such entry.
    """
    repo = repository(repository_url, aws)
    backup_id = backup_id or newest_backup(repo, source.name)
    manifest = read_manifest(repo, source.name, backup_id)
    if not manifest.entries:
        raise ObjectNotFound(f"files backup {source.name}/{backup_id} has no objects to damage")
    entry = (
        next((e for e in manifest.entries if e.key == key), None) if key else manifest.entries[0]
    )
    if entry is None:
        raise ObjectNotFound(f"files backup {source.name}/{backup_id} has no entry {key!r}")
    stored = object_key(source.name, backup_id, entry.key)
    with repo.open_read(stored) as stream:
        data = bytearray(stream.read())
    data[:1] = bytes([data[0] ^ 0xFF]) if data else b"\x00"
    repo.put_bytes(stored, bytes(data), overwrite=True)
    logger.warning("injected a bad object: %s", repo.url_for(stored))
    return entry.key


verify_files_backup_task = dr_task(
    verify_files_backup, name="files-verify-files-backup", timeout_seconds=6 * 3600
)
inject_bad_object_task = dr_task(
    inject_bad_object, name="files-inject-bad-object", timeout_seconds=600
)
mark_files_verified_task = dr_task(
    mark_files_verified, name="files-mark-verified", timeout_seconds=120
)
