"""The backup-verification drill: prove the newest backups restore, and measure how fast.

The flow and its phases are in :mod:`flows.backup_verification.flow`
(``flows.backup_verification:backup_verification_flow`` in prefect.yaml); each step is a
module of this package. The other names below are a compatibility facade (removed when the
layout lands).
"""

from flows.backup_verification.flow import backup_verification_flow
from flows.backup_verification.foreign import verify_foreign_backup
from flows.backup_verification.models import (
    SCRATCH_FOLDER,
    BackupVerificationOptions,
    CheckOutcome,
    DatabaseVerification,
    Injection,
    NewestBackup,
)
from flows.backup_verification.newest import find_newest_backup
from flows.backup_verification.restore import verify_database_backup

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
