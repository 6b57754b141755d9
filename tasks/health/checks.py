"""The end-to-end health wait: every check of a target, in rounds, until all pass at once.

:func:`wait_until_healthy` polls every end-to-end check (HTTP, SQL, validation queries and,
in drills, heartbeat writes acknowledged by the *current* primary) until all pass in one
round; that moment is ``restored_at``. It is bounded by a timeout. PostgreSQL is reached
through :mod:`tasks.postgres.client`, HTTP through :mod:`tasks.health.client`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import psycopg

from dr.clock import utcnow
from dr.config import Target
from dr.errors import PostgresError
from dr.tasking import dr_task
from tasks.health.client import HTTPError, describe_http_error, open_http_client
from tasks.postgres.client import connect, first_line, multi_host_conninfo

__all__ = [
    "CheckOutcome",
    "HealthResult",
    "HeartbeatWrites",
    "run_health_checks",
    "wait_until_healthy",
    "wait_until_healthy_task",
]

log = logging.getLogger(__name__)


class HeartbeatWrites(Protocol):
    """What the heartbeat check needs of a probe (:class:`tasks.postgres.heartbeat.HeartbeatProbe`)."""

    def first_write_after(self, t: datetime, *, server: str | None = None) -> datetime | None:
        """When the first write sent after ``t`` was acknowledged (by ``server``)."""
        ...


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
        raise PostgresError(first_line(exc)) from exc


def _server_of(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.host}:{conn.info.port}"


class _Connections:
    """One connection per database to the current primary, opened on first use."""

    def __init__(self, target: Target, password: str | None) -> None:
        self._pg = target.postgres
        self._password = password
        self.conns: dict[str, psycopg.Connection[Any] | PostgresError] = {}
        self.primary: str | None = None

    def open(self, dbname: str) -> psycopg.Connection[Any]:
        conn = connect(multi_host_conninfo(self._pg, dbname), password=self._password)
        self.primary = self.primary or _server_of(conn)
        return conn

    def query(self, dbname: str, query: str) -> list[tuple[Any, ...]]:
        return _run_query(self.conns, dbname, self.open, query)

    def close(self) -> None:
        for conn in self.conns.values():
            if isinstance(conn, psycopg.Connection):
                conn.close()


def _http_outcomes(target: Target, client: httpx.Client) -> list[CheckOutcome]:
    outcomes = []
    for check in target.health_checks.http:
        try:
            resp = client.get(check.url, timeout=check.timeout_seconds)
            ok = resp.status_code == check.expect_status
            detail = f"HTTP {resp.status_code} (expected {check.expect_status})"
            outcomes.append(CheckOutcome(check.name, "http", ok, detail, resp.status_code))
        except HTTPError as exc:
            outcomes.append(CheckOutcome(check.name, "http", False, describe_http_error(exc)))
    return outcomes


def _sql_outcomes(target: Target, conns: _Connections) -> list[CheckOutcome]:
    outcomes = []
    for check in target.health_checks.sql:
        try:
            rows = conns.query(check.database or target.postgres.databases[0], check.sql)
            value = rows[0][0] if rows and rows[0] else None
            ok = _truthy(value)
            outcomes.append(CheckOutcome(check.name, "sql", ok, f"returned {value!r}", value))
        except PostgresError as exc:
            outcomes.append(CheckOutcome(check.name, "sql", False, str(exc)))
    return outcomes


def _validation_outcomes(target: Target, conns: _Connections) -> list[CheckOutcome]:
    outcomes = []
    for query in target.validation_queries:
        try:
            rows = conns.query(query.database or target.postgres.databases[0], query.sql)
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
    return outcomes


def _heartbeat_outcome(
    target: Target, conns: _Connections, heartbeat: HeartbeatWrites, since: datetime | None
) -> CheckOutcome:
    if conns.primary is None:
        try:
            conns.query(target.postgres.heartbeat_db, "SELECT 1")
        except PostgresError as exc:
            log.debug("no primary reachable for the heartbeat check: %s", exc)
    primary = conns.primary
    after = since or datetime.min.replace(tzinfo=UTC)
    landed = heartbeat.first_write_after(after, server=primary) if primary else None
    if landed is not None:
        detail = f"heartbeat acknowledged by the primary {primary} at {landed.isoformat()}"
    elif primary is None:
        detail = "no primary reachable"
    else:
        detail = f"no heartbeat write acknowledged by the primary {primary} yet"
    return CheckOutcome("heartbeat", "heartbeat", landed is not None, detail)


def run_health_checks(
    target: Target,
    *,
    password: str | None = None,
    heartbeat: HeartbeatWrites | None = None,
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
    conns = _Connections(target, password)
    own_client = http_client is None
    client = http_client or open_http_client()
    try:
        outcomes = _http_outcomes(target, client)
        outcomes += _sql_outcomes(target, conns)
        outcomes += _validation_outcomes(target, conns)
        if heartbeat is not None:
            outcomes.append(_heartbeat_outcome(target, conns, heartbeat, since))
    finally:
        if own_client:
            client.close()
        conns.close()
    return outcomes, conns.primary


def wait_until_healthy(
    target: Target,
    *,
    timeout_seconds: float,
    interval_seconds: float = 0.25,
    password: str | None = None,
    heartbeat: HeartbeatWrites | None = None,
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
    with open_http_client() as client:
        while True:
            attempts += 1
            outcomes, primary = run_health_checks(
                target, password=password, heartbeat=heartbeat, since=since, http_client=client
            )
            if all(c.ok for c in outcomes):
                restored_at = utcnow()
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
