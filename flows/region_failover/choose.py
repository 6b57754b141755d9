"""Choose the replica to promote: least data loss, then region; the lag gate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dr.errors import PreconditionError
from flows.region_failover.models import Assessment, NodeView, ReplicaChoice
from flows.region_failover.run import Failover
from tasks.postgres import assess

__all__ = [
    "choose",
    "choose_replica",
    "estimate_lag_seconds",
    "lag_gate",
    "node_position",
    "reference_moment",
]


def _lsn(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return assess.wal_lsn_diff(value, "0/0")
    except ValueError:
        return None


def _lsn_text(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def node_position(view: NodeView) -> int | None:
    """How much WAL a node holds, as a byte position.

    A primary's current position; a standby's newest of received and replayed (WAL received
    but not yet replayed is replayed when it is promoted, so it is not lost).

    Args:
        view: the assessed node.

    Returns:
        The position, or None when unknown (unreachable).
    """
    if view.state == "primary":
        return _lsn(view.current_lsn)
    values = [v for v in (_lsn(view.received_lsn), _lsn(view.replayed_lsn)) if v is not None]
    return max(values) if values else None


def estimate_lag_seconds(view: NodeView, reference_at: datetime | None) -> tuple[float | None, str]:
    """How far behind a replica's data is, in seconds, against a reference moment.

    The replica's newest data is its newest heartbeat row (any writer) or, without one, the
    commit time of its last replayed transaction. The reference is the newest moment the
    old primary is known to have acknowledged a write (see :func:`choose_replica`). With
    no write for a while the estimate errs on the side of "behind" (it asks a person).

    Args:
        view: the assessed replica.
        reference_at: the newest acknowledged moment on the old primary, if known.

    Returns:
        ``(seconds or None, basis)``; 0 for a node that is already primary.
    """
    if view.state == "primary":
        return 0.0, "already the primary"
    data_at = view.newest_heartbeat_at or view.last_replay_at
    what = "newest heartbeat" if view.newest_heartbeat_at else "last replayed commit"
    if reference_at is None or data_at is None:
        return None, "unknown: no reference moment or no data timestamp on the replica"
    seconds = max(0.0, (reference_at - data_at).total_seconds())
    return seconds, f"{what} {data_at.isoformat(timespec='milliseconds')} vs reference"


def _region_rank(region: str, failed_region: str, preferred: Sequence[str]) -> tuple[int, int]:
    if region in preferred:
        return (0, list(preferred).index(region))
    if region != failed_region:
        return (1, 0)
    return (2, 0)


def _candidates(
    views: Sequence[NodeView], old_primary: str
) -> tuple[list[tuple[int, NodeView]], dict[str, str]]:
    """The healthy replicas with their config order, and why each other one is excluded."""
    excluded: dict[str, str] = {}
    healthy: list[tuple[int, NodeView]] = []
    order = {v.name: i for i, v in enumerate(views)}
    for view in views:
        if view.name == old_primary:
            continue
        if view.state == "unreachable":
            excluded[view.name] = f"unreachable ({view.error or 'no answer'})"
        elif view.state == "unknown":
            excluded[view.name] = f"cannot be assessed ({view.error or 'unknown error'})"
        elif node_position(view) is None:
            excluded[view.name] = "no WAL position reported"
        else:
            healthy.append((order[view.name], view))
    return healthy, excluded


def _why(best: NodeView, ranked: Sequence[NodeView]) -> str:
    """The choice's reason, naming ties broken by region."""
    if best.state == "primary":
        return f"{best.name} already takes writes (resuming an earlier failover)"
    why = f"{best.name} holds the most WAL ({_lsn_text(node_position(best))})"
    ties = [v.name for v in ranked[1:] if node_position(v) == node_position(best)]
    if ties:
        why += f"; tie with {', '.join(ties)} broken by region ({best.region})"
    return why


def choose_replica(
    views: Sequence[NodeView],
    *,
    old_primary: str,
    failed_region: str,
    preferred_regions: Sequence[str] = (),
    reference_at: datetime | None = None,
) -> ReplicaChoice:
    """Pick the replica to promote: the least data loss first, then region preference.

    Why this order: the highest WAL position loses the fewest transactions; among equal
    ones, a node outside the failed region is the one that survives a region failure. A
    node already promoted (a previous, interrupted run) is the choice: promoting another
    would make two primaries.

    Args:
        views: every node (the old primary is skipped).
        old_primary: the node failing over from.
        failed_region: its region.
        preferred_regions: tie-break order among regions.
        reference_at: the lag reference (see :func:`estimate_lag_seconds`).

    Returns:
        A :class:`ReplicaChoice`; ``chosen`` None (with ``excluded`` saying why for each)
        when no replica is healthy.

    Raises:
        PreconditionError: more than one replica already takes writes (split brain).
    """
    healthy, excluded = _candidates(views, old_primary)
    promoted = [v for _, v in healthy if v.state == "primary"]
    if len(promoted) > 1:
        raise PreconditionError(
            "more than one replica already takes writes ("
            + ", ".join(v.name for v in promoted)
            + "): a person must decide which one stays primary"
        )
    if not healthy:
        detail = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "no replica configured"
        return ReplicaChoice(
            chosen=None, excluded=excluded, reason=f"no healthy replica to promote ({detail})"
        )

    def key(item: tuple[int, NodeView]) -> tuple[Any, ...]:
        index, view = item
        return (
            0 if view.state == "primary" else 1,
            -(node_position(view) or 0),
            _region_rank(view.region, failed_region, preferred_regions),
            index,
        )

    ranked = [v for _, v in sorted(healthy, key=key)]
    best = ranked[0]
    if reference_at is None:
        # Relative: the freshest data among the candidates.
        stamps = [v.newest_heartbeat_at or v.last_replay_at for v in ranked]
        known = [s for s in stamps if s is not None]
        reference_at = max(known) if known else None
    lag, basis = estimate_lag_seconds(best, reference_at)
    why = _why(best, ranked)
    return ReplicaChoice(
        chosen=best.name,
        position=_lsn_text(node_position(best)),
        lag_seconds=lag,
        lag_basis=basis,
        ranked=[v.name for v in ranked],
        excluded=excluded,
        reason=why,
    )


def reference_moment(run: Failover, a: Assessment) -> tuple[datetime | None, str]:
    """The newest moment the old primary is known to have acknowledged a write."""
    candidates: list[tuple[datetime, str]] = []
    probe = run.ctx.heartbeat
    if probe is not None and run.ctx.failure_at is not None:
        last = probe.last_acked_before(run.ctx.failure_at)
        if last is not None:
            candidates.append((last.ts, "the probe's last write acknowledged before the failure"))
    old = a.nodes[a.old_primary]
    if old.newest_heartbeat_at is not None and old.state == "primary":
        candidates.append((old.newest_heartbeat_at, f"newest heartbeat on {old.name}"))
    if run.opts.failure_at is not None:
        at = (
            run.opts.failure_at
            if run.opts.failure_at.tzinfo
            else run.opts.failure_at.replace(tzinfo=UTC)
        )
        candidates.append((at, "the failure time given"))
    if not candidates:
        return None, "the freshest replica (the old primary's last write is unknown)"
    return max(candidates)


def choose(run: Failover, a: Assessment) -> ReplicaChoice:
    """Choose the replica against the best known reference moment."""
    reference, basis = reference_moment(run, a)
    choice = choose_replica(
        list(a.nodes.values()),
        old_primary=a.old_primary,
        failed_region=a.failed_region,
        preferred_regions=run.opts.preferred_regions,
        reference_at=reference,
    )
    if choice.chosen is not None:
        choice.lag_basis = f"{choice.lag_basis} ({basis})"
    return choice


def lag_gate(run: Failover, choice: ReplicaChoice) -> None:
    """A replica further behind than allowed needs a person; the question says how far."""
    limit = run.opts.max_lag_seconds
    if limit is None:
        limit = run.ctx.objectives.rpo_seconds
    lag = choice.lag_seconds
    if lag is None:
        run.ctx.note(f"{choice.chosen}'s lag is unknown: {choice.lag_basis}")
        return
    ok = lag <= limit
    run.ctx.record_check(
        f"{choice.chosen} within the RPO",
        ok,
        critical=False,
        detail=f"about {lag:.2f} s behind (limit {limit:g} s): {choice.lag_basis}",
        value=round(lag, 3),
    )
    if not ok:
        run.ctx.approve(
            f"promote {choice.chosen} although it is about {lag:.1f} s behind the old "
            f"primary (limit {limit:g} s): promoting it loses that data"
        )
