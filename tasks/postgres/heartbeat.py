"""Heartbeat table reads: what the applications' heartbeat writers have written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from dr.errors import ConfigError
from dr.tasking import dr_task
from tasks.postgres.client import session


def heartbeat_state(conninfo: str, table: str = "public.dr_heartbeat") -> dict[str, dict[str, Any]]:
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
    table: str = "public.dr_heartbeat",
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
    conninfo: str, writer: str, after: datetime, *, table: str = "public.dr_heartbeat"
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


heartbeat_state_task = dr_task(heartbeat_state, name="postgres-heartbeat-state", timeout_seconds=60)
first_heartbeat_after_task = dr_task(
    first_heartbeat_after, name="postgres-first-heartbeat-after", timeout_seconds=60
)
heartbeat_rows_after_task = dr_task(
    heartbeat_rows_after, name="postgres-heartbeat-rows-after", timeout_seconds=60
)
