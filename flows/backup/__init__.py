"""Take backups of a target: ``pg_dump -Fd`` of every database, or a physical base backup.

The flow is :func:`flows.backup.flow.backup_flow` (``flows.backup:backup_flow`` in
prefect.yaml).common.backups`,
:mod:`flows.common.backup_staging` and :mod:`flows.common.progress`.
"""

from __future__ import annotations

from flows.backup.flow import backup_flow

__all__ = ["backup_flow"]
