"""The PostgreSQL client: the one place this project opens connections and classifies errors.

Every package that talks to PostgreSQL (assessment, fencing, checks, PITR, history, the
heartbeat probe) connects through :func:`connect` or :func:`session`, so there is one rule
for "transient": connection refused, timeouts, starting up / shutting down, too many
clients, lost connections, serialization failures and statement timeouts may succeed on a
retry; a wrong password, an unknown role or database never does (retrying a wrong password
would only lock the role out sooner).

Messages name a server by :func:`describe_conninfo` (``user@host:port/dbname``); passwords
never reach an error or a log line: a password handed to :func:`conninfo` or
:func:`connect` is registered for redaction.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dr.config import PostgresConfig, PostgresNode
from dr.errors import PostgresError, redact, register_secret

#: How long a session may wait for one statement in assessment and check queries.
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 30.0


# --------------------------------------------------------------------------- conninfo


def conninfo(
    node: PostgresNode,
    *,
    user: str,
    dbname: str,
    password: str | None = None,
    connect_timeout_seconds: float = 3,
    application_name: str = "dr-pipelines",
    **extra: str | int,
) -> str:
    """Build a libpq conninfo for one node (values quoted by psycopg).

    Args:
        node: the server (host and port are used).
        user: role to log in as.
        dbname: database to connect to.
        password: the resolved password, if the role needs one; registered for redaction.
        connect_timeout_seconds: libpq takes whole seconds; rounded up, at least 1.
        application_name: shown in ``pg_stat_activity`` and server logs.
        **extra: any other libpq keyword (``sslmode``, ``target_session_attrs``, ...).

    Returns:
        A conninfo string. It contains the password when one was given: pass it to
        :func:`connect`, never to a log (use :func:`describe_conninfo`).
    """
    return _build(
        host=node.host,
        port=str(node.port),
        user=user,
        dbname=dbname,
        password=password,
        connect_timeout_seconds=connect_timeout_seconds,
        application_name=application_name,
        extra=extra,
    )


def multi_host_conninfo(
    pg: PostgresConfig,
    dbname: str,
    *,
    target_session_attrs: str = "read-write",
    password: str | None = None,
    application_name: str = "dr-pipelines",
) -> str:
    """A conninfo listing every node (primary first) that lands on the one that fits.

    Why: after a failover, writers with ``target_session_attrs=read-write`` find the new
    primary by themselves; this is also how the heartbeat probe measures RPO honestly.

    Args:
        pg: the target's PostgreSQL configuration (nodes, user, connect timeout).
        dbname: database to connect to.
        target_session_attrs: libpq's ``read-write``, ``primary``, ``standby``, ``any``, ...
        password: the resolved password, if the role needs one.
        application_name: shown in ``pg_stat_activity``.

    Returns:
        A conninfo string with comma-separated hosts and ports.
    """
    return _build(
        host=",".join(n.host for n in pg.nodes),
        port=",".join(str(n.port) for n in pg.nodes),
        user=pg.user,
        dbname=dbname,
        password=password,
        connect_timeout_seconds=pg.connect_timeout_seconds,
        application_name=application_name,
        extra={"target_session_attrs": target_session_attrs},
    )


def _build(
    *,
    host: str,
    port: str,
    user: str,
    dbname: str,
    password: str | None,
    connect_timeout_seconds: float,
    application_name: str,
    extra: Mapping[str, str | int],
) -> str:
    params: dict[str, str | int] = {
        "host": host,
        "port": port,
        "user": user,
        "dbname": dbname,
        "connect_timeout": max(1, math.ceil(connect_timeout_seconds)),
        "application_name": application_name,
    }
    params.update(extra)
    if password is not None:
        register_secret(password)
        params["password"] = password
    return make_conninfo(**params)  # type: ignore[arg-type]


def describe_conninfo(conninfo: str) -> str:
    """Name a server for messages and logs: ``user@host:port/dbname``, never a password."""
    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<invalid conninfo>"
    hosts = str(d.get("host") or d.get("hostaddr") or "localhost").split(",")
    ports = str(d.get("port") or "5432").split(",")
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    where = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=False))
    user = d.get("user") or ""
    dbname = d.get("dbname") or user
    return redact(f"{user}@{where}/{dbname}" if user else f"{where}/{dbname}")


def redact_conninfo(conninfo: str) -> str:
    """The conninfo with its password replaced by ``***`` (and registered secrets removed)."""
    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact(conninfo)
    if "password" in d:
        d["password"] = "***"  # noqa: S105 - the mask, not a password
    return redact(make_conninfo(**d))


# --------------------------------------------------------------------------- errors

# (kind, transient, pattern). Permanent kinds come first: with several hosts, a wrong
# password on one of them is a configuration problem whatever the others said.
_CONNECT_ERROR_KINDS: list[tuple[str, bool, re.Pattern[str]]] = [
    (kind, transient, re.compile(pattern, re.IGNORECASE))
    for kind, transient, pattern in [
        ("no_database", False, r'database "[^"]*" does not exist'),
        (
            "auth",
            False,
            r"password authentication failed|authentication failed|no pg_hba\.conf entry"
            r"|pg_hba\.conf rejects|no password supplied|role \"[^\"]*\" does not exist"
            r"|is not permitted to log in|password is required|certificate",
        ),
        ("not_accepting_connections", False, r"is not currently accepting connections"),
        ("unknown_host", False, r"could not translate host name|name or service not known"),
        ("refused", True, r"connection refused"),
        ("timeout", True, r"timeout expired|timed out|connection timeout"),
        (
            "starting_up",
            True,
            r"the database system is starting up|not yet accepting connections"
            r"|the database system is in recovery mode",
        ),
        ("shutting_down", True, r"the database system is shutting down"),
        ("too_many_clients", True, r"too many clients|remaining connection slots are reserved"),
        (
            "no_writable_host",
            True,
            r"session is read-only|server is in hot standby mode|server is not in hot standby"
            r"|not in read-write mode",
        ),
        (
            "network",
            True,
            r"no route to host|network is unreachable|connection reset|server closed the "
            r"connection unexpectedly|temporary failure in name resolution|could not receive "
            r"data|could not send data|broken pipe|ssl syscall error|eof detected",
        ),
    ]
]

# SQLSTATEs worth retrying when a query fails: connection exceptions (class 08), transaction
# rollbacks (class 40: serialization failure, deadlock), admin/crash shutdown, cannot connect
# now, idle session timeout, statement timeout / cancel, too many connections.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "57P01", "57P02", "57P03", "57P05", "57014", "53300")


def connection_error_kind(message: str) -> tuple[str, bool]:
    """Classify a connection failure by libpq's message.

    libpq gives no SQLSTATE for failures before a session exists, so the text decides.

    Args:
        message: the error text from libpq/psycopg.

    Returns:
        ``(kind, transient)``; kind is one of ``no_database``, ``auth``,
        ``not_accepting_connections``, ``unknown_host``, ``refused``, ``timeout``,
        ``starting_up``, ``shutting_down``, ``too_many_clients``, ``no_writable_host``,
        ``network`` or ``other`` (permanent).
    """
    for kind, transient, pattern in _CONNECT_ERROR_KINDS:
        if pattern.search(message):
            return kind, transient
    return "other", False


def first_line(exc: BaseException) -> str:
    """The first few lines of an error, joined: enough to say what failed."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[:4]) if lines else type(exc).__name__


def query_error(exc: psycopg.Error, conninfo: str, what: str) -> PostgresError:
    """A query failure as PostgresError; transient by SQLSTATE (or a lost connection)."""
    state = exc.sqlstate or ""
    if state:
        transient = state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    else:
        # No SQLSTATE: the connection itself failed (server gone, socket closed).
        transient = isinstance(exc, psycopg.OperationalError)
    code = f" [{state}]" if state else ""
    err = PostgresError(
        f"{what} on {describe_conninfo(conninfo)} failed{code}: {first_line(exc)}",
        transient=transient,
    )
    err.sqlstate = state or None  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------- connections


def connect(
    conninfo: str,
    *,
    password: str | None = None,
    autocommit: bool = True,
    connect_timeout_seconds: float | None = None,
    row_factory: Any = None,
) -> psycopg.Connection[Any]:
    """Open a connection: the one place this project creates PostgreSQL clients.

    Args:
        conninfo: a libpq conninfo (see :func:`conninfo`, :func:`multi_host_conninfo`).
        password: sent apart from the conninfo, so it never appears in one that is logged;
            registered for redaction.
        autocommit: True (the default) so that DDL such as ``CREATE DATABASE`` works and no
            transaction stays open by accident; use ``conn.transaction()`` for atomic work.
        connect_timeout_seconds: overrides the conninfo's ``connect_timeout`` (whole
            seconds, at least 1).
        row_factory: a psycopg row factory (``dict_row`` for the history database).

    Returns:
        An open ``psycopg.Connection`` (close it, or use it as a context manager).

    Raises:
        PostgresError: transient for refused/timeout/starting up/shutting down/too many
            clients; permanent for authentication failures, unknown databases and roles.
            The message names the server without its password. ``kind`` on the error holds
            :func:`connection_error_kind`'s classification.
    """
    with contextlib.suppress(psycopg.ProgrammingError):
        # A conninfo built elsewhere: its password must not reach a message either.
        register_secret(conninfo_to_dict(conninfo).get("password"))
    kwargs: dict[str, Any] = {"autocommit": autocommit}
    if password:
        register_secret(password)
        kwargs["password"] = password
    if connect_timeout_seconds is not None:
        kwargs["connect_timeout"] = max(1, math.ceil(connect_timeout_seconds))
    if row_factory is not None:
        kwargs["row_factory"] = row_factory
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        kind, transient = connection_error_kind(str(exc))
        err = PostgresError(
            f"cannot connect to {describe_conninfo(conninfo)} ({kind}): {first_line(exc)}",
            transient=transient,
        )
        err.kind = kind  # type: ignore[attr-defined]
        raise err from exc


@contextlib.contextmanager
def session(
    conninfo: str,
    what: str,
    *,
    password: str | None = None,
    statement_timeout_seconds: float | None = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    autocommit: bool = True,
    row_factory: Any = None,
) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose query errors come out as PostgresError (and which is closed).

    Args:
        conninfo: where to connect.
        what: names the work in error messages ("health check", "promote").
        password: see :func:`connect`.
        statement_timeout_seconds: per-statement limit for this session; None for none.
        autocommit: see :func:`connect`.
        row_factory: see :func:`connect`.
    """
    conn = connect(conninfo, password=password, autocommit=autocommit, row_factory=row_factory)
    try:
        with conn:
            if statement_timeout_seconds is not None:
                set_local(conn, "statement_timeout", f"{int(statement_timeout_seconds * 1000)}")
            yield conn
    except psycopg.Error as exc:
        raise query_error(exc, conninfo, what) from exc


def set_local(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    """Set a setting for this session only (``set_config(..., false)``)."""
    conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", [name, value])


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the first row, or None."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]
