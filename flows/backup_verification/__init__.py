"""The backup-verification drill: prove the newest backups restore, and measure how fast.

The flow and its phases are in :mod:`flows.backup_verification.flow`
(``flows.backup_verification:backup_verification_flow`` in prefect.yaml); each step is a
module of this package.
"""

from __future__ import annotations

from flows.backup_verification.flow import backup_verification_flow

__all__ = ["backup_verification_flow"]
