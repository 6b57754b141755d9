"""Prefect Secret blocks: read one, write a rotated value, and find every block holding a leak.

A leaked password is often stored in more places than the runbook lists, and each one must
get the new value: :func:`find_prefect_secrets_holding` finds them by comparing values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from dr.changes import Change
from dr.errors import PreconditionError, register_secret
from dr.tasking import dr_task
from tasks.secrets.client import load_secret_block, named_secret_blocks, save_secret_block

log = logging.getLogger(__name__)


def read_prefect_secret(name: str) -> str | None:
    """The value of a Prefect Secret block, or None when no such block exists.

    Args:
        name: the block's name.

    Returns:
        The value (registered for redaction).
    """
    value = load_secret_block(name)
    if value is None:
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
    register_secret(value)
    current = read_prefect_secret(name)
    obj = f"prefect secret block {name}"
    if current == value:
        log.info("%s already holds the new value: unchanged", obj)
        return Change(
            system="prefect", action="write-secret", object=obj, outcome="unchanged",
            compensable=False,
        )  # fmt: skip
    save_secret_block(name, value)
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
    wanted = {v for v in values if v}
    if not wanted:
        return []
    found = {name for name, value in named_secret_blocks() if value in wanted}
    log.info("Prefect Secret blocks holding a leaked value: %s", sorted(found) or "none")
    return sorted(found)


read_prefect_secret_task = dr_task(
    read_prefect_secret, name="secrets-read-prefect-secret", timeout_seconds=60
)
write_prefect_secret_task = dr_task(
    write_prefect_secret, name="secrets-write-prefect-secret", timeout_seconds=120
)
find_prefect_secrets_holding_task = dr_task(
    find_prefect_secrets_holding, name="secrets-find-prefect-secrets-holding", timeout_seconds=300
)
