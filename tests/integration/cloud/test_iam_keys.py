"""IAM access key rotation and its proofs, against moto with request authentication on.

With authentication on, moto refuses unknown keys and wrong secrets (so "works" proves the
secret) but still accepts an *inactive* key: the rejection proof then rests on IAM's
status, and says so.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from pydantic import SecretStr

from dr.config import AWSConfig
from dr.errors import PreconditionError, VerificationError
from tasks.aws.client import make_client
from tasks.aws.iam import delete_access_key, rotate_access_key
from tasks.aws.key_proofs import prove_key_rejected, prove_key_works
from tasks.aws.undo import undo_change

pytestmark = pytest.mark.integration


@pytest.fixture
def app_user(admin_raw: Any) -> tuple[str, str, str]:
    """An IAM user with one active key: (user name, key id, secret)."""
    iam = admin_raw("iam")
    name = f"app-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return name, key["AccessKeyId"], key["SecretAccessKey"]


def _statuses(admin_raw: Any, user: str) -> dict[str, str]:
    keys = admin_raw("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {k["AccessKeyId"]: k["Status"] for k in keys}


def test_rotation_new_key_works_old_is_deactivated_and_no_secret_leaks(
    aws_auth: AWSConfig,
    app_user: tuple[str, str, str],
    admin_raw: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, old_id, old_secret = app_user
    caplog.set_level(logging.DEBUG)  # botocore's request and response bodies included
    iam = make_client(aws_auth, "iam")

    new_id, new_secret, change = rotate_access_key(iam, user, old_id)

    assert isinstance(new_secret, SecretStr)
    assert _statuses(admin_raw, user) == {old_id: "Inactive", new_id: "Active"}
    assert change.outcome == "updated"
    assert change.after == {
        "user_name": user,
        "new_key_id": new_id,
        "old_key_id": old_id,
        "old_status": "Inactive",
    }
    assert change.compensable is False
    with pytest.raises(PreconditionError, match="cannot undo"):
        undo_change(aws_auth, change)

    works = prove_key_works(aws_auth, new_id, new_secret, user_name=user)
    assert works.proven and works.iam_status == "Active" and works.call == "accepted"
    assert works.caller_arn is not None and works.caller_arn.endswith(f":user/{user}")

    rejected = prove_key_rejected(aws_auth, old_id, old_secret)
    assert rejected.proven
    assert rejected.user_name == user  # found through GetAccessKeyLastUsed
    assert rejected.iam_status == "Inactive"
    assert rejected.stand_in is True
    # moto's known gap: the inactive key still authenticates; the proof says so.
    assert rejected.call == "accepted"
    assert any("not evidence" in e for e in rejected.evidence)

    with pytest.raises(VerificationError, match="Inactive"):
        prove_key_works(aws_auth, old_id, old_secret, timeout_seconds=0)

    assert "CreateAccessKey" in caplog.text  # the bodies were logged (redacted), so:
    shown = " ".join(
        [
            change.model_dump_json(),
            repr(change),
            str(change.model_dump()),
            change.summary(),
            works.model_dump_json(),
            rejected.model_dump_json(),
            caplog.text,
        ]
    )
    assert new_secret.get_secret_value() not in shown
    assert old_secret not in shown


def test_wrong_secret_is_refused(aws_auth: AWSConfig, app_user: tuple[str, str, str]) -> None:
    _, key_id, secret = app_user
    wrong = f"wrong-{uuid.uuid4().hex}"
    with pytest.raises(VerificationError, match="SignatureDoesNotMatch") as raised:
        prove_key_works(aws_auth, key_id, wrong, timeout_seconds=0)
    assert wrong not in str(raised.value) and secret not in str(raised.value)


def test_deleted_key_is_refused_by_the_call_too(
    aws_auth: AWSConfig, app_user: tuple[str, str, str], admin_raw: Any
) -> None:
    user, old_id, old_secret = app_user
    iam = make_client(aws_auth, "iam")
    new_id, _, _ = rotate_access_key(iam, user, old_id)

    deleted = delete_access_key(iam, user, old_id)
    assert deleted.outcome == "deleted" and deleted.compensable is False
    assert delete_access_key(iam, user, old_id).outcome == "unchanged"
    assert _statuses(admin_raw, user) == {new_id: "Active"}

    # Held to real AWS's standard (both observations), the proof holds for a deleted key...
    proof = prove_key_rejected(aws_auth, old_id, old_secret, stand_in=False, timeout_seconds=0)
    assert proof.iam_status == "absent"
    assert (proof.call, proof.call_error) == ("rejected", "InvalidClientTokenId")


def test_inactive_key_accepted_by_the_call_fails_the_real_aws_standard(
    aws_auth: AWSConfig, app_user: tuple[str, str, str]
) -> None:
    user, old_id, old_secret = app_user
    rotate_access_key(make_client(aws_auth, "iam"), user, old_id)
    # ...but not for an inactive key on moto, which still authenticates it.
    with pytest.raises(VerificationError, match="Inactive"):
        prove_key_rejected(aws_auth, old_id, old_secret, stand_in=False, timeout_seconds=0)


def test_rotation_refuses_a_user_with_two_keys(
    aws_auth: AWSConfig, app_user: tuple[str, str, str], admin_raw: Any
) -> None:
    user, old_id, _ = app_user
    second = admin_raw("iam").create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    iam = make_client(aws_auth, "iam")
    with pytest.raises(PreconditionError, match=second):
        rotate_access_key(iam, user, old_id)
    assert _statuses(admin_raw, user) == {old_id: "Active", second: "Active"}

    with pytest.raises(PreconditionError, match="not a key of"):
        rotate_access_key(iam, user, "AKIANOTTHISUSERSKEY0")
    with pytest.raises(PreconditionError, match="active"):
        delete_access_key(iam, user, second)


def test_a_wrong_owner_cannot_make_a_live_key_look_absent(
    aws_auth: AWSConfig, app_user: tuple[str, str, str]
) -> None:
    _, key_id, secret = app_user
    with pytest.raises(VerificationError, match="belongs to IAM user"):
        prove_key_rejected(aws_auth, key_id, secret, user_name="someone-else", timeout_seconds=0)
