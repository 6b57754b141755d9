"""Take backups of a target: ``pg_dump -Fd`` of every database, or a physical base backup.

The flow is :func:`flows.backup.flow.backup_flow` (``flows.backup:backup_flow`` in
prefect.yaml). The other names below are a compatibility facade (removed when the layout
lands): what other scenarios share now lives in :mod:`flows.common.backups`,
:mod:`flows.common.backup_staging` and :mod:`flows.common.progress`.
"""

from flows.backup.flow import backup_flow, run_backup
from flows.backup.models import BackupFailed, BackupKind, BackupRunResult, RetentionResult
from flows.common.backup_staging import (  # noqa: F401
    LOCK_FILE,
    PARTIAL_MARKER,
    DatabaseBackupResult,
)
from flows.common.backup_staging import stage_and_upload as _stage_and_upload  # noqa: F401
from flows.common.backups import (
    BASE_FOLDER,
    backup_id_time,
    base_backup_target,
    list_backups,
    open_target_repository,
)
from flows.common.progress import ProgressBoard

__all__ = [
    "BASE_FOLDER",
    "BackupFailed",
    "BackupKind",
    "BackupRunResult",
    "DatabaseBackupResult",
    "ProgressBoard",
    "RetentionResult",
    "backup_flow",
    "backup_id_time",
    "base_backup_target",
    "list_backups",
    "open_target_repository",
    "run_backup",
]
