"""Stop the application's writers, restart them as they were, or repoint them."""

from __future__ import annotations

from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService, KubernetesService
from flows.common.writers import (
    restart_undo,
    restore_writer,
    stop_writer,
    wait_healthy,
    writer_services,
)
from flows.data_corruption.run import CorruptionRun
from tasks.containers import lifecycle as containers_lifecycle
from tasks.containers import recreate
from tasks.kubernetes import secrets as kubernetes_secrets

__all__ = ["repoint_writers", "restart_writers", "stop_writers"]


def stop_writers(run: CorruptionRun) -> None:
    """Stop every writer, last started first, recording what ran (drills keep the undo)."""
    ctx = run.ctx
    writers = writer_services(run.target)[::-1]
    with ctx.phase("stop writers", detail=", ".join(s.name for s in writers) or "none configured"):
        if not writers:
            ctx.note("no writer service in dr.yaml: nothing to stop (stop them by hand)")
        for svc in writers:
            if not ctx.plan("stop", f"writer {svc.kind} {svc.name}"):
                continue
            change = stop_writer(run.systems, svc)
            run.writer_changes.append((svc, change))
            if not change.changed:
                # Stopped before this run: by a person, or by a run that was killed.
                run.details.setdefault("resume", {}).setdefault("writers_already_stopped", [])
                run.details["resume"]["writers_already_stopped"].append(svc.name)
            # Incidents keep the writers stopped if recovery fails: a person decides.
            undo = restart_undo(run.systems, svc, change)
            ctx.record_change(change, undo=undo if ctx.is_drill else None)
        if not ctx.dry_run:
            run.writers_stopped_at = utcnow()


def restart_writers(run: CorruptionRun) -> None:
    """Start the writers again with their recorded state, in start order, each healthy first."""
    ctx = run.ctx
    with ctx.phase("restart writers", detail="with their recorded state, in start order"):
        for svc, change in reversed(run.writer_changes):
            if not ctx.plan("restart", f"writer {svc.kind} {svc.name}"):
                continue
            if not change.changed and isinstance(svc, DockerService):
                # A killed run stopped it and never restarted it: finish that run's work.
                ctx.note(f"writer {svc.name} was already stopped when this run began: starting it")
                ctx.record_change(
                    containers_lifecycle.ensure_started_task(run.systems.docker, svc.name)
                )
                continue
            ctx.record_change(restore_writer(run.systems, svc, change))
            took = wait_healthy(svc)
            if took is not None:
                ctx.record_check(
                    f"{svc.name} healthy", True, detail=f"{svc.health_url} in {took} s"
                )
        run.writers_started_at = utcnow()


def repoint_writers(run: CorruptionRun, host: str, port: int) -> None:
    """Whole-database switch: the writers use the recovered cluster from now on."""
    ctx = run.ctx
    for svc in writer_services(run.target):
        if not ctx.plan("repoint", f"writer {svc.name} to {host}:{port}"):
            continue
        if isinstance(svc, DockerService):
            _repoint_container(run, svc, host, port)
        else:
            _repoint_deployment(run, svc, host, port)


def _repoint_container(run: CorruptionRun, svc: DockerService, host: str, port: int) -> None:
    client = run.systems.docker
    change = recreate.recreate_with_env_task(
        client, svc.name, {run.opts.db_host_env: host, run.opts.db_port_env: str(port)}
    )

    def undo(c: Any = client, ch: Change = change) -> Any:
        return containers_lifecycle.restore_state(c, ch)

    # Incidents never repoint writers back to the damaged database by themselves.
    run.ctx.record_change(change, undo=undo if run.ctx.is_drill else None)


def _repoint_deployment(run: CorruptionRun, svc: KubernetesService, host: str, port: int) -> None:
    api = run.systems.k8s
    assert svc.db_host_secret is not None
    keys = kubernetes_secrets.read_secret_task(api, svc.namespace, svc.db_host_secret)
    for key, value in [(svc.db_host_key, host), (run.opts.db_port_env, str(port))]:
        if key == run.opts.db_port_env and key not in keys:
            continue
        change = kubernetes_secrets.replace_secret_key_task(
            api, svc.namespace, svc.db_host_secret, key, value
        )

        def undo_k(a: Any = api, ch: Change = change) -> Any:
            return kubernetes_secrets.restore_secret_key(a, ch)

        run.ctx.record_change(change, undo=undo_k if run.ctx.is_drill else None)
