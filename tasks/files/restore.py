"""Put damaged files back: an S3 prefix to a point in time from its versions, or any entry
from its newest verified backup.

Nothing damaged is deleted: every object a restore replaces is first copied to the
evidence place (an S3 prefix, or a folder), like the damaged tables a database recovery
keeps. Objects that did not exist at the point in time (or are not in the backup) are
listed and left where they are unless ``remove_newer`` is asked, and then only after
their copy is kept; on a versioned bucket the replaced versions also stay in its history.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ConfigError
from dr.tasking import dr_task
from tasks.files.client import repository, s3_errors
from tasks.files.manifest import newest_backup, object_key, read_manifest
from tasks.files.sources import S3Source, open_source

logger = logging.getLogger(__name__)


class FilesRestore(BaseModel):
    """What a restore of one files entry did, key by key."""

    source: str
    point: str = Field(description="The time or backup id restored to.")
    restored: list[str] = Field(default_factory=list)
    unchanged: int = 0
    newer: list[str] = Field(default_factory=list, description="Not there at the point.")
    removed: list[str] = Field(default_factory=list, description="Newer ones, moved aside.")
    evidence: dict[str, str] = Field(default_factory=dict, description="key -> its kept copy")
    skipped: list[str] = Field(default_factory=list, description="Left as they were, as asked.")

    def sentence(self) -> str:
        skipped = f", {len(self.skipped)} SKIPPED" if self.skipped else ""
        return (
            f"files {self.source} restored to {self.point}: {len(self.restored)} object(s) put "
            f"back, {self.unchanged} unchanged, {len(self.newer)} newer "
            f"({len(self.removed)} moved aside){skipped}; damaged copies kept: "
            f"{len(self.evidence)}"
        )


def _newest_before(items: list[dict[str, Any]], before: datetime) -> dict[str, Any] | None:
    older = [v for v in items if v["LastModified"] < before]
    return max(older, key=lambda v: v["LastModified"]) if older else None


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same version, or a copy of it (a restore already done: same ETag and size)."""
    if a["VersionId"] == b["VersionId"]:
        return True
    if a.get("marker") or b.get("marker"):
        return False
    return (a.get("ETag"), a.get("Size")) == (b.get("ETag"), b.get("Size"))


def _by_key(src: S3Source) -> dict[str, list[dict[str, Any]]]:
    """Every version and delete marker per relative key (markers flagged ``marker``)."""
    versions, markers = src.versions()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in versions + [{**m, "marker": True} for m in markers]:
        grouped.setdefault(item["Key"][len(src.prefix) :], []).append(item)
    return grouped


def _restore_key(
    src: S3Source,
    key: str,
    items: list[dict[str, Any]],
    before: datetime,
    evidence: str,
    remove_newer: bool,
    result: FilesRestore,
    keep_newer: Collection[str] = (),
) -> None:
    """Bring one key back to its newest version before ``before`` (see the module).

    A newer key in ``keep_newer`` stays where it is (listed as newer, not copied aside).
    """
    latest = next(v for v in items if v.get("IsLatest"))
    wanted = _newest_before(items, before)
    if wanted is not None and _same_content(wanted, latest):
        result.unchanged += 1
        return
    current_exists = not latest.get("marker")
    gone_at_point = wanted is None or bool(wanted.get("marker"))
    if gone_at_point and not current_exists:
        result.unchanged += 1
        return
    if gone_at_point and key in keep_newer:
        result.newer.append(key)
        return
    if current_exists:
        result.evidence[key] = src.keep_aside(key, evidence, latest["VersionId"])
    if gone_at_point:
        result.newer.append(key)
        if remove_newer:
            with s3_errors(f"delete {src.location}{key}"):
                src.client.delete_object(Bucket=src.bucket, Key=src.full(key))
            result.removed.append(key)
        return
    assert wanted is not None
    copy = {"Bucket": src.bucket, "Key": src.full(key), "VersionId": wanted["VersionId"]}
    with s3_errors(f"restore {src.location}{key}"):
        # The managed copy: multipart above S3's 5 GiB single-copy limit.
        src.client.copy(copy, src.bucket, src.full(key))
    result.restored.append(key)


def restore_prefix_to_time(
    source: FileSource,
    before: datetime,
    *,
    evidence: str,
    remove_newer: bool = False,
    keep_newer: Collection[str] = (),
    skip: Collection[str] = (),
    only: Collection[str] | None = None,
    aws: AWSConfig | None = None,
) -> FilesRestore:
    """Restore an S3 ``files:`` entry to its state just before ``before``, from object versions.

    Args:
        source: an entry with ``s3`` on a versioned bucket.
        before: the damage's start (timezone-aware): each key gets its newest version older
            than that.
        evidence: ``s3://bucket/prefix`` for the copies of what is replaced (not inside the
            source prefix).
        remove_newer: also take away objects created after ``before`` (kept as evidence).
        keep_newer: keys created after ``before`` that stay even so (a breach response keeps
            the objects its restored rows still name: taking them away loses users' files).
        skip: keys left exactly as they are (listed as ``skipped``; the drill's red twin).
        only: restore just these keys (a drill undoing its own damage, nothing else).
        aws: the ``aws`` section.

    Raises:
        ConfigError: not an S3 entry, a naive time, or evidence inside the source.
        StorageError: S3 failed.
    """
    if source.s3 is None:
        raise ConfigError(f"files {source.name}: only S3 prefixes have versions to restore from")
    if before.tzinfo is None:
        raise ConfigError("the point in time must be timezone-aware")
    src = open_source(source, aws)
    assert isinstance(src, S3Source)
    result = FilesRestore(source=source.name, point=before.isoformat())
    keep, skipped = set(keep_newer), set(skip)
    for key, items in sorted(_by_key(src).items()):
        if only is not None and key not in only:
            continue
        if key in skipped:
            result.skipped.append(key)
            continue
        _restore_key(src, key, items, before, evidence, remove_newer, result, keep)
    logger.info("%s", result.sentence())
    return result


def restore_from_backup(
    source: FileSource,
    repository_url: str,
    *,
    evidence: str,
    backup_id: str | None = None,
    aws: AWSConfig | None = None,
) -> FilesRestore:
    """Put back every object whose content differs from a backup (the newest verified one).

    Args:
        source: the ``files:`` entry.
        repository_url: the backup repository.
        evidence: where replaced objects are copied first (``s3://...`` or a folder).
        backup_id: a given backup instead of the newest verified one.
        aws: the ``aws`` section.

    Raises:
        ObjectNotFound: no verified backup of the entry.
        ChecksumMismatch: a backup object does not match its manifest (nothing written for it).
        StorageError: the source or the repository failed.
    """
    repo = repository(repository_url, aws)
    backup_id = backup_id or newest_backup(repo, source.name, verified_only=True)
    manifest = read_manifest(repo, source.name, backup_id)
    src = open_source(source, aws)
    current = {obj.key for obj in src.list()}
    result = FilesRestore(source=source.name, point=f"backup {backup_id}")
    with tempfile.TemporaryDirectory(prefix="dr-files-restore-") as tmp:
        for entry in manifest.entries:
            if entry.key in current and src.sha256(entry.key) == entry.sha256:
                result.unchanged += 1
                continue
            if entry.key in current:
                result.evidence[entry.key] = src.keep_aside(entry.key, evidence)
            local = Path(tmp) / "object"
            stored = object_key(source.name, backup_id, entry.key)
            repo.get_to_file(stored, local, expected_sha256=entry.sha256, resume=False)
            src.write_file(entry.key, local, entry.mode)
            local.unlink()
            result.restored.append(entry.key)
    result.newer = sorted(current - {e.key for e in manifest.entries})
    logger.info("%s", result.sentence())
    return result


restore_prefix_to_time_task = dr_task(
    restore_prefix_to_time, name="files-restore-prefix-to-time", timeout_seconds=3 * 3600
)
restore_from_backup_task = dr_task(
    restore_from_backup, name="files-restore-from-backup", timeout_seconds=6 * 3600
)
