"""The heartbeat writer: plays the application during a drill, to measure RTO and RPO.

:class:`HeartbeatProbe` writes ``(writer, seq, ts)`` rows to :data:`HEARTBEAT_TABLE` every
~50 ms in a background thread through a multi-host conninfo with
``target_session_attrs=read-write``, so libpq follows whichever node is the primary. When a
write fails it reconnects every 50 ms and retries the *same* ``seq`` idempotently (``ON
CONFLICT DO NOTHING``): the commit in flight at a crash is ambiguous (committed on the old
primary, never acknowledged), so only acknowledged rows count. A permanent connection error
(wrong password, unknown role or database) stops the writer: retrying would only lock the
role out sooner.

Connections come from :mod:`tasks.postgres.client`. The RPO arithmetic on what this probe
saw lives in :mod:`flows.lifecycle.measure`.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from dr.clock import utcnow
from dr.config import PostgresConfig
from dr.errors import ConfigError, PostgresError
from dr.tasking import dr_task
from tasks.postgres.client import connect, first_line, multi_host_conninfo, session

__all__ = [
    "HEARTBEAT_TABLE",
    "Ack",
    "HeartbeatProbe",
    "count_heartbeat_rows_through",
    "count_heartbeat_rows_through_task",
    "heartbeat_conninfo",
    "heartbeat_rows_present",
    "heartbeat_rows_present_task",
    "heartbeat_seqs_present",
    "heartbeat_seqs_present_task",
    "newest_heartbeat_before",
    "newest_heartbeat_before_task",
    "newest_heartbeat_between",
    "newest_heartbeat_between_task",
]

log = logging.getLogger(__name__)

#: The heartbeat table, schema-qualified: the one name for it in this package.
HEARTBEAT_TABLE = "public.dr_heartbeat"
DEFAULT_INTERVAL_SECONDS = 0.05
DEFAULT_RECONNECT_SECONDS = 0.05
# libpq treats connect_timeout below 2 s as 2 s (docs: libpq-connect, connect_timeout).
PROBE_CONNECT_TIMEOUT_SECONDS = 2


def _table() -> sql.Identifier:
    schema, name = HEARTBEAT_TABLE.split(".")
    return sql.Identifier(schema, name)


def heartbeat_conninfo(pg: PostgresConfig, dbname: str | None = None) -> str:
    """Every node of the target, landing on the primary, in the heartbeat database.

    Args:
        pg: the target's PostgreSQL section.
        dbname: database; defaults to ``pg.heartbeat_db``.

    Returns:
        A conninfo without a password (pass it to the probe separately).
    """
    return multi_host_conninfo(pg, dbname or pg.heartbeat_db)


def _server_of(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.host}:{conn.info.port}"


class Ack(NamedTuple):
    """One heartbeat row the server acknowledged.

    Attributes:
        seq: the row's sequence number (per writer).
        ts: the timestamp written in the row (client clock, just before sending).
        server: ``host:port`` of the primary that acknowledged it.
        acked_at: when the commit returned to the writer (UTC).
    """

    seq: int
    ts: datetime
    server: str
    acked_at: datetime


class HeartbeatProbe:
    """A writer that plays the application during a drill, to measure RTO and RPO.

    Args:
        conninfo_multi_host: conninfo listing every node with
            ``target_session_attrs=read-write`` (see :func:`heartbeat_conninfo`).
        writer: this probe's name in the ``writer`` column (unique per run).
        interval_seconds: pause between writes.
        password: database password, if the role needs one.
        reconnect_seconds: pause between reconnection attempts after a failure.
        create_table: create :data:`HEARTBEAT_TABLE` if it does not exist.
    """

    def __init__(
        self,
        conninfo_multi_host: str,
        *,
        writer: str,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        password: str | None = None,
        reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS,
        create_table: bool = True,
    ) -> None:
        self.conninfo = conninfo_multi_host
        self.writer = writer
        self.interval_seconds = interval_seconds
        self.reconnect_seconds = reconnect_seconds
        self._password = password
        self._create_table = create_table
        self._lock = threading.Lock()
        self._acked: list[Ack] = []
        self._errors: list[tuple[datetime, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._next_seq = 1
        self.first_seq = 1

    # ------------------------------------------------------------------ control

    def start(self) -> HeartbeatProbe:
        """Connect, make sure the table exists, and start writing in a background thread.

        Returns:
            self.

        Raises:
            PostgresError: no primary could be reached at the start (nothing to measure).
        """
        if self._thread is not None:
            return self
        conn = connect(self.conninfo, password=self._password)
        table = _table()
        try:
            if self._create_table:
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (writer text NOT NULL, seq bigint NOT NULL,"
                        " ts timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),"
                        " PRIMARY KEY (writer, seq))"
                    ).format(table)
                )
            row = conn.execute(
                sql.SQL("SELECT pg_catalog.max(seq) FROM {} WHERE writer = %s").format(table),
                (self.writer,),
            ).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise PostgresError(f"heartbeat probe cannot start: {first_line(exc)}") from exc
        self._next_seq = (row[0] or 0) + 1 if row else 1
        self.first_seq = self._next_seq
        self._conn = conn
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.writer}", daemon=True
        )
        self._thread.start()
        log.info(
            "heartbeat probe %s started on %s every %.0f ms",
            self.writer,
            _server_of(conn),
            self.interval_seconds * 1000,
        )
        return self

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop writing and close the connection (idempotent).

        Args:
            timeout_seconds: how long to wait for the writer thread.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_seconds)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if thread is not None:
            log.info(
                "heartbeat probe %s stopped: %d rows acknowledged, %d failed attempts",
                self.writer,
                len(self.acked),
                len(self.errors),
            )

    def __enter__(self) -> HeartbeatProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        insert = sql.SQL(
            "INSERT INTO {} (writer, seq, ts) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(_table())
        while not self._stop.is_set():
            if self._conn is None:
                try:
                    self._conn = connect(
                        self.conninfo,
                        password=self._password,
                        connect_timeout_seconds=PROBE_CONNECT_TIMEOUT_SECONDS,
                    )
                except PostgresError as exc:
                    self._record_error(str(exc))
                    if not exc.transient:
                        log.error("heartbeat probe %s stopped: %s (not retried)", self.writer, exc)
                        return
                    self._stop.wait(self.reconnect_seconds)
                    continue
            seq = self._next_seq
            ts = utcnow()
            try:
                self._conn.execute(insert, (self.writer, seq, ts))
            except psycopg.Error as exc:
                # Not acknowledged: the same seq is retried on the next connection, and
                # ON CONFLICT makes that harmless if the commit did land.
                self._record_error(first_line(exc))
                self._drop_connection()
                self._stop.wait(self.reconnect_seconds)
                continue
            ack = Ack(seq, ts, _server_of(self._conn), utcnow())
            with self._lock:
                self._acked.append(ack)
            self._next_seq = seq + 1
            self._stop.wait(self.interval_seconds)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # already broken; nothing to release
                log.debug("heartbeat probe %s: closing a broken connection failed", self.writer)

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append((utcnow(), message))

    # ------------------------------------------------------------------ observations

    @property
    def acked(self) -> list[Ack]:
        """Every acknowledged row, oldest first (a copy)."""
        with self._lock:
            return list(self._acked)

    @property
    def errors(self) -> list[tuple[datetime, str]]:
        """Failed attempts ``(at, message)``, oldest first (a copy)."""
        with self._lock:
            return list(self._errors)

    def last_acked_before(self, t: datetime) -> Ack | None:
        """The newest row whose acknowledgement reached the writer before ``t``.

        Args:
            t: usually ``failure_at``.

        Returns:
            The :class:`Ack`, or None if nothing was acknowledged before ``t``.
        """
        found = None
        for ack in self.acked:
            if ack.acked_at < t:
                found = ack
            else:
                break
        return found

    def first_write_after(self, t: datetime, *, server: str | None = None) -> datetime | None:
        """When the first write *sent* after ``t`` was acknowledged.

        Args:
            t: usually ``failure_at``.
            server: only count writes acknowledged by this ``host:port`` (the current primary).

        Returns:
            The acknowledgement time (UTC), or None if there is none yet.
        """
        for ack in self.acked:
            if ack.ts > t and (server is None or ack.server == server):
                return ack.acked_at
        return None

    def outage(self, t: datetime) -> float | None:
        """Seconds from ``t`` to the first write acknowledged after it, if any."""
        first = self.first_write_after(t)
        return None if first is None else (first - t).total_seconds()


def heartbeat_seqs_present(
    conninfo: str, writer: str, first: int, last: int, *, password: str | None = None
) -> set[int]:
    """The seqs of ``writer`` between ``first`` and ``last`` present on the server now.

    Raises:
        PostgresError: the rows could not be read.
    """
    query = sql.SQL("SELECT seq FROM {} WHERE writer = %s AND seq BETWEEN %s AND %s").format(
        _table()
    )
    with session(conninfo, "read heartbeat rows", password=password) as conn:
        return {row[0] for row in conn.execute(query, (writer, first, last))}


def heartbeat_rows_present(
    conninfo: str, writer: str, first: int, last: int, *, password: str | None = None
) -> dict[int, datetime]:
    """``seq -> ts`` of ``writer``'s rows between ``first`` and ``last`` on the server now.

    Raises:
        PostgresError: the rows could not be read.
    """
    query = sql.SQL("SELECT seq, ts FROM {} WHERE writer = %s AND seq BETWEEN %s AND %s").format(
        _table()
    )
    with session(conninfo, "read heartbeat rows", password=password) as conn:
        return {row[0]: row[1] for row in conn.execute(query, (writer, first, last))}


def newest_heartbeat_before(
    conninfo: str, writer: str, before: datetime, *, password: str | None = None
) -> datetime | None:
    """``ts`` of ``writer``'s newest row older than ``before`` (the start of a write gap).

    Raises:
        PostgresError: the rows could not be read.
    """
    query = sql.SQL("SELECT pg_catalog.max(ts) FROM {} WHERE writer = %s AND ts < %s").format(
        _table()
    )
    with session(conninfo, "read heartbeat rows", password=password) as conn:
        row = conn.execute(query, (writer, before)).fetchone()
    return row[0] if row else None


def count_heartbeat_rows_through(
    conninfo: str, writer: str, last: int, *, password: str | None = None
) -> int:
    """How many of ``writer``'s rows with ``seq <= last`` are on the server now.

    Raises:
        PostgresError: the rows could not be read.
    """
    query = sql.SQL("SELECT count(*) FROM {} WHERE writer = %s AND seq <= %s").format(_table())
    with session(conninfo, "count heartbeat rows", password=password) as conn:
        row = conn.execute(query, (writer, last)).fetchone()
    return int(row[0]) if row else 0


def newest_heartbeat_between(
    conninfo: str, writer: str, first: int, last: int, *, password: str | None = None
) -> tuple[int, datetime] | None:
    """``(seq, ts)`` of the newest row of ``writer`` between ``first`` and ``last``, if any.

    Raises:
        PostgresError: the rows could not be read.
    """
    query = sql.SQL(
        "SELECT seq, ts FROM {} WHERE writer = %s AND seq BETWEEN %s AND %s"
        " ORDER BY seq DESC LIMIT 1"
    ).format(_table())
    with session(conninfo, "read heartbeat rows", password=password) as conn:
        row = conn.execute(query, (writer, first, last)).fetchone()
    return (row[0], row[1]) if row else None


def heartbeat_state(conninfo: str, table: str = HEARTBEAT_TABLE) -> dict[str, dict[str, Any]]:
    """Per writer of the heartbeat table: newest ``seq`` and ``ts``, and row count.

    Returns:
        ``{writer: {"max_seq", "max_ts", "rows"}}``; empty when the table does not exist.

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with session(conninfo, "heartbeat state", statement_timeout_seconds=None) as conn:
        exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", [table]).fetchone()
        if not exists or exists[0] is None:
            return {}
        rows = conn.execute(
            sql.SQL("SELECT writer, max(seq), max(ts), count(*) FROM {} GROUP BY writer").format(
                sql.Identifier(schema, name)
            )
        ).fetchall()
    return {str(r[0]): {"max_seq": int(r[1]), "max_ts": r[2], "rows": int(r[3])} for r in rows}


def first_heartbeat_after(
    conninfo: str,
    since: datetime,
    *,
    table: str = HEARTBEAT_TABLE,
    exclude_prefix: str = "dr-probe-",
) -> datetime | None:
    """The first heartbeat row an application wrote after ``since`` (None: none yet).

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with session(conninfo, "first heartbeat after", statement_timeout_seconds=None) as conn:
        exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", [table]).fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(
            sql.SQL("SELECT min(ts) FROM {} WHERE ts > %s AND writer NOT LIKE %s").format(
                sql.Identifier(schema, name)
            ),
            [since, exclude_prefix.replace("%", r"\%").replace("_", r"\_") + "%"],
        ).fetchone()
    return row[0] if row else None


def heartbeat_rows_after(
    conninfo: str, writer: str, after: datetime, *, table: str = HEARTBEAT_TABLE
) -> int:
    """How many heartbeat rows of ``writer`` are newer than ``after``.

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with session(conninfo, "heartbeat rows after", statement_timeout_seconds=None) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE writer = %s AND ts > %s").format(
                sql.Identifier(schema, name)
            ),
            [writer, after],
        ).fetchone()
    return int(row[0]) if row else 0


def _split_relation(name: str) -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table:
        raise ConfigError(
            f"relation {name!r} must be schema-qualified (schema.table)", [("relations", name)]
        )
    return schema, table


heartbeat_seqs_present_task = dr_task(
    heartbeat_seqs_present, name="postgres-heartbeat-seqs-present", timeout_seconds=60
)
count_heartbeat_rows_through_task = dr_task(
    count_heartbeat_rows_through, name="postgres-count-heartbeat-rows-through", timeout_seconds=60
)
heartbeat_rows_present_task = dr_task(
    heartbeat_rows_present, name="postgres-heartbeat-rows-present", timeout_seconds=60
)
newest_heartbeat_between_task = dr_task(
    newest_heartbeat_between, name="postgres-newest-heartbeat-between", timeout_seconds=60
)
newest_heartbeat_before_task = dr_task(
    newest_heartbeat_before, name="postgres-newest-heartbeat-before", timeout_seconds=60
)
heartbeat_state_task = dr_task(heartbeat_state, name="postgres-heartbeat-state", timeout_seconds=60)
first_heartbeat_after_task = dr_task(
    first_heartbeat_after, name="postgres-first-heartbeat-after", timeout_seconds=60
)
heartbeat_rows_after_task = dr_task(
    heartbeat_rows_after, name="postgres-heartbeat-rows-after", timeout_seconds=60
)
