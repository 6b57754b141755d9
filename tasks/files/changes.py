"""What changed in a versioned S3 prefix since a moment: overwritten, deleted, created objects.

A breach response needs this twice. Before it remediates, as evidence: every object an
intruder could have written since the point (its current bytes saved, the version ids
listed). After the restore, as the proof: the prefix is as it was at the point, except the
objects deliberately left (created since, and named by a row). Both read the bucket's
version history only; nothing here writes to the source.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ConfigError
from dr.tasking import dr_task
from tasks.files.restore import _by_key, _newest_before, _same_content
from tasks.files.sources import CHUNK_BYTES, S3Source, open_source

logger = logging.getLogger(__name__)

Change = Literal["overwritten", "deleted", "created"]


class ObjectChange(BaseModel):
    """One key whose current state is not its state at the point."""

    key: str
    change: Change
    version_id: str | None = None
    before_version_id: str | None = None
    size: int | None = None
    etag: str | None = None
    last_modified: datetime | None = None


def classify(key: str, items: list[dict[str, Any]], before: datetime) -> ObjectChange | None:
    """One key's versions and delete markers -> how it changed since ``before`` (None: not).

    Args:
        key: the key relative to the prefix.
        items: its versions and delete markers (markers flagged ``marker``), one ``IsLatest``.
        before: the point (timezone-aware).
    """
    latest = next(v for v in items if v.get("IsLatest"))
    wanted = _newest_before(items, before)
    existed = wanted is not None and not wanted.get("marker")
    exists = not latest.get("marker")
    if not existed and not exists:
        return None
    if existed and exists and wanted is not None and _same_content(wanted, latest):
        return None
    change: Change = "created" if not existed else "overwritten" if exists else "deleted"
    return ObjectChange(
        key=key,
        change=change,
        version_id=latest.get("VersionId") if exists else None,
        before_version_id=wanted.get("VersionId") if existed and wanted is not None else None,
        size=int(latest["Size"]) if exists and "Size" in latest else None,
        etag=(str(latest.get("ETag", "")).strip('"') or None) if exists else None,
        last_modified=latest.get("LastModified"),
    )


def _s3(source: FileSource, aws: AWSConfig | None) -> S3Source:
    if source.s3 is None:
        raise ConfigError(f"files {source.name}: only S3 prefixes have versions to compare")
    src = open_source(source, aws)
    assert isinstance(src, S3Source)
    return src


def changes_since(
    source: FileSource, before: datetime, *, aws: AWSConfig | None = None
) -> list[ObjectChange]:
    """Every key of an S3 entry whose current state differs from its state at ``before``.

    Raises:
        ConfigError: not an S3 entry, or a naive time.
        StorageError: S3 failed.
    """
    if before.tzinfo is None:
        raise ConfigError("the point in time must be timezone-aware")
    src = _s3(source, aws)
    found = [classify(key, items, before) for key, items in sorted(_by_key(src).items())]
    return [c for c in found if c is not None]


def save_changed_objects(
    source: FileSource,
    before: datetime,
    dest: str | Path,
    *,
    aws: AWSConfig | None = None,
) -> list[dict[str, Any]]:
    """Evidence: the changes since ``before``, each present object's bytes saved under ``dest``.

    Each object is read at the version listed (a write racing the copy cannot swap it).

    Returns:
        One JSON-ready :class:`ObjectChange` per key, with ``local`` (the saved file) for
        overwritten and created objects.
    """
    src = _s3(source, aws)
    folder = Path(dest)
    out: list[dict[str, Any]] = []
    for change in changes_since(source, before, aws=aws):
        row = change.model_dump(mode="json")
        if change.key.startswith("/") or ".." in change.key.split("/"):
            row["local"] = None  # listed with its version id; not saved outside ``dest``
        elif change.change != "deleted":
            local = folder / change.key
            local.parent.mkdir(parents=True, exist_ok=True)
            with src.open(change.key, change.version_id) as stream, local.open("wb") as fh:
                while chunk := stream.read(CHUNK_BYTES):
                    fh.write(chunk)
            row["local"] = str(local)
        out.append(row)
    logger.info("files %s: %s change(s) since %s saved", source.name, len(out), before)
    return out


changes_since_task = dr_task(changes_since, name="files-changes-since", timeout_seconds=3600)
save_changed_objects_task = dr_task(
    save_changed_objects, name="files-save-changed-objects", timeout_seconds=3 * 3600
)
