"""Check a database: SQL checks and business invariants, row counts, schema fingerprints.

Checks run read-only (a check can never change data); a query that fails is a failed check
with its reason, and only a database that cannot be reached raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from dr.errors import redact
from dr.tasking import dr_task
from tasks.postgres.client import (
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    connect,
    describe_conninfo,
    first_line,
    one,
    query_error,
    session,
    set_local,
)
from tasks.postgres.models import CheckResult

log = logging.getLogger(__name__)


# User objects: everything outside the system schemas (pg_catalog, pg_toast, pg_temp_N, ...).
USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"


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
            set_local(conn, "statement_timeout", f"{int(statement_timeout_seconds * 1000)}")
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                cur = conn.execute(query, params)  # type: ignore[arg-type]
                rows = cur.fetchmany(1000) if cur.description else []
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            raise query_error(exc, conninfo, f"check {name!r}") from exc
        result = CheckResult(
            name=name,
            ok=False,
            detail=redact(f"query failed [{exc.sqlstate}]: {first_line(exc)}"),
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
    with session(conninfo, "row counts", statement_timeout_seconds=None) as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tables = conn.execute(
                "SELECT n.nspname, c.relname, c.reltuples::bigint "
                "FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind = 'r' AND {USER_SCHEMA} ORDER BY 1, 2"
            ).fetchall()
            counts: dict[str, int] = {}
            for schema, table, estimate in tables:
                if exact:
                    counts[f"{schema}.{table}"] = int(
                        one(
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
    with session(conninfo, "schema fingerprint") as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tables: dict[str, dict[str, Any]] = {}
            for schema, rel, kind in conn.execute(
                "SELECT n.nspname, c.relname, c.relkind::text FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA} ORDER BY 1, 2"
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
                f"AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA} "
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
                    f"WHERE {USER_SCHEMA} ORDER BY 1, 2, 3"
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


# --------------------------------------------------------------------------- Prefect tasks

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
