"""EBS snapshots taken as forensic evidence, tagged by the caller.

A volume that already has a snapshot with the same tags is not snapshotted twice, so a
retried task does not multiply evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import WaiterError
from pydantic import BaseModel, ConfigDict

from dr.errors import CloudError
from dr.tasking import dr_task
from tasks.aws.client import TRANSIENT_CODES, boundary, waiter_config

log = logging.getLogger(__name__)


# EBS snapshots of large volumes can take hours; evidence waits up to this by default.
SNAPSHOT_WAIT_TIMEOUT_SECONDS = 3600.0
SNAPSHOT_POLL_SECONDS = 15.0


class SnapshotInfo(BaseModel):
    """An EBS snapshot, as recorded in an evidence manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_id: str
    volume_id: str
    state: str
    progress: str | None = None
    start_time: datetime | None = None
    volume_size_gib: int | None = None
    description: str | None = None
    encrypted: bool | None = None
    tags: dict[str, str] = {}


def _tags(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _snapshot_info(snap: Mapping[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=snap["SnapshotId"],
        volume_id=snap.get("VolumeId", ""),
        state=snap.get("State", "unknown"),
        progress=snap.get("Progress"),
        start_time=snap.get("StartTime"),
        volume_size_gib=snap.get("VolumeSize"),
        description=snap.get("Description"),
        encrypted=snap.get("Encrypted"),
        tags=_tags(snap.get("Tags")),
    )


def create_volume_snapshots(
    client: BaseClient,
    volume_ids: Sequence[str],
    *,
    description: str,
    tags: Mapping[str, str],
) -> list[str]:
    """Start a forensic snapshot of each volume, tagged, before anything is remediated.

    Why reuse: evidence is taken once. A volume that already has a snapshot (not failed)
    carrying all of ``tags`` is not snapshotted again, so give tags that identify the
    incident (``{"dr:incident": "<id>"}``); with no tags every call makes new snapshots.

    Args:
        client: an ``ec2`` client from :func:`~tasks.aws.client.make_client`.
        volume_ids: EBS volume ids (``vol-...``).
        description: the snapshots' description (who and why).
        tags: tags put on every snapshot.

    Returns:
        Snapshot ids, in the order of ``volume_ids`` (use :func:`wait_snapshots`).

    Raises:
        CloudError: no such volume (``InvalidVolume.NotFound``), access denied, throttling.
    """
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    ids: list[str] = []
    for volume_id in volume_ids:
        obj = f"volume {volume_id}"
        if tags:
            filters = [{"Name": "volume-id", "Values": [volume_id]}] + [
                {"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()
            ]
            with boundary("look for snapshots of", obj):
                found = client.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]
            usable = [s for s in found if s.get("State") != "error"]
            if usable:
                first = min(usable, key=lambda s: (str(s.get("StartTime", "")), s["SnapshotId"]))
                ids.append(first["SnapshotId"])
                log.info(
                    "volume %s already has snapshot %s with these tags: unchanged",
                    volume_id,
                    first["SnapshotId"],
                )
                continue
        kwargs: dict[str, Any] = {"VolumeId": volume_id, "Description": description}
        if tag_list:
            kwargs["TagSpecifications"] = [{"ResourceType": "snapshot", "Tags": tag_list}]
        with boundary("snapshot", obj):
            snap = client.create_snapshot(**kwargs)
        ids.append(snap["SnapshotId"])
        log.info("volume %s: snapshot %s started", volume_id, snap["SnapshotId"])
    return ids


def wait_snapshots(
    client: BaseClient,
    snapshot_ids: Sequence[str],
    *,
    timeout_seconds: float = SNAPSHOT_WAIT_TIMEOUT_SECONDS,
    poll_seconds: float = SNAPSHOT_POLL_SECONDS,
) -> list[SnapshotInfo]:
    """Wait until every snapshot is ``completed``; fail at once if one is in ``error``.

    Args:
        client: an ``ec2`` client from :func:`~tasks.aws.client.make_client`.
        snapshot_ids: from :func:`create_volume_snapshots`.
        timeout_seconds: how long to wait in all.
        poll_seconds: delay between polls.

    Returns:
        The snapshots as they are once completed, in the order given.

    Raises:
        CloudError: a snapshot failed (permanent), not completed in time (transient), no
            such snapshot, access denied.
    """
    if not snapshot_ids:
        return []
    obj = f"snapshots {', '.join(snapshot_ids)}"
    waiter = client.get_waiter("snapshot_completed")
    try:
        waiter.wait(
            SnapshotIds=list(snapshot_ids),
            WaiterConfig=waiter_config(timeout_seconds, poll_seconds),
        )
    except WaiterError as exc:
        last = getattr(exc, "last_response", None) or {}
        if "Error" in last:
            error = last["Error"]
            raise CloudError(
                f"wait for {obj}: AWS answered {error.get('Code')}: {error.get('Message')}",
                transient=str(error.get("Code")) in TRANSIENT_CODES,
            ) from exc
        failed = [s["SnapshotId"] for s in last.get("Snapshots", []) if s.get("State") == "error"]
        if failed:
            raise CloudError(f"snapshot(s) {', '.join(failed)} failed (state error)") from exc
        raise CloudError(
            f"{obj} not completed after {timeout_seconds:.0f} s", transient=True
        ) from exc
    with boundary("describe", obj):
        snaps = client.describe_snapshots(SnapshotIds=list(snapshot_ids))["Snapshots"]
    by_id = {s["SnapshotId"]: _snapshot_info(s) for s in snaps}
    log.info("snapshots completed: %s", ", ".join(snapshot_ids))
    return [by_id[i] for i in snapshot_ids]


create_volume_snapshots_task = dr_task(create_volume_snapshots, name="aws-create-volume-snapshots")
wait_snapshots_task = dr_task(wait_snapshots, name="aws-wait-snapshots", retries=1)
