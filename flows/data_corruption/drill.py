"""Drills only: choose the table, keep a safety dump, stamp, then damage it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import ConfigError, PreconditionError, RecoveryRefused
from dr.tasking import dr_task
from flows.common.backups import base_backup_target
from flows.data_corruption.options import (
    DRILL_COLUMN,
    DRILL_STATEMENTS,
    DRILL_VICTIMS,
    HEARTBEAT_TABLE,
    Variant,
)
from flows.data_corruption.run import CorruptionRun, mkdir_traversable
from tasks.backups import restore as backups_restore
from tasks.pitr import archiving, base_backup, checksums, relation_restore, wal
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import drill as pitr_drill
from tasks.pitr import relations as pitr_relations
from tasks.pitr import target as pitr_target
from tasks.postgres import admin as postgres_admin
from tasks.storage.client import Repository

__all__ = [
    "choose_drill_table",
    "inject",
    "put_segment_back",
    "put_segment_back_task",
    "set_segment_aside",
    "set_segment_aside_task",
]


def _unsuitable(variant: Variant, table: pitr_drill.DrillCandidate) -> str | None:
    """Why ``table`` cannot take the drill (None: it can)."""
    if table.rows == 0:
        return "it has no rows"
    if variant is Variant.mass_delete:
        if table.referenced:
            return "another table's foreign key references it (the DELETE would fail)"
    elif not table.numeric_columns:
        return "it has no numeric column outside its keys, constraints and indexes"
    return None


class DrillTableRefused(RecoveryRefused, ConfigError):
    """The requested drill_table is missing or unsuitable: the drill is refused, unchanged."""


def choose_drill_table(
    variant: Variant,
    tables: Sequence[pitr_drill.DrillCandidate],
    *,
    database: str,
    requested: str | None = None,
    exclude: Collection[str] = (),
) -> tuple[str, str | None]:
    """The table a drill damages and, for bad-update, the column it sets to 0.

    The lab's shop table when the database has it (the drills stay as they were);
    otherwise the largest table (by rows) that suits the variant, so the damage looks like
    a real bug's and the statement succeeds: mass-delete takes a table no other table's
    foreign key references, bad-update and damaged-page a table with a numeric column
    outside every key, constraint and index (bad-update zeroes the first such column).

    Args:
        variant: the drill variant.
        tables: the damaged database's tables (:func:`tasks.recovery.drill_candidates`).
        database: the damaged database (named in refusals).
        requested: ``options.drill_table``; checked, never replaced.
        exclude: tables never chosen automatically (the heartbeat table).

    Returns:
        ``(schema.table, column)``; the column is None unless the variant is bad-update.

    Raises:
        ConfigError: the requested table is missing or unsuitable, or no table suits.
    """
    by_name = {t.relation: t for t in tables}
    default = DRILL_VICTIMS[variant]
    zeroes = variant is Variant.bad_update
    if requested in (None, default) and default in by_name:
        return default, DRILL_COLUMN if zeroes else None
    if requested is not None:
        table = by_name.get(requested)
        if table is None:
            raise DrillTableRefused(
                f"drill_table {requested} is not a table of database {database!r}",
                [("options.drill_table", requested)],
            )
        problem = _unsuitable(variant, table)
        if problem:
            raise DrillTableRefused(
                f"drill_table {requested} of database {database!r} cannot take a "
                f"{variant.value} drill: {problem}",
                [("options.drill_table", requested)],
            )
        return requested, table.numeric_columns[0] if zeroes else None
    fits = [t for t in tables if t.relation not in exclude and _unsuitable(variant, t) is None]
    if not fits:
        need = (
            "a table with rows that no foreign key references"
            if variant is Variant.mass_delete
            else "a table with rows and a numeric column outside its keys and constraints"
        )
        raise ConfigError(
            f"database {database!r} has no table a {variant.value} drill can damage (it needs "
            f"{need}): nothing was changed; give drill_table",
            [("options.drill_table", None)],
        )
    best = min(fits, key=lambda t: (-t.rows, t.relation))
    return best.relation, best.numeric_columns[0] if zeroes else None


def _ensure_base_backup(run: CorruptionRun) -> None:
    repo = run.backup_repo()
    backups = base_backup.list_base_backups_task(repo, run.ctx.target_name)
    limit = timedelta(minutes=run.opts.base_backup_max_age_minutes)
    newest = backups[0] if backups else None
    if newest is not None and utcnow() - newest.ended_at <= limit:
        run.ctx.note(
            f"base backup {newest.backup_id} is {(utcnow() - newest.ended_at).seconds} s "
            "old: no new one needed"
        )
        return
    if not run.ctx.plan("take", f"a base backup of {run.ctx.target_name}"):
        return
    result = base_backup_target(
        run.ctx.config, run.ctx.target_name, staging_dir=run.opts.staging_dir
    )
    run.details["drill_base_backup"] = result.backup_id
    run.ctx.note(f"took base backup {result.backup_id} ({result.bytes} bytes) for the drill")


def _safety_net(run: CorruptionRun, victims: list[str]) -> None:
    """Dump the tables the drill will damage, so a failed drill can put their rows back."""
    path = mkdir_traversable(run.work) / "drill-safety.dump"
    relation_restore.dump_relations_task(
        run.tool_conninfo(),
        victims,
        path,
        bin_dir=run.bin_dir,
        password=run.password,
        sections=("pre-data", "data"),
    )
    run.safety_dump = path


def _undo_drill_damage(run: CorruptionRun, victims: list[str]) -> None:
    """Compensation: restore the drill's victims from the safety dump (one transaction)."""
    assert run.safety_dump is not None
    scratch = f"dr_drill_undo_{run.run_id.lower()}"
    maintenance = run.conninfo(run.pgc.maintenance_db)
    postgres_admin.create_database(maintenance, scratch)
    try:
        pitr_relations.ensure_schemas(run.conninfo(scratch), [v.split(".", 1)[0] for v in victims])
        backups_restore.restore_dump(
            run.safety_dump,
            run.tool_conninfo(scratch),
            password=run.password,
            bin_dir=run.bin_dir,
            no_owner=True,
        )
        relation_restore.restore_relations(run.conninfo(scratch), run.conninfo(), victims)
    finally:
        postgres_admin.drop_database(
            maintenance, scratch, must_not_be=run.pgc.databases, force=True
        )


def inject(run: CorruptionRun) -> None:
    """Drill: stamp, snapshot, then damage like a real bug (or bit rot) would."""
    ctx, opts = run.ctx, run.opts
    # The red twin damages like bad-update; its gap comes after the damage.
    variant = Variant.bad_update if opts.variant is Variant.wal_gap else opts.variant
    with ctx.phase("prepare drill", detail=f"variant {opts.variant.value}") as record:
        victim, column = choose_drill_table(
            variant,
            pitr_drill.drill_candidates_task(run.conninfo()),
            database=run.db,
            requested=opts.drill_table,
            exclude={HEARTBEAT_TABLE},
        )
        run.victim, run.victim_column = victim, column
        run.details["drill_table"] = {"relation": victim, "column": column}
        record.detail = f"variant {opts.variant.value} on {victim}" + (
            f" (column {column})" if column else ""
        )
        victims = sorted({victim, *opts.relations})
        _ensure_base_backup(run)
        if not ctx.plan("snapshot", f"rows of {', '.join(victims)} and stamp the time"):
            return
        if variant is not Variant.damaged_page:
            _safety_net(run, victims)
        run.snapshot = pitr_relations.relation_digests_task(run.conninfo(), victims)
        run.stamp = archiving.server_position_task(run.conninfo())
        run.details["stamp"] = {
            "at": run.stamp["at"].isoformat(),
            "lsn": run.stamp["lsn"],
            "timeline": run.stamp["timeline"],
            "digests": {k: v.model_dump() for k, v in run.snapshot.items()},
        }
    with ctx.phase("inject damage", detail=f"{opts.variant.value} on {victim}") as record:
        if variant is Variant.damaged_page:
            _inject_damaged_page(run, victim)
        else:
            sql_text = DRILL_STATEMENTS.get((victim, column)) or pitr_drill.drill_statement(
                victim, column
            )
            done = pitr_drill.run_drill_statement_task(run.conninfo(), sql_text)
            rows = done["rows"]
            record.detail = f"{sql_text}: {rows} rows"
            run.damage_at = done["committed_at"]
            ctx.record_change(
                Change(
                    system="postgres",
                    action="inject-damage",
                    object=f"{victim} in {run.db}",
                    outcome="changed",
                    before={"rows": run.snapshot[victim].rows},
                    after={"statement": sql_text, "rows_affected": rows},
                    undo="the drill restores it; if it fails, compensation reloads the rows",
                ),
                undo=lambda: _undo_drill_damage(run, victims),
            )
        ctx.stamp_failure(run.damage_at)
    if opts.variant is Variant.wal_gap and not ctx.dry_run:
        with ctx.phase("inject WAL gap", detail="set aside the segment the recovery needs") as rec:
            rec.detail = _inject_wal_gap(run)


def _inject_damaged_page(run: CorruptionRun, victim: str) -> None:
    """Copy the cluster (stopped), then invert bytes in one heap page of the victim there."""
    copy_dir = mkdir_traversable(run.work) / "damaged-copy"
    info = checksums.make_stopped_copy_task(
        run.tool_conninfo(run.pgc.maintenance_db),
        copy_dir,
        bin_dir=run.bin_dir,
        password=run.password,
    )
    relpath = pitr_relations.relation_filepaths_task(run.conninfo(), [victim])[victim]
    damage = checksums.damage_heap_page_task(copy_dir, relpath)
    run.damaged_copy = copy_dir
    run.damage_at = utcnow()
    run.details["damaged_copy"] = {**info, **damage, "relation": victim}
    run.ctx.record_change(
        Change(
            system="postgres",
            action="damage-page-of-copy",
            object=f"{relpath} in the stopped copy {copy_dir}",
            outcome="changed",
            before={"sha256": damage["sha256_before"]},
            after={"sha256": damage["sha256_after"], "block": damage["block"]},
            undo=f"remove the copy {copy_dir} (the live cluster was never touched)",
        ),
        undo=lambda: pitr_cluster.remove_cluster(copy_dir, bin_dir=run.bin_dir),
    )


def _inject_wal_gap(run: CorruptionRun) -> str:
    """The red twin: set aside the archived segment holding the stamp (every recovery to a
    point after it replays that segment); compensation puts it back."""
    assert run.stamp is not None
    # The stamp's segment and a later one archived: a missing segment is then a gap.
    for _ in range(2):
        archiving.switch_wal_and_wait_task(run.conninfo())
    point = pitr_target.RecoveryTarget(lsn=run.stamp["lsn"])
    now = archiving.server_position_task(run.conninfo())
    backup = base_backup.choose_base_backup(
        base_backup.list_base_backups_task(run.backup_repo(), run.ctx.target_name),
        point,
        now=now["at"],
        current_lsn=now["lsn"],
    )
    repo = run.wal_repo()
    needed = wal.plan_wal_task(repo, backup, point).needed
    if not needed:
        raise PreconditionError(f"base backup {backup.backup_id} needs no archived segment")
    change = set_segment_aside_task(repo, needed[-1], mkdir_traversable(run.work / "wal-aside"))
    run.details["wal_gap"] = {"segment": needed[-1], "base_backup": backup.backup_id}
    run.ctx.record_change(change, undo=lambda: put_segment_back_task(repo, change))
    return f"segment {needed[-1]} set aside (needed from base backup {backup.backup_id})"


def _segment_key(repo: Repository, segment: str) -> str:
    for obj in repo.list(""):
        if obj.key.rsplit("/", 1)[-1] == segment:
            return str(obj.key)
    raise PreconditionError(f"segment {segment} is not in the WAL archive {repo.url}")


def set_segment_aside(repo: Repository, segment: str, folder: Path) -> Change:
    """Move one archived WAL segment out of the archive into ``folder`` (verified copy first).

    Returns:
        A compensable Change; :func:`put_segment_back` undoes it.

    Raises:
        PreconditionError: the segment is not in the archive.
        StorageError: the archive cannot be read or written.
    """
    key = _segment_key(repo, segment)
    local = folder / segment
    sha = repo.get_to_file(key, local)
    repo.delete(key)
    return Change(
        system="storage",
        action="set-wal-segment-aside",
        object=repo.url_for(key),
        outcome="changed",
        before={"key": key, "sha256": sha},
        after={"aside": str(local)},
        undo=f"put {local} back at {repo.url_for(key)}",
        compensable=True,
    )


def put_segment_back(repo: Repository, change: Change) -> Any:
    """Put a segment :func:`set_segment_aside` moved back, unchanged (a no-op if there)."""
    local = Path(str(change.after["aside"]))
    return repo.put_file(str(change.before["key"]), local)


set_segment_aside_task = dr_task(set_segment_aside, name="drill-set-wal-segment-aside")
put_segment_back_task = dr_task(put_segment_back, name="drill-put-wal-segment-back")
