"""Proofs: old credentials rejected, new ones work, compromised roles out, stores updated."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from dr.errors import DRError, VerificationError, redact
from flows.breach_response.state import BreachRun, Rotation, iso
from flows.breach_response.stores import read_store
from tasks.aws import key_proofs
from tasks.notify import client as notify_client
from tasks.notify import messages as notify_messages
from tasks.postgres import containment as postgres_containment
from tasks.postgres import security as postgres_security

#: How long a standby may take to replay a role change before a proof on it fails.
REPLICA_PROOF_SECONDS = 10.0
POLL_SECONDS = 0.1


def prove(run: BreachRun) -> None:
    """Every compromised role is out; every rotation is proven (each proof a check)."""
    proofs: list[dict[str, Any]] = []
    for role in run.compromised:
        prove_role_disabled(run, role, proofs)
    for rot in run.rotations:
        try:
            prove_rotation(run, rot, proofs)
        except DRError as exc:
            run.ctx.record_check(f"proof: {rot.kind} {rot.name}", False, detail=str(exc))
    run.info["proofs"] = proofs


def _check(
    run: BreachRun,
    proofs: list[dict[str, Any]],
    name: str,
    ok: bool,
    detail: str,
    *,
    critical: bool = True,
) -> None:
    run.ctx.record_check(name, ok, critical=critical, detail=detail)
    proofs.append({"proof": name, "ok": ok, "detail": redact(detail)})


def _wait_on(run: BreachRun, node: Any) -> float:
    return 0.0 if node is run.pgc.primary else REPLICA_PROOF_SECONDS


def _login_everywhere(
    run: BreachRun, role: str, password: SecretStr, expect: bool
) -> list[tuple[str, bool | None, str]]:
    """Try the credential on every node; standbys get time to replay the change.

    Returns:
        ``(node, logged_in, why)`` per node; ``logged_in`` None when unreachable.
    """
    out: list[tuple[str, bool | None, str]] = []
    for node in run.pgc.nodes:
        result, why = postgres_containment.login_outcome_within_task(
            run.role_ci(node, role, password),
            expect=expect,
            wait_seconds=_wait_on(run, node),
            poll_seconds=POLL_SECONDS,
        )
        out.append((node.name, result, why))
    return out


def _prove_session_gone(run: BreachRun, proofs: list[dict[str, Any]], key: str, name: str) -> None:
    """A drill's session (the intruder's, or one opened with a leaked password) is gone."""
    held = run.held.get(key)
    if held is None:
        return
    ended = held.wait_ended(5)
    gone = ended and not postgres_security.sessions_alive_task(
        run.ci(run.pgc.primary), [held.pid or 0]
    )
    _check(
        run,
        proofs,
        name,
        gone,
        f"pid {held.pid} ended at {iso(held.ended_at)} ({held.error})",
    )


def prove_role_disabled(run: BreachRun, role: str, proofs: list[dict[str, Any]]) -> None:
    """The role cannot log in and has no session on any node; a drill's intruder is out."""
    for node in run.pgc.nodes:
        can, pids, error = postgres_containment.role_disabled_within_task(
            run.ci(node), role, wait_seconds=_wait_on(run, node), poll_seconds=POLL_SECONDS
        )
        if error is not None:
            detail = f"cannot ask {node.name}: {error}"
            _check(run, proofs, f"role {role} disabled on {node.name}", False, detail)
            continue
        _check(
            run,
            proofs,
            f"role {role} cannot log in and has no session on {node.name}",
            can is False and not pids,
            f"rolcanlogin={can}, open sessions: {pids or 'none'}",
        )
    _prove_session_gone(run, proofs, role, f"drill: intruder session of {role} is gone")
    if role == run.rogue_role and run.rogue_password is not None:
        for node_name, ok, why in _login_everywhere(run, role, run.rogue_password, expect=False):
            _check(
                run, proofs, f"drill: intruder cannot reconnect to {node_name}", ok is False, why
            )


def prove_rotation(run: BreachRun, rot: Rotation, proofs: list[dict[str, Any]]) -> None:
    """The old value is refused and the new one works (where testable); stores hold it."""
    name = f"{rot.kind} {rot.name}"
    if rot.kind == "db-role":
        _prove_db_role(run, rot, proofs, name)
    elif rot.kind == "iam-key":
        _prove_iam_key(run, rot, proofs, name)
    elif rot.kind == "slack-token":
        spec = next(t for t in run.opts.tokens if t.name == rot.name)
        base = spec.base_url or run.pf.config.slack.base_url
        assert rot.new is not None
        if rot.old is not None:
            ok, why = notify_messages.check_token_task(
                notify_client.make_client(rot.old.get_secret_value(), base)
            )
            _check(run, proofs, f"{name}: old token rejected", not ok, why)
        ok, why = notify_messages.check_token_task(
            notify_client.make_client(rot.new.get_secret_value(), base)
        )
        _check(run, proofs, f"{name}: new token works", ok, why)
    elif rot.kind == "opaque-token":
        _check(
            run, proofs, f"{name}: old token rejected", False,
            "an opaque token cannot be tested by the flow: revoke it at its provider",
            critical=False,
        )  # fmt: skip
    for store in rot.store_specs:
        held_value = read_store(run.systems, store)
        assert rot.new is not None
        _check(
            run,
            proofs,
            f"{name}: {store.describe()} holds the new value",
            held_value == rot.new.get_secret_value(),
            "read back and compared in memory (values never shown)",
        )


def _prove_db_role(run: BreachRun, rot: Rotation, proofs: list[dict[str, Any]], name: str) -> None:
    assert rot.new is not None
    if rot.old is not None:
        for node, ok, why in _login_everywhere(run, rot.name, rot.old, expect=False):
            _check(run, proofs, f"{name}: old password rejected on {node}", ok is False, why)
    else:
        _check(
            run, proofs, f"{name}: old password rejected", False,
            "the old password is unknown (no store or container held it): not provable",
            critical=False,
        )  # fmt: skip
    for node, ok, why in _login_everywhere(run, rot.name, rot.new, expect=True):
        _check(run, proofs, f"{name}: new password works on {node}", ok is True, why)
    _prove_session_gone(
        run,
        proofs,
        f"leaked:{rot.name}",
        f"drill: session opened with the leaked password of {rot.name} is gone",
    )


def _prove_iam_key(run: BreachRun, rot: Rotation, proofs: list[dict[str, Any]], name: str) -> None:
    aws = run.pf.config.aws
    assert rot.new is not None and rot.old is not None
    old_id, new_id = rot.detail["old_key_id"], rot.detail["new_key_id"]
    user = rot.detail["user_name"]
    try:
        proof = key_proofs.prove_key_rejected_task.with_options(retries=0)(
            aws, old_id, rot.old, user_name=user
        )
        _check(run, proofs, f"{name}: old key rejected", proof.proven, proof.summary())
    except VerificationError as exc:
        _check(run, proofs, f"{name}: old key rejected", False, str(exc))
    try:
        proof = key_proofs.prove_key_works_task.with_options(retries=0)(
            aws, new_id, rot.new, user_name=user
        )
        _check(run, proofs, f"{name}: new key works", proof.proven, proof.summary())
    except VerificationError as exc:
        _check(run, proofs, f"{name}: new key works", False, str(exc))
