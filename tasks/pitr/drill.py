"""Data-corruption drills only: tables a drill may damage, and the damaging statement."""

from __future__ import annotations

import logging
from typing import Any

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from dr.tasking import dr_task
from tasks.pitr.relations import split_relation
from tasks.postgres.client import session

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def run_drill_statement(conninfo: str, statement: str) -> dict[str, Any]:
    """Drill only: run one damaging statement (autocommit) and say when it committed.

    Returns:
        ``{"rows": rows affected, "committed_at": server clock right after the commit}``.

    Raises:
        PostgresError: the statement failed.
    """
    with session(conninfo, "run drill statement", statement_timeout_seconds=None) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type] - fixed drill statements
        rows = cur.rowcount
        row = conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()
    assert row is not None
    log.warning("drill: %s -> %d rows", statement, rows)
    return {"rows": rows, "committed_at": row[0]}


class DrillCandidate(_Model):
    """A table a drill could damage: its rows, whether another table's foreign key points
    at it, and its numeric columns outside every key and constraint (safe to set to 0)."""

    relation: str
    rows: int
    referenced: bool
    numeric_columns: list[str] = Field(default_factory=list)


_DRILL_CANDIDATES_SQL = """
SELECT n.nspname, c.relname,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f
               WHERE f.contype = 'f' AND f.confrelid = c.oid AND f.conrelid <> c.oid),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                  'numeric'::regtype, 'float4'::regtype, 'float8'::regtype)
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                               WHERE k.conrelid = c.oid AND a.attnum = ANY (k.conkey))
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                               WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey))
             ORDER BY a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""


def drill_candidates(conninfo: str) -> list[DrillCandidate]:
    """Drill only: the database's tables with what a drill needs to pick one to damage.

    Columns in any constraint (primary key, foreign key, unique, check, exclusion) or
    index are left out of ``numeric_columns``: setting them to 0 could fail or change
    what the constraint protects. Rows are counted exactly, in one snapshot.

    Args:
        conninfo: the damaged database.

    Returns:
        One :class:`DrillCandidate` per ordinary table (``schema.table`` unquoted).

    Raises:
        PostgresError: unreachable, or the catalog query failed.
    """
    out: list[DrillCandidate] = []
    with (
        session(conninfo, "drill candidates", statement_timeout_seconds=None) as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for schema, table, referenced, columns in conn.execute(_DRILL_CANDIDATES_SQL):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            out.append(
                DrillCandidate(
                    relation=f"{schema}.{table}",
                    rows=int(row[0]) if row else 0,
                    referenced=bool(referenced),
                    numeric_columns=list(columns or []),
                )
            )
    return out


def drill_statement(relation: str, column: str | None = None) -> str:
    """Drill only: the damaging statement, identifiers quoted (mixed case, like Prisma's).

    Args:
        relation: ``schema.table`` (unquoted).
        column: set to 0 on every row (a bad UPDATE); None deletes every row.

    Returns:
        ``UPDATE "s"."t" SET "c" = 0`` or ``DELETE FROM "s"."t"``.

    Raises:
        ConfigError: the relation is not schema-qualified.
    """
    schema, table = split_relation(relation)
    rel = sql.Identifier(schema, table)
    if column is None:
        return sql.SQL("DELETE FROM {}").format(rel).as_string(None)
    return sql.SQL("UPDATE {} SET {} = 0").format(rel, sql.Identifier(column)).as_string(None)


drill_candidates_task = dr_task(drill_candidates, name="pitr-drill-candidates", timeout_seconds=600)
run_drill_statement_task = dr_task(
    run_drill_statement, name="pitr-run-drill-statement", retries=0, timeout_seconds=600
)
