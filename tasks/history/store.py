"""Drill and incident history in PostgreSQL, so results outlive the Prefect server.

Every scenario run (drill, incident or dry run) leaves one row: outcome, measured RTO/RPO
and the objectives they were compared with, the timeline's key moments, and the whole
summary as ``jsonb``. ``dr report`` and the trend chart read it back.

The table (``history.table`` in dr.yaml, ``dr_history`` by default) is created when it is
missing. A row is keyed by the flow run id, so writing the same run twice (a retried task)
updates it instead of adding a duplicate.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dr.config import HistoryConfig
from dr.errors import PostgresError, redact
from dr.tasking import dr_task
from tasks.history.client import connect
from tasks.postgres.client import first_line

log = logging.getLogger(__name__)


DEFAULT_LIMIT = 1000


#: The columns of a history row (besides ``id`` and ``recorded_at``), in order.
COLUMNS: tuple[str, ...] = (
    "scenario",
    "target",
    "mode",
    "outcome",
    "objectives_met",
    "rto_seconds",
    "rpo_seconds",
    "lost_rows",
    "rto_objective_seconds",
    "rpo_objective_seconds",
    "declared_at",
    "failure_at",
    "restored_at",
    "flow_run_id",
    "summary",
)


_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id                     bigserial PRIMARY KEY,
    scenario               text NOT NULL,
    target                 text NOT NULL,
    mode                   text NOT NULL,
    outcome                text NOT NULL,
    objectives_met         boolean NOT NULL,
    rto_seconds            double precision,
    rpo_seconds            double precision,
    lost_rows              bigint,
    rto_objective_seconds  double precision,
    rpo_objective_seconds  double precision,
    declared_at            timestamptz NOT NULL,
    failure_at             timestamptz,
    restored_at            timestamptz,
    flow_run_id            text UNIQUE,
    summary                jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    recorded_at            timestamptz NOT NULL DEFAULT pg_catalog.now()
)
"""


def ensure_table(conn: psycopg.Connection[Any], table: str) -> str:
    """Create the history table and its index if missing.

    Args:
        conn: from :func:`connect`.
        table: table name (validated by the config: ``[a-z_][a-z0-9_]*``).

    Returns:
        ``"created"`` or ``"unchanged"``.

    Raises:
        PostgresError: the table could not be created.
    """
    try:
        exists = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if exists and next(iter(exists.values())):
            return "unchanged"
        conn.execute(sql.SQL(_DDL).format(table=sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (target, scenario, declared_at)").format(
                sql.Identifier(f"{table}_target_idx"), sql.Identifier(table)
            )
        )
    except psycopg.Error as exc:
        raise PostgresError(f"cannot create history table {table}: {first_line(exc)}") from exc
    log.info("history table %s created", table)
    return "created"


def _row_values(run: dict[str, Any]) -> list[Any]:
    objectives = run.get("objectives") or {}
    values: dict[str, Any] = {
        "scenario": run["scenario"],
        "target": run["target"],
        "mode": run["mode"],
        "outcome": run["outcome"],
        "objectives_met": bool(run.get("objectives_met")),
        "rto_seconds": run.get("rto_seconds"),
        "rpo_seconds": run.get("rpo_seconds"),
        "lost_rows": run.get("lost_rows"),
        "rto_objective_seconds": objectives.get("rto_seconds"),
        "rpo_objective_seconds": objectives.get("rpo_seconds"),
        "declared_at": run["declared_at"],
        "failure_at": run.get("failure_at"),
        "restored_at": run.get("restored_at"),
        "flow_run_id": run.get("flow_run_id"),
        # Round-trip through JSON with redaction: the summary is read by people later.
        "summary": Jsonb(json.loads(redact(json.dumps(run, default=str)))),
    }
    return [values[c] for c in COLUMNS]


def record_run(history: HistoryConfig, run: dict[str, Any]) -> int:
    """Store one run's summary (insert, or update the row of the same flow run).

    Args:
        history: the ``history`` section of dr.yaml.
        run: the run's result as JSON-able data (``RunResult.model_dump(mode="json")``):
            needs ``scenario``, ``target``, ``mode``, ``outcome``, ``declared_at``; reads
            ``objectives_met``, ``rto_seconds``, ``rpo_seconds``, ``lost_rows``,
            ``objectives``, ``failure_at``, ``restored_at``, ``flow_run_id``.

    Returns:
        The row's id.

    Raises:
        ConfigError: history is not configured.
        PostgresError: the database cannot be reached or refused the write.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in COLUMNS)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
        for c in COLUMNS
        if c != "flow_run_id"
    )
    query = sql.SQL(
        "INSERT INTO {table} ({cols}) VALUES ({marks})"
        " ON CONFLICT (flow_run_id) DO UPDATE SET {updates} RETURNING id"
    ).format(table=sql.Identifier(history.table), cols=cols, marks=marks, updates=updates)
    with connect(history) as conn:
        ensure_table(conn, history.table)
        try:
            row = conn.execute(query, _row_values(run)).fetchone()
        except psycopg.Error as exc:
            raise PostgresError(f"cannot write drill history: {first_line(exc)}") from exc
    row_id = int(row["id"]) if row else 0
    log.info(
        "history: recorded %s %s on %s (%s) as row %d",
        run["mode"],
        run["scenario"],
        run["target"],
        run["outcome"],
        row_id,
    )
    return row_id


def query_runs(
    history: HistoryConfig,
    *,
    target: str | None = None,
    scenario: str | None = None,
    since: datetime | None = None,
    mode: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """Read past runs, oldest first.

    Args:
        history: the ``history`` section of dr.yaml.
        target: only this target.
        scenario: only this scenario (e.g. ``backup-verification``).
        since: only runs declared at or after this moment.
        mode: only this mode (``drill``, ``incident``, ``dry-run``).
        limit: at most this many (the newest ones).

    Returns:
        One dict per run with ``id``, every column of :data:`COLUMNS` and ``recorded_at``.
        An empty list when the table does not exist yet.

    Raises:
        ConfigError: history is not configured.
        PostgresError: the database cannot be reached or refused the read.
    """
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("target", target), ("scenario", scenario), ("mode", mode)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if since is not None:
        where.append(sql.SQL("declared_at >= %s"))
        params.append(since)
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    query = sql.SQL(
        "SELECT * FROM (SELECT * FROM {table}{where} ORDER BY declared_at DESC, id DESC"
        " LIMIT %s) newest ORDER BY declared_at, id"
    ).format(table=sql.Identifier(history.table), where=clause)
    params.append(limit)
    with connect(history) as conn:
        try:
            exists = conn.execute(
                "SELECT pg_catalog.to_regclass(%s) IS NOT NULL AS present", (history.table,)
            ).fetchone()
            if not exists or not exists["present"]:
                return []
            return list(conn.execute(query, params).fetchall())
        except psycopg.Error as exc:
            raise PostgresError(f"cannot read drill history: {first_line(exc)}") from exc


# ---------------------------------------------------------------------- Prefect tasks

record_run_task = dr_task(record_run, name="record-history", retries=2, timeout_seconds=60)
query_runs_task = dr_task(query_runs, name="query-history", retries=2, timeout_seconds=60)
