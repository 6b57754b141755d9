"""Proving an access key works, or is rejected, by two independent observations.

The key's ``Status`` as IAM lists it and a real signed call (``sts:GetCallerIdentity``,
which needs no permission) made *with* the key. Against real AWS both must agree (IAM
changes propagate within seconds, so the proof polls). The moto stand-in authenticates
inactive keys, so there a rejection proof rests on the IAM status alone and says so; with
moto's authentication switched on it does check that the key exists and that the secret
signs correctly, so "works" is a real proof of the secret and a deleted key is really
rejected. With moto's authentication off, any secret is accepted. The key's owner is always
looked up, so a wrong user name cannot make a live key look deleted.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, SecretStr

from dr.config import AWSConfig
from dr.errors import CloudError, VerificationError, register_secret
from dr.tasking import dr_task
from tasks.aws.client import REJECTED_CREDENTIAL_CODES, boundary, error_code_of, make_client
from tasks.aws.iam import list_access_keys

log = logging.getLogger(__name__)


# IAM is eventually consistent; a new or deactivated key takes seconds to be honoured:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency
KEY_PROPAGATION_TIMEOUT_SECONDS = 60.0
KEY_POLL_SECONDS = 2.0


class KeyProof(BaseModel):
    """What was observed when proving an access key works or is rejected.

    Attributes:
        key_id: the access key id (not secret).
        user_name: the IAM user owning it, when known.
        expected: ``works`` or ``rejected``.
        iam_status: ``Active``/``Inactive`` as IAM lists it, or ``absent`` (deleted).
        call: whether ``sts:GetCallerIdentity`` signed with the key was accepted.
        call_error: the error code when the call was rejected.
        caller_arn: the identity AWS answered with, when accepted.
        stand_in: True when the proof ran against the local stand-in (see module notes).
        evidence: each observation, one sentence each, for the report.
        proven: True when the observations prove the expectation.
        attempts: how many observations were made before concluding.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str
    user_name: str | None
    expected: Literal["works", "rejected"]
    iam_status: Literal["Active", "Inactive", "absent"]
    call: Literal["accepted", "rejected"]
    call_error: str | None = None
    caller_arn: str | None = None
    stand_in: bool
    evidence: list[str]
    proven: bool
    attempts: int = 1

    def summary(self) -> str:
        """One line for logs and the report."""
        verdict = "proven" if self.proven else "NOT proven"
        return f"access key {self.key_id} {self.expected}: {verdict} ({'; '.join(self.evidence)})"


def _key_status(
    iam: BaseClient, key_id: str, user_name: str | None
) -> tuple[str | None, Literal["Active", "Inactive", "absent"]]:
    """The key's owner and status as IAM lists them (``absent`` when deleted).

    The owner is always looked up (``GetAccessKeyLastUsed``), so that a wrong ``user_name``
    cannot make a live key look absent. Where that lookup is refused (``AccessDenied``) the
    given ``user_name`` is trusted.
    """
    owner: str | None = None
    try:
        with boundary("look up owner of", f"access key {key_id}"):
            owner = iam.get_access_key_last_used(AccessKeyId=key_id).get("UserName") or None
    except CloudError as exc:
        code = error_code_of(exc)
        if code == "NoSuchEntity":
            owner = None
        elif code in ("AccessDenied", "AccessDeniedException") and user_name is not None:
            owner = user_name
        else:
            raise
    if owner is not None and user_name is not None and owner != user_name:
        raise VerificationError(f"access key {key_id} belongs to IAM user {owner}, not {user_name}")
    user = owner or user_name
    if user is None:
        return None, "absent"
    try:
        keys = list_access_keys(iam, user)
    except CloudError as exc:
        if error_code_of(exc) == "NoSuchEntity":
            return user, "absent"
        raise
    for k in keys:
        if k["key_id"] == key_id:
            return user, k["status"]
    return user, "absent"


def _try_key(sts: BaseClient, key_id: str) -> tuple[Literal["accepted", "rejected"], str | None]:
    """Call sts:GetCallerIdentity with the key. Returns (outcome, ARN or error code)."""
    try:
        with boundary("sts:GetCallerIdentity with", f"access key {key_id}"):
            arn = sts.get_caller_identity().get("Arn")
    except CloudError as exc:
        code = error_code_of(exc)
        if code in REJECTED_CREDENTIAL_CODES:
            return "rejected", code
        raise
    return "accepted", str(arn)


def _prove(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    expected: Literal["works", "rejected"],
    user_name: str | None,
    timeout_seconds: float,
    poll_seconds: float,
    stand_in: bool | None,
) -> KeyProof:
    if isinstance(secret, str):
        secret = SecretStr(secret)
    register_secret(secret.get_secret_value())
    on_stand_in = aws.endpoint_url is not None if stand_in is None else stand_in
    iam = make_client(aws, "iam")
    sts = make_client(aws, "sts", access_key_id=key_id, secret_access_key=secret)
    deadline = time.monotonic() + timeout_seconds
    attempts = 0
    while True:
        attempts += 1
        owner, status = _key_status(iam, key_id, user_name)
        call, detail = _try_key(sts, key_id)
        evidence = [f"IAM lists the key as {status}" + (f" (user {owner})" if owner else "")]
        if call == "accepted":
            evidence.append(f"sts:GetCallerIdentity with the key answered {detail}")
        else:
            evidence.append(f"sts:GetCallerIdentity with the key was refused ({detail})")
        if expected == "works":
            own = owner is None or (detail or "").endswith(f"/{owner}")
            proven = status == "Active" and call == "accepted" and own
            if call == "accepted" and not own:
                evidence.append(f"the caller is not IAM user {owner}")
        elif on_stand_in:
            proven = status in ("Inactive", "absent")
            if call == "accepted":
                evidence.append(
                    "the stand-in authenticates inactive keys, so this call is not evidence; "
                    "the proof rests on the IAM status"
                )
        else:
            proven = status in ("Inactive", "absent") and call == "rejected"
        if proven or time.monotonic() + poll_seconds > deadline:
            break
        time.sleep(poll_seconds)
    return KeyProof(
        key_id=key_id,
        user_name=owner,
        expected=expected,
        iam_status=status,
        call=call,
        call_error=detail if call == "rejected" else None,
        caller_arn=detail if call == "accepted" else None,
        stand_in=on_stand_in,
        evidence=evidence,
        proven=proven,
        attempts=attempts,
    )


def prove_key_works(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    user_name: str | None = None,
    timeout_seconds: float = KEY_PROPAGATION_TIMEOUT_SECONDS,
    poll_seconds: float = KEY_POLL_SECONDS,
) -> KeyProof:
    """Prove a (new) access key works: IAM lists it Active and a call signed with it succeeds.

    The call is ``sts:GetCallerIdentity`` (allowed to every valid key, so a refusal means the
    credentials, not a policy); the answer must be the key's own user. A new key can take a
    few seconds to be honoured, so observations repeat until ``timeout_seconds``.

    Against the moto stand-in the call checks the secret only when moto's authentication is
    switched on (``/moto-api/reset-auth``); otherwise any secret is accepted.

    Args:
        aws: the ``aws`` section (its credentials read IAM; the key under test signs the call).
        key_id: the key to prove.
        secret: its secret.
        user_name: its owner, when known (else looked up with ``GetAccessKeyLastUsed``).
        timeout_seconds: how long to keep observing.
        poll_seconds: delay between observations.

    Returns:
        The proof (``proven`` is True).

    Raises:
        VerificationError: not proven in time; the message lists what was observed.
        CloudError: IAM or STS could not be asked (throttling, access denied...).
    """
    proof = _prove(
        aws,
        key_id,
        secret,
        expected="works",
        user_name=user_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        stand_in=None,
    )
    log.info("%s", proof.summary())
    if not proof.proven:
        raise VerificationError(proof.summary())
    return proof


def prove_key_rejected(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    user_name: str | None = None,
    timeout_seconds: float = KEY_PROPAGATION_TIMEOUT_SECONDS,
    poll_seconds: float = KEY_POLL_SECONDS,
    stand_in: bool | None = None,
) -> KeyProof:
    """Prove an (old) access key is rejected: IAM lists it Inactive or not at all, and a call
    signed with it is refused.

    Against real AWS both observations must hold (a deactivated key stops working within
    seconds, so observations repeat until ``timeout_seconds``). The moto stand-in
    authenticates inactive keys, so there an accepted call is recorded but not held against
    the proof, which then rests on the IAM status; a deleted key is refused by moto too when
    its authentication is on.

    Args:
        aws: the ``aws`` section (its credentials read IAM; the key under test signs the call).
        key_id: the key to prove.
        secret: its secret.
        user_name: its owner, when known.
        timeout_seconds: how long to keep observing.
        poll_seconds: delay between observations.
        stand_in: True when ``aws`` points at the stand-in; default: when
            ``aws.endpoint_url`` is set (which dr.yaml reserves for the stand-in).

    Returns:
        The proof (``proven`` is True).

    Raises:
        VerificationError: not proven in time; the message lists what was observed.
        CloudError: IAM or STS could not be asked.
    """
    proof = _prove(
        aws,
        key_id,
        secret,
        expected="rejected",
        user_name=user_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        stand_in=stand_in,
    )
    log.info("%s", proof.summary())
    if not proof.proven:
        raise VerificationError(proof.summary())
    return proof


prove_key_works_task = dr_task(prove_key_works, name="aws-prove-key-works")
prove_key_rejected_task = dr_task(prove_key_rejected, name="aws-prove-key-rejected")
