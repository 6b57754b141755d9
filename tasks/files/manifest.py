"""What a files backup records, and where it lives in the backup repository.

Layout under the repository (the target's, or the entry's own ``repository``)::

    files/<entry>/<backup_id>/objects/<key>    the content, one object per file
    files/<entry>/<backup_id>/progress.json    entries done so far (a resumed run skips them)
    files/<entry>/<backup_id>/manifest.json    written last: the backup is complete
    files/<entry>/<backup_id>/verified.json    written by a verification that passed
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, Field

from dr.errors import ObjectNotFound
from tasks.files.client import Repository

ROOT = "files"


class FileEntry(BaseModel):
    """One file or object of a backup: key, size, SHA-256 and, on versioned buckets, its version."""

    key: str
    size: int
    sha256: str
    version_id: str | None = None
    mtime: datetime | None = None
    etag: str | None = None
    mode: int | None = Field(None, description="Permission bits of a local file.")


class FilesManifest(BaseModel):
    """A complete files backup: every entry, with totals."""

    source: str = Field(description="The files entry's name.")
    location: str = Field(description="s3://... or a path, at the time of the backup.")
    backup_id: str
    created_at: datetime
    entries: list[FileEntry]

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json")
        data["count"] = self.count
        data["total_bytes"] = self.total_bytes
        return json.dumps(data, indent=1, sort_keys=True).encode()


def backup_prefix(source: str, backup_id: str) -> str:
    return f"{ROOT}/{source}/{backup_id}/"


def object_key(source: str, backup_id: str, key: str) -> str:
    return f"{backup_prefix(source, backup_id)}objects/{key}"


def manifest_key(source: str, backup_id: str) -> str:
    return f"{backup_prefix(source, backup_id)}manifest.json"


def progress_key(source: str, backup_id: str) -> str:
    return f"{backup_prefix(source, backup_id)}progress.json"


def verified_key(source: str, backup_id: str) -> str:
    return f"{backup_prefix(source, backup_id)}verified.json"


def read_manifest(repo: Repository, source: str, backup_id: str) -> FilesManifest:
    """Load one backup's manifest (ObjectNotFound: the backup is incomplete or absent)."""
    with repo.open_read(manifest_key(source, backup_id)) as stream:
        data = json.loads(stream.read())
    data.pop("count", None)
    data.pop("total_bytes", None)
    return FilesManifest.model_validate(data)


def read_progress(repo: Repository, source: str, backup_id: str) -> dict[str, FileEntry]:
    """Entries a previous, interrupted run already stored, by key (empty when none)."""
    try:
        with repo.open_read(progress_key(source, backup_id)) as stream:
            rows = json.loads(stream.read())
    except ObjectNotFound:
        return {}
    return {row["key"]: FileEntry.model_validate(row) for row in rows}


def write_progress(repo: Repository, source: str, backup_id: str, done: list[FileEntry]) -> None:
    rows = [e.model_dump(mode="json") for e in done]
    repo.put_bytes(progress_key(source, backup_id), json.dumps(rows).encode(), overwrite=True)


def complete_backups(repo: Repository, source: str, *, verified_only: bool = False) -> list[str]:
    """Backup ids of ``source`` that have a manifest (or a verified marker), oldest first."""
    marker = "verified.json" if verified_only else "manifest.json"
    ids = {
        info.key.split("/")[2]
        for info in repo.list(f"{ROOT}/{source}/")
        if info.key.count("/") == 3 and info.key.endswith("/" + marker)
    }
    return sorted(ids)


def newest_backup(repo: Repository, source: str, *, verified_only: bool = False) -> str:
    """The newest complete (or verified) backup id; ObjectNotFound when there is none."""
    ids = complete_backups(repo, source, verified_only=verified_only)
    if not ids:
        kind = "verified " if verified_only else ""
        raise ObjectNotFound(f"no {kind}files backup of {source!r} in {repo.url}")
    return ids[-1]
