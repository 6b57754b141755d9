"""Switch back: a planned switchover to the configured primary that loses nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import DockerService, PostgresConfig, PostgresNode, Target
from dr.errors import PreconditionError, VerificationError
from flows.common.failback.models import FailbackOptions, FailbackReport
from flows.common.failback.nodes import (
    is_local,
    replayed_at_least,
    start_node,
    stop_node,
    wait_until,
)
from flows.common.failback.rejoin import rejoin_as_standby
from flows.common.recorder import Recorder
from flows.common.systems import Systems, node_conninfo
from flows.common.writers import (
    repoint_application,
    restart_undo,
    split_writers,
    start_writer,
    stop_writer,
    wait_for_app_write,
    wait_healthy,
)
from tasks.postgres import assess, fence, rejoin

__all__ = ["start_writers", "stop_writers", "switch_over"]


def stop_writers(rec: Recorder, systems: Systems, target: Target) -> list[tuple[Any, Change]]:
    """Stop every writer of the application (containers stopped, deployments scaled to 0).

    Args:
        rec: where changes go (each with its undo: start again).
        systems: the clients.
        target: the target's services.

    Returns:
        ``(service, change)`` pairs, for :func:`start_writers`.
    """
    docker, k8s = split_writers(target)
    stopped: list[tuple[Any, Change]] = []
    for svc in [*docker, *k8s][::-1]:  # last started first
        docker_svc = isinstance(svc, DockerService)
        action, kind = ("stop", "container") if docker_svc else ("scale to 0", "deployment")
        if rec.plan(action, f"{kind} {svc.name} (no writes during the switch-back)"):
            change = stop_writer(systems, svc)
            rec.record_change(change, undo=restart_undo(systems, svc, change))
            stopped.append((svc, change))
    return stopped


def start_writers(rec: Recorder, systems: Systems, stopped: Sequence[tuple[Any, Change]]) -> None:
    """Start again what :func:`stop_writers` stopped (containers started, scale restored).

    Args:
        rec: where changes go.
        systems: the clients.
        stopped: from :func:`stop_writers`.
    """
    for svc, change in reversed(stopped):  # in start order, each healthy before the next
        if change.changed:
            rec.record_change(start_writer(systems, svc, change))
            wait_healthy(svc)


def switch_over(
    rec: Recorder,
    systems: Systems,
    target: Target,
    to_node: PostgresNode,
    from_node: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    report: FailbackReport,
) -> None:
    """Planned switchover from ``from_node`` (primary) to ``to_node`` (its standby), losing nothing.

    Why the proof after the stop: a clean shutdown writes a shutdown checkpoint and sends it
    to the standbys; a standby that replayed past it holds everything the old primary ever
    acknowledged, so promoting it loses nothing even if a writer was missed.

    Args:
        rec: where phases, changes and checks go.
        systems: the clients.
        target: the target.
        to_node: the standby to promote (the configured primary).
        from_node: the current primary (stopped cleanly; needs data_directory/bin_dir).
        password: the resolved password, if any.
        opts: timeouts.
        report: filled in (``switched_back``, ``switch_back_seconds``...).

    Raises:
        VerificationError: the standby did not catch up; the old primary is started again.
    """
    pgc = target.postgres
    if not is_local(from_node):
        raise PreconditionError(f"{from_node.name} is not local: it cannot be stopped cleanly")
    started = time.monotonic()
    with rec.phase("stop writes", detail="the application stops writing during the switch-back"):
        stopped = stop_writers(rec, systems, target)
    promoted = False
    try:
        with rec.phase(
            "catch up", detail=f"{to_node.name} replays everything {from_node.name} has"
        ):
            if not rec.dry_run:
                _catch_up(rec, pgc, to_node, from_node, password, opts)
        with rec.phase("stop current primary", detail=f"{from_node.name}: clean shutdown"):
            if rec.plan("stop (fast, clean)", f"{from_node.name} ({from_node.data_directory})"):
                _stop_cleanly_and_prove(rec, pgc, to_node, from_node, password, opts, report)
        with rec.phase("promote", detail=f"{to_node.name} becomes the primary again"):
            if rec.plan("promote", f"{to_node.name} ({to_node.host}:{to_node.port})"):
                rec.record_change(fence.ensure_promoted_task(node_conninfo(pgc, to_node, password)))
                promoted = True
    except BaseException:
        if not promoted and not rec.dry_run:
            _abandon(rec, systems, pgc, to_node, from_node, password, opts, stopped)
        raise
    with rec.phase("rejoin", detail=f"{from_node.name} becomes a standby of {to_node.name}"):
        report.rejoined.append(rejoin_as_standby(rec, pgc, from_node, to_node, password, opts))
    switched_at = utcnow()
    with rec.phase("repoint", detail=f"the application writes to {to_node.name} again"):
        repoint_application(rec, systems, target, to_node)
        start_writers(rec, systems, stopped)
    report.switched_back = not rec.dry_run
    report.switch_back_seconds = round(time.monotonic() - started, 3)
    _verify_app(rec, target, to_node, password, opts, switched_at, report)


def _catch_up(
    rec: Recorder,
    pgc: PostgresConfig,
    to_node: PostgresNode,
    from_node: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
) -> None:
    """Wait until the standby replayed everything the primary has written so far."""
    to_ci = node_conninfo(pgc, to_node, password)
    lsn = assess.current_wal_lsn(node_conninfo(pgc, from_node, password))
    waited = wait_until(
        f"{to_node.name} replaying up to {lsn}",
        lambda: replayed_at_least(to_ci, lsn),
        opts.catch_up_timeout_seconds,
    )
    rec.record_check(f"{to_node.name} caught up", True, detail=f"replayed {lsn} in {waited:.2f} s")


def _stop_cleanly_and_prove(
    rec: Recorder,
    pgc: PostgresConfig,
    to_node: PostgresNode,
    from_node: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    report: FailbackReport,
) -> None:
    """Stop the primary cleanly, then prove the standby replayed its shutdown checkpoint."""
    to_ci = node_conninfo(pgc, to_node, password)
    stop_node(rec, from_node, "fast")
    proof = fence.prove_not_writable_task(node_conninfo(pgc, from_node, password, pgc.databases[0]))
    rec.record_check(f"{from_node.name} takes no writes", proof.proven, detail=proof.reason)
    if not proof.proven:
        raise VerificationError(f"{from_node.name} still takes writes: {proof.reason}")
    control = rejoin.last_checkpoint_task(
        str(from_node.data_directory), str(from_node.bin_dir), from_node.os_user
    )
    checkpoint_lsn = control["checkpoint_lsn"]
    wait_until(
        f"{to_node.name} replaying past the shutdown checkpoint {checkpoint_lsn}",
        lambda: replayed_at_least(to_ci, checkpoint_lsn),
        opts.catch_up_timeout_seconds,
    )
    report.switch_back_lost_nothing = "shut down" in control["state"]
    rec.record_check(
        "switch-back loses nothing",
        report.switch_back_lost_nothing,
        detail=f"{to_node.name} replayed past {from_node.name}'s shutdown checkpoint "
        f"{checkpoint_lsn} ({control['state']})",
    )


def _abandon(
    rec: Recorder,
    systems: Systems,
    pgc: PostgresConfig,
    to_node: PostgresNode,
    from_node: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    stopped: Sequence[tuple[Any, Change]],
) -> None:
    """Before promotion, a failure leaves the current primary as it was, writers running.

    Why ``to_node`` is asked first: a promotion that failed here (a timeout) may still have
    happened; then starting ``from_node`` again would make two primaries.
    """
    try:
        promoted = not assess.health(node_conninfo(pgc, to_node, password)).in_recovery
    except Exception:  # noqa: BLE001 - unknown: do not start a possible second primary
        promoted = True
    if promoted:
        rec.note(
            f"switch-back failed, and {to_node.name} may be promoted: {from_node.name} is left"
            " stopped (never two primaries); rerun the failback"
        )
        return
    rec.note(f"switch-back abandoned before promotion: {from_node.name} stays primary")
    with contextlib.suppress(Exception):
        start_node(rec, from_node, opts)
    with contextlib.suppress(Exception):
        start_writers(rec, systems, stopped)


def _verify_app(
    rec: Recorder,
    target: Target,
    primary: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
    since: datetime,
    report: FailbackReport,
) -> None:
    docker, k8s = split_writers(target)
    if rec.dry_run or opts.app_heartbeat_writer is None or not (docker or k8s):
        return
    with rec.phase("verify", detail=f"application writes land on {primary.name}"):
        pgc = target.postgres
        conninfo = node_conninfo(pgc, primary, password, pgc.heartbeat_db)
        ever = wait_for_app_write(
            conninfo, opts.app_heartbeat_writer, datetime.min.replace(tzinfo=UTC), 0
        )
        if ever is None:
            rec.note(
                f"the application never wrote dr_heartbeat rows as "
                f"'{opts.app_heartbeat_writer}': its writes are not checked"
            )
            return
        landed = wait_for_app_write(
            conninfo, opts.app_heartbeat_writer, since, opts.verify_timeout_seconds
        )
        report.app_write_on_primary_at = landed
        rec.record_check(
            f"application writes on {primary.name}",
            landed is not None,
            detail=f"first write at {landed.isoformat()}"
            if landed
            else f"no write by {opts.app_heartbeat_writer} within {opts.verify_timeout_seconds:g} s",
        )
