"""Secret files (Docker secrets, mounted files, the lab's ``secrets/`` folder): read and replace.

A file holds only the value; it is replaced atomically, mode 600, keeping its owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from dr.changes import Change
from dr.errors import ConfigError, PreconditionError, register_secret
from dr.tasking import dr_task

log = logging.getLogger(__name__)


def read_secret_file(path: str | os.PathLike[str]) -> str | None:
    """The value in a secret file (surrounding whitespace stripped), or None if absent."""
    try:
        value = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    register_secret(value)
    return value


def write_secret_file(path: str | os.PathLike[str], value: str) -> Change:
    """Replace a secret file's content with ``value`` (mode 600, owner kept, atomic).

    Args:
        path: the file (its folder must exist).
        value: the new value (never logged); written followed by a newline.

    Returns:
        A Change without any value; not compensable.

    Raises:
        ConfigError: the folder does not exist.
        PreconditionError: the file cannot be written by this runner.
    """
    register_secret(value)
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"secret file {target}: folder {target.parent} does not exist")
    obj = f"secret file {target}"
    current = read_secret_file(target)
    if current == value:
        log.info("%s already holds the new value: unchanged", obj)
        return Change(
            system="file", action="write-secret", object=obj, outcome="unchanged",
            compensable=False,
        )  # fmt: skip
    st = target.stat() if target.exists() else None
    tmp = target.with_name(f".{target.name}.dr-tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            if st is not None and os.geteuid() == 0:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except PermissionError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PreconditionError(f"cannot write {obj}: permission denied") from exc
    change = Change(
        system="file",
        action="write-secret",
        object=obj,
        outcome="created" if current is None else "updated",
        before={"existed": current is not None},
        after={"path": str(target), "mode": "600"},
        undo="the previous value is not kept (a rotated credential is never put back)",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


read_secret_file_task = dr_task(
    read_secret_file, name="secrets-read-secret-file", timeout_seconds=60
)
write_secret_file_task = dr_task(
    write_secret_file, name="secrets-write-secret-file", timeout_seconds=60
)
