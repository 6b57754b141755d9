"""The backup-verification drill: prove the newest backups restore, and measure how fast.

The runbooks it replaces (seeds 001 and 003): a daily "latest backup exists" check and a
monthly test restore ("create test database, restore, verify, document"). For every
database of the target, in parallel:

1. find the newest *complete* backup (its manifest is present) and refuse one of another
   target or database;
2. check its age against the tier's RPO (not critical when point-in-time recovery meets it);
3. download every file, verifying its SHA-256 against the manifest while it streams;
4. restore it with ``pg_restore`` into an isolated scratch database
   ``dr_verify_<db>_<shortid>`` on the primary: never the source, never a name that
   exists (:class:`~dr.errors.UnsafeTargetError` then, before anything is written);
5. check it: row counts against the manifest (counted in the dump's own snapshot), the
   schema fingerprint against the source's at backup time, the target's validation
   queries, ``pg_amcheck`` on heap and B-tree indexes;
6. drop the scratch database (always), and mark the backup verified (``verified.json``,
   which retention honours: the newest verified backup is never deleted).

Backups made by something else (``backup.foreign``: a location and a name pattern, like
seed 001's ``backups/db_backup_*.sql.gz``; the newest by the timestamp in the name) are
checked as strictly as our own: restorable (plain SQL through psql, gunzip on the fly; or a
custom-format archive through pg_restore), pg_dump's completion trailer, every table of
the live source restored with its constraints and counted next to the source's,
validation queries, amcheck. A database with only foreign dumps needs no backup of ours.

``inject`` makes the drill go red on purpose, on a COPY of the newest backup in a scratch
prefix of the repository (the real backup is never written): ``bad-backup`` flips one byte
in the largest data file (storage bit rot: the checksum gate must catch it);
``bad-backup-truncate`` cuts that file in half and re-seals the copy's manifest (a dump
that was already bad when written: the restore must catch it); ``truncated-plain-dump``
cuts a copy of the newest foreign plain dump after one table's data and re-gzips it (a
cron job whose pg_dump died: the completion trailer and constraint checks must catch it).
The files twins (:mod:`flows.backup_verification.files`): ``bad-object`` changes one
object's bytes in a copy of a files backup; ``missing-object`` leaves one linked object out
of the restored files backup, so "link <name> consistent in the backups" (the restored
rows against the restored objects) must fail.

Every check is recorded through the incident lifecycle (artifacts, history, Slack); a
failed check fails the drill with its reason. RTO is the restore's wall time (download,
checksum verification and ``pg_restore`` of every database, in parallel); RPO is the
recovery point a user could reach (``recovery_point``): the WAL archive's age when a
verified base backup and a gapless archive allow point-in-time recovery (a dump's age is
then informational), else the age of the newest backup that passed, of either kind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prefect import flow

from dr.clock import utcnow
from dr.config import ForeignBackups, Mode, Scenario
from dr.errors import DRError, VerificationError
from flows.backup_verification.files import FILES_INJECTIONS
from flows.backup_verification.inject import (
    choose_injection,
    inject_failure,
    inject_truncated_plain_dump,
)
from flows.backup_verification.measure import measure_restore
from flows.backup_verification.models import (
    BackupVerificationOptions,
    DatabaseVerification,
    Injection,
    NewestBackup,
)
from flows.backup_verification.newest import NoBackupError, find_newest_backup_task
from flows.backup_verification.parallel import verify_in_parallel
from flows.backup_verification.record import mark_verified, record_results
from flows.backup_verification.recovery_point import (
    RecoveryPoint,
    assess_recovery_point_task,
    measure_recovery_point,
)
from flows.common.backups import open_target_repository
from flows.lifecycle import RunContext, run_scenario
from tasks.backups import manifest as backups_manifest
from tasks.backups.retention import foreign_database_hint
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = ["backup_verification_flow"]


@flow(name="backup-verification")
def backup_verification_flow(
    target: str,
    mode: Mode = Mode.drill,
    inject: Injection | None = None,
    config_path: str | None = None,
    severity: str = "SEV3",
    options: BackupVerificationOptions | None = None,
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Verify the newest backups of a target by restoring them; measure restore RTO and RPO.

    Args:
        target: a target of the config.
        mode: ``drill`` (default), ``incident`` (the same checks, e.g. after an alert that
            backups may be bad) or ``dry-run`` (find the backups, plan, change nothing).
        inject: ``bad-backup``, ``bad-backup-truncate``, ``truncated-plain-dump``,
            ``bad-object`` or ``missing-object`` to prove the drill goes red.
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: recorded in the report.
        options: more options (``inject`` may also be given here, as the CLI does).
        fail_flow: end the flow run Failed when the drill did not pass.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details.databases`` holds
        per-database timings, ages and locations.
    """
    opts = options or BackupVerificationOptions()
    if inject is not None:
        opts = opts.model_copy(update={"inject": Injection(inject)})
    result = run_scenario(
        Scenario.backup_verification,
        target,
        mode,
        _make_body(opts),
        config_path=config_path,
        severity=opts.severity or severity,
        options=opts.model_dump(mode="json"),
        fail_flow=fail_flow,
    )
    return result.model_dump(mode="json")


def _make_body(options: BackupVerificationOptions) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        _verify(ctx, options)

    return body


def _verify(ctx: RunContext, options: BackupVerificationOptions) -> None:
    """The drill's phases, top to bottom: assess, (plan), inject, restore and check, measure,
    mark verified; every check goes into the run at the end."""
    repo = open_target_repository(ctx.config, ctx.target.backup.repository)
    short_id = _short_id(ctx)
    drill_time = utcnow()
    results: list[DatabaseVerification] = []
    foreign = list(ctx.target.backup.foreign) if options.include_foreign else []

    with ctx.phase("assess", detail=f"newest complete backup of {', '.join(_databases(ctx))}"):
        newest = _find_newest(ctx, repo, drill_time, results, _foreign_databases(ctx, foreign))
        point = _assess_recovery_point(ctx, drill_time)

    if ctx.dry_run:
        with ctx.phase("plan"):
            _plan(ctx, newest, foreign, short_id)
        record_results(ctx, results)
        return

    scratch: list[tuple[storage_client.Repository, str]] = []
    injected_db: str | None = None
    foreign_keys: dict[int, str] = {}
    try:
        if options.inject not in (None, *FILES_INJECTIONS):
            with ctx.phase("inject", detail=f"{options.inject.value} on a copy"):
                injected_db = _inject(
                    ctx, repo, newest, foreign, options.inject, short_id, scratch, foreign_keys
                )
        ctx.stamp_failure()
        with ctx.phase(
            "restore and check",
            detail=f"{len(newest)} database(s) and {len(foreign)} foreign dump(s) in parallel",
        ):
            results += verify_in_parallel(
                ctx,
                newest,
                foreign,
                short_id=short_id,
                options=options,
                drill_time=drill_time,
                age_critical=not point.pitr,
                foreign_keys=foreign_keys,
            )
        ctx.progress(1.0, "verification finished")
    finally:
        for scratch_repo, prefix in scratch:
            with contextlib.suppress(DRError):
                storage_operations.delete_prefix_task(scratch_repo, prefix + "/")

    with ctx.phase("measure"):
        measure_restore(ctx, results)
        measure_recovery_point(ctx, results, point)

    with ctx.phase("mark verified"):
        for r in results:
            if (
                r.source != "repository"
                or r.backup_id is None  # no own backup (foreign dumps only): nothing to mark
                or not r.ok
                or r.database == injected_db
                or options.inject in FILES_INJECTIONS  # a files twin's run verifies nothing
            ):
                continue
            mark_verified(ctx, repo, r, f"{ctx.target_name}/{r.database}")

    record_results(ctx, results)


def _assess_recovery_point(ctx: RunContext, drill_time: datetime) -> RecoveryPoint:
    """Whether point-in-time recovery meets the RPO (then old dumps are no failure)."""
    point = assess_recovery_point_task(ctx.config, ctx.target_name, drill_time)
    if ctx.target.backup.wal_archive:
        ctx.record_check(
            "point-in-time recovery", point.pitr, critical=False, detail=point.summary()
        )
    else:
        ctx.note(point.summary())
    return point


def _inject(
    ctx: RunContext,
    repo: storage_client.Repository,
    newest: dict[str, NewestBackup],
    foreign: list[ForeignBackups],
    injection: Injection,
    short_id: str,
    scratch: list[tuple[storage_client.Repository, str]],
    foreign_keys: dict[int, str],
) -> str | None:
    """Put a damaged copy in place of a real backup; returns the own database it replaced.

    Fills ``scratch`` with what to delete afterwards and ``foreign_keys`` with the foreign
    entry whose newest dump the copy replaces.
    """
    if injection is Injection.truncated_plain_dump:
        copy = inject_truncated_plain_dump(ctx, foreign, short_id, scratch)
        if copy is not None:
            foreign_keys[copy.index] = copy.key
        return None
    injected_db, scratch_prefix = choose_injection(ctx, newest, short_id)
    scratch.append((repo, scratch_prefix))
    inject_failure(ctx, repo, newest, injected_db, injection, scratch_prefix)
    return injected_db


def _databases(ctx: RunContext) -> list[str]:
    return list(ctx.target.postgres.databases)


def _short_id(ctx: RunContext) -> str:
    raw = (ctx.flow_run_id or "").replace("-", "")
    return (raw[:8] or utcnow().strftime("%H%M%S%f")).lower()


def _foreign_databases(ctx: RunContext, foreign: list[ForeignBackups]) -> set[str]:
    """The databases the foreign entries hold dumps of."""
    first = _databases(ctx)[0]
    return {e.database or foreign_database_hint(e.pattern) or first for e in foreign}


def _find_newest(
    ctx: RunContext,
    repo: storage_client.Repository,
    drill_time: datetime,
    results: list[DatabaseVerification],
    covered_by_foreign: set[str],
) -> dict[str, NewestBackup]:
    """The newest complete backup per database; a database without one is a failed check,
    unless it has no backup of our own at all and foreign dumps of it are verified."""
    newest: dict[str, NewestBackup] = {}
    for db in _databases(ctx):
        try:
            newest[db] = find_newest_backup_task(repo, ctx.target_name, db)
        except VerificationError as exc:
            failed = DatabaseVerification(database=db)
            foreign_only = isinstance(exc, NoBackupError) and db in covered_by_foreign
            detail = f"{exc}; its foreign dumps are verified instead" if foreign_only else str(exc)
            failed.check("newest backup", False, detail, critical=not foreign_only)
            results.append(failed)
    for db, chosen in newest.items():
        age = (drill_time - chosen.manifest.started_at).total_seconds()
        ctx.note(f"{db}: newest backup {chosen.backup_id}, {age:.0f} s old")
    return newest


def _plan(
    ctx: RunContext,
    newest: dict[str, NewestBackup],
    foreign: list[ForeignBackups],
    short_id: str,
) -> None:
    """A dry run: list what the drill would download, restore and drop."""
    for db, chosen in newest.items():
        ctx.plan(
            "download and verify",
            f"{len(chosen.manifest.files)} files of {chosen.location}",
        )
        ctx.plan(
            "restore",
            f"{chosen.location} into scratch database "
            f"{backups_manifest.scratch_database_name(db, short_id)}, check it, then drop it",
        )
    for entry in foreign:
        ctx.plan("restore", f"the newest {entry.pattern} of {entry.location} into scratch")
