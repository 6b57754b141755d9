"""IAM access keys: rotate a (compromised) key, and delete it once inactive.

:func:`rotate_access_key` creates the new key, then deactivates the old one; it never
deletes in the same step (a person deletes later, with :func:`delete_access_key`). The
rotation is not compensable on purpose: undoing it would re-enable a key believed
compromised. New secrets are registered with :func:`dr.errors.register_secret` the moment
they are made and returned as ``SecretStr``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from botocore.client import BaseClient
from pydantic import SecretStr

from dr.changes import Change
from dr.errors import CloudError, PreconditionError, VerificationError, register_secret
from dr.tasking import dr_task
from tasks.aws.changes import make_change
from tasks.aws.client import boundary

log = logging.getLogger(__name__)


# IAM allows two access keys per user:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html
IAM_MAX_KEYS_PER_USER = 2


def list_access_keys(client: BaseClient, user_name: str) -> list[dict[str, Any]]:
    """The user's access keys as ``{"key_id", "status", "created"}`` (no secrets)."""
    keys: list[dict[str, Any]] = []
    with boundary("list access keys of", f"IAM user {user_name}"):
        for page in client.get_paginator("list_access_keys").paginate(UserName=user_name):
            for k in page.get("AccessKeyMetadata", []):
                created = k.get("CreateDate")
                keys.append(
                    {
                        "key_id": k["AccessKeyId"],
                        "status": k["Status"],
                        "created": created.isoformat() if created else None,
                    }
                )
    return keys


def _set_key_status(
    client: BaseClient, user_name: str, key_id: str, status: Literal["Active", "Inactive"]
) -> None:
    with boundary(f"set status {status} of", f"access key {key_id} of IAM user {user_name}"):
        client.update_access_key(UserName=user_name, AccessKeyId=key_id, Status=status)


def _rotatable_key(keys: list[dict[str, Any]], user_name: str, old_key_id: str) -> dict[str, Any]:
    """The key to retire; refuses a key of someone else, or a user already at two keys."""
    old = next((k for k in keys if k["key_id"] == old_key_id), None)
    if old is None:
        raise PreconditionError(
            f"access key {old_key_id} is not a key of IAM user {user_name} "
            f"(its keys: {', '.join(k['key_id'] for k in keys) or 'none'})"
        )
    others = [k for k in keys if k["key_id"] != old_key_id]
    if len(keys) >= IAM_MAX_KEYS_PER_USER and others:
        other = others[0]
        raise PreconditionError(
            f"IAM user {user_name} already has a second access key {other['key_id']} "
            f"({other['status']}, created {other['created']}); IAM allows "
            f"{IAM_MAX_KEYS_PER_USER}. If it is left from an interrupted rotation its secret "
            "is lost: deactivate and delete it, then rotate again"
        )
    return old


def _deactivate_or_drop_new(
    client: BaseClient, user_name: str, old_key_id: str, new_key_id: str
) -> None:
    """Deactivate the old key; if that fails, delete the new one (its secret would be lost)."""
    try:
        _set_key_status(client, user_name, old_key_id, "Inactive")
    except CloudError as exc:
        try:
            with boundary("delete new access key of", f"IAM user {user_name}"):
                client.delete_access_key(UserName=user_name, AccessKeyId=new_key_id)
        except CloudError as cleanup:
            raise CloudError(
                f"IAM user {user_name}: could not deactivate {old_key_id} ({exc}) nor "
                f"delete the new key {new_key_id} ({cleanup}); delete {new_key_id} by hand",
                transient=False,
            ) from exc
        log.warning(
            "IAM user %s: deactivating %s failed; new key %s deleted again",
            user_name,
            old_key_id,
            new_key_id,
        )
        raise


def _verify_rotated(client: BaseClient, user_name: str, new_key_id: str, old_key_id: str) -> None:
    """Check that IAM lists the new key Active and the old one Inactive."""
    status = {k["key_id"]: k["status"] for k in list_access_keys(client, user_name)}
    if status.get(new_key_id) != "Active" or status.get(old_key_id) != "Inactive":
        raise VerificationError(
            f"IAM user {user_name}: after rotation IAM lists new key {new_key_id} as "
            f"{status.get(new_key_id, 'absent')} and old key {old_key_id} as "
            f"{status.get(old_key_id, 'absent')}"
        )


def rotate_access_key(
    client: BaseClient, user_name: str, old_key_id: str
) -> tuple[str, SecretStr, Change]:
    """Replace a (compromised) access key: create a new one, then deactivate the old one.

    Why deactivate and not delete: a deactivated key can be inspected (last used, by what)
    and, if rotation broke something, re-enabled by a person; deletion is a separate, later
    step (:func:`delete_access_key`). The rotation is not compensable automatically: undoing
    it would re-enable a key believed compromised. If deactivating fails after the new key
    was made, the new key is deleted again (its secret would otherwise be lost) and the error
    is raised.

    Args:
        client: an ``iam`` client from :func:`~tasks.aws.client.make_client`.
        user_name: the IAM user owning the key.
        old_key_id: the key to retire.

    Returns:
        ``(new_key_id, new_secret, change)``; the secret is registered for redaction and is
        in neither the Change nor any log.

    Raises:
        PreconditionError: the key is not this user's, or the user already has a second key
            (IAM allows two; the message names it so a person can remove it).
        CloudError: no such user (``NoSuchEntity``), access denied, throttling.
        VerificationError: IAM does not list the new key Active and the old one Inactive.
    """
    obj = f"user/{user_name}"
    keys = list_access_keys(client, user_name)
    old = _rotatable_key(keys, user_name, old_key_id)
    with boundary("create access key for", f"IAM user {user_name}"):
        created = client.create_access_key(UserName=user_name)["AccessKey"]
    new_key_id = str(created["AccessKeyId"])
    secret = SecretStr(str(created["SecretAccessKey"]))
    register_secret(secret.get_secret_value())
    log.info("IAM user %s: created access key %s", user_name, new_key_id)
    if old["status"] != "Inactive":
        _deactivate_or_drop_new(client, user_name, old_key_id, new_key_id)
        log.info("IAM user %s: access key %s deactivated", user_name, old_key_id)
    else:
        log.info("IAM user %s: access key %s was already inactive", user_name, old_key_id)
    _verify_rotated(client, user_name, new_key_id, old_key_id)
    change = make_change(
        "iam",
        obj,
        "rotate-access-key",
        "updated",
        before={"user_name": user_name, "keys": keys},
        after={
            "user_name": user_name,
            "new_key_id": new_key_id,
            "old_key_id": old_key_id,
            "old_status": "Inactive",
        },
        undo=(
            f"by hand only, it re-enables a key believed compromised: aws iam update-access-key "
            f"--user-name {user_name} --access-key-id {old_key_id} --status Active; "
            f"aws iam delete-access-key --user-name {user_name} --access-key-id {new_key_id}"
        ),
        compensable=False,
    )
    return new_key_id, secret, change


def delete_access_key(client: BaseClient, user_name: str, key_id: str) -> Change:
    """Delete an access key that is already inactive (the step after a rotation).

    Refuses an active key: deleting a key in use is an outage, not a cleanup.

    Returns:
        A Change (``deleted``, or ``unchanged`` when the key is already gone); not
        compensable (a deleted key cannot come back).

    Raises:
        PreconditionError: the key is active.
        CloudError: no such user, access denied, throttling.
    """
    obj = f"user/{user_name}"
    keys = {k["key_id"]: k for k in list_access_keys(client, user_name)}
    key = keys.get(key_id)
    if key is None:
        log.info("IAM user %s has no access key %s: unchanged", user_name, key_id)
        return make_change("iam", obj, "delete-access-key", "unchanged", after={"key_id": key_id})
    if key["status"] == "Active":
        raise PreconditionError(
            f"access key {key_id} of IAM user {user_name} is active; deactivate it first"
        )
    with boundary("delete", f"access key {key_id} of IAM user {user_name}"):
        client.delete_access_key(UserName=user_name, AccessKeyId=key_id)
    log.info("IAM user %s: inactive access key %s deleted", user_name, key_id)
    return make_change(
        "iam",
        obj,
        "delete-access-key",
        "deleted",
        before={"key": key},
        after={"key_id": key_id},
        compensable=False,
    )


rotate_access_key_task = dr_task(rotate_access_key, name="aws-rotate-access-key")
delete_access_key_task = dr_task(delete_access_key, name="aws-delete-access-key")
