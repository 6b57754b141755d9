"""Look at PostgreSQL servers: health and role, replication and standby lag, WAL positions.

Why :func:`health` raises for some failures: it returns ``reachable=False`` for a server
that cannot be reached *right now* (transient failures) but raises for authentication and
"database does not exist" failures, so a wrong password is never mistaken for a dead
primary.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from dr.errors import PostgresError
from dr.tasking import dr_task
from tasks.postgres.client import (
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    describe_conninfo,
    one,
    session,
)
from tasks.postgres.models import NodeHealth, ReplicaStatus, StandbyStatus

log = logging.getLogger(__name__)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


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
        conn_cm = session(conninfo, "health", statement_timeout_seconds=statement_timeout_seconds)
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
    with session(conninfo_primary, "replication status") as conn:
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
    with session(conninfo_standby, "standby status") as conn:
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
    with session(conninfo, "current WAL LSN") as conn:
        lsn = one(
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
    with session(conninfo, "checksum failures") as conn:
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
    with session(conninfo, "list log files") as conn:
        rows = conn.execute(
            "SELECT name, size, modification FROM pg_catalog.pg_ls_logdir() "
            "ORDER BY modification, name"
        ).fetchall()
    return [{"name": n, "size_bytes": int(s), "modified_at": m} for n, s, m in rows]


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
checksum_failures_task = dr_task(
    checksum_failures, name="postgres-checksum-failures", timeout_seconds=60
)
server_log_files_task = dr_task(
    server_log_files, name="postgres-server-log-files", timeout_seconds=60
)
