"""The drill's options and what it finds per database."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from dr.errors import redact
from flows.common.options import AlertOptions
from tasks.backups import coverage as backups_coverage
from tasks.backups import inject as backups_inject
from tasks.backups import manifest as backups_manifest

__all__ = [
    "SCRATCH_FOLDER",
    "BackupVerificationOptions",
    "CheckOutcome",
    "DatabaseVerification",
    "Injection",
    "NewestBackup",
]

#: Corrupted copies made by ``--inject`` live under this prefix of the repository.
SCRATCH_FOLDER = "_drill-scratch"


class Injection(StrEnum):
    """Failures the drill can inject, always on a copy of the newest backup."""

    bad_backup = "bad-backup"
    bad_backup_truncate = "bad-backup-truncate"
    truncated_plain_dump = "truncated-plain-dump"
    bad_object = "bad-object"  # a files backup's object: flows/backup_verification/files.py
    missing_object = "missing-object"  # left out of a restored copy: backup_verification/links.py


class BackupVerificationOptions(AlertOptions):
    """Options of the drill (``dr drill backup-verification --option k=v``)."""

    inject: Injection | None = Field(
        None, description="Make the drill go red on purpose, on a copy of the newest backup."
    )
    heapallindexed: bool = Field(
        False, description="pg_amcheck --heapallindexed: slower, also checks index coverage."
    )
    include_foreign: bool = Field(True, description="Also verify backup.foreign dumps.")


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
    manifest: backups_manifest.Manifest
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
    injected: backups_inject.InjectionInfo | None = None
    coverage: backups_coverage.Coverage | None = None
    checks: list[CheckOutcome] = Field(default_factory=list)
    error: str = ""
    link_rows: dict[str, list[tuple[str, str | None]]] = Field(
        default_factory=dict,
        exclude=True,  # every row of a link: for the check in the backups, not for reports
        description="Per link on this database: (key, sha256) of the rows in the scratch copy.",
    )
    link_errors: dict[str, str] = Field(
        default_factory=dict, description="Per link: why its rows could not be read."
    )

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
