"""Breach response on PostgreSQL: volatile evidence (sessions, server logs) and login proofs.

The sessions open right now (:func:`session_snapshot`) and the server's log files
(:func:`collect_server_logs`) are taken first, before containment changes them; who can log
in is proven by trying (:func:`try_login`), not by reading the catalog alone. Passwords never
reach a log line or an error message (every value is registered with
:func:`dr.errors.register_secret`). Blocking sources is :mod:`tasks.postgres.hba`'s; the
drill's intruder is :mod:`tasks.postgres.intruder`'s.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from dr.errors import PostgresError, PreconditionError, redact
from dr.tasking import dr_task
from tasks.postgres.client import connect, describe_conninfo, session

log = logging.getLogger(__name__)


#: Server logs larger than this (in all) are cut: the newest files are kept first.
DEFAULT_MAX_LOG_BYTES = 512 * 1024 * 1024


#: Bytes read per call when a log file is read through SQL (pg_read_binary_file).
LOG_READ_CHUNK_BYTES = 4 * 1024 * 1024


def session_snapshot(conninfo: str) -> list[dict[str, Any]]:
    """The client sessions open on a server right now: volatile evidence, taken first.

    Args:
        conninfo: a superuser (or ``pg_read_all_stats``) connection.

    Returns:
        One dict per client backend: ``pid``, ``user``, ``database``, ``client_addr``,
        ``client_port``, ``application_name``, ``backend_start``, ``state``,
        ``state_change``, ``query`` (registered secrets redacted), ``ssl``.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with session(conninfo, "list sessions", statement_timeout_seconds=None) as conn:
        rows = conn.execute(
            "SELECT a.pid, a.usename, a.datname, host(a.client_addr), a.client_port, "
            "a.application_name, a.backend_start, a.state, a.state_change, a.query, "
            "coalesce(s.ssl, false) "
            "FROM pg_catalog.pg_stat_activity a "
            "LEFT JOIN pg_catalog.pg_stat_ssl s ON s.pid = a.pid "
            "WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid() "
            "ORDER BY a.backend_start"
        ).fetchall()
    return [
        {
            "pid": r[0],
            "user": r[1],
            "database": r[2],
            "client_addr": r[3],
            "client_port": r[4],
            "application_name": r[5],
            "backend_start": r[6].isoformat() if r[6] else None,
            "state": r[7],
            "state_change": r[8].isoformat() if r[8] else None,
            "query": redact(r[9] or ""),
            "ssl": bool(r[10]),
        }
        for r in rows
    ]


def sessions_alive(conninfo: str, pids: Sequence[int]) -> list[int]:
    """Which of ``pids`` are still client sessions on the server.

    Args:
        conninfo: a superuser connection.
        pids: backend process ids (from :func:`session_snapshot` or ``pg_backend_pid()``).

    Returns:
        The pids still present.

    Raises:
        PostgresError: the server cannot be reached.
    """
    if not pids:
        return []
    with session(conninfo, "look for sessions", statement_timeout_seconds=None) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


def try_login(conninfo: str) -> tuple[bool, str]:
    """Try to log in once, as a proof (a credential works, or is refused).

    Args:
        conninfo: the credential under test (user, password, database).

    Returns:
        ``(True, "logged in as <user>")`` or ``(False, <the server's reason>)`` for an
        authentication failure (wrong password, ``NOLOGIN``, unknown role, pg_hba reject).

    Raises:
        PostgresError: the server could not be reached at all (no proof either way).
    """
    try:
        conn = connect(conninfo)
    except PostgresError as exc:
        # The server's own words (after "FATAL:") are the proof's reason.
        text = redact(" ".join(str(exc.__cause__ or exc).split()))
        reason = text.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in text else text
        refused = getattr(exc, "kind", "") in ("auth", "no_database")
        if refused or any(word in text for word in _REFUSALS):
            return False, reason
        raise PostgresError(
            f"log in to {describe_conninfo(conninfo)}: server unreachable: {reason}",
            transient=exc.transient,
        ) from exc
    with conn:
        user = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    return True, f"logged in as {user}"


def role_can_login(conninfo: str, role: str) -> bool | None:
    """Whether a role may log in (``rolcanlogin``), or None when it does not exist.

    Args:
        conninfo: any connection to the server (a standby answers too).
        role: the role.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with session(conninfo, f"read role {role!r}", statement_timeout_seconds=None) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
        ).fetchone()
    return None if row is None else bool(row[0])


def newest_heartbeat(
    conninfo: str, writer: str, table: str = "public.dr_heartbeat"
) -> datetime | None:
    """The time of a writer's newest heartbeat row (``writer, seq, ts``), or None.

    Why: the application writing again is the end-to-end proof that it works with the
    credentials it was given.

    Args:
        conninfo: a connection to the heartbeat database.
        writer: the writer's name (``app`` for the lab application).
        table: the heartbeat table, schema-qualified.

    Raises:
        PostgresError: the server cannot be reached or the table does not exist.
    """
    schema, _, name = table.rpartition(".")
    query = sql.SQL("SELECT pg_catalog.max(ts) FROM {} WHERE writer = %s").format(
        sql.Identifier(schema or "public", name)
    )
    with session(conninfo, "read newest heartbeat", statement_timeout_seconds=None) as conn:
        row = conn.execute(query, [writer]).fetchone()
    return None if row is None else row[0]


#: Server answers that refuse a credential (as opposed to an unreachable server).
_REFUSALS = (
    "password authentication failed",
    "is not permitted to log in",
    "does not exist",
    "pg_hba.conf rejects",
    "no pg_hba.conf entry",
    "authentication failed",
)


def _log_files_sql(conninfo: str) -> tuple[str, list[tuple[str, int, datetime]]]:
    with session(conninfo, "list log files", statement_timeout_seconds=None) as conn:
        directory = str(
            conn.execute("SELECT pg_catalog.current_setting('log_directory')").fetchone()[0]  # type: ignore[index]
        )
        rows = conn.execute(
            "SELECT name, size, modification FROM pg_catalog.pg_ls_logdir() ORDER BY modification"
        ).fetchall()
    return directory, [(str(n), int(s), m) for n, s, m in rows]


def _list_log_files(
    conninfo: str | None, local_log_dir: str | os.PathLike[str] | None
) -> tuple[str, str, list[tuple[str, int, datetime]]]:
    """``(via, directory, [(name, size, modified)])``: from the local folder, else through SQL."""
    local = Path(local_log_dir) if local_log_dir else None
    if local is not None and local.is_dir():
        files: list[tuple[str, int, datetime]] = []
        for p in local.iterdir():
            if p.is_file():
                st = p.stat()
                files.append((p.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return "file", str(local), files
    if conninfo is not None:
        directory, files = _log_files_sql(conninfo)
        return "sql", directory, files
    raise PreconditionError("no log folder on this machine and no connection to read logs")


def collect_server_logs(
    conninfo: str | None,
    dest_dir: str | os.PathLike[str],
    *,
    local_log_dir: str | os.PathLike[str] | None = None,
    since: datetime | None = None,
    max_total_bytes: int = DEFAULT_MAX_LOG_BYTES,
) -> list[dict[str, Any]]:
    """Copy a server's log files into ``dest_dir`` as evidence.

    On this machine (``local_log_dir`` exists) the files are copied from the folder, which
    works even when the server is down; otherwise they are read through SQL
    (``pg_read_binary_file``, superuser). Newest files first until ``max_total_bytes``.

    Args:
        conninfo: a superuser connection (needed without a local folder).
        dest_dir: where to put the copies.
        local_log_dir: the server's log folder on this machine, if it is here.
        since: only files modified at or after this moment.
        max_total_bytes: stop adding older files beyond this size.

    Returns:
        ``[{"name", "path", "size_bytes", "modified_at", "via"}]``, oldest first; files left
        out for size are listed with ``"skipped": "size limit"`` and no path.

    Raises:
        PreconditionError: no local folder and no connection given.
        PostgresError: the server cannot be reached (SQL path).
        OSError: a local file cannot be read.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    via, directory, files = _list_log_files(conninfo, local_log_dir)
    if since is not None:
        files = [f for f in files if f[2] >= since]
    files.sort(key=lambda f: f[2], reverse=True)
    out: list[dict[str, Any]] = []
    total = 0
    for name, size, modified in files:
        entry: dict[str, Any] = {
            "name": name,
            "size_bytes": size,
            "modified_at": modified.isoformat(),
            "via": via,
        }
        if total + size > max_total_bytes and out:
            entry["skipped"] = "size limit"
            out.append(entry)
            continue
        target = dest / name
        if via == "file":
            shutil.copyfile(Path(directory) / name, target)
        else:
            assert conninfo is not None
            _read_log_sql(conninfo, f"{directory}/{name}", target)
        entry["path"] = str(target)
        entry["size_bytes"] = target.stat().st_size
        total += entry["size_bytes"]
        out.append(entry)
    out.sort(key=lambda e: e["modified_at"])
    log.info(
        "server logs %s: %d file(s), %d bytes via %s",
        describe_conninfo(conninfo) if conninfo else directory,
        sum(1 for e in out if "path" in e),
        total,
        via,
    )
    return out


def _read_log_sql(conninfo: str, relpath: str, target: Path) -> None:
    with (
        session(conninfo, f"read {relpath}", statement_timeout_seconds=None) as conn,
        target.open("wb") as out,
    ):
        offset = 0
        while True:
            chunk = conn.execute(
                "SELECT pg_catalog.pg_read_binary_file(%s, %s, %s, true)",
                [relpath, offset, LOG_READ_CHUNK_BYTES],
            ).fetchone()[0]  # type: ignore[index]
            if not chunk:
                break
            out.write(chunk)
            offset += len(chunk)
            if len(chunk) < LOG_READ_CHUNK_BYTES:
                break


# --------------------------------------------------------------------------- Prefect tasks

session_snapshot_task = dr_task(
    session_snapshot, name="postgres-session-snapshot", timeout_seconds=60
)
collect_server_logs_task = dr_task(
    collect_server_logs,
    name="postgres-collect-server-logs",
    timeout_seconds=900,
)
# A proof: never retried.
sessions_alive_task = dr_task(
    sessions_alive, name="postgres-sessions-alive", retries=0, timeout_seconds=60
)
