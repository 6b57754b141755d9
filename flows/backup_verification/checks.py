"""Checks of a restored scratch copy: row counts, schema, validation queries, amcheck."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from dr.config import Target
from flows.backup_verification.models import DatabaseVerification
from tasks.backups import verify as backups_verify
from tasks.postgres import checks as postgres_checks
from tasks.postgres import client as postgres_client

__all__ = ["check_backup_age", "post_restore_checks"]


def _validation_queries(target: Target, database: str) -> list[Any]:
    """The target's validation queries that run on ``database`` (unset database: the first)."""
    first = target.postgres.databases[0]
    return [q for q in target.validation_queries if (q.database or first) == database]


def post_restore_checks(
    target: Target,
    database: str,
    scratch: str,
    result: DatabaseVerification,
    *,
    expected_counts: dict[str, int] | None,
    expected_schema: str | None,
    heapallindexed: bool,
) -> None:
    """Check the restored copy; every finding becomes a check of ``result``.

    Args:
        target: the target (its primary holds the scratch database).
        database: the source database.
        scratch: the scratch database holding the restored copy.
        result: where the checks go.
        expected_counts: row counts from the manifest (None for foreign dumps).
        expected_schema: the source's schema fingerprint at backup time (None: compare live).
        heapallindexed: deeper pg_amcheck.
    """
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    scratch_conn = postgres_client.conninfo(
        pgc.primary, user=pgc.user, dbname=scratch, password=password
    )
    source_conn = postgres_client.conninfo(
        pgc.primary, user=pgc.user, dbname=database, password=password
    )
    t0 = time.perf_counter()
    # The restored schema is read first; then pg_amcheck (which installs its extension
    # into pg_catalog, not into the user schema compared here) checks the copy while the
    # row counts and the validation queries read it: independent, so they overlap.
    restored_schema = postgres_checks.schema_fingerprint_task(scratch_conn)["sha256"]
    with ThreadPoolExecutor(1, thread_name_prefix=f"amcheck-{scratch}") as pool:
        amchecking = pool.submit(
            contextvars.copy_context().run,  # the same Prefect run context as this task
            backups_verify.amcheck_task,
            postgres_client.conninfo(pgc.primary, user=pgc.user, dbname=scratch),
            heapallindexed=heapallindexed,
            jobs=2,
            password=password,
            bin_dir=pgc.primary.bin_dir,
        )
        if expected_counts is not None:
            _check_row_counts(scratch_conn, expected_counts, result)
        _check_schema(restored_schema, source_conn, expected_schema, result)
        for query in _validation_queries(target, database):
            answer = postgres_checks.run_validation_query_task(
                scratch_conn, name=query.name, sql=query.sql, expect=query.expect
            )
            value = answer.value if isinstance(answer.value, int | float | str | bool) else None
            result.check(f"validation {query.name}", answer.ok, answer.detail, value=value)
        check = amchecking.result()
    result.check(
        "amcheck" + (" (heapallindexed)" if heapallindexed else ""),
        check.ok,
        check.summary(),
        value=len(check.failures),
    )
    result.checks_seconds = round(time.perf_counter() - t0, 3)


def _check_row_counts(
    scratch_conn: str, expected_counts: dict[str, int], result: DatabaseVerification
) -> None:
    counts = postgres_checks.table_row_counts_task(scratch_conn)
    diffs = [
        f"{t}: {counts.get(t)} restored vs {expected_counts.get(t)} in the manifest"
        for t in sorted(set(counts) | set(expected_counts))
        if counts.get(t) != expected_counts.get(t)
    ]
    result.check(
        "row counts",
        not diffs,
        "; ".join(diffs[:5]) + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
        if diffs
        else f"{len(counts)} tables, {sum(counts.values())} rows match the manifest",
        value=sum(counts.values()),
    )


def _check_schema(
    restored_schema: str,
    source_conn: str,
    expected_schema: str | None,
    result: DatabaseVerification,
) -> None:
    """Against the fingerprint at backup time when known (and note drift since), else live."""
    if expected_schema is None:
        live = postgres_checks.schema_fingerprint_task(source_conn)["sha256"]
        result.check(
            "schema",
            restored_schema == live,
            "matches the live source"
            if restored_schema == live
            else f"fingerprint {restored_schema[:12]} differs from the live source {live[:12]}",
            critical=False,
        )
        return
    result.check(
        "schema",
        restored_schema == expected_schema,
        "matches the source's schema at backup time"
        if restored_schema == expected_schema
        else f"fingerprint {restored_schema[:12]} differs from the source's at backup time "
        f"{expected_schema[:12]}",
    )
    live = postgres_checks.schema_fingerprint_task(source_conn)["sha256"]
    result.check(
        "schema unchanged since backup",
        live == expected_schema,
        "the source's schema is the same now"
        if live == expected_schema
        else "the source's schema changed since this backup (informational)",
        critical=False,
    )


def check_backup_age(
    result: DatabaseVerification,
    started_at: datetime,
    now: datetime,
    rpo_seconds: float,
    *,
    seen: str,
    critical: bool = True,
) -> None:
    """The backup's age at the drill against the RPO (the RPO of a restore is that age).

    Args:
        result: where the check goes.
        started_at: when the backup's data was taken (snapshot time, or file mtime).
        now: the drill's time.
        rpo_seconds: the tier's RPO.
        seen: how ``started_at`` is described ("snapshot at", "file modified").
        critical: False when point-in-time recovery meets the RPO whatever this age.
    """
    age = max(0.0, (now - started_at).total_seconds())
    result.age_seconds = round(age, 3)
    result.check(
        "backup age",
        age <= rpo_seconds,
        f"{age:.0f} s old ({seen} {started_at:%Y-%m-%d %H:%M:%S} UTC), RPO {rpo_seconds:.0f} s"
        + ("" if critical else " (informational: point-in-time recovery covers the RPO)"),
        critical=critical,
        value=round(age, 3),
    )
