"""The backup flow: back up every database (or the cluster), apply retention, check WAL age.

The runbook it replaces (seed 003): hourly ``pg_dump`` to S3, 48 hourly / 30 daily / 52
weekly retention, WAL archiving for point-in-time recovery. Steps, per database and in
parallel: dump in the dump's own exported snapshot (so the manifest's row counts are
exactly what the dump holds) into a local staging folder; describe it in a manifest; upload
(:mod:`flows.common.backup_staging`); apply retention. The ``files:`` entries are backed up
once the dumps are done (one branch each), so the objects every dumped row names are in
the files backup. Then the WAL archive's age is compared with the target's RPO.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dr.clock import utcnow
from dr.config import DRConfig, Target, load_config
from dr.errors import ConfigError, DRError, StorageError
from flows.backup.dump import backup_database_task
from flows.backup.files import collect_files_backups, submit_files_backups
from flows.backup.markdown import render_markdown
from flows.backup.models import BackupFailed, BackupKind, BackupRunResult, RetentionResult
from flows.backup.retention import apply_retention_task, wal_archive_status_task
from flows.common.backup_staging import DatabaseBackupResult
from flows.common.backups import BASE_FOLDER, base_backup_target_task
from flows.common.progress import ProgressBoard
from flows.registry import find_config_path
from tasks.report import tables as report_tables

__all__ = ["backup_flow", "run_backup"]


@flow(name="backup", log_prints=False)
def backup_flow(
    target: str,
    kind: BackupKind = BackupKind.logical,
    config_path: str | None = None,
    staging_dir: str | None = None,
) -> dict[str, Any]:
    """Back up every database of a target (``logical``) or take a base backup (``base``).

    Args:
        target: a target of the config.
        kind: ``logical`` (pg_dump, hourly) or ``base`` (pg_basebackup, daily, for PITR).
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        staging_dir: local folder for dumps before upload (kept across runs to resume).

    Returns:
        The :class:`BackupRunResult` as a JSON-ready dict.

    Raises:
        BackupFailed: a database's backup failed (after the report was written); carries
            the result, so the command line can still show what did succeed.
    """
    result = run_backup(target, kind, config_path=config_path, staging_dir=staging_dir)
    if not result.ok:
        raise BackupFailed(result)
    return json.loads(result.model_dump_json())


def _check_layout(target_name: str, target: Target) -> None:
    if BASE_FOLDER in target.postgres.databases:
        raise ConfigError(
            f"targets.{target_name}.postgres.databases: a database named {BASE_FOLDER!r} "
            f"would share the base-backup folder <repo>/{target_name}/{BASE_FOLDER}/",
            [(f"targets.{target_name}.postgres.databases", f"{BASE_FOLDER!r} is reserved")],
        )


def run_backup(
    target: str,
    kind: BackupKind = BackupKind.logical,
    *,
    config: DRConfig | None = None,
    config_path: str | None = None,
    staging_dir: str | None = None,
) -> BackupRunResult:
    """The body of :func:`backup_flow` (call it inside a flow run)."""
    started = utcnow()
    t0 = time.perf_counter()
    cfg = config or load_config(find_config_path(config_path))
    tgt = cfg.target(target)
    _check_layout(target, tgt)
    objectives = cfg.objectives(target)
    kind = BackupKind(kind)
    names = list(tgt.postgres.databases) if kind is BackupKind.logical else [BASE_FOLDER]
    board = ProgressBoard(
        report_tables.artifact_key("backup", target, "progress"),
        f"{kind.value} backup of {target}",
        names,
    )
    try:
        futures = _submit_backups(cfg, target, kind, names, board, staging_dir)
        wal_future = wal_archive_status_task.submit(cfg, target)
        board.wait(futures)
    finally:
        board.close()
    backups, failures = _collect(target, names, futures)
    # After the dumps, never alongside: every row a dump holds then has its object in the
    # files backup (the application writes the object before its row), so the pair restores
    # consistent; objects uploaded since are only objects without a row.
    files = submit_files_backups(cfg, target) if kind is BackupKind.logical else None
    files_backups = collect_files_backups(files, failures) if files is not None else []
    warnings: list[str] = []
    retention = _apply_retention(cfg, target, kind, backups, warnings)
    wal_age, wal_segment, wal_ok = _check_wal(wal_future, tgt, objectives.rpo_seconds, warnings)
    for text in warnings:
        get_run_logger().warning("%s", text)
    result = BackupRunResult(
        target=target,
        kind=kind.value,
        ok=not failures,
        started_at=started,
        ended_at=utcnow(),
        duration_seconds=round(time.perf_counter() - t0, 3),
        backups=backups,
        files=files_backups,
        failures=failures,
        retention=retention,
        wal_archive_age_seconds=None if wal_age is None else round(wal_age, 1),
        wal_newest_segment=wal_segment,
        rpo_objective_seconds=objectives.rpo_seconds,
        wal_within_rpo=wal_ok,
        warnings=warnings,
    )
    with contextlib.suppress(Exception):
        create_markdown_artifact(
            markdown=render_markdown(result),
            key=report_tables.artifact_key("backup", target, "report"),
            description=f"{kind.value} backup of {target}",
        )
    return result


def _submit_backups(
    cfg: DRConfig,
    target: str,
    kind: BackupKind,
    names: list[str],
    board: ProgressBoard,
    staging_dir: str | None,
) -> list[Any]:
    """One branch per database (logical), or one base backup; in parallel."""
    if kind is not BackupKind.logical:
        return [
            base_backup_target_task.submit(
                cfg, target, staging_dir=staging_dir, progress=board.callback(BASE_FOLDER)
            )
        ]
    return [
        backup_database_task.with_options(name=f"backup-{db}").submit(
            cfg, target, db, staging_dir=staging_dir, progress=board.callback(db)
        )
        for db in names
    ]


def _collect(
    target: str, names: list[str], futures: list[Any]
) -> tuple[list[DatabaseBackupResult], dict[str, str]]:
    """Every branch's result, or its failure (each one is reported)."""
    backups: list[DatabaseBackupResult] = []
    failures: dict[str, str] = {}
    for name, fut in zip(names, futures, strict=True):
        try:
            backups.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - every branch's failure is reported
            failures[name] = str(exc)
            get_run_logger().error("backup of %s/%s failed: %s", target, name, exc)
    return backups, failures


def _apply_retention(
    cfg: DRConfig,
    target: str,
    kind: BackupKind,
    backups: list[DatabaseBackupResult],
    warnings: list[str],
) -> list[RetentionResult]:
    """Retention on each folder that got a new backup; a failure is a warning."""
    retention: list[RetentionResult] = []
    for result in backups:
        folder = f"{target}/{result.database if kind is BackupKind.logical else BASE_FOLDER}"
        try:
            retention.append(apply_retention_task(cfg, target, folder))
        except (StorageError, DRError) as exc:
            warnings.append(f"retention of {folder} failed: {exc}")
    return retention


def _check_wal(
    wal_future: Any, tgt: Target, rpo_seconds: float, warnings: list[str]
) -> tuple[float | None, str | None, bool | None]:
    """The WAL archive's age and newest segment, and whether it is within the RPO."""
    try:
        wal_age, wal_segment = wal_future.result()
    except Exception as exc:  # noqa: BLE001 - a WAL archive problem is a finding, not a crash
        wal_age, wal_segment = None, None
        warnings.append(f"WAL archive could not be read: {exc}")
    if not tgt.backup.wal_archive:
        return wal_age, wal_segment, None
    if wal_age is None:
        warnings.append("WAL archive holds no segment: point-in-time recovery is impossible")
        return wal_age, wal_segment, False
    wal_ok = wal_age <= rpo_seconds
    if not wal_ok:
        warnings.append(
            f"newest archived WAL segment {wal_segment} is {wal_age:.0f} s old, "
            f"beyond the RPO of {rpo_seconds:.0f} s"
        )
    return wal_age, wal_segment, wal_ok
