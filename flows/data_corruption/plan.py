"""Validate the parameters; plan the recovery (point, base backup, WAL) before any change."""

from __future__ import annotations

from dr.clock import utcnow
from dr.config import KubernetesService
from dr.errors import ConfigError, PreconditionError, RecoveryRefused, VerificationError
from flows.common.writers import writer_services
from flows.data_corruption.options import Variant
from flows.data_corruption.run import CorruptionRun, as_utc
from tasks.pitr import archiving, base_backup, lsn, wal
from tasks.pitr import target as pitr_target

__all__ = ["plan", "validate"]


def validate(run: CorruptionRun) -> None:
    """Refuse bad parameters before anything happens."""
    opts = run.opts
    if opts.recovery_time is not None and opts.recovery_lsn is not None:
        raise ConfigError(
            "give recovery_time or recovery_lsn, not both",
            [("options", "recovery_time and recovery_lsn")],
        )
    if opts.recovery_time is not None:
        when = as_utc(opts.recovery_time)
        if when > utcnow():
            raise RecoveryRefused(
                f"recovery point {when.isoformat()} is in the future: nothing was changed"
            )
        if opts.damage_at is not None and when > as_utc(opts.damage_at):
            raise RecoveryRefused(
                f"recovery point {when.isoformat()} is after the damage began "
                f"({as_utc(opts.damage_at).isoformat()}): nothing was changed"
            )
    if not run.target.backup.wal_archive:
        raise RecoveryRefused(
            f"target {run.ctx.target_name} archives no WAL (backup.wal_archive): point-in-time "
            "recovery is impossible"
        )


def _recovery_target(run: CorruptionRun) -> pitr_target.RecoveryTarget:
    opts = run.opts
    if opts.recovery_time is not None or opts.recovery_lsn is not None:
        return pitr_target.RecoveryTarget(time=opts.recovery_time, lsn=opts.recovery_lsn)
    if run.damage_lsn or run.suspected_lsn:
        return pitr_target.RecoveryTarget(lsn=run.damage_lsn or run.suspected_lsn)
    if run.stamp is not None:
        return pitr_target.RecoveryTarget(time=run.stamp["at"])
    raise RecoveryRefused(
        "no recovery point: the assessment found no damaging transaction in the WAL; give "
        "recovery_time or recovery_lsn (just before the damage began)"
    )


def plan(
    run: CorruptionRun,
) -> tuple[pitr_target.RecoveryTarget, base_backup.BaseBackup, wal.WalPlan]:
    """The recovery point, the base backup before it and a gap-free WAL plan; nothing changes."""
    ctx = run.ctx
    with ctx.phase("plan recovery", detail="recovery point, base backup, WAL continuity") as rec:
        target = _recovery_target(run)
        now = archiving.server_position_task(run.conninfo())
        backups = base_backup.list_base_backups_task(run.backup_repo(), ctx.target_name)
        backup = base_backup.choose_base_backup(
            backups,
            target,
            damage_at=run.damage_at,
            damage_lsn=run.damage_lsn,
            now=max(now["at"], utcnow()),
            current_lsn=now["lsn"],
        )
        _advise(run, target)
        plan = _plan_wal(run, backup, target)
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


def _plan_wal(
    run: CorruptionRun, backup: base_backup.BaseBackup, target: pitr_target.RecoveryTarget
) -> wal.WalPlan:
    """The WAL plan; in a drill a refusal (a gap) fails the drill, naming the check."""
    ctx, check = run.ctx, "WAL archive continuous to the recovery point"
    try:
        plan = wal.plan_wal_task(run.wal_repo(), backup, target, allow_unarchived_end=ctx.dry_run)
    except PreconditionError as exc:
        if not ctx.is_drill:
            raise
        ctx.record_check(check, False, detail=str(exc))
        raise VerificationError(f"{check}: {exc}") from exc
    gap = run.details.get("wal_gap")
    if run.opts.variant is Variant.wal_gap and ctx.is_drill and gap and not ctx.dry_run:
        ctx.record_check(check, False, detail=f"segment {gap['segment']} was set aside, unseen")
        raise VerificationError(f"{check}: the plan did not see the gap at {gap['segment']}")
    return plan


def _advise(run: CorruptionRun, target: pitr_target.RecoveryTarget) -> None:
    """An explicit point after the first suspicious transaction is allowed, but flagged."""
    if run.damage_at is not None or run.damage_lsn is not None:
        return
    later = (
        target.time is not None
        and run.suspected_at is not None
        and as_utc(target.time) > run.suspected_at
    ) or (
        target.lsn is not None
        and run.suspected_lsn is not None
        and lsn.parse_lsn(target.lsn) > lsn.parse_lsn(run.suspected_lsn)
    )
    if run.suspected_lsn is not None:
        run.ctx.record_check(
            "recovery point before the first suspicious transaction",
            not later,
            critical=False,
            detail=f"the WAL finder suspects the commit at {run.suspected_lsn} "
            f"({run.suspected_at}); recovering {target.describe()}",
        )


def _check_repointable(run: CorruptionRun) -> None:
    for svc in writer_services(run.target):
        if isinstance(svc, KubernetesService) and not svc.db_host_secret:
            raise PreconditionError(
                f"whole-database switch cannot repoint deployment {svc.name}: it has no "
                "db_host_secret in dr.yaml"
            )
