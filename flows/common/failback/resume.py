"""Finish a switch-back that a crashed run left half-done: no primary, one stopped cleanly.

A run killed after "stop current primary" leaves no node taking writes: the former primary
is down after a clean shutdown and the configured primary is still a standby. Its control
file says so (``shut down``), and a standby that replayed past that shutdown checkpoint holds
every write the stopped node ever acknowledged, so promoting it loses nothing and is what
the killed run was about to do. Anything else (a crash, a standby behind) is left to a
person: guessing there could start a second primary or lose writes.
"""

from __future__ import annotations

from dr.config import PostgresConfig, PostgresNode, Target
from dr.errors import DRError
from flows.common.failback.nodes import is_local, replayed_at_least
from flows.common.recorder import Recorder
from flows.common.systems import Systems, node_conninfo
from flows.common.writers import repoint_application, split_writers
from tasks.containers import lifecycle as containers_lifecycle
from tasks.postgres import fence, rejoin
from tasks.postgres import models as postgres_models

__all__ = ["cleanly_stopped_primary", "restart_writers", "resume_interrupted_switch_back"]


def cleanly_stopped_primary(
    pgc: PostgresConfig, healths: dict[str, postgres_models.NodeHealth]
) -> tuple[PostgresNode, str] | None:
    """The one unreachable local node whose control file says it shut down as a primary."""
    found = []
    for node in pgc.nodes:
        if healths[node.name].reachable or not is_local(node):
            continue
        try:
            control = rejoin.last_checkpoint_task(
                str(node.data_directory), str(node.bin_dir), node.os_user
            )
        except DRError:
            continue
        if control["state"] == "shut down":
            found.append((node, control["checkpoint_lsn"]))
    return found[0] if len(found) == 1 else None


def resume_interrupted_switch_back(
    rec: Recorder,
    pgc: PostgresConfig,
    healths: dict[str, postgres_models.NodeHealth],
    password: str | None,
) -> PostgresNode | None:
    """Promote the standby that replayed past the stopped primary's shutdown checkpoint.

    Returns:
        The promoted node (configured primary first), or None when the state is not that.
    """
    stopped = cleanly_stopped_primary(pgc, healths)
    if stopped is None:
        return None
    old, checkpoint_lsn = stopped
    standbys = [n for n in pgc.nodes if healths[n.name].reachable and healths[n.name].in_recovery]
    standbys.sort(key=lambda n: n.name != pgc.primary.name)
    for node in standbys:
        ci = node_conninfo(pgc, node, password)
        if not replayed_at_least(ci, checkpoint_lsn):
            continue
        rec.note(
            f"resuming an interrupted switch-back: {old.name} shut down cleanly at"
            f" {checkpoint_lsn} and {node.name} replayed past it: promoting {node.name}"
        )
        rec.record_check(
            "switch-back loses nothing",
            True,
            detail=f"{node.name} replayed past {old.name}'s shutdown checkpoint {checkpoint_lsn}",
        )
        if rec.plan("promote", f"{node.name} ({node.host}:{node.port})"):
            rec.record_change(fence.ensure_promoted_task(ci))
        return node
    return None


def restart_writers(rec: Recorder, systems: Systems, target: Target, node: PostgresNode) -> None:
    """Point the application at ``node`` and start the container writers the killed run stopped.

    Kubernetes writers keep whatever scale they have: the scale to restore died with the run.
    """
    repoint_application(rec, systems, target, node)
    docker, k8s = split_writers(target)
    for svc in docker:
        if rec.plan("start writer", svc.name):
            rec.record_change(containers_lifecycle.ensure_started_task(systems.docker, svc.name))
    for svc in k8s:
        rec.note(
            f"check the scale of {svc.namespace}/{svc.deployment}: a killed run may have left it at 0"
        )
