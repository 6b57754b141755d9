"""Prove the recovery end to end, measure RTO and RPO, clean up."""

from __future__ import annotations

import contextlib
import shutil
import time
from datetime import datetime
from typing import Any

from dr.clock import utcnow
from dr.errors import PostgresError
from flows.data_corruption.options import HEARTBEAT_TABLE, PROBE_PREFIX
from flows.data_corruption.run import CorruptionRun, as_utc
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import relations as pitr_relations
from tasks.postgres import checks as postgres_checks
from tasks.postgres import heartbeat as postgres_heartbeat

__all__ = ["clean_up", "measure", "verify_end_to_end", "wait_writers_healthy"]


def wait_writers_healthy(run: CorruptionRun, conninfo: str) -> datetime | None:
    """The first heartbeat row written by the application after the restart, if any."""
    if run.writers_started_at is None or not run.writer_changes:
        return None
    deadline = time.monotonic() + run.opts.heartbeat_wait_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(PostgresError):
            first = postgres_heartbeat.first_heartbeat_after(
                conninfo, run.writers_started_at, table=HEARTBEAT_TABLE, exclude_prefix=PROBE_PREFIX
            )
            if first is not None:
                return first
        time.sleep(0.1)
    return None


def verify_end_to_end(run: CorruptionRun) -> datetime | None:
    """Rows as at the recovery point, writers healthy, health and validation checks."""
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
            got = pitr_relations.relation_digests_task(data_conninfo, list(run.snapshot))
            for rel, want in run.snapshot.items():
                ctx.record_check(
                    f"{rel} rows identical to the recovery point",
                    got[rel] == want,
                    detail=f"{got[rel].rows} rows, digest {got[rel].digest[:12]} (stamp: "
                    f"{want.rows} rows, {want.digest[:12]})",
                )
        healthy_at = wait_writers_healthy(run, hb_conninfo)
        if run.writer_changes:
            ctx.record_check(
                "writers healthy again (heartbeat written after the restart)",
                healthy_at is not None,
                detail=f"first heartbeat at {healthy_at}" if healthy_at else "no heartbeat",
            )
        if run.switched_whole:
            for check in run.target.health_checks.sql:
                if (check.database or run.db) == run.db:
                    res = postgres_checks.run_sql_check_task(
                        run.recovered_conninfo(check.database), check.sql, name=check.name
                    )
                    ctx.record_check(f"sql: {check.name}", res.ok, detail=res.detail)
            for q in run.target.validation_queries:
                if (q.database or run.db) == run.db:
                    res = postgres_checks.run_validation_query_task(
                        run.recovered_conninfo(q.database), name=q.name, sql=q.sql, expect=q.expect
                    )
                    ctx.record_check(f"validation: {q.name}", res.ok, detail=res.detail)
            if all(c.ok for c in ctx.checks if c.critical):
                ctx.stamp_restored(healthy_at or utcnow())
        else:
            ctx.verify_health(timeout_seconds=run.opts.heartbeat_wait_seconds)
            if healthy_at is not None and ctx.restored_at is not None:
                ctx.restored_at = max(ctx.restored_at, healthy_at)
        record.detail = f"restored at {ctx.restored_at}" if ctx.restored_at else "not restored"
        return healthy_at


def measure(run: CorruptionRun, healthy_at: datetime | None) -> None:
    """RTO from the damage (its phases) and RPO: the data-loss window, rows discarded."""
    ctx = run.ctx
    with ctx.phase("measure", detail="RTO and RPO"):
        if run.recovered is None:
            return
        r = run.recovered
        recovered_to = r.last_replayed_at or r.target.time
        measured: dict[str, Any] = {
            "recovered_to": recovered_to.isoformat() if recovered_to else None
        }
        _measure_phases(run, healthy_at, measured)
        if run.switched_whole:
            _measure_whole_database(run, measured)
        else:
            _measure_relation_restore(run, recovered_to, measured)
        run.details["measured"] = measured


def _measure_phases(run: CorruptionRun, healthy_at: datetime | None, out: dict[str, Any]) -> None:
    """The scenario's own phases: damage -> suspected -> writers stopped -> healthy."""
    ctx = run.ctx
    damage = run.damage_at or ctx.failure_at
    stopped, healthy = run.writers_stopped_at, as_utc(healthy_at) if healthy_at else None

    def span(a: datetime | None, b: datetime | None) -> float | None:
        return None if a is None or b is None else round((as_utc(b) - as_utc(a)).total_seconds(), 3)

    phases = {
        "damage -> writers stopped": span(damage, stopped),
        "writers stopped -> application healthy": span(stopped, healthy),
    }
    if not ctx.is_drill and run.damage_at is not None:
        ctx.measure(failure_at=as_utc(run.damage_at), failure_at_basis="the damage's commit time")
    if run.suspected_at is not None and ctx.is_drill:
        ctx.measure(detected_at=as_utc(run.suspected_at), detected_at_basis="assessment")
    ctx.measure(
        rto_phases=phases,
        restored_at_basis="first heartbeat the restarted application wrote, every check passing",
    )
    if stopped is not None and healthy is not None:
        out["rto_seconds"] = span(stopped, healthy)
    out["rto_phases"] = phases


def _measure_whole_database(run: CorruptionRun, out: dict[str, Any]) -> None:
    ctx = run.ctx
    lost = 0
    window = 0.0
    for writer, state in run.heartbeat_before_switch.items():
        rec_max = _recovered_max_ts(run, writer)
        if rec_max is None:
            continue
        lost += postgres_heartbeat.heartbeat_rows_after_task(
            run.conninfo(run.pgc.heartbeat_db), writer, rec_max, table=HEARTBEAT_TABLE
        )
        window = max(window, (state["max_ts"] - rec_max).total_seconds())
    basis = "heartbeat rows on the damaged database newer than the recovered cluster's newest"
    ctx.measure(
        rpo_seconds=window,
        lost_rows=lost,
        rpo_basis="whole database: newest heartbeat on the damaged database when the "
        "writers stopped vs newest in the recovered cluster; rows = heartbeats lost",
        lost_rows_basis=basis,
    )
    out.update({"rpo_seconds": window, "lost_heartbeat_rows": lost})


def _damage_row_versions(run: CorruptionRun) -> int:
    """Row versions the damage itself wrote (UPDATEs): discarded too, but not writes lost."""
    first = run.candidates[0] if run.candidates else None
    if first is None or first.relation is None:
        return 0
    if first.relation.split(":", 1)[-1] not in run.damaged:
        return 0
    return first.operations.get("UPDATE", 0) + first.operations.get("HOT_UPDATE", 0)


def _measure_relation_restore(
    run: CorruptionRun, recovered_to: datetime | None, out: dict[str, Any]
) -> None:
    ctx = run.ctx
    damage = run.damage_at or run.suspected_at
    window = (
        max(0.0, (as_utc(damage) - as_utc(recovered_to)).total_seconds())
        if damage is not None and recovered_to is not None
        else None
    )
    lost, basis = None, "not measured: the live rows before the restore were not read"
    if run.rows_before_switch:
        after = pitr_relations.row_hashes_task(run.conninfo(), list(run.rows_before_switch))
        discarded = sum(len(rows - after[rel]) for rel, rows in run.rows_before_switch.items())
        damage_rows = _damage_row_versions(run)
        lost = max(0, discarded - damage_rows)
        basis = (
            f"rows of {', '.join(run.rows_before_switch)} present before the restore and gone "
            f"after it (set membership of row hashes): {discarded}, minus the {damage_rows} "
            "row version(s) the damage wrote = the application's writes recovery discarded"
        )
        out["discarded_row_versions"] = discarded
    ctx.measure(
        rpo_seconds=window,
        lost_rows=lost,
        rpo_basis="relation restore: damage commit time - last commit replayed into "
        "the recovered copy (changes to the restored tables in between are discarded)",
        lost_rows_basis=basis,
    )
    out.update({"rpo_seconds": window, "lost_rows": lost})


def _recovered_max_ts(run: CorruptionRun, writer: str) -> datetime | None:
    before = run.details.get("recovered_heartbeat", {}).get(writer)
    return datetime.fromisoformat(before) if before else None


def clean_up(run: CorruptionRun) -> None:
    """Remove scratch copies, and the recovered cluster unless it is used or kept."""
    ctx = run.ctx
    with ctx.phase("clean up", detail="scratch copies and the recovered cluster if not used"):
        if ctx.dry_run:
            return
        if run.damaged_copy is not None:
            pitr_cluster.remove_cluster_task(run.damaged_copy, bin_dir=run.bin_dir)
        if run.recovered is not None and not run.switched_whole and not run.opts.keep_recovered:
            pitr_cluster.remove_cluster_task(run.recovered.data_dir, bin_dir=run.bin_dir)
            run.details.setdefault("recovery", {})["removed"] = True
        if run.safety_dump is not None:
            run.safety_dump.unlink(missing_ok=True)
        if not run.switched_whole and not run.opts.keep_recovered:
            shutil.rmtree(run.work, ignore_errors=True)
