"""Compatibility facade (removed when the layout lands): AWS code moved to :mod:`tasks.aws`."""

from tasks.aws.client import make_client, make_session
from tasks.aws.iam import (
    delete_access_key,
    delete_access_key_task,
    rotate_access_key,
    rotate_access_key_task,
)
from tasks.aws.key_proofs import (
    KeyProof,
    prove_key_rejected,
    prove_key_rejected_task,
    prove_key_works,
    prove_key_works_task,
)
from tasks.aws.route53 import (
    RecordState,
    ensure_record,
    ensure_record_task,
    get_record,
    restore_record,
)
from tasks.aws.secrets_manager import (
    put_secret_value,
    put_secret_value_task,
    read_secret,
    restore_secret_version,
    secret_versions,
)
from tasks.aws.security_groups import (
    IngressRule,
    block_cidrs,
    block_cidrs_task,
    describe_ingress,
    restore_ingress,
    restore_ingress_task,
    revoke_ingress,
    revoke_ingress_task,
)
from tasks.aws.snapshots import (
    SnapshotInfo,
    create_volume_snapshots,
    create_volume_snapshots_task,
    wait_snapshots,
    wait_snapshots_task,
)
from tasks.aws.undo import undo_change, undo_change_task

__all__ = [
    "IngressRule",
    "KeyProof",
    "RecordState",
    "SnapshotInfo",
    "block_cidrs",
    "block_cidrs_task",
    "create_volume_snapshots",
    "create_volume_snapshots_task",
    "delete_access_key",
    "delete_access_key_task",
    "describe_ingress",
    "ensure_record",
    "ensure_record_task",
    "get_record",
    "make_client",
    "make_session",
    "prove_key_rejected",
    "prove_key_rejected_task",
    "prove_key_works",
    "prove_key_works_task",
    "put_secret_value",
    "put_secret_value_task",
    "read_secret",
    "restore_ingress",
    "restore_ingress_task",
    "restore_record",
    "restore_secret_version",
    "revoke_ingress",
    "revoke_ingress_task",
    "rotate_access_key",
    "rotate_access_key_task",
    "secret_versions",
    "undo_change",
    "undo_change_task",
    "wait_snapshots",
    "wait_snapshots_task",
]
