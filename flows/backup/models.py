"""What a backup run returns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from dr.errors import DRError
from flows.backup.files import FilesBackupResult
from flows.common.backup_staging import DatabaseBackupResult

__all__ = ["BackupFailed", "BackupKind", "BackupRunResult", "RetentionResult"]


class BackupKind(StrEnum):
    """``logical``: pg_dump of every database; ``base``: pg_basebackup of the cluster (PITR)."""

    logical = "logical"
    base = "base"


class RetentionResult(BaseModel):
    folder: str
    kept: list[str]
    deleted: list[str]


class BackupRunResult(BaseModel):
    """What ``backup_flow`` returns (``dr backup --json`` prints it)."""

    target: str
    kind: str
    ok: bool
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    backups: list[DatabaseBackupResult] = Field(default_factory=list)
    files: list[FilesBackupResult] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)
    retention: list[RetentionResult] = Field(default_factory=list)
    wal_archive_age_seconds: float | None = None
    wal_newest_segment: str | None = None
    rpo_objective_seconds: float
    wal_within_rpo: bool | None = None
    warnings: list[str] = Field(default_factory=list)


class BackupFailed(DRError):
    """A database's backup failed; raised after the report, carrying the whole result."""

    def __init__(self, result: BackupRunResult) -> None:
        super().__init__(
            f"{result.kind} backup of {result.target} failed for "
            + "; ".join(f"{name}: {reason}" for name, reason in result.failures.items())
        )
        self.result = result
