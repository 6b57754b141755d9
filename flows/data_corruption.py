"""Data corruption and accidental deletion: detect, stop the writers, recover to just before, resume.

The runbooks it replaces (seed 000 "Point-in-Time Recovery", seed 003 "Accidental Data
Deletion" and "Database Failure: data corruption detected"): stop the processes that might
overwrite data, identify what was damaged and when, keep the damaged state, find the base
backup before the damage, restore it and apply WAL up to just before, verify, switch the
application to it, restart, verify. As phases of one run:

1. **assess**, in parallel: data-checksum failure counters; ``pg_checksums`` on a stopped
   copy (when asked, and always for the damaged-page drill); ``pg_amcheck`` where the
   extension is installed; the target's validation queries; row counts against the newest
   logical backup's manifest; and :func:`tasks.recovery.find_damage` on the archived WAL,
   which names the first transaction that changed many rows of one table and when it
   committed. Together they name the damaged relations and, where the evidence allows,
   when the damage began.
2. **plan recovery** (nothing changes yet, so a refusal leaves everything as it was): the
   recovery point (the parameter, else just before the damaging commit found in the WAL,
   else, in a drill, the stamp), the newest base backup before it, and a proof that the
   archive holds every WAL segment in between (a gap is reported with its segment name).
3. **stop the writers**: Docker containers stopped / Kubernetes deployments scaled to 0,
   recording what ran.
4. **preserve evidence**: ``pg_dump`` of the damaged relations (or, for a whole-database
   switch, the database kept as ``<db>_damaged_<ts>`` by a file copy), with SHA-256, in
   ``target.evidence_repository`` (default ``<backup repository>/evidence/``). The damaged
   database is never dropped by this flow.
5. **recover** by point-in-time recovery into a new cluster (base backup + archived WAL).
6. **verify the recovered data**: the same checks, and in drills the rows of every damaged
   table compared with the snapshot taken at the stamp.
7. approval gate (incident mode), then **switch**: the damaged relations restored from the
   recovered cluster into the live database in ONE transaction (``relations`` given or
   found, and ``whole_database`` false), else the whole database: the writers are
   repointed at the recovered cluster (``DB_HOST``/``DB_PORT``).
8. **restart the writers** with their recorded state, **verify end to end**.
9. **measure**: RTO = writers stopped → writers healthy again (first heartbeat row written
   by the application after the restart); RPO = the data-loss window between the recovery
   point and the damage (relation restore) or between the recovery point and the moment
   the writers stopped (whole database), with the heartbeat rows lost.

Drill mode injects the damage itself (after a base backup newer than
``base_backup_max_age_minutes`` is ensured, a time is stamped and the rows of the tables to
be damaged are snapshot as digests): ``bad-update`` sets ``shop.orders.total = 0`` on every
row, ``mass-delete`` deletes every row of ``shop.order_items``, ``damaged-page`` inverts
bytes in a heap page of ``shop.orders`` in a stopped COPY of the cluster (never in the live
cluster's files) so ``pg_checksums`` catches it. A database without the lab's shop tables
(the seed targets') gets its table from ``drill_table``, else chosen by
:func:`choose_drill_table`: the largest table no foreign key points at (mass-delete), or
the largest with a numeric column outside every key and constraint (bad-update sets that
column to 0; damaged-page damages that table). A drill keeps a dump of the tables it
damages; if the drill fails before the switch, compensation puts those rows back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from dr.changes import Change
from dr.config import (
    DockerService,
    KubernetesService,
    Mode,
    PostgresConfig,
    PostgresNode,
    Scenario,
    Target,
)
from dr.errors import ConfigError, PostgresError, PreconditionError
from flows.backup import base_backup_target, list_backups, open_target_repository
from flows.lifecycle import RunContext, run_scenario
from tasks import backups as bk
from tasks import containers, kubernetes
from tasks import postgres as pg
from tasks import recovery as rc

__all__ = [
    "DRILL_VICTIMS",
    "CorruptionOptions",
    "Variant",
    "choose_drill_table",
    "data_corruption_flow",
]

log = logging.getLogger(__name__)

RECOVERY_DIR_ENV = "DR_RECOVERY_DIR"
HEARTBEAT_TABLE = "public.dr_heartbeat"
#: Writers whose heartbeat rows are the drill probe's, not the application's.
PROBE_PREFIX = "dr-probe-"
#: A table whose live row count fell below this share of the newest manifest's is suspect.
ROW_DROP_SHARE = 0.5
EVIDENCE_FOLDER = "evidence"


class Variant(StrEnum):
    """What a drill damages (always like a real bug or bit rot would)."""

    bad_update = "bad-update"
    mass_delete = "mass-delete"
    damaged_page = "damaged-page"


#: The table each drill variant damages (the lab's demo shop).
DRILL_VICTIMS: dict[Variant, str] = {
    Variant.bad_update: "shop.orders",
    Variant.mass_delete: "shop.order_items",
    Variant.damaged_page: "shop.orders",
}
#: The column the lab's bad-update zeroes, and the statements kept as the lab has them.
DRILL_COLUMN = "total"
DRILL_STATEMENTS: dict[tuple[str, str | None], str] = {
    ("shop.orders", DRILL_COLUMN): "UPDATE shop.orders SET total = 0",
    ("shop.order_items", None): "DELETE FROM shop.order_items",
}


class CorruptionOptions(BaseModel):
    """Options of the scenario (``--option key=value``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    variant: Variant = Field(
        Variant.bad_update,
        validation_alias=AliasChoices("variant", "inject"),
        description="Drill only: how the damage is injected.",
    )
    recovery_time: datetime | None = Field(
        None, description="Recover to just before this moment (with a time zone)."
    )
    recovery_lsn: str | None = Field(None, description="Recover to just before this WAL position.")
    damage_at: datetime | None = Field(
        None, description="Incident: when the damage began, if known (refuses later points)."
    )
    relations: list[str] = Field(
        default_factory=list,
        description="schema.table to restore from the recovered copy (default: those found).",
    )
    whole_database: bool = Field(
        False, description="Switch the application to the recovered cluster instead."
    )
    database: str | None = Field(None, description="Damaged database (default: the first).")
    drill_table: str | None = Field(
        None,
        description=(
            "Drill: schema.table to damage (default: the lab's shop table, else the largest "
            "suitable table of the damaged database)."
        ),
    )
    checksum_copy: bool = Field(
        False, description="Assess with pg_checksums on a stopped copy of the live server."
    )
    min_rows: int = Field(100, ge=1, description="Damage finder: rows one transaction changed.")
    base_backup_max_age_minutes: float = Field(
        60, gt=0, description="Drill: take a base backup first unless one is this recent."
    )
    recovery_dir: str | None = Field(
        None, description=f"Where recovered clusters live (default ${RECOVERY_DIR_ENV} or /tmp)."
    )
    staging_dir: str | None = Field(None, description="Drill base backup staging folder.")
    keep_recovered: bool = Field(
        False, description="Relation restore: keep the recovered cluster running afterwards."
    )
    recovery_timeout_seconds: float = Field(900, gt=0)
    heartbeat_wait_seconds: float = Field(60, gt=0)
    recovered_host: str = Field("127.0.0.1", description="How writers reach the new cluster.")
    db_host_env: str = "DB_HOST"
    db_port_env: str = "DB_PORT"
    auto_approve: bool = False
    declared_at: datetime | None = None
    # Alert-started runs also carry these (deployments/alerts.py: flow_parameters).
    severity: str | None = Field(None, description="Overrides the severity parameter.")
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] | None = None

    @field_validator("relations")
    @classmethod
    def _qualified(cls, value: list[str]) -> list[str]:
        for rel in value:
            schema, dot, table = rel.partition(".")
            if not dot or not schema or not table:
                raise ValueError(f"relation {rel!r} must be schema.table")
        return value

    @field_validator("drill_table")
    @classmethod
    def _drill_table(cls, value: str | None) -> str | None:
        if value is not None:
            schema, dot, table = value.partition(".")
            if not dot or not schema or not table:
                raise ValueError(f"drill_table {value!r} must be schema.table")
        return value

    @field_validator("recovery_lsn")
    @classmethod
    def _lsn(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                rc.parse_lsn(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value


# --------------------------------------------------------------------------- helpers


class _Run:
    """What the phases share (so the body reads like the runbook)."""

    def __init__(self, ctx: RunContext, opts: CorruptionOptions) -> None:
        self.ctx = ctx
        self.opts = opts
        self.target: Target = ctx.target
        self.pgc: PostgresConfig = ctx.target.postgres
        self.password = self.pgc.password.resolve() if self.pgc.password else None
        self.db = opts.database or self.pgc.databases[0]
        if self.db not in self.pgc.databases:
            raise ConfigError(
                f"database {self.db!r} is not one of the target's ({self.pgc.databases})",
                [("options.database", self.db)],
            )
        self.bin_dir = self.pgc.primary.bin_dir
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        root = Path(
            opts.recovery_dir
            or os.environ.get(RECOVERY_DIR_ENV)
            or Path(tempfile.gettempdir()) / "dr-pipelines" / "recovery"
        )
        self.work = root / f"{ctx.target_name}-{self.run_id}"
        self.details: dict[str, Any] = ctx.details
        self.snapshot: dict[str, rc.RelationDigest] = {}
        # Drill: the table damaged and, for bad-update, the column set to 0.
        self.victim: str = DRILL_VICTIMS[opts.variant]
        self.victim_column: str | None = None
        self.stamp: dict[str, Any] | None = None
        # Certain knowledge of the damage (the drill's injection, or the operator's word):
        # a recovery point after it is refused.
        self.damage_at: datetime | None = opts.damage_at
        self.damage_lsn: str | None = None
        # What the WAL finder suspects: the default recovery point, advice otherwise.
        self.suspected_at: datetime | None = None
        self.suspected_lsn: str | None = None
        self.damaged: list[str] = []
        self.candidates: list[rc.DamageCandidate] = []
        self.checksum_report: rc.ChecksumReport | None = None
        self.damaged_copy: Path | None = None
        self.recovered: rc.RecoveredCluster | None = None
        self.writer_changes: list[tuple[Any, Change]] = []
        self.writers_stopped_at: datetime | None = None
        self.writers_started_at: datetime | None = None
        self.safety_dump: Path | None = None
        self.switched_whole = False
        self.heartbeat_before_switch: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------- connections

    def conninfo(self, dbname: str | None = None, node: PostgresNode | None = None) -> str:
        return pg.conninfo(
            node or self.pgc.primary,
            user=self.pgc.user,
            dbname=dbname or self.db,
            password=self.password,
            connect_timeout_seconds=self.pgc.connect_timeout_seconds,
            application_name="dr-data-corruption",
        )

    def tool_conninfo(self, dbname: str | None = None, node: PostgresNode | None = None) -> str:
        """For command-line tools: the password goes in PGPASSWORD, never in argv."""
        return pg.conninfo(
            node or self.pgc.primary,
            user=self.pgc.user,
            dbname=dbname or self.db,
            connect_timeout_seconds=self.pgc.connect_timeout_seconds,
            application_name="dr-data-corruption",
        )

    def recovered_node(self) -> PostgresNode:
        assert self.recovered is not None
        return PostgresNode(name="recovered", host="127.0.0.1", port=self.recovered.port)

    def recovered_conninfo(self, dbname: str | None = None) -> str:
        return self.conninfo(dbname, self.recovered_node())

    # ----------------------------------------------------------- repositories

    def backup_repo(self) -> Any:
        return open_target_repository(self.ctx.config, self.target.backup.repository)

    def wal_repo(self) -> Any:
        if not self.target.backup.wal_archive:
            raise PreconditionError(
                f"target {self.ctx.target_name} has no backup.wal_archive: point-in-time "
                "recovery needs archived WAL"
            )
        return open_target_repository(self.ctx.config, self.target.backup.wal_archive)

    def evidence(self) -> tuple[Any, str]:
        """The evidence repository and the key prefix of this run in it."""
        url = self.target.evidence_repository
        prefix = f"{self.ctx.target_name}/data-corruption/{self.run_id}"
        if url:
            return open_target_repository(self.ctx.config, url), prefix
        return self.backup_repo(), f"{EVIDENCE_FOLDER}/{prefix}"


def _mkdir_traversable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents]:
        if p == Path("/") or p == Path(tempfile.gettempdir()):
            break
        with contextlib.suppress(PermissionError):
            p.chmod(p.stat().st_mode | 0o755)
    return path


def _writers(target: Target) -> list[DockerService | KubernetesService]:
    return [s for s in target.services if s.role == "writer"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- drill injection


def _unsuitable(variant: Variant, table: rc.DrillCandidate) -> str | None:
    """Why ``table`` cannot take the drill (None: it can)."""
    if table.rows == 0:
        return "it has no rows"
    if variant is Variant.mass_delete:
        if table.referenced:
            return "another table's foreign key references it (the DELETE would fail)"
    elif not table.numeric_columns:
        return "it has no numeric column outside its keys, constraints and indexes"
    return None


def choose_drill_table(
    variant: Variant,
    tables: Sequence[rc.DrillCandidate],
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
            raise ConfigError(
                f"drill_table {requested} is not a table of database {database!r}",
                [("options.drill_table", requested)],
            )
        problem = _unsuitable(variant, table)
        if problem:
            raise ConfigError(
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


def _ensure_base_backup(run: _Run) -> None:
    repo = run.backup_repo()
    backups = rc.list_base_backups(repo, run.ctx.target_name)
    limit = timedelta(minutes=run.opts.base_backup_max_age_minutes)
    newest = backups[0] if backups else None
    if newest is not None and datetime.now(UTC) - newest.ended_at <= limit:
        run.ctx.note(
            f"base backup {newest.backup_id} is {(datetime.now(UTC) - newest.ended_at).seconds} s "
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


def _safety_net(run: _Run, victims: list[str]) -> None:
    """Dump the tables the drill will damage, so a failed drill can put their rows back."""
    path = _mkdir_traversable(run.work) / "drill-safety.dump"
    rc.dump_relations(
        run.tool_conninfo(),
        victims,
        path,
        bin_dir=run.bin_dir,
        password=run.password,
        sections=("pre-data", "data"),
    )
    run.safety_dump = path


def _undo_drill_damage(run: _Run, victims: list[str]) -> None:
    """Compensation: restore the drill's victims from the safety dump (one transaction)."""
    assert run.safety_dump is not None
    scratch = f"dr_drill_undo_{run.run_id.lower()}"
    maintenance = run.conninfo(run.pgc.maintenance_db)
    pg.create_database(maintenance, scratch)
    try:
        rc.ensure_schemas(run.conninfo(scratch), [v.split(".", 1)[0] for v in victims])
        bk.restore_dump(
            run.safety_dump,
            run.tool_conninfo(scratch),
            password=run.password,
            bin_dir=run.bin_dir,
            no_owner=True,
        )
        rc.restore_relations(run.conninfo(scratch), run.conninfo(), victims)
    finally:
        pg.drop_database(maintenance, scratch, must_not_be=run.pgc.databases, force=True)


def _inject(run: _Run) -> None:
    """Drill: stamp, snapshot, then damage like a real bug (or bit rot) would."""
    ctx, opts = run.ctx, run.opts
    with ctx.phase("prepare drill", detail=f"variant {opts.variant.value}") as record:
        victim, column = choose_drill_table(
            opts.variant,
            rc.drill_candidates(run.conninfo()),
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
        if opts.variant is not Variant.damaged_page:
            _safety_net(run, victims)
        run.snapshot = rc.relation_digests(run.conninfo(), victims)
        run.stamp = rc.server_position(run.conninfo())
        run.details["stamp"] = {
            "at": run.stamp["at"].isoformat(),
            "lsn": run.stamp["lsn"],
            "timeline": run.stamp["timeline"],
            "digests": {k: v.model_dump() for k, v in run.snapshot.items()},
        }
    with ctx.phase("inject damage", detail=f"{opts.variant.value} on {victim}") as record:
        if opts.variant is Variant.damaged_page:
            _inject_damaged_page(run, victim)
        else:
            sql_text = DRILL_STATEMENTS.get((victim, column)) or rc.drill_statement(victim, column)
            done = rc.run_drill_statement(run.conninfo(), sql_text)
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


def _inject_damaged_page(run: _Run, victim: str) -> None:
    """Copy the cluster (stopped), then invert bytes in one heap page of the victim there."""
    copy_dir = _mkdir_traversable(run.work) / "damaged-copy"
    info = rc.make_stopped_copy(
        run.tool_conninfo(run.pgc.maintenance_db),
        copy_dir,
        bin_dir=run.bin_dir,
        password=run.password,
    )
    relpath = rc.relation_filepaths(run.conninfo(), [victim])[victim]
    damage = rc.damage_heap_page(copy_dir, relpath)
    run.damaged_copy = copy_dir
    run.damage_at = datetime.now(UTC)
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
        undo=lambda: rc.remove_cluster(copy_dir, bin_dir=run.bin_dir),
    )


# --------------------------------------------------------------------------- assess


def _row_drops(run: _Run) -> dict[str, Any]:
    """Live row counts against the newest logical backup's manifest of the database."""
    repo = run.backup_repo()
    entries = [e for e in list_backups(repo, f"{run.ctx.target_name}/{run.db}") if e.complete]
    if not entries:
        return {"skipped": f"no logical backup of {run.db} to compare row counts with"}
    newest = entries[0]
    key = f"{run.ctx.target_name}/{run.db}/{newest.backup_id}/{bk.MANIFEST_NAME}"
    with repo.open_read(key) as stream:
        manifest = bk.read_manifest(stream.read())
    live = pg.table_row_counts(run.conninfo())
    drops = {
        rel: {"manifest": n, "live": live.get(rel, 0)}
        for rel, n in manifest.row_counts.items()
        if n > 0 and live.get(rel, 0) < n * ROW_DROP_SHARE
    }
    return {"backup_id": newest.backup_id, "drops": drops, "tables": len(manifest.row_counts)}


def _checksum_copy(run: _Run) -> rc.ChecksumReport:
    """pg_checksums on a stopped copy (the drill's damaged copy, or a new copy of live)."""
    if run.damaged_copy is not None:
        return rc.check_checksums(run.damaged_copy, bin_dir=run.bin_dir)
    copy_dir = _mkdir_traversable(run.work) / "checked-copy"
    rc.make_stopped_copy(
        run.tool_conninfo(run.pgc.maintenance_db),
        copy_dir,
        bin_dir=run.bin_dir,
        password=run.password,
    )
    try:
        return rc.check_checksums(copy_dir, bin_dir=run.bin_dir)
    finally:
        rc.remove_cluster(copy_dir, bin_dir=run.bin_dir)


def _find_damage(run: _Run) -> list[rc.DamageCandidate]:
    """The WAL damage finder, from the drill's stamp, the base backup before the damage, or
    a bounded window of the archive (at most ``recovery.DEFAULT_SCAN_WINDOW_BYTES``)."""
    archive = run.target.backup.wal_archive or ""
    if not archive.startswith("file://"):
        return []
    folder = archive[len("file://") :]
    if run.stamp is not None:
        start, tli = run.stamp["lsn"], run.stamp["timeline"]
    else:
        # From the newest base backup that ended before the damage (when its time is given),
        # else from a bounded window of the archive.
        tli = rc.server_position(run.conninfo())["timeline"]
        backups = [
            b
            for b in rc.list_base_backups(run.backup_repo(), run.ctx.target_name)
            if run.opts.damage_at is None or b.ended_at <= _utc(run.opts.damage_at)
        ]
        window = rc.archive_window_start(folder, tli)
        start = backups[0].start_lsn if backups else window
        if start is None:
            return []
        if window is not None and rc.parse_lsn(start) < rc.parse_lsn(window):
            start = window
    oid = rc.database_oid(run.conninfo())
    found = rc.find_damage(
        folder,
        timeline=tli,
        start_lsn=start,
        min_rows=run.opts.min_rows,
        database_oids=[int(oid)],
        bin_dir=run.bin_dir,
    )
    names = rc.resolve_filenodes(
        lambda db: run.conninfo(db),
        run.conninfo(run.pgc.maintenance_db),
        [c.locator for c in found],
    )
    tables = set(pg.table_row_counts(run.conninfo(), exact=False))
    out = []
    for cand in found:
        name = names.get(cand.locator)
        rel = name.split(":", 1)[1] if name else None
        if rel is None or rel not in tables:
            continue  # an index, a dropped or rewritten-again file: not a table to restore
        out.append(cand.model_copy(update={"relation": rel}))
    return out


def _assess(run: _Run) -> None:
    ctx, opts = run.ctx, run.opts
    with ctx.phase("assess", detail="checksums, amcheck, validation, row counts, WAL") as record:
        if not ctx.dry_run and run.target.backup.wal_archive:
            # Everything up to now must be in the archive for the WAL finder and the recovery.
            rc.switch_wal_and_wait(run.conninfo())
        futures: dict[str, Any] = {}
        futures["checksum counters"] = pg.checksum_failures_task.submit(run.conninfo())
        if opts.checksum_copy or run.damaged_copy is not None:
            if ctx.plan("copy and check", "the cluster with pg_checksums (stopped copy)"):
                futures["pg_checksums"] = _checksum_copy_task.submit(run)
        if rc.extension_installed(run.conninfo(), "amcheck"):
            futures["amcheck"] = bk.amcheck_task.submit(
                run.tool_conninfo(), password=run.password, bin_dir=run.bin_dir
            )
        else:
            ctx.note(f"pg_amcheck skipped on live {run.db}: the amcheck extension is not installed")
        for q in run.target.validation_queries:
            if (q.database or run.db) == run.db:
                futures[f"validation: {q.name}"] = pg.run_validation_query_task.submit(
                    run.conninfo(), name=q.name, sql=q.sql, expect=q.expect
                )
        futures["row counts"] = _row_drops_task.submit(run)
        futures["wal damage finder"] = _find_damage_task.submit(run)
        named: dict[str, list[str]] = {}
        for name, fut in futures.items():
            try:
                value = fut.result()
            except Exception as exc:  # noqa: BLE001 - each branch is a finding of its own
                ctx.record_check(f"assess: {name}", False, critical=False, detail=str(exc))
                continue
            _assessment_finding(run, name, value, named)
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
            "damage_began_at": _iso(run.damage_at or run.suspected_at),
            "damage_commit_lsn": run.damage_lsn or run.suspected_lsn,
            "certain": run.damage_at is not None,
        }
        began = run.damage_at or run.suspected_at
        record.detail = (
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


def _assessment_finding(run: _Run, name: str, value: Any, named: dict[str, list[str]]) -> None:
    ctx = run.ctx
    if name == "checksum counters":
        bad = {db: n for db, n in value.items() if n}
        ctx.record_check(
            "assess: checksum failure counters",
            not bad,
            critical=False,
            detail=f"failures: {bad}" if bad else "no checksum failure counted",
            value=bad or None,
        )
    elif name == "pg_checksums":
        report: rc.ChecksumReport = value
        run.checksum_report = report
        names = rc.resolve_filenodes(
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
    elif name == "amcheck":
        heap = [f.relation for f in value.failures if f.relation_kind == "heap table"]
        rels = [r.split(".", 1)[1] for r in heap if r.startswith(f"{run.db}.")]
        named["amcheck"] = sorted(set(rels))
        ctx.record_check("assess: pg_amcheck", value.ok, critical=False, detail=value.summary())
    elif name.startswith("validation: "):
        ctx.record_check(f"assess: {name}", value.ok, critical=False, detail=value.detail)
    elif name == "row counts":
        drops = value.get("drops", {})
        named["row counts"] = sorted(drops)
        ctx.record_check(
            "assess: row counts against the newest manifest",
            not drops,
            critical=False,
            detail=value.get("skipped") or (f"dropped: {drops}" if drops else "no big drop"),
        )
    elif name == "wal damage finder":
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


# --------------------------------------------------------------------------- plan recovery


def _recovery_target(run: _Run) -> rc.RecoveryTarget:
    opts = run.opts
    if opts.recovery_time is not None or opts.recovery_lsn is not None:
        return rc.RecoveryTarget(time=opts.recovery_time, lsn=opts.recovery_lsn)
    if run.damage_lsn or run.suspected_lsn:
        return rc.RecoveryTarget(lsn=run.damage_lsn or run.suspected_lsn)
    if run.stamp is not None:
        return rc.RecoveryTarget(time=run.stamp["at"])
    raise PreconditionError(
        "no recovery point: the assessment found no damaging transaction in the WAL; give "
        "recovery_time or recovery_lsn (just before the damage began)"
    )


def _plan(run: _Run) -> tuple[rc.RecoveryTarget, rc.BaseBackup, rc.WalPlan]:
    ctx = run.ctx
    with ctx.phase("plan recovery", detail="recovery point, base backup, WAL continuity") as rec:
        target = _recovery_target(run)
        now = rc.server_position(run.conninfo())
        backups = rc.list_base_backups_task(run.backup_repo(), ctx.target_name)
        backup = rc.choose_base_backup(
            backups,
            target,
            damage_at=run.damage_at,
            damage_lsn=run.damage_lsn,
            now=max(now["at"], datetime.now(UTC)),
            current_lsn=now["lsn"],
        )
        _advise(run, target)
        plan = rc.plan_wal_task(run.wal_repo(), backup, target, allow_unarchived_end=ctx.dry_run)
        if plan.unarchived_from:
            ctx.plan(
                "switch WAL and wait for the archiver to archive",
                f"{plan.unarchived_from} (the recovery point is not archived yet)",
            )
        run.details["recovery_plan"] = {
            "target": target.model_dump(mode="json"),
            "target_described": target.describe(),
            "base_backup": backup.backup_id,
            "base_backup_ended_at": backup.ended_at.isoformat(),
            "base_backup_bytes": backup.total_bytes,
            "wal_segments": len(plan.needed),
            "wal_first": plan.needed[0] if plan.needed else None,
            "wal_last": plan.end_segment,
            "wal_end_reason": plan.end_reason,
            "timelines": plan.timelines,
        }
        rec.detail = (
            f"{target.describe()} from base backup {backup.backup_id} + "
            f"{len(plan.needed)} archived segment(s) up to {plan.end_segment}"
        )
        ctx.record_check(
            "WAL archive continuous to the recovery point",
            True,
            detail=f"{len(plan.needed)} segment(s), timelines {plan.timelines}",
        )
        if run.opts.whole_database:
            _check_repointable(run)
        return target, backup, plan


def _advise(run: _Run, target: rc.RecoveryTarget) -> None:
    """An explicit point after the first suspicious transaction is allowed, but flagged."""
    if run.damage_at is not None or run.damage_lsn is not None:
        return
    later = (
        target.time is not None
        and run.suspected_at is not None
        and _utc(target.time) > run.suspected_at
    ) or (
        target.lsn is not None
        and run.suspected_lsn is not None
        and rc.parse_lsn(target.lsn) > rc.parse_lsn(run.suspected_lsn)
    )
    if run.suspected_lsn is not None:
        run.ctx.record_check(
            "recovery point before the first suspicious transaction",
            not later,
            critical=False,
            detail=f"the WAL finder suspects the commit at {run.suspected_lsn} "
            f"({run.suspected_at}); recovering {target.describe()}",
        )


def _check_repointable(run: _Run) -> None:
    for svc in _writers(run.target):
        if isinstance(svc, KubernetesService) and not svc.db_host_secret:
            raise PreconditionError(
                f"whole-database switch cannot repoint deployment {svc.name}: it has no "
                "db_host_secret in dr.yaml"
            )


# --------------------------------------------------------------------------- writers


def _docker(run: _Run) -> Any:
    return containers.make_client(run.ctx.config.docker.base_url)


def _k8s(run: _Run) -> Any:
    k = run.ctx.config.kubernetes
    return kubernetes.make_client(k.kubeconfig, k.context)


def _stop_writers(run: _Run) -> None:
    ctx = run.ctx
    writers = _writers(run.target)
    with ctx.phase("stop writers", detail=", ".join(s.name for s in writers) or "none configured"):
        if not writers:
            ctx.note("no writer service in dr.yaml: nothing to stop (stop them by hand)")
        for svc in writers:
            if not ctx.plan("stop", f"writer {svc.kind} {svc.name}"):
                continue
            if isinstance(svc, DockerService):
                client = _docker(run)
                change = containers.ensure_stopped_task(client, svc.name)

                def undo(c: Any = client, ch: Change = change) -> Any:
                    return containers.restore_state(c, ch)
            else:
                api = _k8s(run)
                change = kubernetes.scale_deployment(api, svc.namespace, svc.deployment, 0)

                def undo(a: Any = api, ch: Change = change) -> Any:
                    return kubernetes.restore_scale(a, ch)

            run.writer_changes.append((svc, change))
            # Incidents keep the writers stopped if recovery fails: a person decides.
            ctx.record_change(change, undo=undo if ctx.is_drill else None)
        if not ctx.dry_run:
            run.writers_stopped_at = datetime.now(UTC)


def _restart_writers(run: _Run) -> None:
    ctx = run.ctx
    with ctx.phase("restart writers", detail="with their recorded state"):
        for svc, change in run.writer_changes:
            if not ctx.plan("restart", f"writer {svc.kind} {svc.name}"):
                continue
            if isinstance(svc, DockerService):
                restored = containers.restore_state_task(_docker(run), change)
            else:
                restored = kubernetes.restore_scale(_k8s(run), change)
            ctx.record_change(restored)
        run.writers_started_at = datetime.now(UTC)


def _repoint_writers(run: _Run, host: str, port: int) -> None:
    """Whole-database switch: the writers use the recovered cluster from now on."""
    ctx = run.ctx
    for svc in _writers(run.target):
        if not ctx.plan("repoint", f"writer {svc.name} to {host}:{port}"):
            continue
        if isinstance(svc, DockerService):
            client = _docker(run)
            change = containers.recreate_with_env(
                client, svc.name, {run.opts.db_host_env: host, run.opts.db_port_env: str(port)}
            )

            def undo(c: Any = client, ch: Change = change) -> Any:
                return containers.restore_state(c, ch)

            # Incidents never repoint writers back to the damaged database by themselves.
            ctx.record_change(change, undo=undo if ctx.is_drill else None)
        else:
            api = _k8s(run)
            assert svc.db_host_secret is not None
            keys = kubernetes.read_secret(api, svc.namespace, svc.db_host_secret)
            for key, value in [(svc.db_host_key, host), (run.opts.db_port_env, str(port))]:
                if key == run.opts.db_port_env and key not in keys:
                    continue
                change = kubernetes.replace_secret_key(
                    api, svc.namespace, svc.db_host_secret, key, value
                )

                def undo_k(a: Any = api, ch: Change = change) -> Any:
                    return kubernetes.restore_secret_key(a, ch)

                ctx.record_change(change, undo=undo_k if ctx.is_drill else None)


# --------------------------------------------------------------------------- evidence


def _preserve(run: _Run) -> None:
    ctx = run.ctx
    repo, prefix = run.evidence()
    with ctx.phase("preserve evidence", detail=repo.url_for(prefix)) as record:
        items: dict[str, Any] = {}
        local = run.work / "evidence"
        if (
            run.damaged
            and not run.opts.whole_database
            and ctx.plan("dump", f"damaged relations {run.damaged} of {run.db}")
        ):
            _mkdir_traversable(local)
            try:
                dump = rc.dump_relations_task(
                    run.tool_conninfo(),
                    run.damaged,
                    local / f"{run.db}-damaged-relations.dump",
                    bin_dir=run.bin_dir,
                    password=run.password,
                )
                items["dump"] = _put_evidence(
                    run, repo, f"{prefix}/{Path(dump['path']).name}", Path(dump["path"])
                )
            except PostgresError as exc:
                ctx.note(f"pg_dump of the damaged relations failed ({exc}); keeping the database")
                items["database_copy"] = _keep_database(run)
        elif (run.opts.whole_database or not run.damaged) and ctx.plan(
            "keep", f"database {run.db} as {run.db}_damaged_{run.run_id.lower()}"
        ):
            items["database_copy"] = _keep_database(run)
        if run.damaged_copy is not None and run.checksum_report is not None:
            for bad in run.checksum_report.bad_blocks[:3]:
                path = Path(bad.path)
                items.setdefault("damaged_files", []).append(
                    _put_evidence(run, repo, f"{prefix}/files/{bad.relpath}", path)
                )
        if ctx.dry_run:
            return
        report = {
            "run": run.run_id,
            "target": ctx.target_name,
            "database": run.db,
            "damaged_relations": run.damaged,
            "damage_began_at": _iso(run.damage_at or run.suspected_at),
            "damage_commit_lsn": run.damage_lsn or run.suspected_lsn,
            "candidates": [c.model_dump(mode="json") for c in run.candidates[:10]],
            "pg_checksums": run.checksum_report.model_dump(mode="json")
            if run.checksum_report
            else None,
            "items": items,
        }
        path = _mkdir_traversable(local) / "assessment.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        items["assessment"] = _put_evidence(run, repo, f"{prefix}/assessment.json", path)
        run.details["evidence"] = {"location": repo.url_for(prefix), **items}
        record.detail = f"{len(items)} item(s) in {repo.url_for(prefix)}"


def _put_evidence(run: _Run, repo: Any, key: str, path: Path) -> dict[str, Any]:
    result = repo.put_file(key, path, write_once=True)
    run.ctx.record_change(
        Change(
            system="storage",
            action="put-evidence",
            object=result.url,
            outcome="created" if result.outcome == "created" else "unchanged",
            after={"sha256": result.sha256, "bytes": result.size, "lock": result.lock_mode},
            undo="evidence is kept on purpose",
            compensable=False,
        )
    )
    return {"url": result.url, "sha256": result.sha256, "bytes": result.size}


def _keep_database(run: _Run) -> dict[str, Any]:
    name = f"{run.db}_damaged_{run.run_id.lower()}"[:63]
    maintenance = run.conninfo(run.pgc.maintenance_db)
    last: Exception | None = None
    for _ in range(5):
        pg.terminate_sessions(maintenance, dbname=run.db)
        try:
            change = rc.preserve_database_copy(maintenance, run.db, name)
            break
        except PostgresError as exc:  # a session slipped in between: try again
            last = exc
            time.sleep(0.5)
    else:
        raise PostgresError(f"could not keep {run.db} as {name}: {last}")
    run.ctx.record_change(change)
    return {"database": name, "server": pg.describe_conninfo(maintenance)}


# --------------------------------------------------------------------------- recover


def _recover(run: _Run, target: rc.RecoveryTarget, backup: rc.BaseBackup, plan: rc.WalPlan) -> None:
    ctx = run.ctx
    with ctx.phase("recover", detail=f"PITR {target.describe()} into a new cluster") as record:
        if not ctx.plan("recover", f"base backup {backup.backup_id} + WAL into {run.work}"):
            return
        work = _mkdir_traversable(run.work)
        t0 = time.perf_counter()
        restored = rc.restore_base_backup_task(
            run.backup_repo(), backup, work / "data", work_dir=work / "restore", bin_dir=run.bin_dir
        )
        control = restored["control"]
        size = int(control.get("Bytes per WAL segment", plan.segment_size))
        if size != plan.segment_size:
            raise PreconditionError(
                f"the base backup's WAL segment size is {size}, the archive's {plan.segment_size}"
            )
        live_id = rc.server_position(run.conninfo())["system_identifier"]
        if rc.system_identifier(control) != live_id:
            raise PreconditionError(
                f"base backup {backup.backup_id} belongs to another database system "
                f"({rc.system_identifier(control)}, live {live_id}): it cannot replay this WAL"
            )
        archive = run.target.backup.wal_archive or ""
        if archive.startswith("file://"):
            command = rc.restore_command_for(archive)
        else:
            staged = rc.stage_wal_task(run.wal_repo(), plan, work / "wal")
            command = rc.restore_command_for(None, work / "wal")
            run.details["wal_staged"] = len(staged)
        run.recovered = rc.start_recovery_task(
            work / "data",
            target.model_copy(update={"timeline": plan.target_timeline}),
            restore_command=command,
            bin_dir=run.bin_dir,
            user=run.pgc.user,
            password=run.password,
            timeout_seconds=run.opts.recovery_timeout_seconds,
            base_backup_id=backup.backup_id,
            cluster_name=f"dr-recovered-{ctx.target_name}",
        )
        r = run.recovered
        ctx.record_change(
            Change(
                system="postgres",
                action="recover-cluster",
                object=f"recovered cluster 127.0.0.1:{r.port} ({r.data_dir})",
                outcome="created",
                after={"port": r.port, "data_dir": r.data_dir, "timeline": r.timeline_after},
                undo=f"stop and remove {r.data_dir}",
            ),
            # An incident keeps it for people to inspect (e.g. after a rejected switch).
            undo=(lambda: rc.remove_cluster(r.data_dir, bin_dir=run.bin_dir))
            if ctx.is_drill
            else None,
        )
        run.details["recovery"] = {
            **r.model_dump(mode="json"),
            "download_seconds": restored["download_seconds"],
            "extract_seconds": restored["extract_seconds"],
            "restore_seconds": restored["seconds"],
            "streamed": restored["streamed"],
            "pg_verifybackup": restored["verified"],
            "total_seconds": round(time.perf_counter() - t0, 3),
        }
        record.detail = (
            f"port {r.port}, replayed to {r.last_replayed_at} in {r.replay_seconds:.1f} s "
            f"(total {time.perf_counter() - t0:.1f} s): {r.stop_message}"
        )


def _verify_recovered(run: _Run) -> None:
    ctx = run.ctx
    with ctx.phase("verify recovered data", detail="same checks on the recovered cluster"):
        if run.recovered is None:
            return
        conninfo = run.recovered_conninfo()
        rels = run.damaged or list(run.snapshot)
        if run.snapshot:
            got = rc.relation_digests(conninfo, list(run.snapshot))
            for rel, want in run.snapshot.items():
                ctx.record_check(
                    f"recovered {rel} identical to the stamp",
                    got[rel] == want,
                    detail=f"{got[rel].rows} rows, digest {got[rel].digest[:12]} vs "
                    f"{want.rows} rows, {want.digest[:12]} at the stamp",
                )
        elif rels:
            got = rc.relation_digests(conninfo, rels)
            run.details["recovered_digests"] = {k: v.model_dump() for k, v in got.items()}
        for q in run.target.validation_queries:
            if (q.database or run.db) == run.db:
                res = pg.run_validation_query(conninfo, name=q.name, sql=q.sql, expect=q.expect)
                ctx.record_check(f"recovered: {q.name}", res.ok, detail=res.detail)
        if not run.opts.whole_database:
            result = bk.amcheck(
                run.tool_conninfo(node=run.recovered_node()),
                password=run.password,
                bin_dir=run.bin_dir,
            )
            ctx.record_check("recovered: pg_amcheck", result.ok, detail=result.summary())
        if run.checksum_report is not None:
            r = run.recovered
            rc.stop_cluster(r.data_dir, bin_dir=run.bin_dir)
            report = rc.check_checksums(r.data_dir, bin_dir=run.bin_dir)
            rc.start_cluster(r.data_dir, bin_dir=run.bin_dir)
            ctx.record_check(
                "recovered: pg_checksums",
                report.ok,
                detail=f"{report.blocks_scanned} pages, {report.bad_checksums} bad",
            )


# --------------------------------------------------------------------------- switch


def _heartbeat(conninfo: str) -> dict[str, dict[str, Any]]:
    state = rc.heartbeat_state(conninfo, HEARTBEAT_TABLE)
    return {w: s for w, s in state.items() if not w.startswith(PROBE_PREFIX)}


def _switch(run: _Run) -> None:
    ctx = run.ctx
    whole = run.opts.whole_database or not run.damaged
    hb_db = run.pgc.heartbeat_db
    if run.recovered is not None:
        run.heartbeat_before_switch = _heartbeat(run.conninfo(hb_db))
    if whole:
        step = f"switch the application to the recovered cluster (whole database {run.db})"
    else:
        step = f"replace {', '.join(run.damaged)} in the live {run.db} with the recovered rows"
    ctx.approve(step)
    with ctx.phase("switch", detail=step) as record:
        if run.recovered is None:
            ctx.plan("switch", step)
            return
        if whole:
            r = run.recovered
            _repoint_writers(run, run.opts.recovered_host, r.port)
            run.switched_whole = True
            ctx.note(
                f"the application now uses the recovered cluster {run.opts.recovered_host}:"
                f"{r.port} ({r.data_dir}); update dr.yaml's primary. The old primary keeps the "
                "damaged database; nothing was dropped. The recovered cluster archives no WAL "
                "yet: give it its own archive folder before relying on point-in-time recovery."
            )
            record.detail = f"writers repointed to {run.opts.recovered_host}:{r.port}"
            return
        if not ctx.plan("restore", f"{run.damaged} from the recovered cluster in one transaction"):
            return
        result = rc.restore_relations_task(run.recovered_conninfo(), run.conninfo(), run.damaged)
        ctx.record_change(
            Change(
                system="postgres",
                action="restore-relations",
                object=f"{', '.join(run.damaged)} in {run.db}",
                outcome="updated",
                after={
                    rel: {"rows": d.rows, "digest": d.digest} for rel, d in result.relations.items()
                },
                undo="the previous (damaged) rows are in the evidence dump",
                compensable=False,
            )
        )
        run.details["relation_restore"] = result.model_dump(mode="json")
        record.detail = (
            f"{sum(d.rows for d in result.relations.values())} rows in one transaction in "
            f"{result.seconds:.2f} s; foreign keys re-validated: "
            f"{', '.join(result.constraints_recreated) or 'none'}"
        )


# --------------------------------------------------------------------------- verify & measure


def _wait_writers_healthy(run: _Run, conninfo: str) -> datetime | None:
    """The first heartbeat row written by the application after the restart, if any."""
    if run.writers_started_at is None or not run.writer_changes:
        return None
    deadline = time.monotonic() + run.opts.heartbeat_wait_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(PostgresError):
            first = rc.first_heartbeat_after(
                conninfo, run.writers_started_at, table=HEARTBEAT_TABLE, exclude_prefix=PROBE_PREFIX
            )
            if first is not None:
                return first
        time.sleep(0.1)
    return None


def _verify_end_to_end(run: _Run) -> datetime | None:
    ctx = run.ctx
    with ctx.phase("verify end to end", detail="health, validation, rows, writers") as record:
        if run.recovered is None:
            return None
        data_conninfo = run.recovered_conninfo() if run.switched_whole else run.conninfo()
        hb_conninfo = (
            run.recovered_conninfo(run.pgc.heartbeat_db)
            if run.switched_whole
            else run.conninfo(run.pgc.heartbeat_db)
        )
        if run.snapshot:
            got = rc.relation_digests(data_conninfo, list(run.snapshot))
            for rel, want in run.snapshot.items():
                ctx.record_check(
                    f"{rel} rows identical to the recovery point",
                    got[rel] == want,
                    detail=f"{got[rel].rows} rows, digest {got[rel].digest[:12]} (stamp: "
                    f"{want.rows} rows, {want.digest[:12]})",
                )
        healthy_at = _wait_writers_healthy(run, hb_conninfo)
        if run.writer_changes:
            ctx.record_check(
                "writers healthy again (heartbeat written after the restart)",
                healthy_at is not None,
                detail=f"first heartbeat at {healthy_at}" if healthy_at else "no heartbeat",
            )
        if run.switched_whole:
            for check in run.target.health_checks.sql:
                if (check.database or run.db) == run.db:
                    res = pg.run_sql_check(
                        run.recovered_conninfo(check.database), check.sql, name=check.name
                    )
                    ctx.record_check(f"sql: {check.name}", res.ok, detail=res.detail)
            for q in run.target.validation_queries:
                if (q.database or run.db) == run.db:
                    res = pg.run_validation_query(
                        run.recovered_conninfo(q.database), name=q.name, sql=q.sql, expect=q.expect
                    )
                    ctx.record_check(f"validation: {q.name}", res.ok, detail=res.detail)
            if all(c.ok for c in ctx.checks if c.critical):
                ctx.stamp_restored(healthy_at or datetime.now(UTC))
        else:
            ctx.verify_health(timeout_seconds=run.opts.heartbeat_wait_seconds)
            if healthy_at is not None and ctx.restored_at is not None:
                ctx.restored_at = max(ctx.restored_at, healthy_at)
        record.detail = f"restored at {ctx.restored_at}" if ctx.restored_at else "not restored"
        return healthy_at


def _measure(run: _Run, healthy_at: datetime | None) -> None:
    ctx = run.ctx
    with ctx.phase("measure", detail="RTO and RPO"):
        if run.recovered is None:
            return
        r = run.recovered
        recovered_to = r.last_replayed_at or r.target.time
        measured: dict[str, Any] = {
            "recovered_to": recovered_to.isoformat() if recovered_to else None
        }
        if run.writers_stopped_at is not None and healthy_at is not None:
            rto = (_utc(healthy_at) - run.writers_stopped_at).total_seconds()
            ctx.measure(
                rto_seconds=rto,
                rto_basis="writers stopped -> first heartbeat the restarted application wrote",
            )
            measured["rto_seconds"] = rto
        if run.switched_whole:
            lost = 0
            window = 0.0
            for writer, state in run.heartbeat_before_switch.items():
                rec_max = _recovered_max_ts(run, writer)
                if rec_max is None:
                    continue
                lost += rc.heartbeat_rows_after(
                    run.conninfo(run.pgc.heartbeat_db), writer, rec_max, table=HEARTBEAT_TABLE
                )
                window = max(window, (state["max_ts"] - rec_max).total_seconds())
            ctx.measure(
                rpo_seconds=window,
                lost_rows=lost,
                rpo_basis="whole database: newest heartbeat on the damaged database when the "
                "writers stopped vs newest in the recovered cluster; rows = heartbeats lost",
            )
            measured.update({"rpo_seconds": window, "lost_heartbeat_rows": lost})
        else:
            damage = run.damage_at or run.suspected_at
            window = (
                max(0.0, (_utc(damage) - _utc(recovered_to)).total_seconds())
                if damage is not None and recovered_to is not None
                else None
            )
            lost = _heartbeat_rows_lost(run)
            ctx.measure(
                rpo_seconds=window,
                lost_rows=lost,
                rpo_basis="relation restore: damage commit time - last commit replayed into "
                "the recovered copy (changes to the restored tables in between are discarded); "
                "rows = heartbeat rows lost (the heartbeat table is not restored)",
            )
            measured.update({"rpo_seconds": window, "lost_heartbeat_rows": lost})
        run.details["measured"] = measured


def _recovered_max_ts(run: _Run, writer: str) -> datetime | None:
    before = run.details.get("recovered_heartbeat", {}).get(writer)
    return datetime.fromisoformat(before) if before else None


def _heartbeat_rows_lost(run: _Run) -> int | None:
    before = run.heartbeat_before_switch
    if not before:
        return None
    after = _heartbeat(run.conninfo(run.pgc.heartbeat_db))
    lost = 0
    for writer, state in before.items():
        now = after.get(writer)
        if now is None or now["max_seq"] < state["max_seq"]:
            lost += state["max_seq"] - (now["max_seq"] if now else 0)
    return lost


# --------------------------------------------------------------------------- clean up


def _repair_old_primary(run: _Run) -> None:
    """Drill after a whole-database switch: put the recovered rows back on the old primary.

    The switch itself stays (the application keeps writing to the recovered cluster); this
    only makes the lab's old primary whole again, so that moving the application back to it
    later (``dr lab heal``) finds the data as it was. The damage stays preserved in the
    kept database copy.
    """
    ctx = run.ctx
    with ctx.phase("repair drill damage on the old primary", detail=", ".join(run.damaged)):
        if not run.damaged or run.recovered is None:
            return
        result = rc.restore_relations(run.recovered_conninfo(), run.conninfo(), run.damaged)
        ctx.record_change(
            Change(
                system="postgres",
                action="repair-drill-damage",
                object=f"{', '.join(run.damaged)} in {run.db} on the old primary",
                outcome="updated",
                after={rel: d.rows for rel, d in result.relations.items()},
                undo="nothing to undo: the old primary holds the rows of the recovery point",
                compensable=False,
            )
        )
        ctx.note(
            f"drill: the old primary's {', '.join(run.damaged)} were reloaded from the recovered "
            "cluster, so the lab can be switched back (dr lab heal) without the damage"
        )


def _clean_up(run: _Run) -> None:
    ctx = run.ctx
    with ctx.phase("clean up", detail="scratch copies and the recovered cluster if not used"):
        if ctx.dry_run:
            return
        if run.damaged_copy is not None:
            rc.remove_cluster(run.damaged_copy, bin_dir=run.bin_dir)
        if run.recovered is not None and not run.switched_whole and not run.opts.keep_recovered:
            rc.remove_cluster(run.recovered.data_dir, bin_dir=run.bin_dir)
            run.details.setdefault("recovery", {})["removed"] = True
        if run.safety_dump is not None:
            run.safety_dump.unlink(missing_ok=True)
        if not run.switched_whole and not run.opts.keep_recovered:
            shutil.rmtree(run.work, ignore_errors=True)


# --------------------------------------------------------------------------- body


def _validate(run: _Run) -> None:
    """Refuse bad parameters before anything happens."""
    opts = run.opts
    if opts.recovery_time is not None and opts.recovery_lsn is not None:
        raise ConfigError(
            "give recovery_time or recovery_lsn, not both",
            [("options", "recovery_time and recovery_lsn")],
        )
    if opts.recovery_time is not None:
        when = _utc(opts.recovery_time)
        if when > datetime.now(UTC):
            raise PreconditionError(
                f"recovery point {when.isoformat()} is in the future: nothing was changed"
            )
        if opts.damage_at is not None and when > _utc(opts.damage_at):
            raise PreconditionError(
                f"recovery point {when.isoformat()} is after the damage began "
                f"({_utc(opts.damage_at).isoformat()}): nothing was changed"
            )
    if not run.target.backup.wal_archive:
        raise PreconditionError(
            f"target {run.ctx.target_name} archives no WAL (backup.wal_archive): point-in-time "
            "recovery is impossible"
        )


def _body(ctx: RunContext, opts: CorruptionOptions) -> None:
    run = _Run(ctx, opts)
    ctx.details.update(
        {"variant": opts.variant.value if ctx.is_drill else None, "database": run.db}
    )
    with ctx.phase("validate", detail="parameters and target"):
        _validate(run)
    try:
        if ctx.is_drill:
            _inject(run)
        _assess(run)
        target, backup, plan = _plan(run)
        _stop_writers(run)
        _preserve(run)
        _recover(run, target, backup, plan)
        _verify_recovered(run)
        if run.recovered is not None:
            run.details["recovered_heartbeat"] = {
                w: s["max_ts"].isoformat()
                for w, s in _heartbeat(run.recovered_conninfo(run.pgc.heartbeat_db)).items()
            }
        _switch(run)
        _restart_writers(run)
        healthy_at = _verify_end_to_end(run)
        _measure(run, healthy_at)
        if ctx.is_drill and run.switched_whole:
            _repair_old_primary(run)
        _clean_up(run)
    except Exception:
        # A failed run keeps its work folder (the recovered cluster and evidence) for people;
        # only the drill's stopped copy is removed by compensation.
        ctx.details["work_dir"] = str(run.work)
        raise


# --------------------------------------------------------------------------- Prefect


def _row_drops_run(run: _Run) -> dict[str, Any]:
    return _row_drops(run)


def _checksum_copy_run(run: _Run) -> rc.ChecksumReport:
    return _checksum_copy(run)


def _find_damage_run(run: _Run) -> list[rc.DamageCandidate]:
    return _find_damage(run)


def _task(fn: Callable[..., Any], name: str) -> Any:
    from prefect.cache_policies import NO_CACHE

    from dr.tasking import dr_task

    return dr_task(fn, name=name, retries=0, cache_policy=NO_CACHE)


_row_drops_task = _task(_row_drops_run, "assess-row-counts")
_checksum_copy_task = _task(_checksum_copy_run, "assess-pg-checksums-copy")
_find_damage_task = _task(_find_damage_run, "assess-wal-damage-finder")


@flow(name="data-corruption")
def data_corruption_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: CorruptionOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV2",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Recover from data corruption or deletion by point-in-time recovery; measure it.

    Args:
        target: a target of the config.
        mode: ``drill`` (injects the damage on the lab), ``incident`` or ``dry-run``.
        options: :class:`CorruptionOptions` (variant, recovery point, relations, ...).
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: recorded in the report; may auto-approve gates by policy.
        fail_flow: end the flow run Failed when the outcome is not passed.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details`` holds the
        assessment, the recovery plan and timings, the evidence and the measurements.
    """
    opts = options or CorruptionOptions()
    result = run_scenario(
        Scenario.data_corruption,
        target,
        mode,
        lambda ctx: _body(ctx, opts),
        config_path=config_path,
        severity=opts.severity or severity,
        options=opts.model_dump(mode="json", exclude_none=True),
        fail_flow=fail_flow,
    )
    return json.loads(result.model_dump_json())
