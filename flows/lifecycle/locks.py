"""The per-target lock: Prefect global concurrency limits, one slot per target and cluster.

Created with limit 1 if missing; taken as one short lease on all of a run's limits, renewed
every few seconds by the live run (``lock_holders``). A busy target waits or is refused, per
``concurrency.on_busy``; a lock whose holder is dead is taken over at once.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

from dr.config import DRConfig
from dr.errors import DRError, PreconditionError
from flows.lifecycle.lock_holders import (
    CRASH_AUTOMATION,
    LEASE_SECONDS,
    Holder,
    LeaseRenewer,
    delete_holder,
    ensure_crash_automation,
    mark_crashed,
    read_holder,
    release_lease,
    why_dead,
    write_holder,
)
from flows.lifecycle.runlog import run_logger

__all__ = [
    "LOCK_POLL_SECONDS",
    "LOCK_PROGRESS_SECONDS",
    "cluster_lock_name",
    "ensure_target_limit",
    "lock_name",
    "lock_names",
    "target_lock",
]

#: Pause between attempts to take a busy target's lock.
LOCK_POLL_SECONDS = 0.5
#: While waiting: one line saying who holds the lock, then a progress line this often.
LOCK_PROGRESS_SECONDS = 10.0


def lock_name(target: str) -> str:
    """The global concurrency limit's name for a target: ``dr-target-<name>``."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", target.lower()).strip("-")
    return f"dr-target-{clean}"


def cluster_lock_name(host: str, port: int) -> str:
    """The limit for a PostgreSQL cluster: ``dr-cluster-<host>-<port>``.

    Why: several targets may live on one cluster (the lab's seed systems do); a failover on
    one and a restore on another would act on the same servers at once.
    """
    clean = re.sub(r"[^a-z0-9_-]+", "-", host.lower()).strip("-")
    return f"dr-cluster-{clean}-{port}"


def lock_names(config: DRConfig, target: str) -> list[str]:
    """Every limit a run on ``target`` holds: the target's and its primary cluster's."""
    names = [lock_name(target)]
    primary = config.targets[target].postgres.primary if target in config.targets else None
    if primary is not None:
        names.append(cluster_lock_name(primary.host, primary.port))
    return names


def ensure_target_limit(name: str) -> str:
    """Create the global concurrency limit ``name`` with one slot if it does not exist.

    Args:
        name: from :func:`lock_name`.

    Returns:
        ``"created"`` or ``"unchanged"``.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        else:
            if existing.limit != 1 or not existing.active:
                run_logger().warning(
                    "concurrency limit %s has limit %s (active: %s): runs on this target may"
                    " overlap; set it to 1 and active",
                    name,
                    existing.limit,
                    existing.active,
                )
            return "unchanged"
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            return "unchanged"
    run_logger().info("concurrency limit %s created with 1 slot", name)
    return "created"


def _is_busy(exc: BaseException) -> bool:
    """True when a slot acquisition failed because the limit is full (HTTP 423)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 423


def _refuse_if_busy_too_long(config: DRConfig, target: str, name: str, waited: float) -> None:
    """Raise when the busy policy says stop waiting: ``refuse``, or waited long enough."""
    policy = config.concurrency
    logger = run_logger()
    if policy.on_busy == "refuse":
        logger.error(
            "target %s is busy: another DR run holds %s; refusing this run"
            " (concurrency.on_busy=refuse)",
            target,
            name,
        )
        raise PreconditionError(
            f"target {target!r} is busy: another DR run holds {name} (concurrency.on_busy=refuse)"
        ) from None
    if waited >= policy.wait_timeout_seconds:
        logger.error("target %s still busy after %.0f s; giving up", target, waited)
        raise PreconditionError(
            f"target {target!r} stayed busy for {policy.wait_timeout_seconds:g} s"
            f" (another DR run holds {name})"
        ) from None


def _try_acquire(client: Any, names: list[str], holder: Any) -> str | None:
    """Take one slot of every limit in one lease; its id, or None when one is full."""
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        response = client.increment_concurrency_slots_with_lease(
            names, slots=1, mode="concurrency", lease_duration=LEASE_SECONDS, holder=holder
        )
    except PrefectHTTPStatusError as exc:
        if _is_busy(exc):
            return None
        raise DRError(f"cannot take the lock {' + '.join(names)}: {exc}", transient=True) from exc
    except Exception as exc:  # API unreachable, timeouts: say which lock
        raise DRError(f"cannot take the lock {' + '.join(names)}: {exc}", transient=True) from exc
    return str(response.json()["lease_id"])


def _holders(client: Any, names: list[str]) -> list[tuple[str, Holder]]:
    """The recorded holders of the given limits (those that have a record)."""
    found = []
    for each in names:
        holder = read_holder(client, each)
        if holder is not None:
            found.append((each, holder))
    return found


def _free_dead_holders(client: Any, names: list[str]) -> list[str]:
    """Release the leases of recorded holders that are dead; what was done, one line each."""
    freed = []
    for limit, holder in _holders(client, names):
        reason = why_dead(client, holder)
        if reason is None:
            continue
        mark_crashed(client, holder, reason)
        release_lease(client, holder.lease_id)
        delete_holder(client, limit, holder.lease_id)
        freed.append(f"{limit} from {holder.describe()}: {reason}")
    return freed


class _Waiting:
    """Says once that the target is busy and by whom, then a progress line now and then."""

    def __init__(self, config: DRConfig, target: str, name: str) -> None:
        self.config, self.target, self.name = config, target, name
        self.started = time.monotonic()
        self.announced = False
        self.last_line = 0.0

    def waited(self) -> float:
        return time.monotonic() - self.started

    def tick(self, client: Any, names: list[str]) -> None:
        _refuse_if_busy_too_long(self.config, self.target, self.name, self.waited())
        now = time.monotonic()
        if self.announced and now - self.last_line < LOCK_PROGRESS_SECONDS:
            return
        held_by = "; ".join(f"{n} by {h.describe()}" for n, h in _holders(client, names))
        logger = run_logger()
        if not self.announced:
            logger.warning(
                "target %s is busy: another DR run holds %s%s; waiting up to %g s"
                " (concurrency.on_busy=wait)",
                self.target,
                self.name,
                f" ({held_by})" if held_by else "",
                self.config.concurrency.wait_timeout_seconds,
            )
        else:
            logger.info(
                "still waiting for %s: %.0f s%s",
                self.name,
                self.waited(),
                f" ({held_by})" if held_by else "",
            )
        self.announced = True
        self.last_line = now


def _acquire(config: DRConfig, target: str, names: list[str], flow_run_id: str | None) -> Holder:
    """Wait for the lock (taking it over from dead holders); our recorded claim."""
    from prefect import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    name = " + ".join(names)
    lease_holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None
    waiting = _Waiting(config, target, name)
    took_over: list[str] = []
    with get_client(sync_client=True) as client:
        try:
            ensure_crash_automation(client)
        except Exception as exc:  # noqa: BLE001 - the lock works without it
            run_logger().debug("automation %s not ensured: %s", CRASH_AUTOMATION, exc)
        while True:
            lease_id = _try_acquire(client, names, lease_holder)
            if lease_id is not None:
                break
            freed = _free_dead_holders(client, names)
            if freed:
                took_over = freed
                continue
            waiting.tick(client, names)
            time.sleep(LOCK_POLL_SECONDS)
        mine = Holder.mine(lease_id, flow_run_id)
        for each in names:
            write_holder(client, each, mine)
    logger = run_logger()
    for line in took_over:
        logger.warning("lock %s taken over: %s", name, line)
    waited = waiting.waited()
    logger.info(
        "lock %s taken%s", name, f" after waiting {waited:.1f} s" if waiting.announced else ""
    )
    return mine


def _release(names: list[str], mine: Holder) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        release_lease(client, mine.lease_id)
        for each in names:
            delete_holder(client, each, mine.lease_id)


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.get_id()


@contextlib.contextmanager
def target_lock(config: DRConfig, target: str, flow_run_id: str | None = None) -> Iterator[str]:
    """Hold the target's one slot, and its primary cluster's, for the duration of the block.

    The slot is a Prefect lease that this run renews every few seconds
    (:class:`LeaseRenewer`); a run that finds it taken by a dead run (flow run ended,
    process gone, or silent) takes it over and says so. Renewal failures are logged and do
    not kill the recovery.

    Args:
        config: the config (``concurrency.on_busy`` and ``wait_timeout_seconds``).
        target: the target's name.
        flow_run_id: recorded as the lease's holder (default: the current flow run).

    Yields:
        The limits' names, joined with " + ".

    Raises:
        PreconditionError: the target is busy and the policy is ``refuse``, or it stayed
            busy for ``wait_timeout_seconds``.
        DRError: the slot could not be taken for another reason (API unreachable).
    """
    names = lock_names(config, target)
    for each in names:
        ensure_target_limit(each)
    mine = _acquire(config, target, names, flow_run_id or _current_flow_run_id())
    name = " + ".join(names)
    try:
        with LeaseRenewer(names, mine):
            yield name
    finally:
        try:
            _release(names, mine)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            run_logger().warning(
                "lock %s not released (%s): it frees itself in %g s", name, exc, LEASE_SECONDS
            )
        else:
            run_logger().info("lock %s released", name)
