"""Make a node a streaming standby: ``CHECKPOINT``, replication slots, standby settings.

After a failover the old primary sits on the old timeline and can never simply start
again. The way back (shared/lab/postgres.md): :func:`checkpoint` on the new primary (its
control file only shows the new timeline after one), then
:func:`tasks.postgres.rejoin.rewind` or :func:`tasks.postgres.rejoin.rebuild_from_base_backup`,
then :func:`configure_standby`: ``primary_conninfo`` with the node's name as
``application_name`` (what ``synchronous_standby_names`` refers to), ``primary_slot_name``
and ``standby.signal``. Starting and stopping the server is
:mod:`tasks.postgres.local_server`'s; the flow puts the steps together.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from dr.changes import Change
from dr.errors import PreconditionError, register_secret
from dr.tasking import dr_task
from tasks.postgres.client import describe_conninfo, session
from tasks.postgres.datadir import (
    RECOVERY_SIGNAL,
    STANDBY_SIGNAL,
    owner_of,
    read_auto_conf,
    rewrite_auto_conf,
    write_owned,
    write_passfile,
)
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)

#: How long one statement (``CHECKPOINT``, slot changes) may take.
STATEMENT_TIMEOUT_SECONDS = 300.0


#: Settings a fence may have left in ``postgresql.auto.conf``; a rejoined node drops them.
FENCE_SETTINGS: tuple[str, ...] = ("default_transaction_read_only",)


def checkpoint(conninfo: str, *, password: str | None = None) -> None:
    """Run ``CHECKPOINT`` on a server (the new primary, before ``pg_rewind`` reads it).

    Why: right after a promotion the control file still names the old timeline until the
    next checkpoint; ``pg_rewind`` reads it and may wrongly decide no rewind is needed.

    Args:
        conninfo: a superuser (or ``pg_checkpoint``) connection.
        password: the password, if the role needs one.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    with session(
        conninfo,
        "CHECKPOINT",
        password=password,
        statement_timeout_seconds=STATEMENT_TIMEOUT_SECONDS,
    ) as conn:
        conn.execute("CHECKPOINT")
    log.info("postgres checkpoint %s: done", describe_conninfo(conninfo))


def slot_name_for(node_name: str) -> str:
    """The physical replication slot a node uses as a standby (valid slot characters only).

    Args:
        node_name: the node's name in ``dr.yaml``.

    Returns:
        Lower case letters, digits and underscores (``replica-1`` gives ``replica_1``).
    """
    name = re.sub(r"[^a-z0-9_]", "_", node_name.lower())
    return name[:63] or "standby"


def ensure_physical_slot(
    conninfo_primary: str, slot_name: str, *, password: str | None = None
) -> Change:
    """Create a physical replication slot on the primary unless it exists.

    Why a slot: the primary keeps the WAL a rejoining standby still needs, however long it
    takes to start.

    Args:
        conninfo_primary: a superuser (or REPLICATION) connection to the primary.
        slot_name: from :func:`slot_name_for`.
        password: the password, if the role needs one.

    Returns:
        A :class:`~dr.changes.Change`: ``created`` or ``unchanged``; the undo drops it.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo_primary)
    with session(
        conninfo_primary,
        f"create slot {slot_name}",
        password=password,
        statement_timeout_seconds=STATEMENT_TIMEOUT_SECONDS,
    ) as conn:
        row = conn.execute(
            "SELECT slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
            [slot_name],
        ).fetchone()
        if row is not None and row[0] != "physical":
            raise PreconditionError(f"slot {slot_name} on {target} exists and is {row[0]}")
        if row is None:
            # immediately_reserve: WAL is kept from now on, before the standby connects.
            conn.execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", [slot_name]
            )
    change = Change(
        system=SYSTEM,
        action="create-slot",
        object=f"slot {slot_name} on {target}",
        outcome="unchanged" if row is not None else "created",
        before={"exists": row is not None},
        after={"exists": True},
        undo=f"SELECT pg_drop_replication_slot('{slot_name}')" if row is None else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def drop_inactive_slot(conninfo: str, slot_name: str, *, password: str | None = None) -> Change:
    """Drop a replication slot nobody uses (a leftover from when this node was primary).

    Why: a slot nobody consumes keeps WAL forever; a node that was primary and is a standby
    again still holds the slot its own standby used.

    Args:
        conninfo: the server holding the slot (a standby is fine for physical slots).
        slot_name: the slot.
        password: the password, if the role needs one.

    Returns:
        A :class:`~dr.changes.Change`: ``deleted``, or ``unchanged`` when the slot does not
        exist or is in use (``after["active"]`` says which).

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo)
    with session(
        conninfo,
        f"drop slot {slot_name}",
        password=password,
        statement_timeout_seconds=STATEMENT_TIMEOUT_SECONDS,
    ) as conn:
        row = conn.execute(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", [slot_name]
        ).fetchone()
        dropped = row is not None and not row[0]
        if dropped:
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [slot_name])
    change = Change(
        system=SYSTEM,
        action="drop-slot",
        object=f"slot {slot_name} on {target}",
        outcome="deleted" if dropped else "unchanged",
        before={"exists": row is not None, "active": bool(row and row[0])},
        after={"exists": row is not None and not dropped, "active": bool(row and row[0])},
        undo=f"SELECT pg_create_physical_replication_slot('{slot_name}')" if dropped else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def _primary_conninfo(
    data: Path, host: str, port: int, user: str, application_name: str, password: str | None
) -> str:
    """The standby's ``primary_conninfo``: a password goes to a passfile, never into it."""
    params: dict[str, Any] = {
        "host": host,
        "port": str(port),
        "user": user,
        "application_name": application_name,
    }
    if password:
        register_secret(password)
        params["passfile"] = str(write_passfile(data, host, port, user, password))
    return make_conninfo(**params)


def _ensure_standby_signal(data: Path) -> tuple[bool, bool]:
    """Create ``standby.signal`` and remove ``recovery.signal``; say which were there before."""
    signal_present = (data / STANDBY_SIGNAL).exists()
    recovery_signal = (data / RECOVERY_SIGNAL).exists()
    if not signal_present:
        write_owned(data / STANDBY_SIGNAL, b"", owner_of(data))
    if recovery_signal:
        (data / RECOVERY_SIGNAL).unlink()
    return signal_present, recovery_signal


def configure_standby(
    data_directory: str | os.PathLike[str],
    *,
    primary_host: str,
    primary_port: int,
    user: str,
    application_name: str,
    slot_name: str | None = None,
    password: str | None = None,
    drop_settings: Sequence[str] = FENCE_SETTINGS,
) -> Change:
    """Make a stopped node start as a streaming standby of ``primary_host:primary_port``.

    Writes ``primary_conninfo`` and ``primary_slot_name`` into ``postgresql.auto.conf``
    (read last, so it wins over the other files), removes settings a fence may have left
    (``default_transaction_read_only``) and creates ``standby.signal``.

    Args:
        data_directory: the node's data directory.
        primary_host: the primary's host.
        primary_port: the primary's port.
        user: the replication role.
        application_name: the node's name as the primary sees it (what
            ``synchronous_standby_names`` lists).
        slot_name: a physical slot on the primary (:func:`ensure_physical_slot`), or None.
        password: when the role needs one: written to a password file beside the data
            directory (:func:`~tasks.postgres.datadir.write_passfile`, mode 0600, the
            server owner's) that ``primary_conninfo`` names; never into the conninfo.
        drop_settings: settings to remove from ``postgresql.auto.conf``.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when it was already so).

    Raises:
        PreconditionError: not a data directory.
    """
    data = Path(data_directory)
    obj = f"{data} (local server)"
    if not (data / "PG_VERSION").exists():
        raise PreconditionError(f"{data} is not a PostgreSQL data directory")
    wanted: dict[str, str | None] = {
        "primary_conninfo": _primary_conninfo(
            data, primary_host, primary_port, user, application_name, password
        ),
        "primary_slot_name": slot_name or "",
    }
    current = read_auto_conf(data)
    for name in drop_settings:
        if name in current:
            wanted[name] = None
    differs = {k: v for k, v in wanted.items() if current.get(k) != v}
    if differs:
        rewrite_auto_conf(data, differs)
    signal_present, recovery_signal = _ensure_standby_signal(data)
    changed = bool(differs) or not signal_present or recovery_signal
    change = Change(
        system=SYSTEM,
        action="configure-standby",
        object=obj,
        outcome="changed" if changed else "unchanged",
        before={
            "standby_signal": signal_present,
            "primary_conninfo_set": bool(current.get("primary_conninfo")),
            "dropped_settings": [k for k, v in differs.items() if v is None],
        },
        after={
            "standby_signal": True,
            "primary": f"{primary_host}:{primary_port}",
            "application_name": application_name,
            "slot": slot_name,
        },
        undo=f"remove {data / STANDBY_SIGNAL} (the node would start as a primary)"
        if changed
        else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- Prefect tasks

# Each acts on the world as it is now: never cached. Tools are not retried automatically:
# a failed rewind is answered by a base backup, not by running it again.
# Each acts on the world as it is now: never cached. Tools are not retried automatically:
# a failed rewind is answered by a base backup, not by running it again.
checkpoint_task = dr_task(checkpoint, name="postgres-checkpoint")
ensure_physical_slot_task = dr_task(ensure_physical_slot, name="postgres-ensure-slot")
drop_inactive_slot_task = dr_task(drop_inactive_slot, name="postgres-drop-inactive-slot")
configure_standby_task = dr_task(configure_standby, name="postgres-configure-standby", retries=0)
