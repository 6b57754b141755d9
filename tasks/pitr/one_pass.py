"""Everything a point-in-time recovery needs before the server starts, in one pass.

Done one after another, the base backup's stream and the WAL archive's proof add up; they
are independent, so they overlap here: one thread streams the base backup into a new data
directory (hashed as it is extracted, see :func:`.base_restore.restore_base_backup`) while
another proves the archive continuous to the recovery point and, when the archive is not
a local folder, stages the segments replay needs. A refusal of either (a wrong digest, a
gap) stops the other, and nothing is left at the data directory: it appears only once
every check passed.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dr.tasking import dr_task
from tasks.pitr.base_backup import BaseBackup
from tasks.pitr.base_restore import RestoreCancelled, VerifyMode, restore_base_backup
from tasks.pitr.target import RecoveryTarget
from tasks.pitr.wal import WalPlan, plan_wal, stage_wal

if TYPE_CHECKING:
    from tasks.storage.client import Repository


def prepare_recovery(
    repo: Repository,
    backup: BaseBackup,
    data_dir: str | Path,
    *,
    wal_repo: Repository,
    target: RecoveryTarget,
    work_dir: str | Path,
    stage_dir: str | Path | None = None,
    bin_dir: str | Path | None = None,
    verify: VerifyMode = "sizes",
    allow_unarchived_end: bool = False,
) -> dict[str, Any]:
    """Restore the base backup and prove (and stage) its WAL at the same time.

    Args:
        repo: the backup repository.
        backup: from :func:`.base_backup.choose_base_backup`.
        data_dir: the new data directory (must not exist or be empty).
        wal_repo: the WAL archive.
        target: the recovery point.
        work_dir: scratch folder.
        stage_dir: where to stage the needed segments (an archive that is not a local
            folder); None to leave them in the archive.
        bin_dir: PostgreSQL binaries.
        verify: ``pg_verifybackup`` mode (see :func:`.base_restore.restore_base_backup`).
        allow_unarchived_end: passed to :func:`.wal.plan_wal`.

    Returns:
        ``{"plan": WalPlan, "restored": restore_base_backup's result, "staged": {name:
        sha256} or None, "seconds", "wal_seconds"}``.

    Raises:
        Whatever either side raised first (a WAL gap, ChecksumMismatch, ...); the data
        directory is then left as it was.
    """
    t0 = time.perf_counter()
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pitr-pass") as pool:
        proving = pool.submit(
            _prove_and_stage, wal_repo, backup, target, stage_dir, allow_unarchived_end
        )
        # A refused proof stops the stream at its next chunk; a proof still running when
        # the restore is verified holds the rename until it is done.
        proving.add_done_callback(lambda done: done.exception() is not None and cancel.set())
        restoring = pool.submit(
            restore_base_backup,
            repo,
            backup,
            data_dir,
            work_dir=work_dir,
            bin_dir=bin_dir,
            verify=verify,
            cancel=cancel,
            before_place=proving.result,
        )
        try:
            restored = restoring.result()
        except RestoreCancelled:
            proving.result()  # raises the WAL side's refusal, the reason for the stop
            raise
        plan, staged, wal_seconds = proving.result()
    return {
        "plan": plan,
        "restored": restored,
        "staged": staged,
        "seconds": round(time.perf_counter() - t0, 3),
        "wal_seconds": wal_seconds,
    }


def _prove_and_stage(
    wal_repo: Repository,
    backup: BaseBackup,
    target: RecoveryTarget,
    stage_dir: str | Path | None,
    allow_unarchived_end: bool,
) -> tuple[WalPlan, dict[str, str] | None, float]:
    t0 = time.perf_counter()
    plan = plan_wal(wal_repo, backup, target, allow_unarchived_end=allow_unarchived_end)
    staged = stage_wal(wal_repo, plan, stage_dir) if stage_dir is not None else None
    return plan, staged, round(time.perf_counter() - t0, 3)


prepare_recovery_task = dr_task(
    prepare_recovery, name="pitr-prepare-recovery", retries=1, timeout_seconds=6 * 3600
)
