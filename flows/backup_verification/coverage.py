"""Checks a foreign dump gets instead of a manifest: completion trailer, tables, constraints."""

from __future__ import annotations

from dr.config import Target
from flows.backup_verification.models import DatabaseVerification
from tasks.backups import coverage as backups_coverage
from tasks.postgres import checks as postgres_checks
from tasks.postgres import client as postgres_client
from tasks.postgres.heartbeat import HEARTBEAT_TABLE

__all__ = ["check_completion_trailer", "check_coverage"]


def check_completion_trailer(result: DatabaseVerification, trailer: bool | None) -> None:
    """A plain dump must end with pg_dump's trailer: without it the dump was cut short."""
    result.check(
        "completion trailer",
        bool(trailer),
        "ends with pg_dump's '-- PostgreSQL database dump complete'"
        if trailer
        else "pg_dump's '-- PostgreSQL database dump complete' trailer is missing: "
        "the dump was cut short (later tables' data and the constraints are lost)",
    )


def check_coverage(
    target: Target, database: str, scratch: str, result: DatabaseVerification
) -> backups_coverage.Coverage:
    """Every table of the live source restored, with its constraints; rows shown side by side.

    A table the source has and the copy lacks (not in ``backup.excluded_tables``, nor the
    drills' heartbeat table) and a
    constraint of a restored table the copy lacks are critical; row counts differ by the
    writes since the dump, so they are shown, not compared.
    """
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    scratch_conn = postgres_client.conninfo(
        pgc.primary, user=pgc.user, dbname=scratch, password=password
    )
    source_conn = postgres_client.conninfo(
        pgc.primary, user=pgc.user, dbname=database, password=password
    )
    excluded = list(target.backup.excluded_tables)
    if database == pgc.heartbeat_db:
        excluded.append(HEARTBEAT_TABLE)  # the drills' own probe, created after many dumps
    found = backups_coverage.compare_coverage(
        postgres_checks.table_row_counts_task(scratch_conn),
        postgres_checks.table_row_counts_task(source_conn),
        backups_coverage.table_constraints_task(scratch_conn),
        backups_coverage.table_constraints_task(source_conn),
        excluded,
    )
    result.coverage = found
    _record(found, result)
    return found


def _record(found: backups_coverage.Coverage, result: DatabaseVerification) -> None:
    shown = "; ".join(
        f"{t} {v['restored'] if v['restored'] is not None else '-'} restored / "
        f"{v['source'] if v['source'] is not None else '-'} live"
        for t, v in list(found.tables.items())[:8]
    )
    more = f" (and {len(found.tables) - 8} more)" if len(found.tables) > 8 else ""
    empty = f"; restored empty though the source has rows: {found.empty_tables}"
    result.check(
        "row counts",
        True,
        f"{len(found.tables)} tables, {found.restored_rows} rows restored vs "
        f"{found.source_rows} in the live source: {shown}{more}"
        + (empty if found.empty_tables else ""),
        critical=False,
        value=found.restored_rows,
    )
    excluded = f" ({len(found.excluded_tables)} excluded)" if found.excluded_tables else ""
    result.check(
        "tables",
        not found.missing_tables,
        f"every table of the live source is in the dump{excluded}"
        if not found.missing_tables
        else f"the dump lacks {len(found.missing_tables)} table(s) the source has: "
        f"{', '.join(found.missing_tables[:8])}",
        value=len(found.missing_tables),
    )
    lacking = [f"{t}: {', '.join(c)}" for t, c in found.missing_constraints.items()]
    result.check(
        "constraints",
        not lacking,
        "every restored table has the source's constraints"
        if not lacking
        else f"restored without the source's constraints: {'; '.join(lacking[:5])}"
        + (f" (and {len(lacking) - 5} more)" if len(lacking) > 5 else ""),
        value=len(lacking),
    )
