"""Promote a standby, fence a primary that cannot be stopped, and prove a node is fenced.

Safety notes, because a failover must never leave two primaries:

- :func:`prove_not_writable` answers with a :class:`FenceProof` that says *how* the node was
  proven not writable (or why it was not); a write that succeeds is never a proof.
- Fencing is either stopping the server (:func:`tasks.postgres.local_server.stop_local_server`)
  or, when it cannot be stopped, :func:`fence_by_connections`: read-only by default,
  connections refused to the application databases, every other client session terminated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from dr.changes import Change
from dr.errors import PostgresError, PreconditionError, redact
from dr.tasking import dr_task
from tasks.postgres.admin import terminate_backends
from tasks.postgres.client import (
    connect,
    describe_conninfo,
    first_line,
    one,
    session,
    set_local,
)
from tasks.postgres.models import SYSTEM, FenceMethod, FenceProof

log = logging.getLogger(__name__)


#: How long a configuration reload may take to reach new sessions.
RELOAD_WAIT_SECONDS = 10.0


POLL_SECONDS = 0.1


def ensure_promoted(conninfo: str, *, wait_seconds: float = 30) -> Change:
    """Make a standby the primary; a node that already is one is left alone.

    Args:
        conninfo: the standby to promote (superuser or a role granted ``pg_promote``).
        wait_seconds: how long to wait for it to leave recovery.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when it was already a primary,
        ``changed`` when it was promoted. Not compensable: the way back is rebuilding the
        node as a standby of the new primary (``pg_rewind`` or a new base backup).

    Raises:
        PostgresError: the node cannot be reached (transient), or it did not leave
            recovery within ``wait_seconds`` (permanent: a person must look).
    """
    target = describe_conninfo(conninfo)
    with session(conninfo, "promote", statement_timeout_seconds=wait_seconds + 30) as conn:
        before = _promotion_state(conn)
        if not before["in_recovery"]:
            change = Change(
                system=SYSTEM,
                action="promote",
                object=target,
                outcome="unchanged",
                before=before,
                after=before,
                undo="",
                compensable=False,
            )
            log.info("%s", change.summary())
            return change
        started = time.monotonic()
        wait = max(1, math.ceil(wait_seconds))
        try:
            conn.execute("SELECT pg_catalog.pg_promote(true, %s)", [wait])
        except psycopg.errors.ObjectNotInPrerequisiteState:
            # "recovery is not in progress": someone else promoted it meanwhile.
            log.info("postgres promote %s: already left recovery while asked", target)
        deadline = started + wait_seconds
        while one(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"{target} is still in recovery {wait_seconds:g} s after pg_promote; "
                    "look at its server log",
                    transient=False,
                )
            time.sleep(POLL_SECONDS)
        after = _promotion_state(conn)
    after["promote_seconds"] = round(time.monotonic() - started, 3)
    change = Change(
        system=SYSTEM,
        action="promote",
        object=target,
        outcome="changed",
        before=before,
        after=after,
        undo=(
            "not reversible in place: rebuild this node as a standby of the primary you keep "
            "(pg_rewind or a new base backup), or fail back with a planned switchover"
        ),
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def _promotion_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT pg_catalog.pg_is_in_recovery(), "
        "CASE WHEN pg_catalog.pg_is_in_recovery() "
        "THEN pg_catalog.pg_last_wal_replay_lsn() "
        "ELSE pg_catalog.pg_current_wal_lsn() END::text"
    ).fetchone()
    assert row is not None
    return {"in_recovery": bool(row[0]), "lsn": row[1]}


def fence_by_connections(conninfo: str, *, dbnames: Sequence[str]) -> Change:
    """Fence a primary that cannot be stopped: no client may keep writing to it.

    Why three steps: ``ALLOW_CONNECTIONS false`` alone leaves existing sessions and the
    maintenance database open, and a superuser can reconnect there. So: every new
    transaction is read-only by default (``ALTER SYSTEM`` + reload, confirmed from a new
    session), the application databases refuse new connections, and every other client
    session is terminated. A superuser who deliberately turns read-only off can still write:
    stop the server (:func:`~tasks.postgres.local_server.stop_local_server`) whenever that is possible.

    Args:
        conninfo: a superuser connection to a database that is *not* being fenced (the
            maintenance database), so the undo can use it too.
        dbnames: the application databases to close.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when everything was already fenced;
        sessions ended either way are counted in ``after["terminated_sessions"]``); undo
        with :func:`unfence_by_connections` (arguments in ``undo_data``).

    Raises:
        PostgresError: the server cannot be reached, or refused a step.
    """
    target = describe_conninfo(conninfo)
    with session(conninfo, "fence by connections") as conn:
        if one(conn, "SELECT pg_catalog.current_database()") in dbnames:
            raise PreconditionError(
                f"{target}: connect through a database that is not being fenced, "
                "or the fence could not be undone through the same connection"
            )
        # Our own session must stay writable to run ALTER DATABASE after the reload.
        set_local(conn, "default_transaction_read_only", "off")
        read_only_before = _file_setting(conn, "default_transaction_read_only") == "on"
        allowed_before = _datallowconn(conn, dbnames)
        if not read_only_before:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_catalog.pg_reload_conf()")
            log.info("postgres fence %s: default_transaction_read_only = on", target)
        _wait_for_new_sessions_to_see(conninfo, "default_transaction_read_only", "on")
        closed = _close_databases(conn, target, allowed_before)
        terminated = terminate_backends(conn, role=None, dbname=None)
        log.info("postgres fence %s: %d other client session(s) terminated", target, terminated)
    # The outcome follows the configuration: sessions found and ended on a node that was
    # already fenced are reported in ``after`` (they may be sessions already closing).
    changed = (not read_only_before) or bool(closed)
    undo_parts = []
    if not read_only_before:
        undo_parts.append("ALTER SYSTEM RESET default_transaction_read_only; pg_reload_conf()")
    undo_parts += [f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true" for db in closed]
    change = Change(
        system=SYSTEM,
        action="fence-by-connections",
        object=target,
        outcome="changed" if changed else "unchanged",
        before={
            "default_transaction_read_only": read_only_before,
            "allow_connections": allowed_before,
        },
        after={
            "default_transaction_read_only": True,
            "allow_connections": {db: False for db in allowed_before},
            "terminated_sessions": terminated,
        },
        undo=(
            f"unfence_by_connections(dbnames={closed!r}, "
            f"reset_read_only={not read_only_before}): " + "; ".join(undo_parts)
        )
        if undo_parts
        else "",
        compensable=bool(undo_parts),
        undo_data={"dbnames": closed, "reset_read_only": not read_only_before},
    )
    log.info("%s", change.summary())
    return change


def _close_databases(
    conn: psycopg.Connection[Any], target: str, allowed_before: dict[str, bool]
) -> list[str]:
    """Make the databases that still allow connections refuse them; return those closed."""
    closed: list[str] = []
    for db, allowed in allowed_before.items():
        if allowed:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(db))
            )
            closed.append(db)
            log.info("postgres fence %s: database %s refuses connections", target, db)
    return closed


def unfence_by_connections(
    conninfo: str, *, dbnames: Sequence[str], reset_read_only: bool = True
) -> Change:
    """Undo :func:`fence_by_connections`: writable by default, databases open again.

    Only for a node that must take writes again (a failover abandoned before promotion, or
    the end of a drill); never while another node is primary.

    Args:
        conninfo: a superuser connection to a database that allows connections.
        dbnames: databases to open (the fence Change's ``undo_data["dbnames"]``).
        reset_read_only: remove ``default_transaction_read_only`` from ``ALTER SYSTEM``.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when nothing was fenced).

    Raises:
        PostgresError: the server cannot be reached, or refused a step.
    """
    target = describe_conninfo(conninfo)
    with session(conninfo, "unfence by connections") as conn:
        set_local(conn, "default_transaction_read_only", "off")
        read_only_before = _file_setting(conn, "default_transaction_read_only") == "on"
        allowed_before = _datallowconn(conn, dbnames)
        reset = reset_read_only and read_only_before
        if reset:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_catalog.pg_reload_conf()")
            _wait_for_new_sessions_to_see(conninfo, "default_transaction_read_only", "off")
        opened = [db for db, allowed in allowed_before.items() if not allowed]
        for db in opened:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(db))
            )
    change = Change(
        system=SYSTEM,
        action="unfence-by-connections",
        object=target,
        outcome="changed" if (reset or opened) else "unchanged",
        before={
            "default_transaction_read_only": read_only_before,
            "allow_connections": allowed_before,
        },
        after={
            "default_transaction_read_only": read_only_before and not reset,
            "allow_connections": {db: True for db in allowed_before},
        },
        undo=f"fence_by_connections(dbnames={list(dbnames)!r})" if (reset or opened) else "",
        compensable=bool(reset or opened),
    )
    log.info("%s", change.summary())
    return change


def _file_setting(conn: psycopg.Connection[Any], name: str) -> str | None:
    """The value a setting gets from the configuration files (what new sessions get)."""
    return one(
        conn,
        "SELECT setting FROM pg_catalog.pg_file_settings "
        "WHERE name = %s AND applied ORDER BY seqno DESC LIMIT 1",
        [name],
    )


def _datallowconn(conn: psycopg.Connection[Any], dbnames: Sequence[str]) -> dict[str, bool]:
    rows = conn.execute(
        "SELECT datname, datallowconn FROM pg_catalog.pg_database WHERE datname = ANY(%s)",
        [list(dbnames)],
    ).fetchall()
    found = {name: bool(allowed) for name, allowed in rows}
    missing = [db for db in dbnames if db not in found]
    if missing:
        raise PreconditionError(f"databases not found: {', '.join(missing)}")
    return {db: found[db] for db in dbnames}


def _wait_for_new_sessions_to_see(conninfo: str, name: str, value: str) -> None:
    """Wait until a new session gets ``value``: ``pg_reload_conf()`` only sends a signal."""
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while True:
        with session(conninfo, "check reloaded setting") as probe:
            seen = one(probe, "SELECT pg_catalog.current_setting(%s)", [name])
        if seen == value:
            return
        if time.monotonic() > deadline:
            raise PostgresError(
                f"{describe_conninfo(conninfo)}: new sessions still get {name}={seen} "
                f"{RELOAD_WAIT_SECONDS:g} s after pg_reload_conf()",
                transient=True,
            )
        time.sleep(POLL_SECONDS)


def prove_not_writable(conninfo: str, *, statement_timeout_seconds: float = 10) -> FenceProof:
    """Show that a node cannot take writes, the way an application would try.

    It connects and, inside a transaction that is always rolled back, creates a temporary
    table, writes a row and takes a transaction id. Proven when the connection is refused
    or the host is unreachable from here, the database refuses connections, the node is in
    recovery, or the write is rejected as read-only. Not proven when the write succeeds,
    or when the answer says nothing (authentication failure, starting up, too many
    clients): the caller must fence some other way or try again.

    Note that "unreachable" is measured from this runner: clients on another network path
    may still reach the node. The ``method`` lets the flow tell the cases apart.

    Args:
        conninfo: the node, as an application connects to it (the fenced database).
        statement_timeout_seconds: bound for the write attempt.

    Returns:
        A :class:`FenceProof`. It never raises for a failed connection or write.
    """
    target = describe_conninfo(conninfo)

    def proof(proven: bool, method: FenceMethod, reason: str) -> FenceProof:
        result = FenceProof(target=target, proven=proven, method=method, reason=redact(reason))
        log.info(
            "postgres fence proof %s: %s (%s) %s",
            target,
            "proven" if proven else "NOT proven",
            method,
            result.reason,
        )
        return result

    try:
        conn = connect(conninfo)
    except PostgresError as exc:
        kind = getattr(exc, "kind", "other")
        if kind == "refused":
            return proof(True, "refused", f"connection refused: no server listening ({exc})")
        if kind in ("timeout", "network"):
            return proof(True, "unreachable", f"unreachable from this runner ({exc})")
        if kind == "not_accepting_connections":
            return proof(True, "not_accepting_connections", str(exc))
        return proof(False, "unknown", f"could not tell, connection failed ({kind}): {exc}")
    try:
        with conn:
            set_local(conn, "statement_timeout", f"{int(statement_timeout_seconds * 1000)}")
            if one(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
                return proof(True, "in_recovery", "the node is a standby (in recovery)")
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("CREATE TEMPORARY TABLE dr_fence_probe (x int) ON COMMIT DROP")
                    conn.execute("INSERT INTO dr_fence_probe VALUES (1)")
                    xid = one(conn, "SELECT pg_catalog.txid_current()")
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                return proof(True, "read_only", f"the write was rejected: {first_line(exc)}")
            return proof(
                False,
                "write_succeeded",
                f"a write succeeded (transaction {xid}, rolled back): the node takes writes",
            )
    except psycopg.Error as exc:
        return proof(False, "unknown", f"could not tell, the attempt failed: {first_line(exc)}")


# --------------------------------------------------------------------------- Prefect tasks

ensure_promoted_task = dr_task(
    ensure_promoted, name="postgres-ensure-promoted", timeout_seconds=180
)
fence_by_connections_task = dr_task(
    fence_by_connections,
    name="postgres-fence-by-connections",
    timeout_seconds=120,
)
unfence_by_connections_task = dr_task(
    unfence_by_connections,
    name="postgres-unfence-by-connections",
    timeout_seconds=120,
)
# A proof is an observation: retrying it would hide the first answer, so no retries.
prove_not_writable_task = dr_task(
    prove_not_writable,
    name="postgres-prove-not-writable",
    retries=0,
    timeout_seconds=60,
)
