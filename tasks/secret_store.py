"""Where rotated credentials are kept: Prefect Secret blocks and secret files.

A breach response rotates a credential in the system that checks it (a database role, IAM)
and then writes the new value where the application reads it. Secrets Manager and
Kubernetes secrets are written by :mod:`tasks.cloud` and :mod:`tasks.kubernetes`; this
module writes the two other kinds of store the project uses: Prefect Secret blocks (what
``dr.yaml``'s ``prefect_secret`` references name) and files holding only the value (Docker
secrets, mounted files, the lab's ``secrets/`` folder).

It can also *find* every Prefect Secret block that holds a leaked value
(:func:`find_prefect_secrets_holding`): a leaked password is often stored in more places
than the runbook lists, and each one must get the new value.

Values are never logged, never put in a Change and are registered for redaction as soon as
they are read or written. The previous value is not kept: a breach never rolls a
credential back to a value believed leaked, so these writes are not compensable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from dr.changes import Change
from dr.errors import ConfigError, PreconditionError, register_secret
from dr.tasking import dr_task

__all__ = [
    "find_prefect_secrets_holding",
    "read_prefect_secret",
    "read_secret_file",
    "write_prefect_secret",
    "write_prefect_secret_task",
    "write_secret_file",
    "write_secret_file_task",
]

log = logging.getLogger(__name__)

#: Block documents read per page when searching for a leaked value.
PAGE_SIZE = 200


def read_prefect_secret(name: str) -> str | None:
    """The value of a Prefect Secret block, or None when no such block exists.

    Args:
        name: the block's name.

    Returns:
        The value (registered for redaction).
    """
    from prefect.blocks.system import Secret

    try:
        value = str(Secret.load(name).get())  # type: ignore[union-attr]
    except ValueError:
        return None
    register_secret(value)
    return value


def write_prefect_secret(name: str, value: str) -> Change:
    """Store ``value`` in the Prefect Secret block ``name`` (created if missing).

    Args:
        name: the block's name.
        value: the new value (never logged).

    Returns:
        A Change (``updated``, ``created`` or ``unchanged``) without any value; not
        compensable (the previous value is not kept).
    """
    from prefect.blocks.system import Secret

    register_secret(value)
    current = read_prefect_secret(name)
    obj = f"prefect secret block {name}"
    if current == value:
        log.info("%s already holds the new value: unchanged", obj)
        return Change(
            system="prefect", action="write-secret", object=obj, outcome="unchanged",
            compensable=False,
        )  # fmt: skip
    Secret(value=value).save(name, overwrite=True)
    if read_prefect_secret(name) != value:
        raise PreconditionError(f"{obj}: the value read back is not the one written")
    change = Change(
        system="prefect",
        action="write-secret",
        object=obj,
        outcome="created" if current is None else "updated",
        before={"existed": current is not None},
        after={"block": name},
        undo="the previous value is not kept (a rotated credential is never put back)",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def find_prefect_secrets_holding(values: Iterable[str]) -> list[str]:
    """The names of every Prefect Secret block whose value is one of ``values``.

    Why: a leaked credential must be replaced everywhere it is stored, including places
    nobody listed; comparing values finds them.

    Args:
        values: the leaked values.

    Returns:
        Block names, sorted.
    """
    from prefect import get_client

    wanted = {v for v in values if v}
    if not wanted:
        return []
    found: set[str] = set()
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            docs = client.read_block_documents_by_type(
                "secret", offset=offset, limit=PAGE_SIZE, include_secrets=True
            )
            for doc in docs:
                value = (doc.data or {}).get("value")
                if hasattr(value, "get_secret_value"):
                    value = value.get_secret_value()
                if doc.name and not doc.is_anonymous and str(value) in wanted:
                    found.add(doc.name)
            if len(docs) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
    log.info("Prefect Secret blocks holding a leaked value: %s", sorted(found) or "none")
    return sorted(found)


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


write_prefect_secret_task = dr_task(
    write_prefect_secret, name="write-prefect-secret", timeout_seconds=120
)
write_secret_file_task = dr_task(write_secret_file, name="write-secret-file", timeout_seconds=60)


# --- wrappers added for flows (lead: move on merge)
read_prefect_secret_task = dr_task(
    read_prefect_secret, name="read-prefect-secret", timeout_seconds=120
)
read_secret_file_task = dr_task(read_secret_file, name="read-secret-file", timeout_seconds=60)
find_prefect_secrets_holding_task = dr_task(
    find_prefect_secrets_holding, name="find-prefect-secrets-holding", timeout_seconds=300
)
