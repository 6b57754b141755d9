"""Back up a ``files:`` entry: every object streamed into the backup repository, with a manifest.

Like the database backups: streamed (one object at a time, never the whole set in memory),
resumable (a run that stops leaves ``progress.json``; the same backup id carries on and
skips what was stored, as long as the source object is still the same version), idempotent
(a backup whose manifest exists is returned as it is). On a versioned bucket each object is
read at the version listed, so a write racing the backup cannot mix two versions.
"""

from __future__ import annotations

import logging

from dr.clock import utcnow
from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ObjectNotFound
from dr.tasking import dr_task
from tasks.files.client import Repository, repository
from tasks.files.manifest import (
    FileEntry,
    FilesManifest,
    manifest_key,
    object_key,
    read_manifest,
    read_progress,
    write_progress,
)
from tasks.files.sources import Source, SourceObject, open_source

logger = logging.getLogger(__name__)

#: How many objects between two saves of ``progress.json``.
PROGRESS_EVERY = 50


def new_backup_id() -> str:
    """A sortable id from the current UTC time (``20260102T030405Z``)."""
    return utcnow().strftime("%Y%m%dT%H%M%SZ")


def _unchanged(previous: FileEntry | None, obj: SourceObject) -> bool:
    """Whether a stored entry still describes the source object (same version, or size+mtime)."""
    if previous is None:
        return False
    if obj.version_id is not None:
        return previous.version_id == obj.version_id
    return (previous.size, previous.mtime, previous.etag) == (obj.size, obj.mtime, obj.etag)


def store_object(
    repo: Repository, src: Source, source_name: str, backup_id: str, obj: SourceObject
) -> FileEntry:
    """Stream one object into the backup; the repository hashes it on the way."""
    with src.open(obj.key, obj.version_id) as stream:
        put = repo.put_stream(object_key(source_name, backup_id, obj.key), stream, overwrite=True)
    return FileEntry(
        key=obj.key,
        size=put.size,
        sha256=put.sha256,
        version_id=obj.version_id,
        mtime=obj.mtime,
        etag=obj.etag,
        mode=obj.mode,
    )


def backup_files(
    source: FileSource,
    repository_url: str,
    *,
    backup_id: str | None = None,
    aws: AWSConfig | None = None,
) -> FilesManifest:
    """Back up one ``files:`` entry; return its manifest.

    Args:
        source: the ``files:`` entry.
        repository_url: the backup repository (the entry's ``repository`` or the target's).
        backup_id: resume or repeat this backup; a new id from the clock when omitted.
        aws: the ``aws`` section (endpoint, region, credentials) for S3 sources and repositories.

    Raises:
        StorageError: the source or the repository failed (transient ones are retried by the
            task; the next attempt resumes).
        ConfigError: a key the repository cannot hold.
    """
    backup_id = backup_id or new_backup_id()
    repo = repository(repository_url, aws)
    try:
        return read_manifest(repo, source.name, backup_id)
    except ObjectNotFound:
        pass
    src = open_source(source, aws)
    done = read_progress(repo, source.name, backup_id)
    entries: list[FileEntry] = []
    skipped = 0
    for obj in src.list():
        previous = done.get(obj.key)
        if _unchanged(previous, obj) and repo.exists(object_key(source.name, backup_id, obj.key)):
            assert previous is not None
            entries.append(previous)
            skipped += 1
            continue
        entries.append(store_object(repo, src, source.name, backup_id, obj))
        if len(entries) % PROGRESS_EVERY == 0:
            write_progress(repo, source.name, backup_id, entries)
    manifest = FilesManifest(
        source=source.name,
        location=source.location,
        backup_id=backup_id,
        created_at=utcnow(),
        entries=entries,
    )
    repo.put_bytes(manifest_key(source.name, backup_id), manifest.to_json())
    logger.info(
        "files backup %s/%s: %s object(s), %s byte(s), %s resumed",
        source.name,
        backup_id,
        manifest.count,
        manifest.total_bytes,
        skipped,
    )
    return manifest


backup_files_task = dr_task(backup_files, name="files-backup-files", timeout_seconds=6 * 3600)
