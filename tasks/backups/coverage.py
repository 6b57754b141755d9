"""Does a restored dump hold every table of its source, with data and constraints?

Foreign dumps have no manifest, so the restored copy is compared with the live source:
a table the source has but the copy lacks, or a constraint of a restored table that the
copy lacks, is what a cut or partial dump looks like (data and constraints come last).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from pydantic import BaseModel, Field

from dr.tasking import dr_task
from tasks.postgres.client import session

__all__ = [
    "Coverage",
    "compare_coverage",
    "table_constraints",
    "table_constraints_task",
]

_USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"


def table_constraints(conninfo: str) -> dict[str, list[str]]:
    """Constraints (primary key, unique, foreign key, check, exclusion) per user table.

    Returns:
        ``{"schema.table": ["<type> <name>", ...]}`` (tables without one are left out).
    """
    with session(conninfo, "table constraints") as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, k.contype, k.conname "
            "FROM pg_catalog.pg_constraint k "
            "JOIN pg_catalog.pg_class c ON c.oid = k.conrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND k.contype IN ('p', 'u', 'f', 'c', 'x') "
            f"AND {_USER_SCHEMA} ORDER BY 1, 2, 3, 4"
        ).fetchall()
    kinds = {"p": "primary key", "u": "unique", "f": "foreign key", "c": "check", "x": "exclude"}
    out: dict[str, list[str]] = {}
    for schema, table, kind, name in rows:
        out.setdefault(f"{schema}.{table}", []).append(f"{kinds.get(kind, kind)} {name}")
    return out


table_constraints_task = dr_task(
    table_constraints, name="backups-table-constraints", timeout_seconds=120
)


class Coverage(BaseModel):
    """The restored copy against the live source, table by table."""

    tables: dict[str, dict[str, int | None]] = Field(
        default_factory=dict, description="table -> {'restored': rows, 'source': rows}"
    )
    missing_tables: list[str] = Field(default_factory=list)
    excluded_tables: list[str] = Field(default_factory=list)
    missing_constraints: dict[str, list[str]] = Field(default_factory=dict)
    empty_tables: list[str] = Field(
        default_factory=list, description="Restored without rows, though the source has rows."
    )

    @property
    def restored_rows(self) -> int:
        return sum(v["restored"] or 0 for v in self.tables.values())

    @property
    def source_rows(self) -> int:
        return sum(v["source"] or 0 for v in self.tables.values())


def _excluded(table: str, patterns: Iterable[str]) -> bool:
    bare = table.split(".", 1)[-1]
    return any(fnmatch.fnmatchcase(table, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def compare_coverage(
    restored_counts: dict[str, int],
    source_counts: dict[str, int],
    restored_constraints: dict[str, list[str]],
    source_constraints: dict[str, list[str]],
    excluded: Iterable[str] = (),
) -> Coverage:
    """Compare a restored copy with its live source (a pure function).

    Args:
        restored_counts: rows per table of the restored copy.
        source_counts: rows per table of the live source, now.
        restored_constraints: constraints per table of the copy.
        source_constraints: constraints per table of the source.
        excluded: tables (``schema.table`` or ``table``, shell patterns) left out on purpose.

    Returns:
        The :class:`Coverage`; row counts are shown, not compared (the source moved on).
    """
    patterns = list(excluded)
    out = Coverage()
    for table in sorted(set(restored_counts) | set(source_counts)):
        out.tables[table] = {
            "restored": restored_counts.get(table),
            "source": source_counts.get(table),
        }
        if table in restored_counts:
            if restored_counts[table] == 0 and source_counts.get(table):
                out.empty_tables.append(table)
            lacking = sorted(
                set(source_constraints.get(table, [])) - set(restored_constraints.get(table, []))
            )
            if lacking:
                out.missing_constraints[table] = lacking
        elif _excluded(table, patterns):
            out.excluded_tables.append(table)
        else:
            out.missing_tables.append(table)
    return out
