"""The recovery point a user could reach, which is the RPO a backup-verification drill reports.

If the target has a base backup whose checksums check out and a WAL archive with no gap
from it to the newest segment, point-in-time recovery reaches the newest archived WAL,
so the RPO is the archive's age and old dumps are no failure. Otherwise the RPO is the
age of the newest backup (ours or foreign) that passed every check.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from dr.config import DRConfig
from dr.errors import DRError
from dr.tasking import dr_task
from flows.backup_verification.models import DatabaseVerification
from flows.common.backups import BASE_FOLDER, open_target_repository
from flows.lifecycle import RunContext
from tasks.pitr import archiving
from tasks.pitr import base_backup as pitr_base_backup
from tasks.pitr import wal as pitr_wal
from tasks.pitr.target import RecoveryTarget
from tasks.storage import client as storage_client

__all__ = [
    "RecoveryPoint",
    "assess_recovery_point",
    "assess_recovery_point_task",
    "measure_recovery_point",
    "newest_passed_age",
]

_CHUNK = 1024 * 1024


class RecoveryPoint(BaseModel):
    """Whether point-in-time recovery is possible now, and how far it reaches."""

    pitr: bool = False
    reason: str = ""
    base_backup: str | None = None
    newest_wal: str | None = None
    newest_wal_at: datetime | None = None
    wal_age_seconds: float | None = None

    def summary(self) -> str:
        if self.pitr:
            return (
                f"point-in-time recovery reaches WAL {self.newest_wal} "
                f"({self.wal_age_seconds:.0f} s old) from base backup {self.base_backup}"
            )
        return f"no point-in-time recovery: {self.reason}"


def _verify_base_checksums(
    repo: storage_client.Repository, backup: pitr_base_backup.BaseBackup
) -> str | None:
    """Stream every file of the base backup through SHA-256; the first mismatch, or None."""
    for name, expected in sorted(backup.files.items()):
        digest = hashlib.sha256()
        with repo.open_read(backup.prefix + name) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            return f"{backup.location}/{name}: SHA-256 does not match its manifest"
    return None


def assess_recovery_point(config: DRConfig, target_name: str, now: datetime) -> RecoveryPoint:
    """Is there a verified base backup and a continuous WAL archive up to its newest segment?

    Returns:
        A :class:`RecoveryPoint`; ``pitr`` False with the reason when either is missing.
    """
    target = config.target(target_name)
    if not target.backup.wal_archive:
        return RecoveryPoint(reason="no WAL archive configured")
    point = RecoveryPoint()
    try:
        repo = open_target_repository(config, target.backup.repository)
        bases = pitr_base_backup.list_base_backups(repo, target_name, BASE_FOLDER)
        if not bases:
            point.reason = "no base backup in the repository"
            return point
        base = bases[0]
        point.base_backup = base.backup_id
        bad = _verify_base_checksums(repo, base)
        if bad is not None:
            point.reason = bad
            return point
        archive = open_target_repository(config, target.backup.wal_archive)
        newest = archiving.newest_wal_segment(archive)
        if newest is None:
            point.reason = "the WAL archive holds no segment"
            return point
        point.newest_wal, point.newest_wal_at = newest
        pitr_wal.plan_wal(archive, base, RecoveryTarget(time=newest[1].astimezone(UTC)))
    except DRError as exc:
        point.reason = f"no continuous WAL archive from base backup {point.base_backup}: {exc}"
        return point
    point.pitr = True
    point.wal_age_seconds = round(max(0.0, (now - newest[1]).total_seconds()), 3)
    return point


assess_recovery_point_task = dr_task(
    assess_recovery_point,
    name="backup-verification-assess-recovery-point",
    retries=0,
    timeout_seconds=900,
    cache_policy=NO_CACHE,
)


def newest_passed_age(results: list[DatabaseVerification]) -> tuple[float | None, list[str]]:
    """Per database the age of its newest backup that passed (either kind); the worst of
    those, and the databases with no passing backup."""
    best: dict[str, float | None] = {}
    for r in results:
        best.setdefault(r.database, None)
        if r.ok and r.age_seconds is not None and r.restored_at is not None:
            known = best[r.database]
            best[r.database] = r.age_seconds if known is None else min(known, r.age_seconds)
    unverified = sorted(db for db, age in best.items() if age is None)
    ages = [age for age in best.values() if age is not None]
    return (max(ages) if ages and not unverified else None), unverified


def measure_recovery_point(
    ctx: RunContext, results: list[DatabaseVerification], point: RecoveryPoint
) -> None:
    """The drill's RPO: the archive's age with PITR, else the newest verified backup's age."""
    ctx.details["recovery_point"] = point.model_dump(mode="json")
    if point.pitr and point.wal_age_seconds is not None:
        ctx.measure(
            rpo_seconds=point.wal_age_seconds,
            rpo_basis=f"age of the newest archived WAL segment {point.newest_wal}: "
            f"point-in-time recovery from verified base backup {point.base_backup} "
            "with a continuous WAL archive reaches it",
        )
        return
    age, unverified = newest_passed_age(results)
    if age is not None:
        ctx.measure(
            rpo_seconds=round(age, 3),
            rpo_basis="age of the newest backup that passed every check (own or foreign; "
            "manifest started_at, file mtime for foreign dumps), the oldest over databases; "
            f"{point.summary()}",
        )
        return
    ctx.measurement.rpo_seconds = None
    ctx.measurement.rpo_basis = (
        f"not measured: no backup of {', '.join(unverified) or 'any database'} passed every "
        f"check; {point.summary()}"
    )
