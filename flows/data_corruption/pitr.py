"""Point-in-time recovery into a new cluster, and the checks on the recovered data."""

from __future__ import annotations

import time

from dr.changes import Change
from dr.errors import PreconditionError
from flows.data_corruption.run import CorruptionRun, mkdir_traversable
from tasks.backups import verify as backups_verify
from tasks.pitr import archiving, base_backup, checksums, one_pass, wal
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import recovery as pitr_recovery
from tasks.pitr import relations as pitr_relations
from tasks.pitr import target as pitr_target
from tasks.postgres import checks as postgres_checks

__all__ = ["recover", "verify_recovered"]


def recover(
    run: CorruptionRun,
    target: pitr_target.RecoveryTarget,
    backup: base_backup.BaseBackup,
    plan: wal.WalPlan,
) -> None:
    """Restore the base backup and replay archived WAL up to the point, into a new cluster."""
    ctx = run.ctx
    with ctx.phase("recover", detail=f"PITR {target.describe()} into a new cluster") as record:
        if not ctx.plan("recover", f"base backup {backup.backup_id} + WAL into {run.work}"):
            return
        work = mkdir_traversable(run.work)
        t0 = time.perf_counter()
        archive = run.target.backup.wal_archive or ""
        local_archive = archive.startswith("file://")
        # One pass: the base backup streams (hashed while it untars) while the WAL is proven
        # continuous again and, from a remote archive, staged; either refusal stops both.
        prepared = one_pass.prepare_recovery_task(
            run.backup_repo(),
            backup,
            work / "data",
            wal_repo=run.wal_repo(),
            target=target,
            work_dir=work / "restore",
            stage_dir=None if local_archive else work / "wal",
            bin_dir=run.bin_dir,
        )
        restored, plan = prepared["restored"], prepared["plan"]
        _check_same_system(run, backup, restored["control"], plan)
        if local_archive:
            command = wal.restore_command_for(archive)
        else:
            command = wal.restore_command_for(None, work / "wal")
            run.details["wal_staged"] = len(prepared["staged"] or {})
        run.recovered = pitr_recovery.start_recovery_task(
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
            undo=(lambda: pitr_cluster.remove_cluster(r.data_dir, bin_dir=run.bin_dir))
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
            "wal_proof_seconds": prepared["wal_seconds"],
            "total_seconds": round(time.perf_counter() - t0, 3),
        }
        record.detail = (
            f"port {r.port}, replayed to {r.last_replayed_at} in {r.replay_seconds:.1f} s "
            f"(total {time.perf_counter() - t0:.1f} s): {r.stop_message}"
        )


def _check_same_system(
    run: CorruptionRun, backup: base_backup.BaseBackup, control: dict, plan: wal.WalPlan
) -> None:
    """The restored backup must fit the archive and the live system, or nothing can replay."""
    size = int(control.get("Bytes per WAL segment", plan.segment_size))
    if size != plan.segment_size:
        raise PreconditionError(
            f"the base backup's WAL segment size is {size}, the archive's {plan.segment_size}"
        )
    live_id = archiving.server_position_task(run.conninfo())["system_identifier"]
    if pitr_cluster.system_identifier(control) != live_id:
        raise PreconditionError(
            f"base backup {backup.backup_id} belongs to another database system "
            f"({pitr_cluster.system_identifier(control)}, live {live_id}): it cannot replay this WAL"
        )


def verify_recovered(run: CorruptionRun) -> None:
    """The same checks on the recovered cluster; in drills its rows against the stamp."""
    ctx = run.ctx
    with ctx.phase("verify recovered data", detail="same checks on the recovered cluster"):
        if run.recovered is None:
            return
        conninfo = run.recovered_conninfo()
        rels = run.damaged or list(run.snapshot)
        if run.snapshot:
            got = pitr_relations.relation_digests_task(conninfo, list(run.snapshot))
            for rel, want in run.snapshot.items():
                ctx.record_check(
                    f"recovered {rel} identical to the stamp",
                    got[rel] == want,
                    detail=f"{got[rel].rows} rows, digest {got[rel].digest[:12]} vs "
                    f"{want.rows} rows, {want.digest[:12]} at the stamp",
                )
        elif rels:
            got = pitr_relations.relation_digests_task(conninfo, rels)
            run.details["recovered_digests"] = {k: v.model_dump() for k, v in got.items()}
        for q in run.target.validation_queries:
            if (q.database or run.db) == run.db:
                res = postgres_checks.run_validation_query_task(
                    conninfo, name=q.name, sql=q.sql, expect=q.expect
                )
                ctx.record_check(f"recovered: {q.name}", res.ok, detail=res.detail)
        if not run.opts.whole_database:
            result = backups_verify.amcheck_task(
                run.tool_conninfo(node=run.recovered_node()),
                password=run.password,
                bin_dir=run.bin_dir,
            )
            ctx.record_check("recovered: pg_amcheck", result.ok, detail=result.summary())
        if run.checksum_report is not None:
            r = run.recovered
            pitr_cluster.stop_cluster_task(r.data_dir, bin_dir=run.bin_dir)
            report = checksums.check_checksums_task(r.data_dir, bin_dir=run.bin_dir)
            pitr_cluster.start_cluster_task(r.data_dir, bin_dir=run.bin_dir)
            ctx.record_check(
                "recovered: pg_checksums",
                report.ok,
                detail=f"{report.blocks_scanned} pages, {report.bad_checksums} bad",
            )
