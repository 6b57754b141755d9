"""Assess, in parallel: checksums, amcheck, validation, row counts, the WAL damage finder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from dr.config import DRConfig, Target
from dr.tasking import dr_task
from flows.common.backups import list_backups, open_target_repository
from flows.data_corruption.detection import own_check_noticed, report_detection
from flows.data_corruption.options import ROW_DROP_SHARE
from flows.data_corruption.run import CorruptionRun, as_utc, db_conninfo, iso, mkdir_traversable
from tasks.backups import manifest as backups_manifest
from tasks.backups import verify as backups_verify
from tasks.pitr import archiving, base_backup, checksums, damage_finder, lsn
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import relations as pitr_relations
from tasks.postgres import assess as postgres_assess
from tasks.postgres import checks as postgres_checks

__all__ = ["assess", "checksum_copy", "find_damage", "row_drops"]


def row_drops(
    config: DRConfig, repository: str, target_name: str, db: str, conninfo: str
) -> dict[str, Any]:
    """Live row counts against the newest logical backup's manifest of the database.

    Args:
        config: the config (opens the repository).
        repository: the target's backup repository URL.
        target_name: the target.
        db: the damaged database.
        conninfo: the live database.

    Returns:
        ``{"backup_id", "drops": {relation: {"manifest", "live"}}, "tables"}``, or
        ``{"skipped": why}``.
    """
    repo = open_target_repository(config, repository)
    entries = [e for e in list_backups(repo, f"{target_name}/{db}") if e.complete]
    if not entries:
        return {"skipped": f"no logical backup of {db} to compare row counts with"}
    newest = entries[0]
    key = f"{target_name}/{db}/{newest.backup_id}/{backups_manifest.MANIFEST_NAME}"
    with repo.open_read(key) as stream:
        manifest = backups_manifest.read_manifest(stream.read())
    live = postgres_checks.table_row_counts(conninfo)
    drops = {
        rel: {"manifest": n, "live": live.get(rel, 0)}
        for rel, n in manifest.row_counts.items()
        if n > 0 and live.get(rel, 0) < n * ROW_DROP_SHARE
    }
    return {"backup_id": newest.backup_id, "drops": drops, "tables": len(manifest.row_counts)}


def checksum_copy(
    damaged_copy: Path | None,
    work: Path,
    tool_conninfo: str,
    bin_dir: Path | str | None,
    password: str | None,
) -> checksums.ChecksumReport:
    """pg_checksums on a stopped copy (the drill's damaged copy, or a new copy of live).

    Args:
        damaged_copy: the drill's damaged copy, if any (checked as it is).
        work: the run's work folder (a new copy goes there, removed afterwards).
        tool_conninfo: the live server's maintenance database, without the password.
        bin_dir: the PostgreSQL programs.
        password: for PGPASSWORD.

    Returns:
        The pg_checksums report.
    """
    if damaged_copy is not None:
        return checksums.check_checksums(damaged_copy, bin_dir=bin_dir)
    copy_dir = mkdir_traversable(work) / "checked-copy"
    checksums.make_stopped_copy(tool_conninfo, copy_dir, bin_dir=bin_dir, password=password)
    try:
        return checksums.check_checksums(copy_dir, bin_dir=bin_dir)
    finally:
        pitr_cluster.remove_cluster(copy_dir, bin_dir=bin_dir)


def find_damage(
    config: DRConfig,
    target: Target,
    target_name: str,
    db: str,
    password: str | None,
    stamp: dict[str, Any] | None,
    damage_at: datetime | None,
    min_rows: int,
) -> list[damage_finder.DamageCandidate]:
    """The WAL damage finder, from the drill's stamp, the base backup before the damage, or
    a bounded window of the archive (at most ``recovery.DEFAULT_SCAN_WINDOW_BYTES``).

    Args:
        config: the config (opens the backup repository).
        target: the target (its WAL archive, PostgreSQL section).
        target_name: its name.
        db: the damaged database.
        password: the resolved password, if any.
        stamp: the drill's stamp (``lsn``, ``timeline``), if any.
        damage_at: when the damage began, if known.
        min_rows: rows one transaction must have changed.

    Returns:
        The candidates that are tables of ``db`` (``relation`` filled in).
    """
    archive = target.backup.wal_archive or ""
    if not archive.startswith("file://"):
        return []
    folder = archive[len("file://") :]
    pgc = target.postgres
    conninfo = db_conninfo(pgc, password, db)
    bin_dir = pgc.primary.bin_dir
    if stamp is not None:
        start, tli = stamp["lsn"], stamp["timeline"]
    else:
        tli = archiving.server_position(conninfo)["timeline"]
        repo = open_target_repository(config, target.backup.repository)
        start = _scan_start(repo, target_name, folder, tli, damage_at)
        if start is None:
            return []
    oid = pitr_relations.database_oid(conninfo)
    found = damage_finder.find_damage(
        folder,
        timeline=tli,
        start_lsn=start,
        min_rows=min_rows,
        database_oids=[int(oid)],
        bin_dir=bin_dir,
    )
    names = pitr_relations.resolve_filenodes(
        lambda other: db_conninfo(pgc, password, other),
        db_conninfo(pgc, password, pgc.maintenance_db),
        [c.locator for c in found],
    )
    tables = set(postgres_checks.table_row_counts(conninfo, exact=False))
    out = []
    for cand in found:
        name = names.get(cand.locator)
        rel = name.split(":", 1)[1] if name else None
        if rel is None or rel not in tables:
            continue  # an index, a dropped or rewritten-again file: not a table to restore
        out.append(cand.model_copy(update={"relation": rel}))
    return out


def _scan_start(
    repo: Any, target_name: str, folder: str, tli: int, damage_at: datetime | None
) -> str | None:
    """From the newest base backup that ended before the damage (when its time is given),
    else from a bounded window of the archive."""
    backups = [
        b
        for b in base_backup.list_base_backups(repo, target_name)
        if damage_at is None or b.ended_at <= as_utc(damage_at)
    ]
    window = damage_finder.archive_window_start(folder, tli)
    start = backups[0].start_lsn if backups else window
    if start is None:
        return None
    if window is not None and lsn.parse_lsn(start) < lsn.parse_lsn(window):
        start = window
    return start


def assess(run: CorruptionRun) -> None:
    """Run every check at once, then name the damaged relations and when the damage began."""
    ctx = run.ctx
    with ctx.phase("assess", detail="checksums, amcheck, validation, row counts, WAL") as record:
        if not ctx.dry_run and run.target.backup.wal_archive:
            # Everything up to now must be in the archive for the WAL finder and the recovery.
            archiving.switch_wal_and_wait_task(run.conninfo())
        noticed: dict[str, bool] = {}
        named = _collect(run, _submit_checks(run), noticed)
        record.detail = _conclude(run, named)
        report_detection(run, noticed, named)


def _submit_checks(run: CorruptionRun) -> dict[str, Any]:
    """Submit every assessment branch; returns their futures by finding name."""
    ctx, opts = run.ctx, run.opts
    futures: dict[str, Any] = {}
    futures["checksum counters"] = postgres_assess.checksum_failures_task.submit(run.conninfo())
    if opts.checksum_copy or run.damaged_copy is not None:
        if ctx.plan("copy and check", "the cluster with pg_checksums (stopped copy)"):
            futures["pg_checksums"] = checksum_copy_task.submit(
                run.damaged_copy,
                run.work,
                run.tool_conninfo(run.pgc.maintenance_db),
                run.bin_dir,
                run.password,
            )
    if pitr_relations.extension_installed_task(run.conninfo(), "amcheck"):
        futures["amcheck"] = backups_verify.amcheck_task.submit(
            run.tool_conninfo(), password=run.password, bin_dir=run.bin_dir
        )
    else:
        ctx.note(f"pg_amcheck skipped on live {run.db}: the amcheck extension is not installed")
    for q in run.target.validation_queries:
        if (q.database or run.db) == run.db:
            futures[f"validation: {q.name}"] = postgres_checks.run_validation_query_task.submit(
                run.conninfo(), name=q.name, sql=q.sql, expect=q.expect
            )
    futures["row counts"] = row_drops_task.submit(
        ctx.config, run.target.backup.repository, ctx.target_name, run.db, run.conninfo()
    )
    futures["wal damage finder"] = find_damage_task.submit(
        ctx.config,
        run.target,
        ctx.target_name,
        run.db,
        run.password,
        run.stamp,
        opts.damage_at,
        opts.min_rows,
    )
    return futures


def _collect(
    run: CorruptionRun, futures: dict[str, Any], noticed: dict[str, bool]
) -> dict[str, list[str]]:
    """Each branch's answer recorded; returns the relations each finding names and fills
    ``noticed`` with whether each of the target's own checks failed."""
    ctx = run.ctx
    named: dict[str, list[str]] = {}
    for name, fut in futures.items():
        try:
            value = fut.result()
        except Exception as exc:  # noqa: BLE001 - each branch is a finding of its own
            ctx.record_check(f"assess: {name}", False, critical=False, detail=str(exc))
            continue
        own = own_check_noticed(name, value)
        if own is not None:
            noticed[own[0]] = own[1]
        _assessment_finding(run, name, value, named)
    return named


def _conclude(run: CorruptionRun, named: dict[str, list[str]]) -> str:
    """The damaged relations and the damage's start, from every finding; returns the detail."""
    ctx, opts = run.ctx, run.opts
    if opts.relations:
        named.setdefault("options.relations", []).extend(opts.relations)
    damaged = sorted({r for rels in named.values() for r in rels})
    if run.candidates:
        first = run.candidates[0]
        run.suspected_lsn, run.suspected_at = first.commit_lsn, first.commit_time
        if ctx.is_drill and run.stamp is not None:
            # Scanned from the stamp: the first large change after it is the injection.
            run.damage_lsn = first.commit_lsn
    if ctx.is_drill and not damaged and not opts.whole_database:
        victim = run.victim
        ctx.note(f"the assessment named no relation; the drill restores its victim {victim}")
        damaged = [victim]
    run.damaged = damaged
    run.details["assessment"] = {
        "damaged_relations": damaged,
        "named_by": named,
        "damage_began_at": iso(run.damage_at or run.suspected_at),
        "damage_commit_lsn": run.damage_lsn or run.suspected_lsn,
        "certain": run.damage_at is not None,
    }
    began = run.damage_at or run.suspected_at
    detail = (
        f"damaged: {', '.join(damaged) or 'no relation named'}; began "
        f"{began.isoformat() if began else 'unknown'}"
        + ("" if run.damage_at or not began else " (suspected, from the WAL)")
    )
    if ctx.is_drill and run.stamp is not None:
        victim = run.victim
        ctx.record_check(
            "assessment named the damaged relation",
            victim in damaged,
            critical=False,
            detail=f"found {damaged}, drill damaged {victim}",
        )
    return detail


def _assessment_finding(
    run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]
) -> None:
    """Record one branch's answer; fill ``named`` with the relations it names."""
    if name.startswith("validation: "):
        _validation(run, name, value, named)
        return
    handler = {
        "checksum counters": _checksum_counters,
        "pg_checksums": _pg_checksums,
        "amcheck": _amcheck,
        "row counts": _row_counts,
        "wal damage finder": _wal_finder,
    }.get(name)
    if handler is not None:
        handler(run, name, value, named)


def _checksum_counters(
    run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]
) -> None:
    ctx = run.ctx
    bad = {db: n for db, n in value.items() if n}
    ctx.record_check(
        "assess: checksum failure counters",
        not bad,
        critical=False,
        detail=f"failures: {bad}" if bad else "no checksum failure counted",
        value=bad or None,
    )


def _pg_checksums(run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    report: checksums.ChecksumReport = value
    run.checksum_report = report
    names = pitr_relations.resolve_filenodes(
        lambda db: run.conninfo(db), run.conninfo(run.pgc.maintenance_db), report.locators()
    )
    rels = [n.split(":", 1)[1] for n in names.values() if n and n.startswith(f"{run.db}:")]
    named["pg_checksums"] = rels
    run.details["pg_checksums"] = report.model_dump(mode="json")
    ctx.record_check(
        "assess: pg_checksums on a stopped copy",
        report.ok,
        critical=False,
        detail=(
            f"{report.bad_checksums} bad page(s) in {rels or report.locators()}"
            if not report.ok
            else f"{report.blocks_scanned} pages verified"
        ),
    )


def _amcheck(run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    heap = [f.relation for f in value.failures if f.relation_kind == "heap table"]
    rels = [r.split(".", 1)[1] for r in heap if r.startswith(f"{run.db}.")]
    named["amcheck"] = sorted(set(rels))
    ctx.record_check("assess: pg_amcheck", value.ok, critical=False, detail=value.summary())


def _validation(run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    ctx.record_check(f"assess: {name}", value.ok, critical=False, detail=value.detail)


def _row_counts(run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    drops = value.get("drops", {})
    named["row counts"] = sorted(drops)
    ctx.record_check(
        "assess: row counts against the newest manifest",
        not drops,
        critical=False,
        detail=value.get("skipped") or (f"dropped: {drops}" if drops else "no big drop"),
    )


def _wal_finder(run: CorruptionRun, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    # Row changes name the damage; rewrites (TRUNCATE, but also VACUUM FULL, CLUSTER,
    # ALTER TABLE) are only reported: a person decides whether one was the accident.
    rows = [c for c in value if c.kind == "rows"]
    rewrites = [c for c in value if c.kind == "rewrite"]
    run.candidates = rows
    named["wal damage finder"] = sorted({c.relation for c in rows if c.relation})
    run.details["damage_candidates"] = [c.model_dump(mode="json") for c in value[:10]]
    if rewrites:
        ctx.note(
            "the WAL also shows table rewrites (TRUNCATE, VACUUM FULL, CLUSTER or ALTER "
            "TABLE) of "
            + ", ".join(sorted({f"{c.relation} at {c.commit_time}" for c in rewrites[:5]}))
            + "; if one of them was the accident, give recovery_time and relations"
        )
    first = rows[0] if rows else None
    ctx.record_check(
        "assess: WAL damage finder",
        first is None,
        critical=False,
        detail=(
            f"xid {first.xid} changed {first.rows_changed} rows of {first.relation} "
            f"({first.operations}), committed {first.commit_time} at {first.commit_lsn}"
            if first
            else "no large UPDATE/DELETE found in the archived WAL"
            + (f" ({len(rewrites)} table rewrite(s) reported)" if rewrites else "")
        ),
    )


row_drops_task = dr_task(row_drops, name="assess-row-counts", retries=0)
checksum_copy_task = dr_task(checksum_copy, name="assess-pg-checksums-copy", retries=0)
find_damage_task = dr_task(find_damage, name="assess-wal-damage-finder", retries=0)
