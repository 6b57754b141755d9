"""Containment: every isolation step submitted at once, each recorded with how to undo it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService
from flows.breach_response.evidence import collect_evidence, store_evidence, submit_evidence
from flows.breach_response.state import BreachRun, submit_with
from tasks.aws import security_groups
from tasks.containers import lifecycle as containers_lifecycle
from tasks.containers import recreate
from tasks.kubernetes import deployments as kubernetes_deployments
from tasks.kubernetes import network_policies
from tasks.kubernetes import undo as kubernetes_undo
from tasks.postgres import admin as postgres_admin
from tasks.postgres import containment as postgres_containment
from tasks.postgres import hba


def submit_isolation(run: BreachRun) -> list[tuple[str, Any]]:
    """Submit every containment step (each independent of the others): ``(label, future)``."""
    ctx, systems = run.ctx, run.systems
    steps: list[tuple[str, Any]] = []
    for svc in run.pf.services:
        if isinstance(svc, DockerService):
            if ctx.plan("stop", f"container {svc.name}"):
                fut = submit_with(
                    containers_lifecycle.ensure_stopped_task, lambda: systems.docker, svc.name
                )
                steps.append((f"stop container {svc.name}", fut))
        elif ctx.plan("scale to 0", f"deployment {svc.name}"):
            fut = submit_with(
                kubernetes_deployments.scale_deployment_task,
                lambda: systems.k8s,
                svc.namespace,
                svc.deployment,
                0,
            )
            steps.append((f"scale {svc.name} to 0", fut))
    for i, iso in enumerate(run.opts.isolate_pods):
        name = f"dr-breach-isolate-{i}"
        if ctx.plan("apply", f"deny-all NetworkPolicy {iso.namespace}/{name}"):
            fut = submit_with(
                network_policies.apply_isolation_policy_task,
                lambda: systems.k8s,
                iso.namespace,
                iso.pod_selector,
                name,
            )
            steps.append((f"isolate pods {iso.namespace} {iso.pod_selector}", fut))
    for group in run.opts.security_groups:
        if ctx.plan("revoke", f"inbound rules of security group {group}"):
            fut = submit_with(
                security_groups.revoke_ingress_task,
                lambda: systems.aws("ec2"),
                group,
                keep_cidrs=run.pf.keep_cidrs,
            )
            steps.append((f"revoke inbound of {group}", fut))
    steps += _submit_network_blocks(run)
    for role in run.compromised:
        if ctx.plan("forbid login", f"role {role} (NOLOGIN, sessions ended on every node)"):
            replicas = {n.name: run.ci(n) for n in run.pgc.replicas}
            fut = postgres_containment.disable_role_task.submit(
                run.ci(run.pgc.primary), replicas, role
            )
            steps.append((f"disable role {role}", fut))
    return steps


def _submit_network_blocks(run: BreachRun) -> list[tuple[str, Any]]:
    """The attacker networks refused at security groups and in local nodes' pg_hba."""
    ctx, cidrs = run.ctx, run.pf.block_cidrs
    steps: list[tuple[str, Any]] = []
    if not cidrs:
        return steps
    for group in run.opts.block_cidrs_in_groups:
        if ctx.plan("block", f"{', '.join(cidrs)} at security group {group}"):
            fut = submit_with(
                security_groups.block_cidrs_task, lambda: run.systems.aws("ec2"), group, cidrs
            )
            steps.append((f"block networks at {group}", fut))
    if run.opts.block_in_pg_hba:
        for node in run.local_nodes():
            if ctx.plan("reject", f"{', '.join(cidrs)} in pg_hba of {node.name}"):
                fut = hba.block_cidrs_in_hba_task.submit(
                    run.ci(node), cidrs, reason=f"breach {run.short}"
                )
                steps.append((f"block networks in pg_hba of {node.name}", fut))
    return steps


def _undo_of(run: BreachRun, label: str, change: Change) -> Callable[[], Any] | None:
    """Remember what a containment change did (resume and cleanup need it); its undo."""
    systems = run.systems
    if change.system == "docker" and change.action == "stop":
        run.stopped[change.object] = change
        return lambda: drill_restart(run, change)
    if change.system == "kubernetes" and change.action == "scale":
        run.scaled.append(change)
        return lambda: kubernetes_deployments.restore_scale_task(systems.k8s, change)
    if change.system == "kubernetes" and change.action == "apply-isolation-policy":
        run.policies.append(change)
        return lambda: kubernetes_undo.undo_change_task(systems.k8s, change)
    if change.system == "ec2" and change.action == "revoke-ingress":
        run.revoked.append(change)
        return lambda: security_groups.restore_ingress_task(systems.aws("ec2"), change)
    if change.system == "ec2" and change.action == "block-cidrs":
        run.sg_blocks.append(change)
        return lambda: security_groups.restore_ingress_task(systems.aws("ec2"), change)
    if change.action == "block-cidrs-in-hba":
        node = label.rsplit(" ", 1)[-1]
        run.hba_blocks[node] = change
        return lambda: hba.unblock_cidrs_in_hba_task(run.ci(run.pgc.node(node)), change)
    if change.action == "forbid-login" and change.object.split()[1] != run.rogue_role:
        role = change.object.split()[1]
        return lambda: postgres_admin.set_role_login_task(run.ci(run.pgc.primary), role, True)
    return None


def record_isolation(run: BreachRun, label: str, value: Change | list[Change]) -> None:
    """Record a containment step's changes and its passed check."""
    changes = value if isinstance(value, list) else [value]
    for change in changes:
        run.record(change, _undo_of(run, label, change))
    run.ctx.record_check(
        f"contained: {label}", True, detail="; ".join(c.summary() for c in changes)
    )


def drill_restart(run: BreachRun, change: Change) -> Any:
    """Drill compensation of a stop: the container comes back with a password that works."""
    name = change.object
    for rot in run.rotations:
        if rot.kind == "db-role" and name in rot.containers and rot.new is not None:
            spec = next((c.spec for c in run.pf.credentials if c.role == rot.name), None)
            env = spec.password_env if spec else "DB_PASSWORD"
            recreate.recreate_with_env_task(
                run.systems.docker, name, {env: rot.new.get_secret_value()}
            )
    return containers_lifecycle.restore_state_task(run.systems.docker, change)


def contain_and_preserve(run: BreachRun) -> None:
    """Isolation and evidence collection in parallel; then store the evidence."""
    ctx = run.ctx
    iso = submit_isolation(run)
    evs = submit_evidence(run)
    failures: list[str] = []
    finished = []
    for label, fut in iso:
        outcome = fut.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            failures.append(label)
            ctx.record_check(f"contained: {label}", False, detail=f"{outcome}")
        else:
            changes = outcome if isinstance(outcome, list) else [outcome]
            finished.append(max(c.at for c in changes))
            record_isolation(run, label, outcome)
    if iso and not ctx.dry_run:
        run.contained_at = max(finished) if finished else None
        if failures:
            ctx.note(f"containment incomplete: {', '.join(failures)} failed")
    elif not ctx.dry_run:
        run.contained_at = utcnow()
    collect_evidence(run, evs)
    if not ctx.dry_run:
        store_evidence(run)
        run.evidence_at = utcnow()
    else:
        ctx.plan("write once", f"the evidence bundle to {run.target.evidence_repository}")
