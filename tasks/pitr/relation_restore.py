"""Evidence and the way back: keep a damaged database, dump tables, restore tables.

:func:`restore_relations` switches selected tables of the live database back to the
recovered rows in ONE transaction.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import ConfigError, PostgresError, PreconditionError, VerificationError
from dr.localexec import server_tool, tool_failed
from dr.tasking import dr_task
from tasks.pitr.base_backup import file_sha256
from tasks.pitr.relations import (
    RelationDigest,
    apply_digest_settings,
    digest_query,
    quote_ident,
    split_relation,
)
from tasks.postgres.client import session

log = logging.getLogger(__name__)
#: The system a :class:`~dr.changes.Change` made here belongs to.
SYSTEM = "postgres"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def preserve_database_copy(conninfo_maintenance: str, source_db: str, new_name: str) -> Change:
    """Keep a damaged database under a new name: ``CREATE DATABASE new TEMPLATE source``.

    ``STRATEGY FILE_COPY`` copies the files as they are, damaged pages included (the
    default WAL_LOG strategy reads every page through the buffer cache and would stop at
    the first bad checksum). Needs no other session on the source. Never dropped here.

    Returns:
        A Change (``created``; ``unchanged`` if the name exists already); not compensable:
        evidence is kept on purpose.

    Raises:
        PostgresError: sessions still use the source, or the server refused.
    """
    with session(
        conninfo_maintenance, "preserve database copy", statement_timeout_seconds=None
    ) as conn:
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [new_name]
        ).fetchone()
        created = not (exists and exists[0])
        if created:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(new_name), sql.Identifier(source_db)
                )
            )
    change = Change(
        system=SYSTEM,
        action="preserve-database",
        object=f"database {new_name} (copy of {source_db})",
        outcome="created" if created else "unchanged",
        before={"exists": not created},
        after={"exists": True, "template": source_db},
        undo=f"DROP DATABASE {new_name} once the incident is closed (evidence: kept on purpose)",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def dump_relations(
    conninfo: str,
    relations: Sequence[str],
    out_file: str | Path,
    *,
    bin_dir: str | Path | None = None,
    password: str | None = None,
    sections: Sequence[str] = (),
    timeout_seconds: float = 1800,
) -> dict[str, Any]:
    """Evidence: ``pg_dump -Fc`` of the damaged tables, as they are now.

    ``sections`` limits the dump (``pre-data`` + ``data``: the tables and their rows
    without indexes and constraints, a source of rows to load elsewhere).

    Returns:
        ``{"path", "bytes", "sha256", "relations"}``.

    Raises:
        PostgresError: pg_dump failed (a page with a bad checksum makes it fail: then keep
            the database with :func:`preserve_database_copy` instead).
    """
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [server_tool("pg_dump", bin_dir), "-Fc", f"--file={out}", "--no-password"]
    for rel in relations:
        schema, table = split_relation(rel)
        argv.append(f"--table={quote_ident(schema)}.{quote_ident(table)}")
    argv += [f"--section={section}" for section in sections]
    argv.append(f"--dbname={conninfo}")
    env = {**os.environ, "PGPASSWORD": password} if password else None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout_seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"pg_dump timed out after {timeout_seconds} s") from exc
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise tool_failed("pg_dump", proc)
    sha = file_sha256(out)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha,
        "relations": list(relations),
    }


class RelationRestoreResult(_Model):
    """What :func:`restore_relations` did, committed as one transaction."""

    relations: dict[str, RelationDigest]
    constraints_recreated: list[str] = Field(default_factory=list)
    triggers_suppressed: bool = False
    seconds: float
    committed_at: datetime


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        [schema, table],
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def restore_relations(
    source_conninfo: str,
    dest_conninfo: str,
    relations: Sequence[str],
    *,
    lock_timeout_seconds: float = 30,
) -> RelationRestoreResult:
    """Replace the rows of selected tables in the live database with the recovered ones.

    All in ONE transaction on the live side: the foreign keys that touch the tables are
    dropped, the tables truncated (a new file: a damaged page is left behind), the rows
    streamed in with ``COPY`` (binary) straight from the recovered server, the foreign keys
    re-added (which validates them against the rows now there) and the digests of the
    result compared with the source's. Any failure rolls everything back: the live tables
    are as they were. With a superuser, triggers are suppressed
    (``session_replication_role = replica``) so the rows come back exactly as they were.

    Args:
        source_conninfo: the recovered database.
        dest_conninfo: the live database.
        relations: ``schema.table`` names.
        lock_timeout_seconds: give up if another session holds the tables.

    Returns:
        A :class:`RelationRestoreResult`.

    Raises:
        PreconditionError: a table is missing on one side or its columns differ (schema
            changed since the recovery point); nothing was changed.
        VerificationError: the copied rows do not match the source (rolled back).
        PostgresError: the copy failed (rolled back).
    """
    rels = list(dict.fromkeys(relations))
    if not rels:
        raise ConfigError("no relation to restore", [("relations", "empty")])
    parts = [split_relation(r) for r in rels]
    t0 = time.perf_counter()
    with _transaction(source_conninfo) as src, _transaction(dest_conninfo) as dst:
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        apply_digest_settings(src)
        columns = _matching_columns(src, dst, rels, parts)
        expected = _digests(src, rels, parts)
        suppressed = _prepare_live_side(dst, lock_timeout_seconds)
        fks = _foreign_keys(dst, parts)
        _lock_and_truncate(dst, parts, fks)
        _copy_rows(src, dst, rels, parts, columns)
        recreated = _recreate_foreign_keys(dst, fks)
        apply_digest_settings(dst)
        got = _digests(dst, rels, parts)
        _check_restored(dst, rels, got, expected)
        dst.commit()
        committed_at = utcnow()
        src.rollback()
    seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "restored %s in one transaction (%d rows) in %.2f s; foreign keys re-validated: %s",
        ", ".join(rels),
        sum(d.rows for d in got.values()),
        seconds,
        ", ".join(recreated) or "none",
    )
    return RelationRestoreResult(
        relations=got,
        constraints_recreated=recreated,
        triggers_suppressed=suppressed,
        seconds=seconds,
        committed_at=committed_at,
    )


def _transaction(conninfo: str) -> AbstractContextManager[psycopg.Connection[Any]]:
    """One explicit transaction, no statement timeout (a big table copies for long)."""
    return session(conninfo, "restore relations", statement_timeout_seconds=None, autocommit=False)


Conn = psycopg.Connection[Any]
#: A foreign key as :func:`_foreign_keys` reads it: name, table, definition, schema, table.
ForeignKey = tuple[str, str, str, str, str]


def _matching_columns(
    src: Conn, dst: Conn, rels: Sequence[str], parts: Sequence[tuple[str, str]]
) -> dict[str, list[str]]:
    """Each table's columns, refused unless both sides have the table with the same ones."""
    columns: dict[str, list[str]] = {}
    for rel, (schema, table) in zip(rels, parts, strict=True):
        s_cols, d_cols = _columns(src, schema, table), _columns(dst, schema, table)
        if not s_cols:
            raise PreconditionError(f"table {rel} does not exist in the recovered database")
        if not d_cols:
            raise PreconditionError(f"table {rel} does not exist in the live database")
        if s_cols != d_cols:
            raise PreconditionError(
                f"table {rel} has other columns in the live database than at the recovery "
                f"point ({d_cols} vs {s_cols}); restore it by hand"
            )
        columns[rel] = [c for c, _ in s_cols]
    return columns


def _digests(
    conn: Conn, rels: Sequence[str], parts: Sequence[tuple[str, str]]
) -> dict[str, RelationDigest]:
    out = {}
    for rel, (schema, table) in zip(rels, parts, strict=True):
        row = conn.execute(digest_query(schema, table)).fetchone()
        assert row is not None
        out[rel] = RelationDigest(relation=rel, rows=int(row[0]), digest=str(row[1]))
    return out


def _prepare_live_side(dst: Conn, lock_timeout_seconds: float) -> bool:
    """Set the lock timeout; suppress triggers when we are superuser (returns whether)."""
    dst.execute(
        "SELECT pg_catalog.set_config('lock_timeout', %s, true)",
        [f"{int(lock_timeout_seconds * 1000)}ms"],
    )
    is_super = dst.execute(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    if is_super and is_super[0]:
        dst.execute("SET LOCAL session_replication_role = replica")
        return True
    return False


def _foreign_keys(dst: Conn, parts: Sequence[tuple[str, str]]) -> list[ForeignKey]:
    """The foreign keys from or to the tables (they are dropped and re-added around the copy)."""
    oids = [
        dst.execute("SELECT %s::regclass::oid", [f"{quote_ident(s)}.{quote_ident(t)}"]).fetchone()[
            0
        ]  # type: ignore[index]
        for s, t in parts
    ]
    return dst.execute(
        "SELECT c.conname, c.conrelid::regclass::text, "
        "pg_catalog.pg_get_constraintdef(c.oid), n.nspname, r.relname "
        "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
        "WHERE c.contype = 'f' AND (c.conrelid = ANY(%s) OR c.confrelid = ANY(%s)) "
        "ORDER BY 2, 1",
        [oids, oids],
    ).fetchall()


def _lock_and_truncate(
    dst: Conn, parts: Sequence[tuple[str, str]], fks: Sequence[ForeignKey]
) -> None:
    """Lock the tables and their neighbours, drop the foreign keys, truncate the tables."""
    tables_to_lock = {f"{quote_ident(s)}.{quote_ident(t)}" for s, t in parts}
    tables_to_lock |= {f"{quote_ident(fk[3])}.{quote_ident(fk[4])}" for fk in fks}
    dst.execute(
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.SQL(t) for t in sorted(tables_to_lock))
        )
    )
    for name, _rel, _def, schema, table in fks:
        dst.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)
            )
        )
    dst.execute(
        sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(s, t) for s, t in parts))
    )


def _copy_rows(
    src: Conn,
    dst: Conn,
    rels: Sequence[str],
    parts: Sequence[tuple[str, str]],
    columns: Mapping[str, list[str]],
) -> None:
    """Stream each table's rows with binary ``COPY`` from the recovered server to the live one."""
    for rel, (schema, table) in zip(rels, parts, strict=True):
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns[rel])
        q_out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(
            sql.Identifier(schema, table), cols
        )
        q_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(schema, table), cols
        )
        with src.cursor().copy(q_out) as out, dst.cursor().copy(q_in) as inp:
            for block in out:
                inp.write(block)


def _recreate_foreign_keys(dst: Conn, fks: Sequence[ForeignKey]) -> list[str]:
    """Re-add the foreign keys (validating them against the rows now there)."""
    recreated = []
    for name, _rel, definition, schema, table in fks:
        try:
            dst.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
                )
            )
        except psycopg.errors.IntegrityError as exc:
            dst.rollback()
            first = str(exc).strip().splitlines()[0]
            raise VerificationError(
                f"the recovered rows break foreign key {schema}.{table}.{name} against the "
                f"live data ({first}); rolled back, nothing changed: restore the related "
                "tables together (relations=...) or switch the whole database"
            ) from exc
        recreated.append(f"{schema}.{table}.{name}")
    return recreated


def _check_restored(
    dst: Conn,
    rels: Sequence[str],
    got: Mapping[str, RelationDigest],
    expected: Mapping[str, RelationDigest],
) -> None:
    """Roll back unless every restored table has the recovered rows."""
    wrong = [r for r in rels if got[r] != expected[r]]
    if wrong:
        dst.rollback()
        raise VerificationError(
            "restored rows differ from the recovered ones for "
            + ", ".join(f"{r} ({got[r].rows} vs {expected[r].rows} rows)" for r in wrong)
            + "; rolled back, nothing changed"
        )


preserve_database_copy_task = dr_task(
    preserve_database_copy, name="pitr-preserve-database-copy", timeout_seconds=1800
)
dump_relations_task = dr_task(dump_relations, name="pitr-dump-relations")
restore_relations_task = dr_task(restore_relations, name="pitr-restore-relations", retries=0)
