"""Resume after approval: the recorded service state back, with the new credentials; verify."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService
from dr.errors import DRError
from flows.breach_response.prove import POLL_SECONDS
from flows.breach_response.state import BreachRun, iso
from tasks.aws import security_groups
from tasks.containers import inspection as containers_inspection
from tasks.containers import lifecycle as containers_lifecycle
from tasks.containers import recreate
from tasks.kubernetes import deployments as kubernetes_deployments
from tasks.kubernetes import undo as kubernetes_undo
from tasks.postgres import containment as postgres_containment


def resume(run: BreachRun) -> None:
    """Restore the recorded service state, with the new credentials."""
    ctx = run.ctx
    run.resume_started_at = utcnow()
    _repoint_stopped_containers(run)
    if ctx.dry_run:
        for svc in run.pf.services:
            ctx.plan("resume", f"{svc.name} in its recorded state, with the new credentials")
        for group in run.opts.security_groups:
            ctx.plan("resume", f"restore the revoked inbound rules of {group}")
        for pods in run.opts.isolate_pods:
            ctx.plan(
                "resume", f"lift the isolation of pods {pods.pod_selector} in {pods.namespace}"
            )
    for label, undo in _resume_steps(run):
        if not ctx.plan("resume", label):
            continue
        try:
            change = undo()
        except DRError as exc:
            ctx.record_check(f"resumed: {label}", False, detail=str(exc))
            continue
        ctx.record_change(change)
        ctx.record_check(f"resumed: {label}", True, detail=change.summary())


def _repoint_stopped_containers(run: BreachRun) -> None:
    """Stopped containers get the new password before they start again."""
    ctx = run.ctx
    for rot in run.rotations:
        if rot.kind != "db-role" or rot.new is None:
            continue
        spec = next(c.spec for c in run.pf.credentials if c.role == rot.name)
        for name in rot.containers:
            if name in run.stopped and ctx.plan(
                "recreate", f"container {name} with the new password"
            ):
                change = recreate.recreate_with_env_task(
                    run.systems.docker, name, {spec.password_env: rot.new.get_secret_value()}
                )
                ctx.record_change(change)


def _resume_steps(run: BreachRun) -> list[tuple[str, Callable[[], Change]]]:
    """Each containment change's undo, in order: containers, deployments, policies, groups."""
    systems = run.systems
    steps: list[tuple[str, Callable[[], Change]]] = []
    for name, change in run.stopped.items():
        steps.append(
            (
                f"start container {name}",
                lambda c=change: containers_lifecycle.restore_state_task(systems.docker, c),
            )
        )
    for change in run.scaled:
        steps.append(
            (
                f"scale {change.object} back",
                lambda c=change: kubernetes_deployments.restore_scale_task(systems.k8s, c),
            )
        )
    for change in run.policies:
        steps.append(
            (
                f"lift isolation {change.object}",
                lambda c=change: kubernetes_undo.undo_change_task(systems.k8s, c),
            )
        )
    for change in run.revoked:
        steps.append(
            (
                f"restore inbound of {change.object}",
                lambda c=change: security_groups.restore_ingress_task(systems.aws("ec2"), c),
            )
        )
    return steps


def verify(run: BreachRun) -> None:
    """The application works with the new credentials; every end-to-end check passes."""
    ctx = run.ctx
    _verify_container_passwords(run)
    app_at = _verify_app_writes(run)
    health = ctx.verify_health(timeout_seconds=run.opts.resume_timeout_seconds)
    if health is not None and health.ok:
        # Resumed once the application writes AND every check passes: the later of both.
        if app_at is not None and ctx.restored_at is not None and app_at > ctx.restored_at:
            ctx.stamp_restored(app_at)


def _verify_container_passwords(run: BreachRun) -> None:
    for rot in run.rotations:
        if rot.kind != "db-role" or rot.new is None:
            continue
        spec = next(c.spec for c in run.pf.credentials if c.role == rot.name)
        for name in rot.containers:
            states = containers_inspection.find_containers_task(run.systems.docker, name=name)
            holds = (
                bool(states) and states[0].env.get(spec.password_env) == rot.new.get_secret_value()
            )
            run.ctx.record_check(
                f"container {name} has the new password of {rot.name}",
                holds,
                detail="environment compared in memory (values never shown)",
            )


def _verify_app_writes(run: BreachRun) -> datetime | None:
    """The application's first heartbeat after resuming (None: not checked, or none)."""
    writer = run.opts.app_heartbeat_writer
    writers_resumed = any(
        isinstance(s, DockerService) and s.role == "writer" for s in run.pf.services
    )
    if not (writer and writers_resumed and run.stopped and run.resume_started_at is not None):
        return None
    app_at, newest = postgres_containment.heartbeat_after_task(
        run.ci(run.pgc.primary, run.pgc.heartbeat_db),
        writer,
        run.resume_started_at,
        timeout_seconds=run.opts.resume_timeout_seconds,
        poll_seconds=POLL_SECONDS,
    )
    run.ctx.record_check(
        f"application ({writer}) writes again with the new credentials",
        app_at is not None,
        detail=f"heartbeat written at {iso(app_at)}, after resuming at {iso(run.resume_started_at)}"
        if app_at
        else f"no heartbeat of {writer} after {iso(run.resume_started_at)} (newest {iso(newest)})",
    )
    return app_at
