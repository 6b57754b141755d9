"""Undo any compensable AWS Change (for rollback hooks), dispatching on its system and action."""

from __future__ import annotations

from dr.changes import Change
from dr.config import AWSConfig
from dr.errors import PreconditionError
from dr.tasking import dr_task
from tasks.aws.changes import make_change
from tasks.aws.client import make_client
from tasks.aws.route53 import restore_record
from tasks.aws.secrets_manager import restore_secret_version
from tasks.aws.security_groups import restore_ingress


def undo_change(aws: AWSConfig, change: Change) -> Change:
    """Undo any compensable Change made by :mod:`tasks.aws` (for rollback hooks).

    Args:
        aws: the ``aws`` section; the client for the change's service is built here.
        change: a Change returned by a step of :mod:`tasks.aws`.

    Returns:
        The Change made by undoing (``unchanged`` when there was nothing to undo).

    Raises:
        PreconditionError: the change is not an AWS step's or cannot be undone automatically
            (a key rotation, a deletion).
        CloudError: as the matching ``restore_*`` function.
    """
    if change.outcome == "unchanged":
        return make_change(change.system, change.object, f"undo-{change.action}", "unchanged")
    if not change.compensable:
        raise PreconditionError(
            f"cannot undo {change.system} {change.action} of {change.object} automatically"
            + (f"; {change.undo}" if change.undo else "")
        )
    if change.system == "route53" and change.action == "upsert-record":
        return restore_record(make_client(aws, "route53"), change)
    if change.system == "ec2" and change.action in ("revoke-ingress", "block-cidrs"):
        return restore_ingress(make_client(aws, "ec2"), change)
    if change.system == "secretsmanager" and change.action == "put-secret-value":
        return restore_secret_version(make_client(aws, "secretsmanager"), change)
    raise PreconditionError(f"undo_change does not know {change.system} {change.action}")


undo_change_task = dr_task(undo_change, name="aws-undo-change")
