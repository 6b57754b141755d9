"""Files and objects of a target, backed up next to its databases (seed 000 §3.3, 004).

Each ``files:`` entry is one parallel branch: a manifest (key, size, SHA-256, S3 version
id), resumable and idempotent like the dumps. The branches start once the dumps are done
(see :func:`flows.backup.flow.run_backup`): backup verification checks the dumps' rows
against these objects. Only with logical backups: the base backup is the cluster's, for
point-in-time recovery.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from dr.config import DRConfig
from flows.common.branches import Branches
from tasks.files.backup import backup_files_task

__all__ = ["FilesBackupResult", "collect_files_backups", "submit_files_backups"]


class FilesBackupResult(BaseModel):
    """One ``files:`` entry's backup, for the run's report."""

    source: str
    location: str
    backup_id: str
    objects: int
    bytes: int


def submit_files_backups(cfg: DRConfig, target: str) -> Branches:
    """One branch per ``files:`` entry of the target, to its repository."""
    tgt = cfg.target(target)
    branches = Branches()
    for source in tgt.files:
        repo = source.repository or str(tgt.backup.repository)
        branches.submit(f"files-{source.name}", backup_files_task, source, repo, aws=cfg.aws)
    return branches


def collect_files_backups(branches: Branches, failures: dict[str, str]) -> list[FilesBackupResult]:
    """Every entry's manifest summary; a failed entry goes into ``failures`` as ``files:<name>``."""
    results: list[FilesBackupResult] = []
    for outcome in branches.collect():
        name = outcome.name.removeprefix("files-")
        if not outcome.ok:
            failures[f"files:{name}"] = outcome.detail
            continue
        manifest: Any = outcome.value
        results.append(
            FilesBackupResult(
                source=name,
                location=manifest.location,
                backup_id=manifest.backup_id,
                objects=manifest.count,
                bytes=manifest.total_bytes,
            )
        )
    return results
