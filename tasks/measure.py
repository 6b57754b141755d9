"""Measuring a recovery: the heartbeat probe, heartbeat RPO, and the end-to-end health wait.

RTO and RPO are measured here, never assumed:

- :class:`HeartbeatProbe` plays the application during a drill: a background thread writes
  ``(writer, seq, ts)`` rows to ``public.dr_heartbeat`` every ~50 ms through a multi-host
  conninfo with ``target_session_attrs=read-write``, so libpq follows whichever node is the
  primary. When a write fails it reconnects every 50 ms and retries the *same* ``seq``
  idempotently (``ON CONFLICT DO NOTHING``): the commit in flight at a crash is ambiguous
  (committed on the old primary, never acknowledged), so only acknowledged rows count.
- :meth:`HeartbeatProbe.rpo` / :func:`heartbeat_rpo` compare the newest row acknowledged
  before the failure with the rows present after recovery: lost rows and seconds.
- :func:`wait_until_healthy` polls every end-to-end check (HTTP, SQL, validation queries and,
  in drills, heartbeat writes acknowledged by the *current* primary) until all pass at
  once; that moment is ``restored_at``. It is bounded by a timeout.

This module talks to PostgreSQL (psycopg) and HTTP (httpx) directly; it imports no other
module of ``tasks/``. :func:`connect` is its one client factory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
import psycopg
from psycopg import sql

from dr.config import PostgresConfig, PostgresNode, Target
from dr.errors import PostgresError, redact
from dr.tasking import dr_task

__all__ = [
    "HEARTBEAT_TABLE",
    "Ack",
    "CheckOutcome",
    "HealthResult",
    "HeartbeatProbe",
    "HeartbeatRPO",
    "connect",
    "heartbeat_rpo",
    "multi_host_conninfo",
    "run_health_checks",
    "wait_until_healthy",
    "wait_until_healthy_task",
]

log = logging.getLogger(__name__)

HEARTBEAT_TABLE = "dr_heartbeat"
HEARTBEAT_SCHEMA = "public"
DEFAULT_INTERVAL_SECONDS = 0.05
DEFAULT_RECONNECT_SECONDS = 0.05
# libpq treats connect_timeout below 2 s as 2 s (docs: libpq-connect, connect_timeout).
PROBE_CONNECT_TIMEOUT_SECONDS = 2


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------- connections


def multi_host_conninfo(
    pg: PostgresConfig,
    dbname: str | None = None,
    *,
    nodes: Sequence[PostgresNode] | None = None,
    read_write: bool = True,
    connect_timeout_seconds: float | None = None,
    application_name: str = "dr-pipelines",
) -> str:
    """A libpq conninfo listing every node, so libpq finds the current primary itself.

    Args:
        pg: the target's PostgreSQL section.
        dbname: database; defaults to the heartbeat database.
        nodes: nodes to list; defaults to the primary then the replicas.
        read_write: add ``target_session_attrs=read-write`` (only a primary accepts).
        connect_timeout_seconds: per host; defaults to ``pg.connect_timeout_seconds``.
        application_name: shown in ``pg_stat_activity``.

    Returns:
        A conninfo string without any password (pass it to :func:`connect` separately).
    """
    nodes = list(nodes) if nodes is not None else pg.nodes
    timeout = connect_timeout_seconds or pg.connect_timeout_seconds
    parts = {
        "host": ",".join(n.host for n in nodes),
        "port": ",".join(str(n.port) for n in nodes),
        "dbname": dbname or pg.heartbeat_db,
        "user": pg.user,
        "connect_timeout": str(max(1, round(timeout))),
        "application_name": application_name,
    }
    if read_write:
        parts["target_session_attrs"] = "read-write"
    return " ".join(f"{key}={value}" for key, value in parts.items())


def connect(
    conninfo: str,
    *,
    password: str | None = None,
    autocommit: bool = True,
    connect_timeout_seconds: float | None = None,
) -> psycopg.Connection[Any]:
    """Open a PostgreSQL connection; the one place this module builds a client.

    Args:
        conninfo: libpq conninfo (may list several hosts).
        password: sent separately so it never appears in a conninfo that could be logged.
        autocommit: True for probes and checks (every statement its own transaction).
        connect_timeout_seconds: overrides the conninfo's ``connect_timeout``.

    Returns:
        An open ``psycopg.Connection``.

    Raises:
        PostgresError: transient when no server answered (refused, timeout).
    """
    kwargs: dict[str, Any] = {"autocommit": autocommit}
    if password:
        kwargs["password"] = password
    if connect_timeout_seconds is not None:
        kwargs["connect_timeout"] = max(1, round(connect_timeout_seconds))
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"cannot connect ({redact(conninfo)}): {_first_line(exc)}", transient=True
        ) from exc
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect ({redact(conninfo)}): {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_of(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.host}:{conn.info.port}"


# ---------------------------------------------------------------------- heartbeat probe


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


class HeartbeatRPO(NamedTuple):
    """Data lost at a failure, from the heartbeat.

    Attributes:
        lost_rows: acknowledged rows (before the failure) missing after recovery.
        seconds: newest acknowledged-before-failure row's ts minus the newest surviving
            one's ts; 0.0 when nothing was lost; None when it cannot be known.
        newest_acked_seq: the newest row acknowledged before the failure.
        newest_present_seq: the newest of those still present after recovery.
    """

    lost_rows: int
    seconds: float | None
    newest_acked_seq: int | None
    newest_present_seq: int | None


class HeartbeatProbe:
    """A writer that plays the application during a drill, to measure RTO and RPO.

    Args:
        conninfo_multi_host: conninfo listing every node with
            ``target_session_attrs=read-write`` (see :func:`multi_host_conninfo`).
        writer: this probe's name in the ``writer`` column (unique per run).
        interval_seconds: pause between writes.
        password: database password, if the role needs one.
        reconnect_seconds: pause between reconnection attempts after a failure.
        create_table: create ``public.dr_heartbeat`` if it does not exist.
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
        table = sql.Identifier(HEARTBEAT_SCHEMA, HEARTBEAT_TABLE)
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
            raise PostgresError(f"heartbeat probe cannot start: {_first_line(exc)}") from exc
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
        ).format(sql.Identifier(HEARTBEAT_SCHEMA, HEARTBEAT_TABLE))
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
                    self._stop.wait(self.reconnect_seconds)
                    continue
            seq = self._next_seq
            ts = _utcnow()
            try:
                self._conn.execute(insert, (self.writer, seq, ts))
            except psycopg.Error as exc:
                # Not acknowledged: the same seq is retried on the next connection, and
                # ON CONFLICT makes that harmless if the commit did land.
                self._record_error(_first_line(exc))
                self._drop_connection()
                self._stop.wait(self.reconnect_seconds)
                continue
            ack = Ack(seq, ts, _server_of(self._conn), _utcnow())
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
            self._errors.append((_utcnow(), message))

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

    def rpo(self, conninfo_new_primary: str, failure_at: datetime) -> HeartbeatRPO:
        """Heartbeat RPO: acknowledged-before-failure rows against rows present now.

        Args:
            conninfo_new_primary: where to read after recovery (multi-host is fine).
            failure_at: when the failure was injected or detected.

        Returns:
            A :class:`HeartbeatRPO`; nothing acknowledged before the failure gives 0 rows,
            0.0 seconds.

        Raises:
            PostgresError: the rows could not be read.
        """
        last = self.last_acked_before(failure_at)
        if last is None:
            return HeartbeatRPO(0, 0.0, None, None)
        acks = [a for a in self.acked if a.seq <= last.seq]
        present = _present_seqs(
            conninfo_new_primary, self.writer, acks[0].seq, last.seq, self._password
        )
        lost = [a for a in acks if a.seq not in present]
        surviving = [a for a in acks if a.seq in present]
        if not lost:
            return HeartbeatRPO(0, 0.0, last.seq, last.seq)
        if surviving:
            newest = surviving[-1]
            seconds = (last.ts - newest.ts).total_seconds()
            return HeartbeatRPO(len(lost), seconds, last.seq, newest.seq)
        # Nothing of ours survived: the loss reaches back before the probe started; the
        # probe's own window is a lower bound.
        seconds = (last.ts - acks[0].ts).total_seconds() + self.interval_seconds
        return HeartbeatRPO(len(lost), seconds, last.seq, None)


def _present_seqs(
    conninfo: str, writer: str, first: int, last: int, password: str | None
) -> set[int]:
    table = sql.Identifier(HEARTBEAT_SCHEMA, HEARTBEAT_TABLE)
    query = sql.SQL("SELECT seq FROM {} WHERE writer = %s AND seq BETWEEN %s AND %s").format(table)
    with connect(conninfo, password=password) as conn:
        try:
            return {row[0] for row in conn.execute(query, (writer, first, last))}
        except psycopg.Error as exc:
            raise PostgresError(f"cannot read heartbeat rows: {_first_line(exc)}") from exc


def heartbeat_rpo(
    conninfo_new_primary: str,
    writer: str,
    acked_before_failure_seq: int,
    acked_before_failure_ts: datetime | None = None,
    *,
    first_seq: int = 1,
    password: str | None = None,
) -> HeartbeatRPO:
    """Heartbeat RPO from the newest sequence acknowledged before the failure.

    The writer is sequential (a seq is sent only after the previous one was acknowledged),
    and replication applies WAL in order, so what survives is a prefix: lost rows are the
    acknowledged seqs above the newest one present.

    Args:
        conninfo_new_primary: the recovered primary (multi-host is fine).
        writer: the writer's name.
        acked_before_failure_seq: newest seq acknowledged before the failure.
        acked_before_failure_ts: its ``ts``; needed for seconds when rows were lost.
        first_seq: the first seq this writer wrote in the measured window.
        password: database password, if needed.

    Returns:
        A :class:`HeartbeatRPO`.

    Raises:
        PostgresError: the rows could not be read.
    """
    table = sql.Identifier(HEARTBEAT_SCHEMA, HEARTBEAT_TABLE)
    query = sql.SQL(
        "SELECT seq, ts FROM {} WHERE writer = %s AND seq BETWEEN %s AND %s"
        " ORDER BY seq DESC LIMIT 1"
    ).format(table)
    with connect(conninfo_new_primary, password=password) as conn:
        try:
            row = conn.execute(query, (writer, first_seq, acked_before_failure_seq)).fetchone()
        except psycopg.Error as exc:
            raise PostgresError(f"cannot read heartbeat rows: {_first_line(exc)}") from exc
    newest_seq = row[0] if row else None
    lost = acked_before_failure_seq - (newest_seq if newest_seq is not None else first_seq - 1)
    if lost <= 0:
        return HeartbeatRPO(0, 0.0, acked_before_failure_seq, newest_seq)
    seconds = None
    if acked_before_failure_ts is not None and row is not None:
        seconds = (acked_before_failure_ts - row[1]).total_seconds()
    return HeartbeatRPO(lost, seconds, acked_before_failure_seq, newest_seq)


# ---------------------------------------------------------------------- health


@dataclass
class CheckOutcome:
    """One end-to-end check's answer.

    Attributes:
        name: the check's name from dr.yaml (or ``heartbeat``).
        kind: ``http``, ``sql``, ``validation`` or ``heartbeat``.
        ok: True when it passed.
        detail: what was seen (status code, value, error), redacted.
        value: the raw value (status code, query result), when useful.
    """

    name: str
    kind: str
    ok: bool
    detail: str = ""
    value: Any = None


@dataclass
class HealthResult:
    """The answer of :func:`wait_until_healthy`.

    Attributes:
        ok: every check passed in the same round before the timeout.
        restored_at: the end of the first all-passing round (UTC), else None.
        checks: the last round's outcomes (the passing one when ``ok``).
        attempts: how many rounds ran.
        elapsed_seconds: time spent waiting.
        primary: ``host:port`` of the primary the checks reached, if any.
    """

    ok: bool
    restored_at: datetime | None
    checks: list[CheckOutcome] = field(default_factory=list)
    attempts: int = 0
    elapsed_seconds: float = 0.0
    primary: str | None = None

    @property
    def failing(self) -> list[CheckOutcome]:
        """The checks that did not pass in the last round."""
        return [c for c in self.checks if not c.ok]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("t", "true", "yes", "on", "1")
    return bool(value)


def _run_query(
    conns: dict[str, psycopg.Connection[Any] | PostgresError],
    dbname: str,
    open_conn: Callable[[str], psycopg.Connection[Any]],
    query: str,
) -> list[tuple[Any, ...]]:
    conn = conns.get(dbname)
    if conn is None:
        try:
            conn = open_conn(dbname)
        except PostgresError as exc:
            conn = exc
        conns[dbname] = conn
    if isinstance(conn, PostgresError):
        raise conn
    try:
        cur = conn.execute(query)  # type: ignore[arg-type] - operator-written check SQL
        return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise PostgresError(_first_line(exc)) from exc


def run_health_checks(
    target: Target,
    *,
    password: str | None = None,
    heartbeat: HeartbeatProbe | None = None,
    since: datetime | None = None,
    http_client: httpx.Client | None = None,
) -> tuple[list[CheckOutcome], str | None]:
    """Run every end-to-end check of ``target`` once.

    SQL checks and validation queries go to the current primary (multi-host conninfo with
    ``target_session_attrs=read-write``). The heartbeat check, given a probe, passes when a
    write sent after ``since`` was acknowledged by that same primary.

    Args:
        target: the target's config (``health_checks``, ``validation_queries``, ``postgres``).
        password: the database password, if the role needs one.
        heartbeat: a running probe (drills), or None.
        since: only heartbeat writes sent after this count (``failure_at``).
        http_client: reuse an httpx client; one is created otherwise.

    Returns:
        ``(outcomes, primary)``: one :class:`CheckOutcome` per check, and ``host:port`` of
        the primary reached (None if none).
    """
    pg = target.postgres
    conns: dict[str, psycopg.Connection[Any] | PostgresError] = {}
    primary: str | None = None

    def open_conn(dbname: str) -> psycopg.Connection[Any]:
        nonlocal primary
        conn = connect(multi_host_conninfo(pg, dbname), password=password)
        primary = primary or _server_of(conn)
        return conn

    outcomes: list[CheckOutcome] = []
    own_client = http_client is None
    client = http_client or httpx.Client()
    try:
        for check in target.health_checks.http:
            try:
                resp = client.get(check.url, timeout=check.timeout_seconds)
                ok = resp.status_code == check.expect_status
                detail = f"HTTP {resp.status_code} (expected {check.expect_status})"
                outcomes.append(CheckOutcome(check.name, "http", ok, detail, resp.status_code))
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {redact(str(exc))}"
                outcomes.append(CheckOutcome(check.name, "http", False, detail))
        for check in target.health_checks.sql:
            try:
                rows = _run_query(conns, check.database or pg.databases[0], open_conn, check.sql)
                value = rows[0][0] if rows and rows[0] else None
                ok = _truthy(value)
                outcomes.append(CheckOutcome(check.name, "sql", ok, f"returned {value!r}", value))
            except PostgresError as exc:
                outcomes.append(CheckOutcome(check.name, "sql", False, str(exc)))
        for query in target.validation_queries:
            try:
                rows = _run_query(conns, query.database or pg.databases[0], open_conn, query.sql)
                if query.expect == "true":
                    value = rows[0][0] if rows and rows[0] else None
                    ok, detail = _truthy(value), f"returned {value!r} (expected true)"
                elif query.expect == "rows":
                    value = len(rows)
                    ok, detail = value > 0, f"{value} row(s) (expected at least one)"
                else:
                    value = len(rows)
                    ok, detail = value == 0, f"{value} row(s) (expected none)"
                outcomes.append(CheckOutcome(query.name, "validation", ok, detail, value))
            except PostgresError as exc:
                outcomes.append(CheckOutcome(query.name, "validation", False, str(exc)))
        if heartbeat is not None:
            if primary is None:
                try:
                    _run_query(conns, pg.heartbeat_db, open_conn, "SELECT 1")
                except PostgresError as exc:
                    log.debug("no primary reachable for the heartbeat check: %s", exc)
            after = since or datetime.min.replace(tzinfo=UTC)
            landed = heartbeat.first_write_after(after, server=primary) if primary else None
            if landed is not None:
                detail = f"heartbeat acknowledged by the primary {primary} at {landed.isoformat()}"
            elif primary is None:
                detail = "no primary reachable"
            else:
                detail = f"no heartbeat write acknowledged by the primary {primary} yet"
            outcomes.append(CheckOutcome("heartbeat", "heartbeat", landed is not None, detail))
    finally:
        if own_client:
            client.close()
        for conn in conns.values():
            if isinstance(conn, psycopg.Connection):
                conn.close()
    return outcomes, primary


def wait_until_healthy(
    target: Target,
    *,
    timeout_seconds: float,
    interval_seconds: float = 0.25,
    password: str | None = None,
    heartbeat: HeartbeatProbe | None = None,
    since: datetime | None = None,
) -> HealthResult:
    """Poll every end-to-end check until all pass in one round, or the timeout.

    ``restored_at`` is the end of the first round in which every check passed: a moment
    that was observed, so the RTO derived from it is never optimistic by more than a round.

    Args:
        target: the target's config.
        timeout_seconds: give up after this long.
        interval_seconds: pause between rounds.
        password: the database password, if needed.
        heartbeat: a running probe (drills): its writes must land on the current primary.
        since: only heartbeat writes sent after this count (``failure_at``).

    Returns:
        A :class:`HealthResult`; ``ok`` False at the timeout, with the last round's checks.
    """
    start = time.monotonic()
    deadline = start + timeout_seconds
    attempts = 0
    outcomes: list[CheckOutcome] = []
    primary = None
    with httpx.Client() as client:
        while True:
            attempts += 1
            outcomes, primary = run_health_checks(
                target, password=password, heartbeat=heartbeat, since=since, http_client=client
            )
            if all(c.ok for c in outcomes):
                restored_at = _utcnow()
                log.info(
                    "end-to-end health: all %d checks passed after %d round(s), %.2f s",
                    len(outcomes),
                    attempts,
                    time.monotonic() - start,
                )
                return HealthResult(
                    True, restored_at, outcomes, attempts, time.monotonic() - start, primary
                )
            if time.monotonic() + interval_seconds > deadline:
                break
            time.sleep(interval_seconds)
    failing = ", ".join(f"{c.name} ({c.detail})" for c in outcomes if not c.ok)
    log.warning(
        "end-to-end health: still failing after %.0f s and %d round(s): %s",
        timeout_seconds,
        attempts,
        failing,
    )
    return HealthResult(False, None, outcomes, attempts, time.monotonic() - start, primary)


# ---------------------------------------------------------------------- Prefect tasks

# Health waits are measurements: never retried (a retry would distort restored_at) and
# never cached (the probe argument is a live thread).
wait_until_healthy_task = dr_task(wait_until_healthy, name="wait-until-healthy", retries=0)
