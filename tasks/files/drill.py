"""Drills only: damage some objects of a ``files:`` entry the way a buggy job (or an
intruder) would.

Each damaged object gets a new content (a new S3 version; on a directory the file is
rewritten), so a restore to the time just before must bring the old bytes back. The
intruder also deletes one (a delete marker) and plants one that did not exist.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ConfigError, ObjectNotFound
from dr.tasking import dr_task
from tasks.files.client import s3_errors
from tasks.files.sources import S3Source, open_source

logger = logging.getLogger(__name__)

#: What a damaged object holds instead of its content.
DAMAGE_BYTES = b"dr drill: this object was overwritten by a bad job\n"
#: What the breach drill's intruder writes (overwritten and planted objects).
INTRUDER_BYTES = b"dr drill: written by the intruder\n"


def damage_objects(
    source: FileSource, count: int = 3, *, aws: AWSConfig | None = None
) -> list[str]:
    """Overwrite the first ``count`` objects (by key) of the entry; return their keys.

    Raises:
        ObjectNotFound: the entry holds no object.
        StorageError: the source failed.
    """
    src = open_source(source, aws)
    keys = [obj.key for obj in src.list()][:count]
    if not keys:
        raise ObjectNotFound(f"files {source.name}: no object to damage at {source.location}")
    with tempfile.TemporaryDirectory(prefix="dr-files-drill-") as tmp:
        local = Path(tmp) / "damage"
        for key in keys:
            local.write_bytes(DAMAGE_BYTES + key.encode())
            src.write_file(key, local)
    logger.warning("drill: overwrote %s object(s) of %s", len(keys), source.location)
    return keys


def intrude_objects(
    source: FileSource, planted: str, *, aws: AWSConfig | None = None
) -> dict[str, str]:
    """An intruder's writes to an S3 entry: the first object overwritten, the second deleted,
    ``planted`` created; returns ``{"overwritten", "deleted", "planted"}`` -> key.

    Raises:
        ObjectNotFound: fewer than two objects to damage.
        ConfigError: not an S3 entry.
        StorageError: S3 failed.
    """
    src = open_source(source, aws)
    if not isinstance(src, S3Source):
        raise ConfigError(f"files {source.name}: the intruder drill needs an S3 entry")
    keys = [obj.key for obj in src.list() if obj.key != planted][:2]
    if len(keys) < 2:
        raise ObjectNotFound(
            f"files {source.name}: the intruder drill needs two objects at {source.location}"
        )
    overwritten, deleted = keys
    with tempfile.TemporaryDirectory(prefix="dr-files-intruder-") as tmp:
        local = Path(tmp) / "object"
        local.write_bytes(INTRUDER_BYTES + overwritten.encode())
        src.write_file(overwritten, local)
        local.write_bytes(INTRUDER_BYTES + planted.encode())
        src.write_file(planted, local)
    with s3_errors(f"delete {src.location}{deleted}"):
        src.client.delete_object(Bucket=src.bucket, Key=src.full(deleted))
    logger.warning(
        "drill: intruder overwrote %s, deleted %s and planted %s in %s",
        overwritten, deleted, planted, source.location,
    )  # fmt: skip
    return {"overwritten": overwritten, "deleted": deleted, "planted": planted}


damage_objects_task = dr_task(damage_objects, name="files-damage-objects", timeout_seconds=600)
intrude_objects_task = dr_task(intrude_objects, name="files-intrude-objects", timeout_seconds=600)
