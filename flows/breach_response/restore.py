"""Restore clean: the tables an intruder could have touched, as they were before it.

Why tables and not the whole database: the rows the application wrote since the restore
point in other tables stay; only what the intruder could have touched comes back as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import PostgresNode
from flows.breach_response.assess import APPLICATION_NAME
from flows.breach_response.state import BreachRun, iso
from flows.common.backups import base_backup_target
from tasks.pitr import archiving, base_backup, base_restore, relation_restore, wal
from tasks.pitr import archiving as pitr_archiving
from tasks.pitr import base_restore as pitr_base_restore
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import recovery as pitr_recovery
from tasks.pitr import relations as pitr_relations
from tasks.pitr import target as pitr_target
from tasks.postgres import client as postgres_client


def prepare_drill_restore(run: BreachRun) -> None:
    """Drills: a base backup to restore from, the tables' digests, the restore point."""

    repo = run.systems.repository(run.target.backup.repository)
    if not base_backup.list_base_backups_task(repo, run.pf.target_name):
        result = base_backup_target(run.pf.config, run.pf.target_name)
        run.ctx.note(f"drill: took base backup {result.backup_id} to restore clean from")
    digests = pitr_relations.relation_digests_task(
        run.ci(run.pgc.primary, run.restore_db), run.opts.restore_tables
    )
    run.digests_before = {rel: d.digest for rel, d in digests.items()}
    if run.restore_to is None:
        run.restore_to = utcnow()


def restore_clean(run: BreachRun) -> None:
    """Point-in-time recovery into a side cluster, then the tables back in one transaction.

    The recovered cluster is removed afterwards, whatever happened.
    """
    ctx = run.ctx
    tables = run.opts.restore_tables
    db = run.restore_db
    if run.restore_to is None:  # a dry run of a drill: the point is stamped when planting
        ctx.approve(f"restore {', '.join(tables)} in {db} to just before the intrusion")
        ctx.plan("restore", f"{', '.join(tables)} in {db} (PITR + copy back)")
        return
    point = pitr_target.RecoveryTarget(time=run.restore_to)
    ctx.approve(f"restore {', '.join(tables)} in {db} {point.describe()}")
    if not ctx.plan("restore", f"{', '.join(tables)} {point.describe()} (PITR + copy back)"):
        return
    primary = run.pgc.primary
    live = run.ci(primary, db)
    backup, recovered = _recover_side_cluster(run, point, live)
    try:
        source = postgres_client.conninfo(
            PostgresNode(name="recovered", host=recovered.host, port=recovered.port),
            user=run.pgc.user,
            dbname=db,
            password=run.pf.admin_password,
            application_name=APPLICATION_NAME,
        )
        result = relation_restore.restore_relations_task(source, live, tables)
    finally:
        pitr_cluster.remove_cluster_task(recovered.data_dir, bin_dir=primary.bin_dir)
    _record_restore(run, backup, recovered, result)


def _recover_side_cluster(
    run: BreachRun, point: pitr_target.RecoveryTarget, live: str
) -> tuple[Any, Any]:
    """The base backup before ``point`` and the WAL after it, recovered in a scratch folder."""
    primary = run.pgc.primary
    archiving.switch_wal_and_wait_task(run.ci(primary))
    backup_repo = run.systems.repository(run.target.backup.repository)
    archive = run.target.backup.wal_archive or ""
    wal_repo = run.systems.repository(archive)
    now = pitr_archiving.server_position_task(live)
    backup = base_backup.choose_base_backup(
        base_backup.list_base_backups_task(backup_repo, run.pf.target_name),
        point,
        damage_at=run.intrusion_at or run.detected_at,
        now=max(now["at"], utcnow()),
        current_lsn=now["lsn"],
    )
    plan = wal.plan_wal_task(wal_repo, backup, point)
    work = Path(tempfile.mkdtemp(prefix="dr-breach-restore-"))
    work.chmod(0o755)
    run.scratch_dirs.append(work)
    base_restore.download_base_backup_task(backup_repo, backup, work / "download")
    pitr_base_restore.extract_base_backup_task(
        work / "download", work / "data", bin_dir=primary.bin_dir
    )
    shutil.rmtree(work / "download", ignore_errors=True)
    if archive.startswith("file://"):
        command = wal.restore_command_for(archive)
    else:
        wal.stage_wal_task(wal_repo, plan, work / "wal")
        command = wal.restore_command_for(None, work / "wal")
    recovered = pitr_recovery.start_recovery_task(
        work / "data",
        point.model_copy(update={"timeline": plan.target_timeline}),
        restore_command=command,
        bin_dir=primary.bin_dir,
        user=run.pgc.user,
        password=run.pf.admin_password,
        timeout_seconds=run.opts.recovery_timeout_seconds,
        base_backup_id=backup.backup_id,
        cluster_name=f"dr-breach-{run.short}",
    )
    return backup, recovered


def _record_restore(run: BreachRun, backup: Any, recovered: Any, result: Any) -> None:
    """The restore as a change (never compensated), in the report, and checked per table."""
    ctx, primary = run.ctx, run.pgc.primary
    tables, db = run.opts.restore_tables, run.restore_db
    ctx.record_change(
        Change(
            system="postgres",
            action="restore-relations",
            object=f"{', '.join(tables)} in {db} on {primary.name}",
            outcome="updated",
            before={"restore_to": iso(run.restore_to)},
            after={
                "base_backup": backup.backup_id,
                "last_replayed_at": iso(recovered.last_replayed_at),
                "rows": {r: d.rows for r, d in result.relations.items()},
            },
            undo="rows changed after the restore point are gone from these tables; the "
            "evidence bundle holds what was there (dump_tables)",
            compensable=False,
        )
    )
    run.restored = {
        "restore_to": iso(run.restore_to),
        "base_backup": backup.backup_id,
        "last_replayed_at": iso(recovered.last_replayed_at),
        "replay_seconds": recovered.replay_seconds,
        "tables": {r: d.model_dump(mode="json") for r, d in result.relations.items()},
        "committed_at": iso(result.committed_at),
    }
    run.info["restore"] = run.restored
    for rel, digest in result.relations.items():
        ctx.record_check(
            f"restored clean: {rel}",
            True,
            detail=f"{digest.rows} row(s) as at {iso(run.restore_to)}, digests match the "
            f"recovered copy (base backup {backup.backup_id})",
        )
        if rel in run.digests_before:
            ctx.record_check(
                f"drill: {rel} is as before the intrusion",
                digest.digest == run.digests_before[rel],
                detail="row digests compared with the snapshot taken before the intruder",
            )
