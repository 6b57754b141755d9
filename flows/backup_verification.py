"""The backup-verification drill: prove the newest backups restore, and measure how fast.

The runbooks it replaces (seeds 001 and 003): a daily "latest backup exists" check and a
monthly test restore ("create test database, restore, verify, document"). For every
database of the target, in parallel:

1. find the newest *complete* backup (its manifest is present) and refuse one of another
   target or database;
2. check its age against the tier's RPO (the RPO of a restore is the backup's age);
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
seed 001's ``backups/db_backup_*.sql.gz``) get the checks that apply without a manifest:
age from the file's modification time, restorable (plain SQL streamed through psql, gunzip
on the fly; or a custom-format archive through pg_restore), validation queries, amcheck.

``inject`` makes the drill go red on purpose, on a COPY of the newest backup in a scratch
prefix of the repository (the real backup is never written): ``bad-backup`` flips one byte
in the largest data file (storage bit rot: the checksum gate must catch it);
``bad-backup-truncate`` cuts that file in half and re-seals the copy's manifest (a dump
that was already bad when written: the restore must catch it).

Every check is recorded through the incident lifecycle (artifacts, history, Slack); a
failed check fails the drill with its reason. RTO is the restore's wall time (download,
checksum verification and ``pg_restore`` of every database, in parallel); RPO is the
age of the oldest of the newest backups at the drill.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.config import DRConfig, ForeignBackups, Mode, PostgresConfig, Scenario, Target
from dr.errors import (
    ChecksumMismatch,
    DRError,
    ObjectNotFound,
    UnsafeTargetError,
    VerificationError,
    redact,
)
from dr.tasking import dr_task
from flows.backup import (
    ProgressBoard,
    list_backups,
    open_target_repository,
)
from flows.lifecycle import RunContext, run_scenario
from tasks import backups as bk
from tasks import postgres as pg
from tasks import storage

__all__ = [
    "SCRATCH_FOLDER",
    "BackupVerificationOptions",
    "CheckOutcome",
    "DatabaseVerification",
    "Injection",
    "NewestBackup",
    "backup_verification_flow",
    "find_newest_backup",
    "verify_database_backup",
    "verify_foreign_backup",
]

log = logging.getLogger(__name__)

#: Corrupted copies made by ``--inject`` live under this prefix of the repository.
SCRATCH_FOLDER = "_drill-scratch"
#: How often the flow thread refreshes progress while branches run.
PROGRESS_SECONDS = 0.5
HEAD_BYTES = 512


class Injection(StrEnum):
    """Failures the drill can inject, always on a copy of the newest backup."""

    bad_backup = "bad-backup"
    bad_backup_truncate = "bad-backup-truncate"


class BackupVerificationOptions(BaseModel):
    """Options of the drill (``dr drill backup-verification --option k=v``)."""

    model_config = ConfigDict(extra="forbid")

    inject: Injection | None = None
    heapallindexed: bool = Field(
        False, description="pg_amcheck --heapallindexed: slower, also checks index coverage."
    )
    include_foreign: bool = Field(True, description="Also verify backup.foreign dumps.")
    # Alert-started runs carry these (deployments/alerts.py: flow_parameters); the
    # lifecycle reads auto_approve and declared_at from the options.
    severity: str | None = Field(None, description="Overrides the severity parameter.")
    auto_approve: bool = False
    declared_at: datetime | None = None
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] | None = None


# --------------------------------------------------------------------------- results


class CheckOutcome(BaseModel):
    """One check of one database, as it goes into the run's checks."""

    name: str
    ok: bool
    critical: bool = True
    detail: str = ""
    value: Any = None


class NewestBackup(BaseModel):
    """The backup a database's verification will use."""

    database: str
    folder: str
    backup_id: str
    manifest: bk.Manifest
    location: str


class DatabaseVerification(BaseModel):
    """What happened to one database's backup in the drill."""

    database: str
    label: str = Field("", description="Prefix of check names; default the database.")
    source: str = "repository"
    location: str = ""
    backup_id: str | None = None
    backup_started_at: datetime | None = None
    age_seconds: float | None = None
    files: int = 0
    bytes: int = 0
    fetch_started_at: datetime | None = None
    fetch_seconds: float | None = None
    restore_seconds: float | None = None
    restored_at: datetime | None = None
    restore_jobs: int | None = None
    checks_seconds: float | None = None
    scratch_database: str | None = None
    scratch_dropped: bool = False
    injected: bk.InjectionInfo | None = None
    checks: list[CheckOutcome] = Field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.checks if c.critical)

    def check(
        self, name: str, ok: bool, detail: str = "", *, critical: bool = True, value: Any = None
    ) -> bool:
        self.checks.append(
            CheckOutcome(
                name=f"{self.label or self.database}: {name}",
                ok=ok,
                critical=critical,
                detail=redact(detail),
                value=value,
            )
        )
        return ok


# --------------------------------------------------------------------------- finding


def find_newest_backup(repo: storage.Repository, target_name: str, database: str) -> NewestBackup:
    """The newest complete backup of a database, with its manifest.

    Raises:
        VerificationError: no backup at all (empty repository), only incomplete ones
            (manifest missing), or the manifest is unreadable or describes another target,
            database or kind of backup.
    """
    folder = f"{target_name}/{database}"
    entries = list_backups(repo, folder)
    complete = [e for e in entries if e.complete]
    if not entries:
        raise VerificationError(
            f"no backup of {database} in {repo.url_for_prefix(folder + '/')} "
            "(empty repository: run `dr backup` first)"
        )
    if not complete:
        raise VerificationError(
            f"{len(entries)} backup(s) of {database} in {repo.url_for_prefix(folder + '/')} "
            f"but none complete (manifest missing), newest {entries[0].backup_id}"
        )
    newest = complete[0]
    prefix = f"{folder}/{newest.backup_id}"
    manifest = _read_remote_manifest(repo, prefix)
    _check_identity(manifest, target_name, database, repo.url_for(prefix))
    return NewestBackup(
        database=database,
        folder=folder,
        backup_id=newest.backup_id,
        manifest=manifest,
        location=repo.url_for(prefix),
    )


def _read_remote_manifest(repo: storage.Repository, prefix: str) -> bk.Manifest:
    try:
        with repo.open_read(f"{prefix}/{bk.MANIFEST_NAME}") as fh:
            data = fh.read()
    except ObjectNotFound as exc:
        raise VerificationError(f"{repo.url_for(prefix)}: manifest missing") from exc
    return bk.read_manifest(data)


def _check_identity(manifest: bk.Manifest, target_name: str, database: str, where: str) -> None:
    if manifest.target != target_name:
        raise VerificationError(
            f"{where} is a backup of target {manifest.target!r}, not {target_name!r}; "
            "refusing to verify it as this target's"
        )
    if manifest.database != database:
        raise VerificationError(
            f"{where} is a backup of database {manifest.database!r}, not {database!r}"
        )
    if manifest.kind != bk.DUMP_KIND:
        raise VerificationError(f"{where} is a {manifest.kind} backup, not a {bk.DUMP_KIND}")


# --------------------------------------------------------------------------- scratch


def _maintenance_conninfo(pgc: PostgresConfig, password: str | None) -> str:
    return pg.conninfo(
        pgc.primary,
        user=pgc.user,
        dbname=pgc.maintenance_db,
        password=password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
    )


def _protected(target: Target) -> set[str]:
    pgc = target.postgres
    return set(pgc.databases) | {pgc.maintenance_db}


@contextlib.contextmanager
def scratch_database(
    target: Target, database: str, short_id: str, result: DatabaseVerification
) -> Any:
    """Create the isolated scratch database, yield its name, and always drop it.

    Raises:
        UnsafeTargetError: the name is one of the target's databases, or already exists
            (a leftover or someone else's): nothing is created or restored then.
    """
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    maint = _maintenance_conninfo(pgc, password)
    name = bk.scratch_database_name(database, short_id)
    if name in _protected(target):
        raise UnsafeTargetError(f"scratch name {name!r} is a database of the target; refusing")
    if pg.database_exists(maint, name):
        raise UnsafeTargetError(
            f"scratch database {name!r} already exists on {pg.describe_conninfo(maint)}; "
            "refusing to restore over it (drop it by hand if it is a leftover of a drill)"
        )
    change = pg.create_database(maint, name, template="template0")
    if change.outcome != "created":
        # Created by someone else between the check and the CREATE: not ours to use or drop.
        raise UnsafeTargetError(f"scratch database {name!r} appeared concurrently; refusing")
    result.scratch_database = name
    try:
        yield name
    finally:
        try:
            pg.drop_database(maint, name, must_not_be=_protected(target), force=True)
            result.scratch_dropped = True
        except DRError as exc:
            result.error = result.error or f"scratch database {name} not dropped: {exc}"
            result.check("scratch dropped", False, f"{name} not dropped: {exc}")
            log.error("scratch database %s not dropped: %s", name, exc)


# --------------------------------------------------------------------------- verification


def _fetch(
    repo: storage.Repository,
    prefix: str,
    manifest: bk.Manifest,
    dest: Path,
    progress: Callable[[float, str], None],
) -> None:
    """Download every manifest file, verifying SHA-256 while streaming (ChecksumMismatch)."""
    total = max(1, manifest.total_bytes)
    done = 0
    for entry in manifest.files:
        repo.get_to_file(f"{prefix}/{entry.path}", dest / entry.path, expected_sha256=entry.sha256)
        local_size = (dest / entry.path).stat().st_size
        if local_size != entry.size:
            raise ChecksumMismatch(
                f"{repo.url_for(prefix + '/' + entry.path)}: {local_size} bytes, "
                f"manifest says {entry.size}"
            )
        done += entry.size
        progress(0.3 * done / total, f"verified {entry.path}")


def _validation_queries(target: Target, database: str) -> list[Any]:
    """The target's validation queries that run on ``database`` (unset database: the first)."""
    first = target.postgres.databases[0]
    return [q for q in target.validation_queries if (q.database or first) == database]


def _post_restore_checks(
    target: Target,
    database: str,
    scratch: str,
    result: DatabaseVerification,
    *,
    expected_counts: dict[str, int] | None,
    expected_schema: str | None,
    heapallindexed: bool,
) -> None:
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    scratch_conn = pg.conninfo(pgc.primary, user=pgc.user, dbname=scratch, password=password)
    t0 = time.perf_counter()
    if expected_counts is not None:
        counts = pg.table_row_counts(scratch_conn)
        diffs = [
            f"{t}: {counts.get(t)} restored vs {expected_counts.get(t)} in the manifest"
            for t in sorted(set(counts) | set(expected_counts))
            if counts.get(t) != expected_counts.get(t)
        ]
        result.check(
            "row counts",
            not diffs,
            "; ".join(diffs[:5]) + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
            if diffs
            else f"{len(counts)} tables, {sum(counts.values())} rows match the manifest",
            value=sum(counts.values()),
        )
    restored_schema = pg.schema_fingerprint(scratch_conn)["sha256"]
    source_conn = pg.conninfo(pgc.primary, user=pgc.user, dbname=database, password=password)
    if expected_schema is not None:
        result.check(
            "schema",
            restored_schema == expected_schema,
            "matches the source's schema at backup time"
            if restored_schema == expected_schema
            else f"fingerprint {restored_schema[:12]} differs from the source's at backup time "
            f"{expected_schema[:12]}",
        )
        live = pg.schema_fingerprint(source_conn)["sha256"]
        result.check(
            "schema unchanged since backup",
            live == expected_schema,
            "the source's schema is the same now"
            if live == expected_schema
            else "the source's schema changed since this backup (informational)",
            critical=False,
        )
    else:
        live = pg.schema_fingerprint(source_conn)["sha256"]
        result.check(
            "schema",
            restored_schema == live,
            "matches the live source"
            if restored_schema == live
            else f"fingerprint {restored_schema[:12]} differs from the live source {live[:12]}",
            critical=False,
        )
    for query in _validation_queries(target, database):
        answer = pg.run_validation_query(
            scratch_conn, name=query.name, sql=query.sql, expect=query.expect
        )
        value = answer.value if isinstance(answer.value, int | float | str | bool) else None
        result.check(f"validation {query.name}", answer.ok, answer.detail, value=value)
    # Last: --install-missing adds the amcheck extension to the scratch copy.
    tool_conn = pg.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
    check = bk.amcheck(
        tool_conn,
        heapallindexed=heapallindexed,
        jobs=2,
        password=password,
        bin_dir=pgc.primary.bin_dir,
    )
    result.check(
        "amcheck" + (" (heapallindexed)" if heapallindexed else ""),
        check.ok,
        check.summary(),
        value=len(check.failures),
    )
    result.checks_seconds = round(time.perf_counter() - t0, 3)


def verify_database_backup(
    config: DRConfig,
    target_name: str,
    database: str,
    *,
    short_id: str,
    rpo_seconds: float,
    newest: NewestBackup | None = None,
    work_dir: str | None = None,
    heapallindexed: bool = False,
    progress: Callable[[float, str], None] | None = None,
    now: datetime | None = None,
) -> DatabaseVerification:
    """Verify one database's newest backup end to end; every finding becomes a check.

    Args:
        config: the validated config.
        target_name: the target.
        database: the database whose backup is verified.
        short_id: makes the scratch database's name unique (the drill's run id).
        rpo_seconds: the tier's RPO, for the age check.
        newest: the backup to verify (a corrupted copy when injecting); default the newest
            complete backup in the target's repository.
        work_dir: where the backup is downloaded (a temporary folder inside it).
        heapallindexed: deeper pg_amcheck.
        progress: called with (fraction, message).
        now: the drill's time, for the backup's age.

    Returns:
        A :class:`DatabaseVerification`; its checks say what passed and failed.

    Raises:
        UnsafeTargetError: the scratch name is a target database or exists already.
    """
    target = config.target(target_name)
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    report_progress = progress or (lambda fraction, message="": None)
    result = DatabaseVerification(database=database)
    repo = open_target_repository(config, target.backup.repository)
    try:
        chosen = newest or find_newest_backup(repo, target_name, database)
    except VerificationError as exc:
        result.check("newest backup", False, str(exc))
        return result
    manifest = chosen.manifest
    result.location = chosen.location
    result.backup_id = chosen.backup_id
    result.backup_started_at = manifest.started_at
    result.files = len(manifest.files)
    result.bytes = manifest.total_bytes
    result.check("newest backup", True, f"{chosen.backup_id} ({manifest.total_bytes} bytes)")
    moment = now or datetime.now(UTC)
    age = max(0.0, (moment - manifest.started_at).total_seconds())
    result.age_seconds = round(age, 3)
    result.check(
        "backup age",
        age <= rpo_seconds,
        f"{age:.0f} s old (snapshot at {manifest.started_at:%Y-%m-%d %H:%M:%S} UTC), "
        f"RPO {rpo_seconds:.0f} s",
        value=round(age, 3),
    )
    prefix = f"{chosen.folder}/{chosen.backup_id}"
    local = Path(tempfile.mkdtemp(prefix=f"dr-verify-{database}-", dir=work_dir))
    try:
        result.fetch_started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            _fetch(repo, prefix, manifest, local, report_progress)
        except (ChecksumMismatch, ObjectNotFound) as exc:
            result.check("checksums", False, str(exc))
            return result
        result.fetch_seconds = round(time.perf_counter() - t0, 3)
        result.check("checksums", True, f"{len(manifest.files)} files match the manifest's SHA-256")
        with scratch_database(target, database, short_id, result) as scratch:
            tool_conn = pg.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
            t1 = time.perf_counter()
            try:
                restored = bk.restore_dump(
                    local,
                    tool_conn,
                    password=password,
                    bin_dir=pgc.primary.bin_dir,
                    progress_cb=lambda f, m="": report_progress(0.3 + 0.6 * f, m),
                )
            except DRError as exc:
                result.restore_seconds = round(time.perf_counter() - t1, 3)
                found = bk.diagnose_dump_dir(local)
                result.check(
                    "restore", False, str(exc) + (f" [{'; '.join(found[:3])}]" if found else "")
                )
                return result
            result.restore_seconds = restored.duration_seconds
            result.restored_at = datetime.now(UTC)
            result.restore_jobs = restored.jobs
            result.check(
                "restore",
                True,
                f"pg_restore -j {restored.jobs} into {scratch} in {restored.duration_seconds:.2f} s",
                value=restored.duration_seconds,
            )
            report_progress(0.9, "checking the restored copy")
            _post_restore_checks(
                target,
                database,
                scratch,
                result,
                expected_counts=manifest.row_counts,
                expected_schema=manifest.schema_fingerprint,
                heapallindexed=heapallindexed,
            )
    finally:
        shutil.rmtree(local, ignore_errors=True)
        report_progress(1.0, "done")
    return result


def verify_foreign_backup(
    config: DRConfig,
    target_name: str,
    entry: ForeignBackups,
    *,
    short_id: str,
    rpo_seconds: float,
    progress: Callable[[float, str], None] | None = None,
    now: datetime | None = None,
) -> DatabaseVerification:
    """Verify the newest dump matching a foreign entry: age, restorable, queries, amcheck.

    Foreign dumps have no manifest, so there are no row counts or checksums to compare;
    gzip's own CRC still catches a corrupt or truncated ``.gz`` while it streams.
    """
    target = config.target(target_name)
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    report_progress = progress or (lambda fraction, message="": None)
    database = entry.database or bk.foreign_database_hint(entry.pattern) or pgc.databases[0]
    result = DatabaseVerification(
        database=database,
        label=f"foreign {entry.pattern} ({database})",
        source="foreign",
        location=entry.location,
    )
    repo = open_target_repository(config, entry.location)
    found = repo.glob(entry.pattern)
    newest = bk.pick_newest(found)
    if newest is None:
        result.check(
            "newest foreign dump",
            False,
            f"nothing in {entry.location} matches {entry.pattern!r}",
        )
        return result
    result.location = repo.url_for(newest.key)
    result.backup_id = newest.key
    result.backup_started_at = newest.mtime
    result.files = 1
    result.bytes = newest.size
    result.check("newest foreign dump", True, f"{newest.key} ({newest.size} bytes)")
    age = max(0.0, ((now or datetime.now(UTC)) - newest.mtime).total_seconds())
    result.age_seconds = round(age, 3)
    result.check(
        "backup age",
        age <= rpo_seconds,
        f"{age:.0f} s old (file modified {newest.mtime:%Y-%m-%d %H:%M:%S} UTC), "
        f"RPO {rpo_seconds:.0f} s",
        value=round(age, 3),
    )
    try:
        with repo.open_read(newest.key) as fh:
            head = fh.read(HEAD_BYTES)
        fmt = bk.detect_dump_format(head)
    except (VerificationError, ObjectNotFound) as exc:
        result.check("restore", False, str(exc))
        return result
    with scratch_database(target, database, short_id, result) as scratch:
        tool_conn = pg.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
        result.fetch_started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            with repo.open_read(newest.key) as fh:
                if fmt in ("plain", "plain-gzip"):
                    restored = bk.restore_plain(
                        fh,
                        tool_conn,
                        gzipped=fmt == "plain-gzip",
                        password=password,
                        bin_dir=pgc.primary.bin_dir,
                        progress_cb=lambda f, m="": report_progress(0.9 * f, m),
                        total_bytes=newest.size,
                    )
                else:
                    restored = bk.restore_custom(
                        fh,
                        tool_conn,
                        gzipped=fmt == "custom-gzip",
                        password=password,
                        bin_dir=pgc.primary.bin_dir,
                        progress_cb=lambda f, m="": report_progress(0.9 * f, m),
                    )
        except DRError as exc:
            result.restore_seconds = round(time.perf_counter() - t0, 3)
            result.check("restore", False, f"{fmt} dump: {exc}")
            return result
        result.restore_seconds = round(time.perf_counter() - t0, 3)
        result.restored_at = datetime.now(UTC)
        result.restore_jobs = restored.jobs
        result.check(
            "restore",
            True,
            f"{fmt} dump restored into {scratch} in {result.restore_seconds:.2f} s",
            value=result.restore_seconds,
        )
        _post_restore_checks(
            target,
            database,
            scratch,
            result,
            expected_counts=None,
            expected_schema=None,
            heapallindexed=False,
        )
    report_progress(1.0, "done")
    return result


verify_database_backup_task = dr_task(
    verify_database_backup, name="verify-database-backup", retries=0, cache_policy=NO_CACHE
)
verify_foreign_backup_task = dr_task(
    verify_foreign_backup, name="verify-foreign-backup", retries=0, cache_policy=NO_CACHE
)


# --------------------------------------------------------------------------- injection


def inject_into_copy(
    repo: storage.Repository,
    newest: NewestBackup,
    injection: Injection,
    *,
    scratch_prefix: str,
    work_dir: str | None = None,
) -> tuple[NewestBackup, bk.InjectionInfo]:
    """Copy the newest backup to ``scratch_prefix`` in the repository, corrupted.

    The real backup is only read (and its checksums verified on the way down).

    Returns:
        The corrupted copy as a :class:`NewestBackup`, and where it was damaged.
    """
    with tempfile.TemporaryDirectory(prefix="dr-inject-", dir=work_dir) as tmp:
        real = Path(tmp) / "real"
        bad = Path(tmp) / "bad"
        real_prefix = f"{newest.folder}/{newest.backup_id}"
        for entry in newest.manifest.files:
            repo.get_to_file(
                f"{real_prefix}/{entry.path}", real / entry.path, expected_sha256=entry.sha256
            )
        bk.write_manifest(newest.manifest, real / bk.MANIFEST_NAME)
        kind = "flip" if injection is Injection.bad_backup else "truncate"
        info = bk.inject_bad_backup(
            real, bad, kind, reseal_manifest=injection is Injection.bad_backup_truncate
        )
        manifest = bk.read_manifest(bad / bk.MANIFEST_NAME)
        for entry in manifest.files:
            with open(bad / entry.path, "rb") as fh:
                # The copy's bytes are what they are: no expected checksum on the way up.
                repo.put_stream(f"{scratch_prefix}/{entry.path}", fh)
        repo.put_bytes(
            f"{scratch_prefix}/{bk.MANIFEST_NAME}", (bad / bk.MANIFEST_NAME).read_bytes()
        )
    folder, _, backup_id = scratch_prefix.rpartition("/")
    copy = NewestBackup(
        database=newest.database,
        folder=folder,
        backup_id=backup_id,
        manifest=manifest,
        location=repo.url_for(scratch_prefix),
    )
    return copy, info


# --------------------------------------------------------------------------- the body


def _short_id(ctx: RunContext) -> str:
    raw = (ctx.flow_run_id or "").replace("-", "")
    return (raw[:8] or datetime.now(UTC).strftime("%H%M%S%f")).lower()


def _mark_verified(
    ctx: RunContext, repo: storage.Repository, result: DatabaseVerification, folder: str
) -> None:
    prefix = f"{folder}/{result.backup_id}"
    if not ctx.plan("mark verified", repo.url_for(prefix)):
        return
    body = {
        "verified_at": datetime.now(UTC).isoformat(),
        "flow_run_id": ctx.flow_run_id,
        "restore_seconds": result.restore_seconds,
        "checks": [c.model_dump(mode="json") for c in result.checks],
    }
    # Not a change to compensate: the backup was verified, whatever else fails later.
    put = repo.put_bytes(
        f"{prefix}/{bk.VERIFIED_NAME}", json.dumps(body, indent=2).encode(), overwrite=True
    )
    ctx.note(f"{result.database}: backup {result.backup_id} marked verified ({put.url})")


def _wait(ctx: RunContext, board: ProgressBoard, futures: list[Any]) -> None:
    """Wait for the branches, showing progress every few percent (or every 10 s)."""
    last = -10.0
    last_time = 0.0
    pending = list(futures)
    while pending:
        pending[0].wait(timeout=PROGRESS_SECONDS)
        pending = [f for f in pending if not f.state.is_final()]
        board.refresh()
        pct = board.overall * 100
        if pending and (pct - last >= 5 or time.monotonic() - last_time > 10):
            ctx.progress(board.overall, board.latest())
            last, last_time = pct, time.monotonic()
    board.refresh()


def _make_body(options: BackupVerificationOptions) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        _verify(ctx, options)

    return body


def _verify(ctx: RunContext, options: BackupVerificationOptions) -> None:
    cfg, target_name, target = ctx.config, ctx.target_name, ctx.target
    rpo = ctx.objectives.rpo_seconds
    repo = open_target_repository(cfg, target.backup.repository)
    short_id = _short_id(ctx)
    databases = list(target.postgres.databases)
    drill_time = datetime.now(UTC)
    results: list[DatabaseVerification] = []
    newest: dict[str, NewestBackup] = {}

    with ctx.phase("assess", detail=f"newest complete backup of {', '.join(databases)}"):
        for db in databases:
            try:
                newest[db] = find_newest_backup(repo, target_name, db)
            except VerificationError as exc:
                failed = DatabaseVerification(database=db)
                failed.check("newest backup", False, str(exc))
                results.append(failed)
        for db, chosen in newest.items():
            age = (drill_time - chosen.manifest.started_at).total_seconds()
            ctx.note(f"{db}: newest backup {chosen.backup_id}, {age:.0f} s old")

    foreign = list(target.backup.foreign) if options.include_foreign else []
    if ctx.dry_run:
        with ctx.phase("plan"):
            for db, chosen in newest.items():
                ctx.plan(
                    "download and verify",
                    f"{len(chosen.manifest.files)} files of {chosen.location}",
                )
                ctx.plan(
                    "restore",
                    f"{chosen.location} into scratch database "
                    f"{bk.scratch_database_name(db, short_id)}, check it, then drop it",
                )
            for entry in foreign:
                ctx.plan("restore", f"the newest {entry.pattern} of {entry.location} into scratch")
        _record(ctx, results)
        return

    scratch_prefix: str | None = None
    injected_db: str | None = None
    try:
        if options.inject is not None:
            with ctx.phase("inject", detail=f"{options.inject.value} on a copy"):
                if not newest:
                    raise VerificationError("nothing to corrupt: no complete backup found")
                injected_db = databases[0] if databases[0] in newest else next(iter(newest))
                chosen = newest[injected_db]
                scratch_prefix = (
                    f"{SCRATCH_FOLDER}/{short_id}/{target_name}/{injected_db}/{chosen.backup_id}"
                )
                if ctx.plan("corrupt a copy of", chosen.location):
                    copy, info = inject_into_copy(
                        repo, chosen, options.inject, scratch_prefix=scratch_prefix
                    )
                    newest[injected_db] = copy
                    prefix = scratch_prefix
                    ctx.record_change(
                        Change(
                            system="storage",
                            action="put-corrupted-copy",
                            object=copy.location,
                            outcome="created",
                            undo=f"delete {copy.location}",
                        ),
                        undo=lambda: repo.delete_prefix(prefix + "/"),
                    )
                    ctx.details["injection"] = {
                        "injection": options.inject.value,
                        "database": injected_db,
                        "real_backup": chosen.location,
                        "corrupted_copy": copy.location,
                        "damage": info.kind,
                        "file": info.file,
                        "offset": info.offset,
                        "original_size": info.original_size,
                        "new_size": info.new_size,
                        "manifest_resealed": info.resealed,
                    }
                    ctx.note(
                        f"injected {options.inject.value}: {info.kind} in {info.file} of a copy "
                        f"of {chosen.backup_id} at {copy.location}; the real backup is untouched"
                    )
        ctx.stamp_failure()
        branches = [*newest.keys(), *[f"foreign:{e.pattern}" for e in foreign]]
        # The lifecycle shows progress (ctx.progress); the board only gathers it.
        board = ProgressBoard(None, "backup verification", branches, bars=False)
        with ctx.phase(
            "restore and check",
            detail=f"{len(newest)} database(s) and {len(foreign)} foreign dump(s) in parallel",
        ):
            if ctx.plan("restore into scratch databases", ", ".join(branches)):
                futures = []
                for db, chosen in newest.items():
                    futures.append(
                        verify_database_backup_task.with_options(name=f"verify-{db}").submit(
                            cfg,
                            target_name,
                            db,
                            short_id=short_id,
                            rpo_seconds=rpo,
                            newest=chosen,
                            heapallindexed=options.heapallindexed,
                            progress=board.callback(db),
                            now=drill_time,
                        )
                    )
                for i, entry in enumerate(foreign):
                    futures.append(
                        verify_foreign_backup_task.with_options(name=f"verify-foreign-{i}").submit(
                            cfg,
                            target_name,
                            entry,
                            short_id=f"{short_id}f{i}",
                            rpo_seconds=rpo,
                            progress=board.callback(branches[len(newest) + i]),
                            now=drill_time,
                        )
                    )
                _wait(ctx, board, futures)
                for name, fut in zip(branches, futures, strict=True):
                    try:
                        results.append(fut.result())
                    except Exception as exc:  # noqa: BLE001 - each branch's failure is a finding
                        failed = DatabaseVerification(database=name)
                        failed.error = f"{type(exc).__name__}: {exc}"
                        failed.check("verification", False, failed.error)
                        results.append(failed)
        ctx.progress(1.0, "verification finished")
    finally:
        if scratch_prefix is not None:
            with contextlib.suppress(DRError):
                repo.delete_prefix(scratch_prefix + "/")

    with ctx.phase("measure"):
        restored = [r for r in results if r.restored_at and r.fetch_started_at]
        own = [r for r in results if r.source == "repository" and r.age_seconds is not None]
        ages = [r.age_seconds for r in (own or results) if r.age_seconds is not None]
        if restored:
            start = min(r.fetch_started_at for r in restored if r.fetch_started_at)
            end = max(r.restored_at for r in restored if r.restored_at)
            ctx.measure(
                rto_seconds=round((end - start).total_seconds(), 3),
                rto_basis="download + SHA-256 verification + pg_restore of the newest backup "
                f"into a scratch database ({len(restored)} in parallel, wall time)",
            )
            if all(r.ok for r in results):
                ctx.stamp_restored(end)
        if ages:
            ctx.measure(
                rpo_seconds=round(max(ages), 3),
                rpo_basis="age of the newest backup at the drill: drill start - the dump's "
                "snapshot time (manifest started_at; file mtime for foreign dumps)",
            )

    with ctx.phase("mark verified"):
        for r in results:
            if r.source != "repository" or not r.ok or r.database == injected_db:
                continue
            _mark_verified(ctx, repo, r, f"{target_name}/{r.database}")

    _record(ctx, results)


def _record_scratch(ctx: RunContext, name: str, dropped: bool) -> None:
    """The scratch database as a change: net nothing when dropped, else undone by the run."""
    pgc = ctx.target.postgres
    where = f"database {name} on {pgc.primary.host}:{pgc.primary.port}"
    if dropped:
        ctx.record_change(
            Change(
                system="postgres",
                action="restore-into-scratch",
                object=where,
                outcome="unchanged",
                before={"exists": False},
                after={"exists": False},
                undo="",
                compensable=False,
            )
        )
        return
    password = pgc.password.resolve() if pgc.password else None
    target = ctx.target
    ctx.record_change(
        Change(
            system="postgres",
            action="create-database",
            object=where,
            outcome="created",
            before={"exists": False},
            after={"exists": True},
            undo=f"DROP DATABASE {name}",
        ),
        undo=lambda: pg.drop_database(
            _maintenance_conninfo(pgc, password), name, must_not_be=_protected(target), force=True
        ),
    )


def _record(ctx: RunContext, results: list[DatabaseVerification]) -> None:
    """Put every check and change into the run, the per-database details into the report."""
    for r in results:
        for c in r.checks:
            ctx.record_check(c.name, c.ok, critical=c.critical, detail=c.detail, value=c.value)
        if r.scratch_database:
            _record_scratch(ctx, r.scratch_database, r.scratch_dropped)
    ctx.details["databases"] = [
        r.model_dump(mode="json", exclude={"changes", "checks"}) for r in results
    ]
    failed = [c for r in results for c in r.checks if c.critical and not c.ok]
    if failed:
        raise VerificationError(
            "; ".join(f"{c.name}: {c.detail}" for c in failed[:4])
            + (f" (and {len(failed) - 4} more)" if len(failed) > 4 else "")
        )


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
        inject: ``bad-backup`` or ``bad-backup-truncate`` to prove the drill goes red.
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
