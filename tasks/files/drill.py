"""Drills only: damage some objects of a ``files:`` entry the way a buggy job would.

Each damaged object gets a new content (a new S3 version; on a directory the file is
rewritten), so a restore to the time just before must bring the old bytes back.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ObjectNotFound
from dr.tasking import dr_task
from tasks.files.sources import open_source

logger = logging.getLogger(__name__)

#: What a damaged object holds instead of its content.
DAMAGE_BYTES = b"dr drill: this object was overwritten by a bad job\n"


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


damage_objects_task = dr_task(damage_objects, name="files-damage-objects", timeout_seconds=600)
