"""Fence the old primary (stop it, else close it to clients) and prove it takes no writes."""

from __future__ import annotations

from dr.config import PostgresNode
from dr.errors import ApprovalError, DRError
from flows.region_failover.run import Failover
from tasks import faults
from tasks.postgres import fence as postgres_fence
from tasks.postgres import local_server
from tasks.postgres import models as postgres_models

__all__ = [
    "STRONG_PROOFS",
    "fence",
    "planned_failover_gate",
    "prove",
    "recheck_fence",
    "unproven_gate",
]


#: Proof methods that show a node cannot take writes from anywhere, not just from here.
STRONG_PROOFS = frozenset({"refused", "not_accepting_connections", "in_recovery", "read_only"})


def prove(run: Failover, node: PostgresNode) -> postgres_models.FenceProof:
    """Prove on every application database that ``node`` takes no writes."""
    proofs = [postgres_fence.prove_not_writable_task(run.ci(node, db)) for db in run.pgc.databases]
    for proof in proofs:
        strong = proof.method in STRONG_PROOFS or (
            proof.method == "unreachable" and run.opts.unreachable_is_fenced
        )
        if not (proof.proven and strong):
            reason = proof.reason
            if proof.proven and proof.method == "unreachable":
                reason = (
                    f"{proof.reason}; unreachable from this runner only: clients on another "
                    "path may still write to it (option unreachable_is_fenced accepts this)"
                )
            return proof.model_copy(update={"proven": False, "reason": reason})
    return proofs[0]


def planned_failover_gate(run: Failover, node: PostgresNode) -> None:
    """A primary that still answers is stopped only after a person (or policy) approves;
    in a run an alert started, always a person.

    Why here and not at the promotion: stopping a healthy primary is the first change that
    hurts (the application cannot write from then on). A primary that is really down is
    fenced without asking: that stops no one.
    """
    view = run.assessment.nodes.get(node.name) if run.assessment else None
    if view is None or view.state != "primary":
        return
    chosen = run.choice.chosen if run.choice else None
    # An alert said the primary is down, yet it answers (it came back, or the alert was
    # about something else): a route's auto-approval must not stop a healthy primary.
    from_alert = run.opts.alert_fingerprint is not None
    run.ctx.approve(
        f"planned failover: stop the primary {node.name} ({node.host}:{node.port}), which "
        f"still answers; the application cannot write until {chosen} is promoted",
        always_ask=from_alert,
    )
    run.approved_promotion = chosen


def fence(run: Failover, node: PostgresNode, *, again: bool = False) -> postgres_models.FenceProof:
    """Stop the old primary, or close it to clients; then prove it takes no writes."""
    ctx = run.ctx
    view = run.assessment.nodes.get(node.name) if run.assessment else None
    if not again:
        planned_failover_gate(run, node)
    stopped = False
    local = node.data_directory is not None and node.bin_dir is not None
    # A standby takes no writes (the proof says so): stopping it would only undo a rejoin
    # (a resumed run finds the old primary already rejoined as a standby).
    standby = not again and view is not None and view.state == "standby"
    if standby:
        ctx.note(f"{node.name} is a standby: not stopped, proven instead")
    elif local and ctx.plan("stop -m immediate", f"the old primary {node.name}"):
        stopped = _stop_old(run, node)
    reachable = not standby and (again or (view is not None and view.state == "primary"))
    # A dry run plans the stop of a local node; closing it to clients is the fallback.
    planned_stop = ctx.dry_run and local
    if not stopped and not planned_stop and reachable and run.opts.fence_by_connections:
        if ctx.plan("fence by connections", f"the old primary {node.name}"):
            _fence_by_connections(run, node)
    if ctx.dry_run:
        return postgres_models.FenceProof(
            target=node.name, proven=True, method="unknown", reason="dry run"
        )
    proof = prove(run, node)
    ctx.record_check(
        f"{node.name} fenced{' again' if again else ''}",
        proof.proven,
        critical=False,
        detail=f"{proof.method}: {proof.reason}",
    )
    run.details.setdefault("fence_proofs", []).append(proof.model_dump(mode="json"))
    if not proof.proven:
        unproven_gate(run, node, proof)
    return proof


def _stop_old(run: Failover, node: PostgresNode) -> bool:
    """Stop a local old primary (immediate); True when nothing of it runs any more."""
    ctx = run.ctx
    if _no_live_process(node):
        ctx.record_check(
            f"{node.name} has no live process",
            True,
            critical=False,
            detail=f"nothing runs from {node.data_directory}: nothing to stop",
        )
        return True
    try:
        change = local_server.stop_local_server_task(
            str(node.data_directory), str(node.bin_dir), node.os_user, "immediate"
        )
    except DRError as exc:
        ctx.note(f"{node.name} could not be stopped here: {exc}")
        return False
    ctx.record_change(
        change,
        undo=run.guarded(
            f"starting {node.name} again",
            lambda: local_server.start_local_server(
                str(node.data_directory), str(node.bin_dir), node.os_user
            ),
            node.name,
        ),
    )
    return True


def _no_live_process(node: PostgresNode) -> bool:
    """True when no process of the node's server is alive (zombies count as dead).

    Why not only ``pg_ctl status``: it counts a killed postmaster that was not reaped yet
    as running, and ``pg_ctl stop`` then waits for the reaping (seconds on some hosts).
    """
    try:
        return not faults.server_processes(str(node.data_directory))
    except DRError:
        return False


def _fence_by_connections(run: Failover, node: PostgresNode) -> None:
    """Read-only by default, databases closed, sessions ended: for a node not stoppable here."""
    ctx = run.ctx
    ci = run.ci(node)
    try:
        change = postgres_fence.fence_by_connections_task(ci, dbnames=list(run.pgc.databases))
    except DRError as exc:
        ctx.note(f"{node.name} could not be fenced by connections: {exc}")
        return
    ctx.record_change(
        change,
        undo=run.guarded(
            f"opening {node.name} to clients again",
            lambda: postgres_fence.unfence_by_connections(
                ci,
                dbnames=change.undo_data.get("dbnames", []),
                reset_read_only=change.undo_data.get("reset_read_only", True),
            ),
            node.name,
        ),
    )


def unproven_gate(run: Failover, node: PostgresNode, proof: postgres_models.FenceProof) -> None:
    """No proof, no promotion: only a person (or ``allow_unproven_fence``) may go on.

    Why policy may not approve this one: promoting while the old primary may still take
    writes can give two primaries, and their data can never be merged back.
    """
    step = (
        f"promote while {node.name} is NOT proven fenced ({proof.method}: {proof.reason});"
        " two primaries are possible"
    )
    ctx = run.ctx
    if run.opts.allow_unproven_fence:
        ctx.note(f"going on without a fence proof (allow_unproven_fence): {step}")
        ctx.approve(step)
        return
    if ctx.is_drill:
        raise ApprovalError(
            f"refused: {node.name} could not be proven fenced ({proof.reason}); drills never"
            " approve this by themselves (option allow_unproven_fence overrides); nothing"
            " was promoted"
        )
    # Incident: a person decides, whatever the auto-approval policy says.
    ctx.approve(step, always_ask=True)
    ctx.note(f"a person approved going on without a fence proof of {node.name}")


def recheck_fence(run: Failover, node: PostgresNode) -> None:
    """Right before promoting: the old primary must still take no writes."""
    if run.ctx.dry_run:
        return
    proof = prove(run, node)
    if proof.proven:
        run.ctx.record_check(
            f"{node.name} still fenced before promotion", True, detail=proof.reason
        )
        return
    run.ctx.note(f"{node.name} came back before promotion ({proof.reason}): fencing it again")
    fence(run, node, again=True)
