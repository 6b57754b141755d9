"""Secrets Manager: read a secret, store a new value, and stage the previous one back.

A new version becomes ``AWSCURRENT`` and the old one ``AWSPREVIOUS``; the Change records
version ids only, so undoing moves the stage back without ever holding the old value.
Values are registered with :func:`dr.errors.register_secret` the moment they are read or
written, and returned as ``SecretStr``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from botocore.client import BaseClient
from pydantic import SecretStr

from dr.changes import Change
from dr.errors import CloudError, PreconditionError, VerificationError, register_secret
from dr.tasking import dr_task
from tasks.aws.changes import expect_change, make_change
from tasks.aws.client import boundary

log = logging.getLogger(__name__)


AWSCURRENT = "AWSCURRENT"
AWSPREVIOUS = "AWSPREVIOUS"


def secret_versions(client: BaseClient, secret_id: str) -> dict[str, list[str]]:
    """Version ids of a secret with their staging labels (``AWSCURRENT``, ``AWSPREVIOUS``).

    Raises:
        CloudError: no such secret (``ResourceNotFoundException``), access denied, throttling.
    """
    with boundary("describe", f"secret {secret_id}"):
        described = client.describe_secret(SecretId=secret_id)
    return {v: list(stages) for v, stages in described.get("VersionIdsToStages", {}).items()}


def _version_with(versions: Mapping[str, list[str]], stage: str) -> str | None:
    return next((v for v, stages in versions.items() if stage in stages), None)


def read_secret(client: BaseClient, secret_id: str) -> SecretStr:
    """Read a secret's current value (the version staged ``AWSCURRENT``).

    Args:
        client: a ``secretsmanager`` client from :func:`~tasks.aws.client.make_client`.
        secret_id: the secret's name or ARN.

    Returns:
        The value, registered for redaction.

    Raises:
        CloudError: no such secret, access denied, a binary secret that is not UTF-8.
    """
    obj = f"secret {secret_id}"
    with boundary("read", obj):
        answer = client.get_secret_value(SecretId=secret_id, VersionStage=AWSCURRENT)
    if "SecretString" in answer:
        value = str(answer["SecretString"])
    else:
        try:
            value = bytes(answer.get("SecretBinary", b"")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CloudError(f"read {obj}: binary value is not UTF-8 text") from exc
    register_secret(value)
    return SecretStr(value)


def put_secret_value(client: BaseClient, secret_id: str, value: SecretStr | str) -> Change:
    """Store a new value as the secret's current version, unless it already is.

    Secrets Manager stages the new version ``AWSCURRENT`` and moves ``AWSPREVIOUS`` to the
    version it replaced; the Change records version ids only, so :func:`restore_secret_version`
    can move the stage back without this run ever holding the old value.

    Args:
        client: a ``secretsmanager`` client from :func:`~tasks.aws.client.make_client`.
        secret_id: the secret's name or ARN (it must exist).
        value: the new value.

    Returns:
        A Change (``updated`` or ``unchanged``) with ``before["version_id"]`` and
        ``after["version_id"]``, holding no value.

    Raises:
        CloudError: no such secret (``ResourceNotFoundException``), access denied, throttling.
        VerificationError: the new version is not staged ``AWSCURRENT`` afterwards.
    """
    new_value = value.get_secret_value() if isinstance(value, SecretStr) else value
    register_secret(new_value)
    obj = f"secret {secret_id}"
    versions = secret_versions(client, secret_id)
    current_version = _version_with(versions, AWSCURRENT)
    if current_version is not None:
        current = read_secret(client, secret_id)
        if current.get_secret_value() == new_value:
            log.info("%s already holds this value (version %s): unchanged", obj, current_version)
            return make_change(
                "secretsmanager",
                secret_id,
                "put-secret-value",
                "unchanged",
                before={"secret_id": secret_id, "version_id": current_version},
                after={"secret_id": secret_id, "version_id": current_version},
            )
    with boundary("put value of", obj):
        answer = client.put_secret_value(
            SecretId=secret_id,
            SecretString=new_value,
            ClientRequestToken=str(uuid.uuid4()),
            VersionStages=[AWSCURRENT],
        )
    new_version = str(answer["VersionId"])
    after_versions = secret_versions(client, secret_id)
    if AWSCURRENT not in after_versions.get(new_version, []):
        raise VerificationError(
            f"{obj}: new version {new_version} is not staged {AWSCURRENT} "
            f"(stages: {after_versions})"
        )
    log.info(
        "%s: new version %s is %s, previous %s is %s",
        obj,
        new_version,
        AWSCURRENT,
        current_version,
        AWSPREVIOUS,
    )
    undo = ""
    if current_version is not None:
        undo = (
            f"aws secretsmanager update-secret-version-stage --secret-id {secret_id} "
            f"--version-stage {AWSCURRENT} --move-to-version-id {current_version} "
            f"--remove-from-version-id {new_version}"
        )
    return make_change(
        "secretsmanager",
        secret_id,
        "put-secret-value",
        "updated",
        before={"secret_id": secret_id, "version_id": current_version},
        after={"secret_id": secret_id, "version_id": new_version},
        undo=undo,
        compensable=current_version is not None,
    )


def restore_secret_version(client: BaseClient, change: Change) -> Change:
    """Make the version that was current before :func:`put_secret_value` current again.

    Only when the version we staged is still current: a later rotation is not undone.
    (Breach flows should not call this: it brings a possibly leaked value back.)

    Returns:
        The Change made by restoring (``unchanged`` when already so).

    Raises:
        PreconditionError: not a put-secret-value change, or a later version is current.
        CloudError: no such secret or version, access denied, throttling.
    """
    expect_change(change, "secretsmanager", "put-secret-value")
    secret_id = str(change.after["secret_id"])
    ours = str(change.after["version_id"])
    old = change.before.get("version_id")
    if change.outcome == "unchanged" or old is None:
        return make_change("secretsmanager", secret_id, "restore-secret-version", "unchanged")
    versions = secret_versions(client, secret_id)
    current = _version_with(versions, AWSCURRENT)
    if current == old:
        log.info("secret %s: version %s already current: unchanged", secret_id, old)
        return make_change("secretsmanager", secret_id, "restore-secret-version", "unchanged")
    if current != ours:
        raise PreconditionError(
            f"secret {secret_id}: version {current} is current, not {ours} which we staged; "
            "not undoing a later change"
        )
    with boundary("restage", f"secret {secret_id}"):
        client.update_secret_version_stage(
            SecretId=secret_id,
            VersionStage=AWSCURRENT,
            MoveToVersionId=old,
            RemoveFromVersionId=ours,
        )
    log.info("secret %s: version %s is %s again (was %s)", secret_id, old, AWSCURRENT, ours)
    return make_change(
        "secretsmanager",
        secret_id,
        "restore-secret-version",
        "updated",
        before={"secret_id": secret_id, "version_id": ours},
        after={"secret_id": secret_id, "version_id": old},
        undo=(
            f"aws secretsmanager update-secret-version-stage --secret-id {secret_id} "
            f"--version-stage {AWSCURRENT} --move-to-version-id {ours} "
            f"--remove-from-version-id {old}"
        ),
    )


read_secret_task = dr_task(read_secret, name="aws-read-secret", timeout_seconds=120)
secret_versions_task = dr_task(secret_versions, name="aws-secret-versions", timeout_seconds=120)
put_secret_value_task = dr_task(put_secret_value, name="aws-put-secret-value")
restore_secret_version_task = dr_task(restore_secret_version, name="aws-restore-secret-version")
