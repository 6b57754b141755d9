"""PostgreSQL: assess, promote, fence, check and administer the protected servers.

Everything here talks to PostgreSQL through psycopg 3, and only through :func:`connect`, the
one factory: it builds the connection and translates connection failures into
:class:`~dr.errors.PostgresError`, ``transient=True`` when trying again later may succeed
(connection refused, timeout, "the database system is starting up"/"shutting down", too
many clients) and permanent when it cannot (authentication failed, database does not
exist). Errors raised by queries are translated the same way (lost connection, admin
shutdown, serialization failure and statement timeout are transient).

Messages and logs name a server by :func:`describe_conninfo` (``user@host:port/dbname``);
passwords never reach an error or a log line (:func:`dr.errors.redact` is applied to every
message, and a password handed to :func:`conninfo` is registered as a secret).

Safety notes, because a failover must never leave two primaries:

- :func:`health` returns ``reachable=False`` for a server that cannot be reached *right now*
  (transient failures) but raises for authentication and "database does not exist"
  failures: a wrong password must never be mistaken for a dead primary.
- :func:`prove_not_writable` answers with a :class:`FenceProof` that says *how* the node was
  proven not writable (or why it was not); a write that succeeds is never a proof.
- Fencing is either stopping the server (:func:`stop_local_server`) or, when it cannot be
  stopped, :func:`fence_by_connections`: read-only by default, connections refused to the
  application databases, every other client session terminated.

SQL is parameterized, identifiers are composed with :mod:`psycopg.sql`, and system
functions are ``pg_catalog``-qualified. Thin Prefect tasks are at the bottom of the module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.errors import (
    PostgresError,
    PreconditionError,
    UnsafeTargetError,
    redact,
    register_secret,
)
from dr.localexec import current_os_user, run_as_owner
from dr.tasking import dr_task
from tasks.postgres.client import (
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    connect,
    connection_error_kind,
    conninfo,
    describe_conninfo,
    multi_host_conninfo,
    redact_conninfo,
    session,
)
from tasks.postgres.client import first_line as _first_line
from tasks.postgres.client import (
    one as _one,
)
from tasks.postgres.client import query_error as _query_error
from tasks.postgres.client import (
    set_local as _set_local,
)

__all__ = [
    "PROTECTED_DATABASES",
    "CheckResult",
    "FenceProof",
    "NodeHealth",
    "ReplicaStatus",
    "StandbyStatus",
    "checksum_failures",
    "connect",
    "connection_error_kind",
    "conninfo",
    "create_database",
    "current_wal_lsn",
    "database_exists",
    "describe_conninfo",
    "drop_database",
    "ensure_promoted",
    "fence_by_connections",
    "health",
    "list_roles_and_privileges",
    "multi_host_conninfo",
    "prove_not_writable",
    "redact_conninfo",
    "replication_status",
    "role",
    "role_exists",
    "run_sql_check",
    "run_validation_query",
    "schema_fingerprint",
    "server_log_files",
    "set_role_login",
    "set_role_password",
    "standby_status",
    "start_local_server",
    "stop_local_server",
    "table_row_counts",
    "terminate_sessions",
    "unfence_by_connections",
    "wal_lsn_diff",
]

log = logging.getLogger(__name__)
_session = session


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


SYSTEM = "postgres"

#: Databases that :func:`drop_database` refuses whatever the caller says.
PROTECTED_DATABASES: frozenset[str] = frozenset({"postgres", "template0", "template1"})

#: How long ``pg_terminate_backend`` waits for each backend to exit (PostgreSQL 14+).
TERMINATE_WAIT_MILLISECONDS = 5000
#: How long a configuration reload may take to reach new sessions.
RELOAD_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1

# User objects: everything outside the system schemas (pg_catalog, pg_toast, pg_temp_N, ...).
_USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NodeHealth(_Model):
    """What one server looks like right now.

    ``reachable=False`` carries the reason in ``error``; every other field is then None.
    LSNs are PostgreSQL's text form (``0/3000148``).
    """

    target: str = Field(description="user@host:port/dbname (never a password).")
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    server_version: str | None = None
    server_version_num: int | None = None
    timeline_id: int | None = None
    current_lsn: str | None = Field(None, description="Primary: pg_current_wal_lsn().")
    received_lsn: str | None = Field(None, description="Standby: last WAL received.")
    replayed_lsn: str | None = Field(None, description="Standby: last WAL replayed.")
    replay_lag_seconds: float | None = Field(
        None,
        description="Standby: 0 when everything received is replayed, else now() minus "
        "the last replayed transaction's commit time.",
    )
    is_accepting_writes: bool = False
    checked_at: datetime = Field(default_factory=_utcnow)

    @property
    def role(self) -> Literal["primary", "standby", "unreachable"]:
        if not self.reachable:
            return "unreachable"
        return "standby" if self.in_recovery else "primary"


class ReplicaStatus(_Model):
    """One standby as its primary sees it (a row of ``pg_stat_replication``)."""

    application_name: str
    client_addr: str | None = None
    state: str | None = None
    sync_state: str | None = None
    sent_lsn: str | None = None
    write_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    lag_bytes: int | None = Field(None, description="Primary's current LSN minus replay_lsn.")
    write_lag_seconds: float | None = None
    flush_lag_seconds: float | None = None
    replay_lag_seconds: float | None = None


class StandbyStatus(_Model):
    """A standby as it sees itself (``pg_stat_wal_receiver`` and its replay position)."""

    target: str
    in_recovery: bool
    receiver_status: str | None = Field(
        None, description="'streaming' when healthy; None when no WAL receiver runs."
    )
    sender_host: str | None = None
    sender_port: int | None = None
    slot_name: str | None = None
    received_tli: int | None = None
    flushed_lsn: str | None = None
    latest_end_lsn: str | None = None
    last_msg_receipt_at: datetime | None = None
    replayed_lsn: str | None = None
    last_replay_at: datetime | None = Field(
        None, description="Commit time of the last replayed transaction."
    )
    replay_lag_seconds: float | None = None
    replay_backlog_bytes: int | None = Field(None, description="Received but not replayed.")
    checked_at: datetime = Field(default_factory=_utcnow)


FenceMethod = Literal[
    "refused",
    "unreachable",
    "not_accepting_connections",
    "in_recovery",
    "read_only",
    "write_succeeded",
    "unknown",
]


class FenceProof(_Model):
    """Whether a node was shown unable to take writes, how, and why (or why not)."""

    target: str
    proven: bool
    method: FenceMethod
    reason: str
    checked_at: datetime = Field(default_factory=_utcnow)


class CheckResult(_Model):
    """One SQL check: ``ok`` is the answer, ``detail`` explains it for a person."""

    name: str
    ok: bool
    value: Any = None
    detail: str = ""
    duration_seconds: float


# --------------------------------------------------------------------------- assessment

_HEALTH_SQL = """
SELECT
    pg_catalog.pg_is_in_recovery(),
    pg_catalog.current_setting('server_version'),
    pg_catalog.current_setting('server_version_num')::int,
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN
        coalesce((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
                 (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
    ELSE
        ('x' || pg_catalog.substr(
            pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
    END,
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
         ELSE pg_catalog.pg_current_wal_lsn()::text END,
    pg_catalog.pg_last_wal_receive_lsn()::text,
    pg_catalog.pg_last_wal_replay_lsn()::text,
    CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL
         WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn()
             THEN 0::float8
         ELSE EXTRACT(EPOCH FROM pg_catalog.now()
                      - pg_catalog.pg_last_xact_replay_timestamp())::float8
    END,
    pg_catalog.current_setting('default_transaction_read_only')
"""


def health(
    conninfo: str, *, statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS
) -> NodeHealth:
    """Look at one server: reachable, primary or standby, timeline, LSNs, replay lag.

    Why the timeline is read two ways: right after a promotion the control file still
    holds the old timeline until the next checkpoint, so a primary's timeline is taken from
    its current WAL file name; a standby's from its WAL receiver or, failing that, its
    last checkpoint (``pg_control_checkpoint()``).

    Args:
        conninfo: the server to look at.
        statement_timeout_seconds: bound for the query on a struggling server.

    Returns:
        A :class:`NodeHealth`; ``reachable=False`` with the reason when the server cannot be
        reached right now (refused, timeout, starting up, shutting down).

    Raises:
        PostgresError: a permanent connection failure (authentication, unknown database),
            so that a wrong password is never read as "the primary is down"; or the query
            itself failed.
    """
    target = describe_conninfo(conninfo)
    try:
        conn_cm = _session(conninfo, "health", statement_timeout_seconds=statement_timeout_seconds)
        with conn_cm as conn:
            row = conn.execute(_HEALTH_SQL).fetchone()
    except PostgresError as exc:
        if exc.transient:
            log.info("postgres health %s: unreachable (%s)", target, exc)
            return NodeHealth(target=target, reachable=False, error=str(exc))
        raise
    assert row is not None
    in_recovery, version, version_num, tli, cur, rec, rep, lag, read_only = row
    result = NodeHealth(
        target=target,
        reachable=True,
        in_recovery=in_recovery,
        server_version=version,
        server_version_num=version_num,
        timeline_id=tli,
        current_lsn=cur,
        received_lsn=rec,
        replayed_lsn=rep,
        replay_lag_seconds=_float(lag),
        is_accepting_writes=(not in_recovery) and read_only == "off",
    )
    log.info(
        "postgres health %s: %s, timeline %s, lsn %s",
        target,
        result.role,
        tli,
        cur or rep,
    )
    return result


def role(conninfo: str) -> Literal["primary", "standby", "unreachable"]:
    """Say what a server is: ``primary``, ``standby`` or ``unreachable`` (right now).

    Args:
        conninfo: the server.

    Returns:
        The role; ``unreachable`` only for transient connection failures.

    Raises:
        PostgresError: authentication or unknown database (see :func:`health`).
    """
    return health(conninfo).role


_REPLICATION_SQL = """
WITH me AS (
    SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END AS lsn
)
SELECT r.application_name, pg_catalog.host(r.client_addr), r.state, r.sync_state,
       r.sent_lsn::text, r.write_lsn::text, r.flush_lsn::text, r.replay_lsn::text,
       pg_catalog.pg_wal_lsn_diff(me.lsn, r.replay_lsn)::bigint,
       EXTRACT(EPOCH FROM r.write_lag)::float8,
       EXTRACT(EPOCH FROM r.flush_lag)::float8,
       EXTRACT(EPOCH FROM r.replay_lag)::float8
FROM pg_catalog.pg_stat_replication r CROSS JOIN me
ORDER BY r.application_name, r.pid
"""


def replication_status(conninfo_primary: str) -> list[ReplicaStatus]:
    """The standbys a primary is streaming to, with their lag (``pg_stat_replication``).

    Args:
        conninfo_primary: the primary (or a cascading standby). Needs a superuser or
            ``pg_read_all_stats`` to see LSNs and lags.

    Returns:
        One :class:`ReplicaStatus` per WAL sender; empty when nothing is connected.

    Raises:
        PostgresError: the server cannot be reached or the query failed.
    """
    with _session(conninfo_primary, "replication status") as conn:
        rows = conn.execute(_REPLICATION_SQL).fetchall()
    out = [
        ReplicaStatus(
            application_name=r[0] or "",
            client_addr=r[1],
            state=r[2],
            sync_state=r[3],
            sent_lsn=r[4],
            write_lsn=r[5],
            flush_lsn=r[6],
            replay_lsn=r[7],
            lag_bytes=None if r[8] is None else int(r[8]),
            write_lag_seconds=_float(r[9]),
            flush_lag_seconds=_float(r[10]),
            replay_lag_seconds=_float(r[11]),
        )
        for r in rows
    ]
    log.info(
        "postgres replication %s: %s",
        describe_conninfo(conninfo_primary),
        ", ".join(f"{r.application_name}={r.state}/{r.lag_bytes}B" for r in out) or "no standby",
    )
    return out


_STANDBY_SQL = """
SELECT pg_catalog.pg_is_in_recovery(),
       w.status, w.sender_host, w.sender_port, w.slot_name, w.received_tli,
       w.flushed_lsn::text, w.latest_end_lsn::text, w.last_msg_receipt_time,
       pg_catalog.pg_last_wal_replay_lsn()::text,
       pg_catalog.pg_last_xact_replay_timestamp(),
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL
            WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn()
                THEN 0::float8
            ELSE EXTRACT(EPOCH FROM pg_catalog.now()
                         - pg_catalog.pg_last_xact_replay_timestamp())::float8
       END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                                  pg_catalog.pg_last_wal_replay_lsn())::bigint
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true
"""


def standby_status(conninfo_standby: str) -> StandbyStatus:
    """How a standby receives and replays WAL (``pg_stat_wal_receiver`` and replay position).

    Args:
        conninfo_standby: the standby.

    Returns:
        A :class:`StandbyStatus`; ``in_recovery=False`` means the node is not a standby,
        ``receiver_status=None`` that it is not streaming (archive recovery, or cut off).

    Raises:
        PostgresError: the server cannot be reached or the query failed.
    """
    with _session(conninfo_standby, "standby status") as conn:
        r = conn.execute(_STANDBY_SQL).fetchone()
    assert r is not None
    status = StandbyStatus(
        target=describe_conninfo(conninfo_standby),
        in_recovery=r[0],
        receiver_status=r[1],
        sender_host=r[2],
        sender_port=r[3],
        slot_name=r[4],
        received_tli=r[5],
        flushed_lsn=r[6],
        latest_end_lsn=r[7],
        last_msg_receipt_at=r[8],
        replayed_lsn=r[9],
        last_replay_at=r[10],
        replay_lag_seconds=_float(r[11]),
        replay_backlog_bytes=None if r[12] is None else int(r[12]),
    )
    log.info(
        "postgres standby %s: in_recovery=%s receiver=%s replayed=%s lag=%ss",
        status.target,
        status.in_recovery,
        status.receiver_status,
        status.replayed_lsn,
        status.replay_lag_seconds,
    )
    return status


def current_wal_lsn(conninfo: str) -> str:
    """The server's WAL position: current insert LSN on a primary, last replayed on a standby.

    Args:
        conninfo: the server.

    Returns:
        The LSN in PostgreSQL's text form (``0/3000148``).

    Raises:
        PostgresError: the server cannot be reached or the query failed.
    """
    with _session(conninfo, "current WAL LSN") as conn:
        lsn = _one(
            conn,
            "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() "
            "THEN pg_catalog.pg_last_wal_replay_lsn() "
            "ELSE pg_catalog.pg_current_wal_lsn() END)::text",
        )
    return str(lsn)


def _lsn_int(lsn: str) -> int:
    hi, sep, lo = lsn.strip().partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {lsn!r}")
    return (int(hi, 16) << 32) + int(lo, 16)


def wal_lsn_diff(lsn_a: str, lsn_b: str) -> int:
    """Bytes of WAL between two LSNs, ``a - b`` (what ``pg_wal_lsn_diff`` computes).

    Args:
        lsn_a: an LSN such as ``0/3000148``.
        lsn_b: another LSN.

    Returns:
        The difference in bytes (negative when ``a`` is behind ``b``).

    Raises:
        ValueError: a value is not an LSN.
    """
    return _lsn_int(lsn_a) - _lsn_int(lsn_b)


def checksum_failures(conninfo: str) -> dict[str, int]:
    """Data checksum failures counted per database since statistics were reset.

    Args:
        conninfo: the server.

    Returns:
        ``{database: failures}``; shared catalogs appear as ``(shared)``. Zero when checksums
        are off (PostgreSQL then reports NULL).

    Raises:
        PostgresError: the server cannot be reached or the query failed.
    """
    with _session(conninfo, "checksum failures") as conn:
        rows = conn.execute(
            "SELECT coalesce(datname, '(shared)'), coalesce(checksum_failures, 0) "
            "FROM pg_catalog.pg_stat_database ORDER BY 1"
        ).fetchall()
    result = {str(name): int(count) for name, count in rows}
    bad = {k: v for k, v in result.items() if v}
    log.info("postgres checksum failures %s: %s", describe_conninfo(conninfo), bad or "none")
    return result


def server_log_files(conninfo: str) -> list[dict[str, Any]]:
    """The server's log files (``pg_ls_logdir()``; superuser or ``pg_monitor``).

    Args:
        conninfo: the server.

    Returns:
        ``[{"name", "size_bytes", "modified_at"}]``, oldest first.

    Raises:
        PostgresError: the server cannot be reached or the query failed.
    """
    with _session(conninfo, "list log files") as conn:
        rows = conn.execute(
            "SELECT name, size, modification FROM pg_catalog.pg_ls_logdir() "
            "ORDER BY modification, name"
        ).fetchall()
    return [{"name": n, "size_bytes": int(s), "modified_at": m} for n, s, m in rows]


# --------------------------------------------------------------------------- promotion


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
    with _session(conninfo, "promote", statement_timeout_seconds=wait_seconds + 30) as conn:
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
        while _one(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
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


# --------------------------------------------------------------------------- fencing


def fence_by_connections(conninfo: str, *, dbnames: Sequence[str]) -> Change:
    """Fence a primary that cannot be stopped: no client may keep writing to it.

    Why three steps: ``ALLOW_CONNECTIONS false`` alone leaves existing sessions and the
    maintenance database open, and a superuser can reconnect there. So: every new
    transaction is read-only by default (``ALTER SYSTEM`` + reload, confirmed from a new
    session), the application databases refuse new connections, and every other client
    session is terminated. A superuser who deliberately turns read-only off can still write:
    stop the server (:func:`stop_local_server`) whenever that is possible.

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
    with _session(conninfo, "fence by connections") as conn:
        if _one(conn, "SELECT pg_catalog.current_database()") in dbnames:
            raise PreconditionError(
                f"{target}: connect through a database that is not being fenced, "
                "or the fence could not be undone through the same connection"
            )
        # Our own session must stay writable to run ALTER DATABASE after the reload.
        _set_local(conn, "default_transaction_read_only", "off")
        read_only_before = _file_setting(conn, "default_transaction_read_only") == "on"
        allowed_before = _datallowconn(conn, dbnames)
        if not read_only_before:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_catalog.pg_reload_conf()")
            log.info("postgres fence %s: default_transaction_read_only = on", target)
        _wait_for_new_sessions_to_see(conninfo, "default_transaction_read_only", "on")
        closed: list[str] = []
        for db, allowed in allowed_before.items():
            if allowed:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                        sql.Identifier(db)
                    )
                )
                closed.append(db)
                log.info("postgres fence %s: database %s refuses connections", target, db)
        terminated = _terminate(conn, role=None, dbname=None)
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
    with _session(conninfo, "unfence by connections") as conn:
        _set_local(conn, "default_transaction_read_only", "off")
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
    return _one(
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
        with _session(conninfo, "check reloaded setting") as probe:
            seen = _one(probe, "SELECT pg_catalog.current_setting(%s)", [name])
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
            _set_local(conn, "statement_timeout", f"{int(statement_timeout_seconds * 1000)}")
            if _one(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
                return proof(True, "in_recovery", "the node is a standby (in recovery)")
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("CREATE TEMPORARY TABLE dr_fence_probe (x int) ON COMMIT DROP")
                    conn.execute("INSERT INTO dr_fence_probe VALUES (1)")
                    xid = _one(conn, "SELECT pg_catalog.txid_current()")
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                return proof(True, "read_only", f"the write was rejected: {_first_line(exc)}")
            return proof(
                False,
                "write_succeeded",
                f"a write succeeded (transaction {xid}, rolled back): the node takes writes",
            )
    except psycopg.Error as exc:
        return proof(False, "unknown", f"could not tell, the attempt failed: {_first_line(exc)}")


# --------------------------------------------------------------------------- local server


def _run_as(
    os_user: str | None,
    argv: Sequence[str | os.PathLike[str]],
    *,
    password: str | None = None,
    timeout_seconds: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the data directory's owner (see :mod:`dr.localexec`)."""
    return run_as_owner(os_user, argv, password=password, timeout_seconds=timeout_seconds)


def _pg_ctl_status(data_directory: Path, bin_dir: Path, os_user: str | None) -> int | None:
    """The postmaster's PID when the server runs, None when it does not."""
    proc = _run_as(os_user, [Path(bin_dir) / "pg_ctl", "status", "-D", data_directory])
    if proc.returncode == 3:
        return None
    if proc.returncode == 4:
        raise PreconditionError(f"{data_directory} is not a PostgreSQL data directory")
    if proc.returncode != 0:
        raise PostgresError(f"pg_ctl status failed: {(proc.stderr or proc.stdout).strip()}")
    match = re.search(r"PID:\s*(\d+)", proc.stdout)
    return int(match.group(1)) if match else -1


def stop_local_server(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    mode: Literal["fast", "immediate"] = "fast",
    *,
    timeout_seconds: float = 60,
) -> Change:
    """Stop a server on this machine: the strongest fence (nobody can write to it).

    Args:
        data_directory: the server's data directory.
        bin_dir: its PostgreSQL binaries (``pg_ctl``).
        os_user: the OS user owning the data directory; tools run as that user
            (``runuser`` when this runner is root).
        mode: ``fast`` (clean shutdown, sessions disconnected) or ``immediate`` (a crash:
            recovery runs at the next start).
        timeout_seconds: how long ``pg_ctl`` may wait for the server to stop.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when it was not running. The undo is
        :func:`start_local_server` (only if the failover was abandoned before a promotion).

    Raises:
        PreconditionError: not a data directory, or the tools cannot run as ``os_user``.
        PostgresError: ``pg_ctl stop`` failed, or the server still runs afterwards.
    """
    data = Path(data_directory)
    bins = Path(bin_dir)
    pid = _pg_ctl_status(data, bins, os_user)
    obj = f"{data} (local server)"
    if pid is None:
        change = Change(
            system=SYSTEM,
            action=f"stop-{mode}",
            object=obj,
            outcome="unchanged",
            before={"running": False},
            after={"running": False},
            compensable=False,
        )
        log.info("%s", change.summary())
        return change
    proc = _run_as(
        os_user,
        [bins / "pg_ctl", "stop", "-D", data, "-m", mode, "-w", "-t", str(int(timeout_seconds))],
        timeout_seconds=timeout_seconds + 15,
    )
    still = _pg_ctl_status(data, bins, os_user)
    if still is not None:
        raise PostgresError(
            f"{obj} still runs after pg_ctl stop -m {mode} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}",
            transient=True,
        )
    change = Change(
        system=SYSTEM,
        action=f"stop-{mode}",
        object=obj,
        outcome="changed",
        before={"running": True, "pid": pid},
        after={"running": False},
        undo=(
            f"start_local_server({str(data)!r}, ...): pg_ctl start -D {data} as {os_user or current_os_user()}"
            " — only if no other node was promoted meanwhile"
        ),
        compensable=True,
        undo_data={"data_directory": str(data), "bin_dir": str(bins), "os_user": os_user},
    )
    log.info("%s", change.summary())
    return change


def start_local_server(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    *,
    timeout_seconds: float = 60,
) -> Change:
    """Start a server on this machine (the undo of :func:`stop_local_server`).

    Args:
        data_directory: the server's data directory.
        bin_dir: its PostgreSQL binaries (``pg_ctl``).
        os_user: the OS user owning the data directory.
        timeout_seconds: how long to wait until it accepts connections.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when it was already running.

    Raises:
        PreconditionError: not a data directory, or the tools cannot run as ``os_user``.
        PostgresError: ``pg_ctl start`` failed.
    """
    data = Path(data_directory)
    bins = Path(bin_dir)
    obj = f"{data} (local server)"
    pid = _pg_ctl_status(data, bins, os_user)
    if pid is not None:
        change = Change(
            system=SYSTEM,
            action="start",
            object=obj,
            outcome="unchanged",
            before={"running": True, "pid": pid},
            after={"running": True, "pid": pid},
            compensable=False,
        )
        log.info("%s", change.summary())
        return change
    # pg_ctl -l: the server's output must not go to our pipes (we would wait on them
    # forever); its own log_directory takes over once the logging collector runs.
    startup_log = (data / "log" if (data / "log").is_dir() else data) / "dr-startup.log"
    proc = _run_as(
        os_user,
        [
            bins / "pg_ctl",
            "start",
            "-D",
            data,
            "-w",
            "-t",
            str(int(timeout_seconds)),
            "-l",
            startup_log,
        ],
        timeout_seconds=timeout_seconds + 15,
    )
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_ctl start -D {data} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    pid = _pg_ctl_status(data, bins, os_user)
    change = Change(
        system=SYSTEM,
        action="start",
        object=obj,
        outcome="changed",
        before={"running": False},
        after={"running": True, "pid": pid},
        undo=f"stop_local_server({str(data)!r}, ...)",
        compensable=True,
        undo_data={"data_directory": str(data), "bin_dir": str(bins), "os_user": os_user},
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- checks


def run_sql_check(
    conninfo: str,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> CheckResult:
    """Run a check query: ok when the first column of the first row is truthy.

    The query runs in a read-only transaction, so a check can never change data. A query
    that fails (syntax, missing table, timeout) is a failed check, reported with the reason.

    Args:
        conninfo: the database to check.
        sql: the query, with ``%s`` or ``%(name)s`` placeholders for ``params``.
        params: query parameters (never formatted into the text).
        name: the check's name in reports; defaults to the query's first 60 characters.
        statement_timeout_seconds: bound for the query.

    Returns:
        A :class:`CheckResult`.

    Raises:
        PostgresError: the database cannot be reached (the check could not run at all).
    """
    return _run_check(
        conninfo,
        sql,
        params,
        name=name or " ".join(sql.split())[:60],
        expect="true",
        statement_timeout_seconds=statement_timeout_seconds,
    )


def run_validation_query(
    conninfo: str,
    *,
    name: str,
    sql: str,
    expect: Literal["true", "rows", "no_rows"] = "true",
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> CheckResult:
    """Run a business invariant from ``dr.yaml`` (:class:`dr.config.ValidationQuery`).

    Args:
        conninfo: the database to check.
        name: the query's name.
        sql: the query text.
        expect: ``true`` (first column of first row truthy), ``rows`` (at least one row) or
            ``no_rows`` (nothing returned, e.g. an orphan-row check).
        params: query parameters.
        statement_timeout_seconds: bound for the query.

    Returns:
        A :class:`CheckResult`; ``value`` is the first value (``true``) or the row count.

    Raises:
        PostgresError: the database cannot be reached.
    """
    return _run_check(
        conninfo,
        sql,
        params,
        name=name,
        expect=expect,
        statement_timeout_seconds=statement_timeout_seconds,
    )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _run_check(
    conninfo: str,
    query: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
    *,
    name: str,
    expect: str,
    statement_timeout_seconds: float,
) -> CheckResult:
    started = time.perf_counter()
    conn = connect(conninfo)
    try:
        with conn:
            _set_local(conn, "statement_timeout", f"{int(statement_timeout_seconds * 1000)}")
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                cur = conn.execute(query, params)  # type: ignore[arg-type]
                rows = cur.fetchmany(1000) if cur.description else []
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            raise _query_error(exc, conninfo, f"check {name!r}") from exc
        result = CheckResult(
            name=name,
            ok=False,
            detail=redact(f"query failed [{exc.sqlstate}]: {_first_line(exc)}"),
            duration_seconds=time.perf_counter() - started,
        )
        log.info("postgres check %s: FAILED (%s)", name, result.detail)
        return result
    elapsed = time.perf_counter() - started
    if expect == "true":
        if not rows:
            ok, value, detail = False, None, "no rows returned"
        else:
            value = _jsonable(rows[0][0])
            ok = bool(rows[0][0])
            detail = f"first value is {value!r}"
    elif expect == "rows":
        value = len(rows)
        ok = value > 0
        detail = f"{value}{'+' if value == 1000 else ''} row(s) returned"
    elif expect == "no_rows":
        value = len(rows)
        ok = value == 0
        detail = "no rows returned" if ok else f"{value} row(s) returned, expected none"
    else:
        raise ValueError(f"unknown expectation {expect!r}")
    result = CheckResult(name=name, ok=ok, value=value, detail=detail, duration_seconds=elapsed)
    log.info("postgres check %s: %s (%s)", name, "ok" if ok else "FAILED", detail)
    return result


# --------------------------------------------------------------------------- data & schema


def table_row_counts(conninfo: str, *, exact: bool = True) -> dict[str, int]:
    """Rows per user table, to compare a restored database with its source.

    Counts run in one repeatable-read, read-only transaction (one snapshot for all tables).
    Leaf tables only (ordinary tables and partitions), so no row is counted twice.

    Args:
        conninfo: the database.
        exact: ``count(*)`` on every table; False uses the planner's estimate
            (``reltuples``; -1 when the table was never analyzed).

    Returns:
        ``{"schema.table": rows}``.

    Raises:
        PostgresError: the database cannot be reached or a count failed.
    """
    with _session(conninfo, "row counts", statement_timeout_seconds=None) as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tables = conn.execute(
                "SELECT n.nspname, c.relname, c.reltuples::bigint "
                "FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind = 'r' AND {_USER_SCHEMA} ORDER BY 1, 2"
            ).fetchall()
            counts: dict[str, int] = {}
            for schema, table, estimate in tables:
                if exact:
                    counts[f"{schema}.{table}"] = int(
                        _one(
                            conn,
                            sql.SQL("SELECT count(*) FROM {}").format(
                                sql.Identifier(schema, table)
                            ),
                        )
                    )
                else:
                    counts[f"{schema}.{table}"] = int(estimate)
    log.info(
        "postgres row counts %s: %d tables, %d rows",
        describe_conninfo(conninfo),
        len(counts),
        sum(v for v in counts.values() if v > 0),
    )
    return counts


def schema_fingerprint(conninfo: str) -> dict[str, Any]:
    """Describe a database's user schema, to compare a restored copy with its source.

    Args:
        conninfo: the database.

    Returns:
        ``{"tables": {"s.t": {"kind", "columns": [[name, type, not_null, default]]}},
        "indexes": {"s.index": definition}, "constraints": {"s.t.name": definition},
        "sha256": digest of the rest}``; equal fingerprints mean the same schema.

    Raises:
        PostgresError: the database cannot be reached or a query failed.
    """
    with _session(conninfo, "schema fingerprint") as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tables: dict[str, dict[str, Any]] = {}
            for schema, rel, kind in conn.execute(
                "SELECT n.nspname, c.relname, c.relkind::text FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_USER_SCHEMA} ORDER BY 1, 2"
            ):
                tables[f"{schema}.{rel}"] = {"kind": kind, "columns": []}
            for schema, rel, col, typ, notnull, default in conn.execute(
                "SELECT n.nspname, c.relname, a.attname, "
                "pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "pg_catalog.pg_get_expr(d.adbin, d.adrelid) "
                "FROM pg_catalog.pg_attribute a "
                "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_catalog.pg_attrdef d "
                "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attnum > 0 AND NOT a.attisdropped "
                f"AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_USER_SCHEMA} "
                "ORDER BY n.nspname, c.relname, a.attnum"
            ):
                tables[f"{schema}.{rel}"]["columns"].append([col, typ, bool(notnull), default])
            indexes = {
                f"{schema}.{name}": definition
                for schema, name, definition in conn.execute(
                    "SELECT schemaname, indexname, indexdef FROM pg_catalog.pg_indexes n "
                    "WHERE schemaname <> 'information_schema' AND schemaname !~ '^pg_' "
                    "ORDER BY 1, 2"
                )
            }
            constraints = {
                f"{schema}.{rel}.{name}": f"{ctype}: {definition}"
                for schema, rel, name, ctype, definition in conn.execute(
                    "SELECT n.nspname, c.relname, con.conname, con.contype::text, "
                    "pg_catalog.pg_get_constraintdef(con.oid) "
                    "FROM pg_catalog.pg_constraint con "
                    "JOIN pg_catalog.pg_class c ON c.oid = con.conrelid "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    f"WHERE {_USER_SCHEMA} ORDER BY 1, 2, 3"
                )
            }
    body = {"tables": tables, "indexes": indexes, "constraints": constraints}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    log.info(
        "postgres schema fingerprint %s: %d relations, %d indexes, %d constraints, sha256 %s",
        describe_conninfo(conninfo),
        len(tables),
        len(indexes),
        len(constraints),
        digest[:12],
    )
    return {**body, "sha256": digest}


# --------------------------------------------------------------------------- databases


def database_exists(conninfo: str, name: str) -> bool:
    """Tell whether a database exists on the server.

    Args:
        conninfo: any database on the server.
        name: the database name (exact, case-sensitive).

    Returns:
        True when it exists.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with _session(conninfo, "database exists") as conn:
        return bool(
            _one(
                conn,
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)",
                [name],
            )
        )


def create_database(
    conninfo_maintenance: str,
    name: str,
    *,
    owner: str | None = None,
    template: str | None = None,
) -> Change:
    """Create a database unless it exists (the name is quoted as an identifier).

    Args:
        conninfo_maintenance: a connection to another database on the server.
        name: the new database.
        owner: its owner role; default the connecting role.
        template: template database; default ``template1``.

    Returns:
        A :class:`~dr.changes.Change`: ``created`` or ``unchanged``; undo is
        :func:`drop_database`.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo_maintenance)
    obj = f"database {name} on {target}"
    with _session(conninfo_maintenance, f"create database {name!r}") as conn:
        exists = _one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [name]
        )
        outcome: Literal["created", "unchanged"] = "unchanged"
        if not exists:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            try:
                conn.execute(query)
                outcome = "created"
            except psycopg.errors.DuplicateDatabase:
                log.info("postgres create %s: created concurrently by someone else", obj)
    change = Change(
        system=SYSTEM,
        action="create-database",
        object=obj,
        outcome=outcome,
        before={"exists": bool(exists)},
        after={"exists": True},
        undo=f"drop_database({name!r})" if outcome == "created" else "",
        compensable=outcome == "created",
    )
    log.info("%s", change.summary())
    return change


def drop_database(
    conninfo_maintenance: str,
    name: str,
    *,
    must_not_be: Collection[str] = (),
    force: bool = False,
) -> Change:
    """Drop a database (a restore drill's scratch copy), refusing protected names.

    Why a refusal list: a drill restores into a scratch database and drops it afterwards;
    a wrong name must never drop production. ``postgres``, ``template0`` and ``template1``
    are always protected; add the target's databases in ``must_not_be``.

    Args:
        conninfo_maintenance: a connection to another database on the server.
        name: the database to drop.
        must_not_be: more names that must never be dropped (the target's databases).
        force: terminate its sessions first (``DROP DATABASE ... WITH (FORCE)``).

    Returns:
        A :class:`~dr.changes.Change`: ``deleted`` or ``unchanged`` (it did not exist).
        Not compensable.

    Raises:
        UnsafeTargetError: the name is protected; nothing was done.
        PostgresError: the server cannot be reached or refused.
    """
    protected = PROTECTED_DATABASES | frozenset(must_not_be)
    if name in protected:
        raise UnsafeTargetError(f"refusing to drop protected database {name!r}")
    target = describe_conninfo(conninfo_maintenance)
    obj = f"database {name} on {target}"
    with _session(
        conninfo_maintenance, f"drop database {name!r}", statement_timeout_seconds=None
    ) as conn:
        if _one(conn, "SELECT pg_catalog.current_database()") == name:
            raise UnsafeTargetError(f"refusing to drop {name!r}: it is the connected database")
        exists = _one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [name]
        )
        if exists:
            query = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            if force:
                query += sql.SQL(" WITH (FORCE)")
            conn.execute(query)
    change = Change(
        system=SYSTEM,
        action="drop-database",
        object=obj,
        outcome="deleted" if exists else "unchanged",
        before={"exists": bool(exists)},
        after={"exists": False},
        undo="restore it from a backup" if exists else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- sessions & roles


def _terminate(conn: psycopg.Connection[Any], *, role: str | None, dbname: str | None) -> int:
    rows = conn.execute(
        "SELECT pid, pg_catalog.pg_terminate_backend(pid, %(wait)s) "
        "FROM pg_catalog.pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() "
        "AND (%(role)s::text IS NULL OR usename = %(role)s) "
        "AND (%(db)s::text IS NULL OR datname = %(db)s)",
        {"wait": TERMINATE_WAIT_MILLISECONDS, "role": role, "db": dbname},
    ).fetchall()
    return sum(1 for _pid, ok in rows if ok)


def terminate_sessions(conninfo: str, *, role: str | None = None, dbname: str | None = None) -> int:
    """End client sessions (all, or one role's, or one database's), except our own.

    Waits for each backend to exit, so a following check sees them gone.

    Args:
        conninfo: a superuser (or ``pg_signal_backend``) connection.
        role: only sessions of this role.
        dbname: only sessions on this database.

    Returns:
        How many sessions were terminated.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    with _session(conninfo, "terminate sessions") as conn:
        count = _terminate(conn, role=role, dbname=dbname)
    log.info(
        "postgres terminate sessions %s (role=%s, db=%s): %d terminated",
        describe_conninfo(conninfo),
        role or "*",
        dbname or "*",
        count,
    )
    return count


def role_exists(conninfo: str, role: str) -> bool:
    """Tell whether a role exists.

    Args:
        conninfo: any database on the server.
        role: the role name (exact).

    Returns:
        True when it exists.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with _session(conninfo, "role exists") as conn:
        return bool(
            _one(
                conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s)", [role]
            )
        )


def set_role_login(conninfo: str, role: str, login: bool) -> Change:
    """Allow or forbid a role to log in; forbidding also ends its open sessions.

    Why terminate: ``NOLOGIN`` only stops new logins; in a breach the attacker's open
    sessions must end too.

    Args:
        conninfo: a superuser (or CREATEROLE) connection.
        role: the role.
        login: True to allow logins, False to forbid them.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when the role already was so; sessions
        ended are counted in ``after["terminated_sessions"]``); undo is the opposite call.

    Raises:
        PreconditionError: the role does not exist.
        UnsafeTargetError: forbidding the role this connection uses.
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo)
    obj = f"role {role} on {target}"
    with _session(conninfo, f"set login of role {role!r}") as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolname = current_user FROM pg_catalog.pg_roles "
            "WHERE rolname = %s",
            [role],
        ).fetchone()
        if row is None:
            raise PreconditionError(f"role {role!r} does not exist on {target}")
        before, is_me = bool(row[0]), bool(row[1])
        if not login and is_me:
            raise UnsafeTargetError(f"refusing to forbid logins for {role!r}: this session uses it")
        if before != login:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH {}").format(
                    sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN")
                )
            )
        terminated = 0 if login else _terminate(conn, role=role, dbname=None)
    changed = before != login
    change = Change(
        system=SYSTEM,
        action="allow-login" if login else "forbid-login",
        object=obj,
        outcome="changed" if changed else "unchanged",
        before={"login": before},
        after={"login": login, "terminated_sessions": terminated},
        undo=f"set_role_login({role!r}, {before})" if before != login else "",
        compensable=before != login,
    )
    log.info("%s", change.summary())
    return change


def set_role_password(conninfo: str, role: str, new_password: str) -> Change:
    """Rotate a role's password; the new one never leaves this process in clear text.

    Why hash here: ``ALTER ROLE ... PASSWORD`` cannot take a bind parameter, and a clear
    text password in a statement can land in the server log (``log_statement``). The
    verifier is computed by libpq (``PQencryptPasswordConn``, the server's
    ``password_encryption`` algorithm) and sent as a quoted literal (``sql.Literal``).

    Args:
        conninfo: a superuser (or CREATEROLE) connection.
        role: the role.
        new_password: the new password (registered for redaction; never logged).

    Returns:
        A :class:`~dr.changes.Change` (``updated``) without the password. Not compensable:
        the old password is not kept; rotate again instead.

    Raises:
        PreconditionError: the role does not exist.
        PostgresError: the server cannot be reached or refused.
    """
    register_secret(new_password)
    target = describe_conninfo(conninfo)
    obj = f"role {role} on {target}"
    with _session(conninfo, f"set password of role {role!r}") as conn:
        if not _one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s)", [role]
        ):
            raise PreconditionError(f"role {role!r} does not exist on {target}")
        algorithm = _one(conn, "SELECT pg_catalog.current_setting('password_encryption')")
        verifier = conn.pgconn.encrypt_password(new_password.encode(), role.encode())
        register_secret(verifier.decode())
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode())
            )
        )
    change = Change(
        system=SYSTEM,
        action="rotate-password",
        object=obj,
        outcome="updated",
        before={"role": role},
        after={"role": role, "algorithm": algorithm},
        undo="the previous password is not kept: rotate again with set_role_password",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


_ROLES_SQL = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil,
       ARRAY(SELECT g.rolname FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       ARRAY(SELECT d.datname FROM pg_catalog.pg_database d
             WHERE pg_catalog.has_database_privilege(r.oid, d.oid, 'CONNECT')
             AND d.datallowconn ORDER BY 1) AS can_connect,
       ARRAY(SELECT d.datname FROM pg_catalog.pg_database d
             WHERE pg_catalog.has_database_privilege(r.oid, d.oid, 'CREATE') ORDER BY 1)
             AS can_create_in
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY r.rolname
"""

_GRANTS_SQL = f"""
SELECT coalesce(g.rolname, 'PUBLIC'), n.nspname || '.' || c.relname,
       pg_catalog.array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMA}
GROUP BY 1, 2
ORDER BY 1, 2
"""


def list_roles_and_privileges(conninfo: str) -> list[dict[str, Any]]:
    """Every role with its attributes, memberships and grants, as evidence.

    Table grants are those of the connected database (grants are per database).

    Args:
        conninfo: a database on the server.

    Returns:
        One dict per role (built-in ``pg_*`` roles left out): ``name``, ``superuser``,
        ``login``, ..., ``member_of``, ``can_connect``, ``can_create_in``,
        ``table_privileges`` (``{"schema.table": ["SELECT", ...]}``). ``PUBLIC`` grants
        come as a pseudo-role when there are any.

    Raises:
        PostgresError: the server cannot be reached or a query failed.
    """
    with _session(conninfo, "list roles") as conn:
        roles = conn.execute(_ROLES_SQL).fetchall()
        grants = conn.execute(_GRANTS_SQL).fetchall()
    by_role: dict[str, dict[str, list[str]]] = {}
    for grantee, table, privileges in grants:
        by_role.setdefault(grantee, {})[table] = list(privileges)
    out: list[dict[str, Any]] = []
    for r in roles:
        out.append(
            {
                "name": r[0],
                "superuser": r[1],
                "inherit": r[2],
                "create_role": r[3],
                "create_db": r[4],
                "login": r[5],
                "replication": r[6],
                "bypass_rls": r[7],
                "connection_limit": r[8],
                "valid_until": r[9].isoformat() if r[9] else None,
                "member_of": list(r[10]),
                "can_connect": list(r[11]),
                "can_create_in": list(r[12]),
                "table_privileges": by_role.get(r[0], {}),
            }
        )
    if "PUBLIC" in by_role:
        out.append({"name": "PUBLIC", "table_privileges": by_role["PUBLIC"]})
    return out


# --------------------------------------------------------------------------- Prefect tasks

# Nothing here is cached: every call looks at (or changes) the world as it is now.
health_task = dr_task(health, name="postgres-health", timeout_seconds=60)
role_task = dr_task(role, name="postgres-role", timeout_seconds=60)
replication_status_task = dr_task(
    replication_status,
    name="postgres-replication-status",
    timeout_seconds=60,
)
standby_status_task = dr_task(standby_status, name="postgres-standby-status", timeout_seconds=60)
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
stop_local_server_task = dr_task(
    stop_local_server,
    name="postgres-stop-local-server",
    timeout_seconds=180,
)
start_local_server_task = dr_task(
    start_local_server,
    name="postgres-start-local-server",
    timeout_seconds=180,
)
# A proof is an observation: retrying it would hide the first answer, so no retries.
prove_not_writable_task = dr_task(
    prove_not_writable,
    name="postgres-prove-not-writable",
    retries=0,
    timeout_seconds=60,
)
run_sql_check_task = dr_task(run_sql_check, name="postgres-sql-check", timeout_seconds=120)
run_validation_query_task = dr_task(
    run_validation_query,
    name="postgres-validation-query",
    timeout_seconds=300,
)
table_row_counts_task = dr_task(table_row_counts, name="postgres-row-counts", timeout_seconds=1800)
schema_fingerprint_task = dr_task(
    schema_fingerprint,
    name="postgres-schema-fingerprint",
    timeout_seconds=300,
)
create_database_task = dr_task(
    create_database, name="postgres-create-database", timeout_seconds=300
)
drop_database_task = dr_task(drop_database, name="postgres-drop-database", timeout_seconds=300)
terminate_sessions_task = dr_task(
    terminate_sessions,
    name="postgres-terminate-sessions",
    timeout_seconds=120,
)
checksum_failures_task = dr_task(
    checksum_failures, name="postgres-checksum-failures", timeout_seconds=60
)
set_role_login_task = dr_task(set_role_login, name="postgres-set-role-login", timeout_seconds=120)
set_role_password_task = dr_task(
    set_role_password,
    name="postgres-set-role-password",
    timeout_seconds=120,
)
list_roles_and_privileges_task = dr_task(
    list_roles_and_privileges,
    name="postgres-list-roles",
    timeout_seconds=120,
)
server_log_files_task = dr_task(
    server_log_files, name="postgres-server-log-files", timeout_seconds=60
)


# --- wrappers added for flows (lead: move on merge)
role_exists_task = dr_task(role_exists, name="postgres-role-exists", retries=0, timeout_seconds=60)
