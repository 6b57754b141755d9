"""Credential rotation, once evidence is preserved: each credential's change in parallel.

Each rotation is prepared (the old value found, the new one made), then its one changing
call is submitted with the others (a role's password, an IAM key, a Kubernetes secret
key), then followed up (old sessions ended, stores written, containers repointed).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from dr.clock import utcnow
from dr.errors import DRError, PostgresError, VerificationError
from flows.breach_response.assess import Credential
from flows.breach_response.options import (
    AccessKeyRotation,
    KubernetesSecretKey,
    SecretStore,
    TokenRotation,
)
from flows.breach_response.state import BreachRun, Rotation, iso, new_secret, submit_with
from flows.breach_response.stores import read_store, write_store
from tasks.aws import iam
from tasks.containers import recreate
from tasks.kubernetes import secrets as kubernetes_secrets
from tasks.postgres import admin as postgres_admin
from tasks.secrets import prefect_blocks

log = logging.getLogger(__name__)


@dataclass
class _Started:
    """A prepared rotation: its changing call (submitted, or None) and its follow-up."""

    label: str
    rot: Rotation
    core: Any
    follow_up: Callable[[Any], None]


def rotate(run: BreachRun) -> None:
    """Rotate every leaked credential; record each as rotated, followed up, or NOT rotated."""
    ctx = run.ctx
    run.rotation_started_at = utcnow()
    if run.evidence_at is not None:
        ctx.record_check(
            "evidence preserved before remediation",
            run.evidence_at <= run.rotation_started_at,
            detail=f"evidence done {iso(run.evidence_at)}, rotation started "
            f"{iso(run.rotation_started_at)}",
        )
    started: list[_Started | tuple[str, BaseException]] = []
    for label, start in _planned(run):
        try:
            started.append(start())
        except Exception as exc:  # noqa: BLE001 - reported: NOT rotated
            started.append((label, exc))
    for item in started:
        if isinstance(item, tuple):
            _not_rotated(run, *item)
            continue
        try:
            outcome = item.core.result() if item.core is not None else None
            item.follow_up(outcome)
        except Exception as exc:  # noqa: BLE001 - reported: NOT rotated
            _not_rotated(run, item.label, exc)
            continue
        _rotated(run, item.rot)
    run.info["rotations"] = [
        {"kind": r.kind, "name": r.name, "stores": r.stores, "containers": r.containers,
         "rotated_at": iso(r.at), **{k: v for k, v in r.detail.items()}}
        for r in run.rotations
    ]  # fmt: skip
    run.info["rotations_failed"] = list(run.failed_rotations)


def _planned(run: BreachRun) -> list[tuple[str, Callable[[], _Started]]]:
    """Every rotation the run makes, in order, each as ``(label, start)``."""
    ctx = run.ctx
    steps: list[tuple[str, Callable[[], _Started]]] = []
    for cred in run.pf.credentials:
        stores = ", ".join(s.describe() for s in cred.spec.stores) or "discovered stores"
        if ctx.plan("rotate", f"password of role {cred.role} (stores: {stores})"):
            steps.append((f"rotate role {cred.role}", lambda c=cred: start_role(run, c)))
    for key in run.opts.access_keys:
        if ctx.plan("rotate", f"IAM access key {key.key_id} of {key.user_name}"):
            label = f"rotate access key {key.key_id}"
            steps.append((label, lambda k=key, lb=label: start_access_key(run, k, lb)))
    for sk in run.opts.kubernetes_secrets:
        obj = f"{sk.namespace}/{sk.name}/{sk.key}"
        if ctx.plan("replace", f"Kubernetes secret key {obj}"):
            steps.append((f"rotate secret {obj}", lambda s=sk: start_k8s_secret(run, s)))
    for tok in run.opts.tokens:
        if ctx.plan("replace", f"token {tok.name} in {len(tok.stores)} store(s)"):
            steps.append((f"rotate token {tok.name}", lambda t=tok: start_token(run, t)))
    return steps


def _not_rotated(run: BreachRun, label: str, exc: BaseException) -> None:
    run.failed_rotations.append(label)
    run.ctx.record_check(
        f"credential rotated: {label.removeprefix('rotate ')}",
        False,
        detail=f"NOT rotated: {type(exc).__name__}: {exc}",
    )


def _rotated(run: BreachRun, rot: Rotation) -> None:
    ctx = run.ctx
    run.rotations.append(rot)
    for change in rot.changes:
        # Never compensated: undoing a rotation would bring back a leaked value.
        ctx.record_change(change)
    ctx.record_check(
        f"credential rotated: {rot.kind} {rot.name}",
        True,
        detail=f"stores: {', '.join(rot.stores) or 'none'}"
        + (f"; {rot.detail}" if rot.detail else ""),
    )
    for error in rot.errors:
        run.failed_rotations.append(f"{rot.kind} {rot.name}: {error}")
        ctx.record_check(
            f"credential followed up: {rot.kind} {rot.name}",
            False,
            detail=f"rotated, but {error}; the new value is only in the stores that "
            "took it and in the containers repointed",
        )


def _store_all(run: BreachRun, rot: Rotation, stores: list[SecretStore], new: SecretStr) -> None:
    for store in stores:
        rot.attempt(
            f"store in {store.describe()}", lambda s=store: write_store(run.systems, s, new)
        )
        rot.stores.append(store.describe())
        rot.store_specs.append(store)


def start_role(run: BreachRun, cred: Credential) -> _Started:
    """New password (verifier only), old sessions ended everywhere, stores updated."""
    rot = Rotation(kind="db-role", name=cred.role, old=cred.old, containers=list(cred.containers))
    stores = list(cred.spec.stores)
    if rot.old is None:
        for store in stores:
            with contextlib.suppress(DRError):
                current = read_store(run.systems, store)
                if current:
                    rot.old = SecretStr(current)
                    break
    if cred.spec.discover_prefect_secrets and rot.old is not None:
        held = prefect_blocks.find_prefect_secrets_holding_task([rot.old.get_secret_value()])
        for block in held:
            if not any(s.prefect_secret == block for s in stores):
                stores.append(SecretStore(prefect_secret=block))
    new = rot.new = new_secret()
    core = postgres_admin.set_role_password_task.submit(
        run.ci(run.pgc.primary), cred.role, new.get_secret_value()
    )

    def follow_up(change: Any) -> None:
        rot.changes.append(change)
        ended = 0
        for node in run.pgc.nodes:
            try:
                ended += postgres_admin.terminate_sessions_task(run.ci(node), role=cred.role)
            except PostgresError as exc:
                log.warning("sessions of %s on %s not ended: %s", cred.role, node.name, exc)
        rot.detail["sessions_ended"] = ended
        _store_all(run, rot, stores, new)
        env = {cred.spec.password_env: new.get_secret_value()}
        for name in rot.containers:
            if name not in run.stopped:
                # Not isolated, so still running with the old password: repoint it now.
                rot.attempt(
                    f"repoint container {name}",
                    lambda n=name: recreate.recreate_with_env_task(run.systems.docker, n, env),
                )
        rot.at = utcnow()

    return _Started(f"rotate role {cred.role}", rot, core, follow_up)


def start_access_key(run: BreachRun, spec: AccessKeyRotation, label: str) -> _Started:
    """A new IAM key, the old one deactivated; the new secret (and id) stored."""
    rot = Rotation(kind="iam-key", name=f"{spec.user_name}/{spec.key_id}")
    old = read_store(run.systems, spec.secret_store)
    if not old:
        raise VerificationError(
            f"{spec.secret_store.describe()} holds no secret for access key {spec.key_id}"
        )
    rot.old = SecretStr(old)
    # Not retried: each attempt would create another key.
    core = submit_with(
        iam.rotate_access_key_task.with_options(retries=0),
        lambda: run.systems.aws("iam"),
        spec.user_name,
        spec.key_id,
    )

    def follow_up(outcome: tuple[str, SecretStr, Any]) -> None:
        new_id, new_secret_value, change = outcome
        rot.changes.append(change)
        rot.new = new_secret_value
        rot.detail = {"user_name": spec.user_name, "old_key_id": spec.key_id, "new_key_id": new_id}
        _store_all(run, rot, [spec.secret_store], new_secret_value)
        if spec.key_id_store is not None:
            id_store = spec.key_id_store
            rot.attempt(
                f"store in {id_store.describe()}",
                lambda: write_store(run.systems, id_store, SecretStr(new_id)),
            )
            rot.stores.append(id_store.describe())
        rot.at = utcnow()

    return _Started(label, rot, core, follow_up)


def start_k8s_secret(run: BreachRun, spec: KubernetesSecretKey) -> _Started:
    """A Kubernetes secret key replaced with a newly generated value (the rotation itself)."""
    obj = f"{spec.namespace}/{spec.name}/{spec.key}"
    rot = Rotation(kind="kubernetes-secret", name=obj)
    found = kubernetes_secrets.read_secret_task(run.systems.k8s, spec.namespace, spec.name)
    current = found.get(spec.key)
    rot.old = SecretStr(current) if current else None
    new = rot.new = new_secret()
    core = submit_with(
        kubernetes_secrets.replace_secret_key_task,
        lambda: run.systems.k8s,
        spec.namespace,
        spec.name,
        spec.key,
        new.get_secret_value(),
    )
    store = SecretStore(kubernetes_secret=obj)

    def follow_up(change: Any) -> None:
        rot.changes.append(change)
        rot.stores.append(store.describe())
        rot.store_specs.append(store)
        rot.at = utcnow()

    return _Started(f"rotate secret {obj}", rot, core, follow_up)


def start_token(run: BreachRun, spec: TokenRotation) -> _Started:
    """A token the provider re-issued, written to every store (nothing to submit)."""
    rot = Rotation(kind=f"{spec.kind}-token", name=spec.name)
    with contextlib.suppress(DRError):
        current = read_store(run.systems, spec.stores[0])
        rot.old = SecretStr(current) if current else None
    new = rot.new = SecretStr(spec.new_value.resolve())
    if rot.old is not None and rot.old.get_secret_value() == new.get_secret_value():
        raise VerificationError(
            f"token {spec.name}: {spec.new_value.describe()} holds the token already in use; "
            "have the provider issue a new one first"
        )

    def follow_up(_: Any) -> None:
        _store_all(run, rot, list(spec.stores), new)
        rot.at = utcnow()

    return _Started(f"rotate token {spec.name}", rot, None, follow_up)
