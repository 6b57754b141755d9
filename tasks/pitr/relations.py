"""Tables by name: relation digests, file paths and file nodes, database OIDs, schemas.

Why digests and not row counts: a bad ``UPDATE`` keeps the count; only the content shows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict

from dr.errors import ConfigError, PostgresError
from dr.tasking import dr_task
from tasks.postgres.client import session

#: Session settings under which row digests are computed, so two servers print alike.
_DIGEST_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "extra_float_digits": "1"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def split_relation(name: str) -> tuple[str, str]:
    """``schema.table`` → ``(schema, table)``; refuses an unqualified name (ConfigError)."""
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table:
        raise ConfigError(
            f"relation {name!r} must be schema-qualified (schema.table)", [("relations", name)]
        )
    return schema, table


class RelationDigest(_Model):
    """A table's content as a number and a hash: rows and the MD5 of its sorted row hashes."""

    relation: str
    rows: int
    digest: str


def digest_query(schema: str, table: str) -> sql.Composed:
    """Rows and the MD5 of the sorted row hashes of one table (order-independent)."""
    return sql.SQL(
        "SELECT count(*), coalesce(pg_catalog.md5(pg_catalog.string_agg(h, '' ORDER BY h)), '') "
        "FROM (SELECT pg_catalog.md5(t::text) AS h FROM {} AS t) AS s"
    ).format(sql.Identifier(schema, table))


def apply_digest_settings(conn: psycopg.Connection[Any]) -> None:
    """Session settings under which rows print alike on any server (UTC, ISO dates)."""
    for name, value in _DIGEST_SETTINGS.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", [name, value])


def relation_digests(conninfo: str, relations: Sequence[str]) -> dict[str, RelationDigest]:
    """Rows and an order-independent digest of every row, per table, in one snapshot.

    Why this and not row counts: a bad ``UPDATE`` keeps the count; only the content shows
    it. Rows are rendered as text under fixed settings (UTC, ISO dates), hashed, sorted
    and hashed again, so the same rows give the same digest on any server.

    Raises:
        ConfigError: a relation is not schema-qualified.
        PostgresError: unreachable, or a table is missing.
    """
    out: dict[str, RelationDigest] = {}
    with session(
        conninfo, "relation digests", statement_timeout_seconds=None, autocommit=False
    ) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        apply_digest_settings(conn)
        for rel in relations:
            schema, table = split_relation(rel)
            row = conn.execute(digest_query(schema, table)).fetchone()
            assert row is not None
            out[rel] = RelationDigest(relation=rel, rows=int(row[0]), digest=str(row[1]))
        conn.rollback()
    return out


def row_hashes(conninfo: str, relations: Sequence[str]) -> dict[str, set[str]]:
    """The MD5 of every row, per table, in one snapshot (for set membership across a restore).

    Raises:
        ConfigError: a relation is not schema-qualified.
        PostgresError: unreachable, or a table is missing.
    """
    out: dict[str, set[str]] = {}
    with session(conninfo, "row hashes", statement_timeout_seconds=None, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        apply_digest_settings(conn)
        for rel in relations:
            schema, table = split_relation(rel)
            query = sql.SQL("SELECT pg_catalog.md5(t::text) FROM {} AS t").format(
                sql.Identifier(schema, table)
            )
            out[rel] = {str(r[0]) for r in conn.execute(query)}
        conn.rollback()
    return out


def relation_filepaths(conninfo: str, relations: Sequence[str]) -> dict[str, str]:
    """``pg_relation_filepath`` of each table (``base/<db oid>/<relfilenode>``).

    Raises:
        PostgresError: unreachable or unknown table.
    """
    out: dict[str, str] = {}
    with session(conninfo, "relation filepaths", statement_timeout_seconds=None) as conn:
        for rel in relations:
            schema, table = split_relation(rel)
            row = conn.execute(
                "SELECT pg_catalog.pg_relation_filepath(c.oid) FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                [schema, table],
            ).fetchone()
            if row is None or row[0] is None:
                raise PostgresError(f"table {rel} not found")
            out[rel] = str(row[0])
    return out


def resolve_filenodes(
    conninfo_for: Callable[[str], str], maintenance_conninfo: str, locators: Iterable[str]
) -> dict[str, str | None]:
    """Name the relations behind file locators (``base/<db oid>/<relfilenode>``).

    Args:
        conninfo_for: database name → conninfo (to ask each database in turn).
        maintenance_conninfo: any database on the server (to map database OIDs to names).
        locators: from :class:`ChecksumReport` or :func:`find_damage`.

    Returns:
        Locator → ``database:schema.table`` (None when no current relation has that file:
        dropped, or rewritten since).

    Raises:
        PostgresError: unreachable.
    """
    wanted = [loc for loc in locators if re.match(r"^base/\d+/\d+$", loc)]
    out: dict[str, str | None] = {loc: None for loc in locators}
    if not wanted:
        return out
    with session(maintenance_conninfo, "resolve filenodes", statement_timeout_seconds=None) as conn:
        names = dict(
            conn.execute("SELECT oid::text, datname FROM pg_catalog.pg_database").fetchall()
        )
    by_db: dict[str, list[str]] = {}
    for loc in wanted:
        by_db.setdefault(loc.split("/")[1], []).append(loc)
    for db_oid, locs in by_db.items():
        dbname = names.get(db_oid)
        if dbname is None:
            continue
        with session(
            conninfo_for(dbname), "resolve filenodes", statement_timeout_seconds=None
        ) as conn:
            for loc in locs:
                # Unquoted schema.table, as the row counts name relations: regclass::text
                # would quote mixed-case names (public."Trade") and never match.
                row = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = pg_catalog.pg_filenode_relation(0, %s::oid)",
                    [loc.split("/")[2]],
                ).fetchone()
                if row:
                    out[loc] = f"{dbname}:{row[0]}.{row[1]}"
    return out


def extension_installed(conninfo: str, name: str) -> bool:
    """Tell whether an extension is installed in the connected database."""
    with session(conninfo, "extension installed", statement_timeout_seconds=None) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s)", [name]
        ).fetchone()
    return bool(row and row[0])


def database_oid(conninfo: str) -> int:
    """The OID of the connected database (WAL names relation files by it)."""
    with session(conninfo, "database oid", statement_timeout_seconds=None) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def ensure_schemas(conninfo: str, schemas: Iterable[str]) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` for each name (a scratch database's layout)."""
    with session(conninfo, "ensure schemas", statement_timeout_seconds=None) as conn:
        for schema in sorted(set(schemas)):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def quote_ident(name: str) -> str:
    """Quote an identifier for pg_dump's ``--table`` pattern (exact match)."""
    return '"' + name.replace('"', '""') + '"'


relation_digests_task = dr_task(relation_digests, name="pitr-relation-digests")
row_hashes_task = dr_task(row_hashes, name="pitr-row-hashes", timeout_seconds=600)
relation_filepaths_task = dr_task(
    relation_filepaths, name="pitr-relation-filepaths", timeout_seconds=120
)
resolve_filenodes_task = dr_task(
    resolve_filenodes, name="pitr-resolve-filenodes", timeout_seconds=300
)
database_oid_task = dr_task(database_oid, name="pitr-database-oid", timeout_seconds=60)
extension_installed_task = dr_task(
    extension_installed, name="pitr-extension-installed", timeout_seconds=60
)
ensure_schemas_task = dr_task(ensure_schemas, name="pitr-ensure-schemas", timeout_seconds=120)
