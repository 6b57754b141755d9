"""Verify every database and foreign dump in parallel branches, with progress."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from dr.config import ForeignBackups
from flows.backup_verification.files import FilesBranches
from flows.backup_verification.foreign import verify_foreign_backup_task
from flows.backup_verification.models import (
    BackupVerificationOptions,
    DatabaseVerification,
    NewestBackup,
)
from flows.backup_verification.restore import verify_database_backup_task
from flows.common.progress import ProgressBoard
from flows.lifecycle import RunContext

__all__ = ["PROGRESS_SECONDS", "verify_in_parallel"]

#: How often the flow thread refreshes progress while branches run.
PROGRESS_SECONDS = 0.5


def verify_in_parallel(
    ctx: RunContext,
    newest: dict[str, NewestBackup],
    foreign: list[ForeignBackups],
    *,
    short_id: str,
    options: BackupVerificationOptions,
    drill_time: datetime,
    age_critical: bool = True,
    foreign_keys: dict[int, str] | None = None,
) -> list[DatabaseVerification]:
    """One branch per database, per foreign entry and per files entry (recorded as checks),
    then the links (in the backups, and on the live primary); a branch that crashes is a
    finding.

    ``age_critical`` False: point-in-time recovery covers the RPO, a dump's age is shown
    only; ``foreign_keys`` replaces an entry's newest dump (by index) with a drill's copy.
    """
    branches = [*newest.keys(), *[f"foreign:{e.pattern}" for e in foreign]]
    # The lifecycle shows progress (ctx.progress); the board only gathers it.
    board = ProgressBoard(None, "backup verification", branches, bars=False)
    files = [f"files:{f.name}" for f in ctx.target.files]
    if not ctx.plan("restore into scratch databases and folders", ", ".join(branches + files)):
        return []
    files_branches = FilesBranches(ctx, short_id, options.inject)
    files_branches.submit()
    rpo = ctx.objectives.rpo_seconds
    futures = []
    for db, chosen in newest.items():
        futures.append(
            verify_database_backup_task.with_options(name=f"verify-{db}").submit(
                ctx.config,
                ctx.target_name,
                db,
                short_id=short_id,
                rpo_seconds=rpo,
                newest=chosen,
                heapallindexed=options.heapallindexed,
                progress=board.callback(db),
                now=drill_time,
                age_critical=age_critical,
            )
        )
    for i, entry in enumerate(foreign):
        futures.append(
            verify_foreign_backup_task.with_options(name=f"verify-foreign-{i}").submit(
                ctx.config,
                ctx.target_name,
                entry,
                short_id=f"{short_id}f{i}",
                rpo_seconds=rpo,
                progress=board.callback(branches[len(newest) + i]),
                now=drill_time,
                age_critical=age_critical,
                dump_key=(foreign_keys or {}).get(i),
            )
        )
    _wait(ctx, board, dict(zip(branches, futures, strict=True)))
    results = _collect(branches, futures)
    files_branches.collect(results, mark=bool(results) and all(r.ok for r in results))
    return results


def _collect(branches: list[str], futures: list[Any]) -> list[DatabaseVerification]:
    results = []
    for name, fut in zip(branches, futures, strict=True):
        try:
            results.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - each branch's failure is a finding
            failed = DatabaseVerification(database=name)
            failed.error = f"{type(exc).__name__}: {exc}"
            failed.check("verification", False, failed.error)
            results.append(failed)
    return results


def _wait(ctx: RunContext, board: ProgressBoard, futures: dict[str, Any]) -> None:
    """Wait for the branches, showing progress every few percent (or every 10 s).

    A branch that ended counts as done even when its own reports stayed elsewhere (a
    Dask worker reports into its copy of the board): the same progress on every runner.
    """
    last = -10.0
    last_time = 0.0
    pending = dict(futures)
    while pending:
        next(iter(pending.values())).wait(timeout=PROGRESS_SECONDS)
        for name in [n for n, f in pending.items() if f.state.is_final()]:
            del pending[name]
            board.update(name, 1.0, "done")
        board.refresh()
        pct = board.overall * 100
        if pending and (pct - last >= 5 or time.monotonic() - last_time > 10):
            ctx.progress(board.overall, board.latest())
            last, last_time = pct, time.monotonic()
    board.refresh()
