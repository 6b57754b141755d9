"""The per-target lock: Prefect global concurrency limits, one slot per target and cluster.

Created with limit 1 if missing and used with ``strict=True`` (an unknown name with
``strict=False`` silently limits nothing); a busy target waits or is refused, per
``concurrency.on_busy``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

from dr.config import DRConfig
from dr.errors import DRError, PreconditionError
from flows.lifecycle.runlog import run_logger

__all__ = [
    "LOCK_POLL_SECONDS",
    "cluster_lock_name",
    "ensure_target_limit",
    "lock_name",
    "lock_names",
    "target_lock",
]

#: Pause between attempts to take a busy target's lock.
LOCK_POLL_SECONDS = 0.5


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
    cause = exc.__cause__
    response = getattr(cause, "response", None)
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


@contextlib.contextmanager
def target_lock(config: DRConfig, target: str, flow_run_id: str | None = None) -> Iterator[str]:
    """Hold the target's one slot, and its primary cluster's, for the duration of the block.

    The slot is a lease that Prefect renews in the background; a run that dies without
    releasing it frees the target when the lease expires. Renewal failures are logged and
    do not kill the recovery.

    Args:
        config: the config (``concurrency.on_busy`` and ``wait_timeout_seconds``).
        target: the target's name.
        flow_run_id: recorded as the lease's holder.

    Yields:
        The limits' names, joined with " + ".

    Raises:
        PreconditionError: the target is busy and the policy is ``refuse``, or it stayed
            busy for ``wait_timeout_seconds``.
        DRError: the slot could not be taken for another reason (API unreachable).
    """
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    names = lock_names(config, target)
    for each in names:
        ensure_target_limit(each)
    name = " + ".join(names)
    policy = config.concurrency
    logger = run_logger()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None
    started = time.monotonic()
    announced = False
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                concurrency(
                    names,
                    occupy=1,
                    max_retries=0,
                    strict=True,
                    holder=holder,
                    raise_on_lease_renewal_failure=False,
                )
            )
            break
        except ConcurrencySlotAcquisitionError as exc:
            if not _is_busy(exc):
                raise DRError(f"cannot take the lock {name}: {exc}", transient=True) from exc
            _refuse_if_busy_too_long(config, target, name, time.monotonic() - started)
            if not announced:
                logger.warning(
                    "target %s is busy: another DR run holds %s; waiting up to %g s"
                    " (concurrency.on_busy=wait)",
                    target,
                    name,
                    policy.wait_timeout_seconds,
                )
                announced = True
            time.sleep(LOCK_POLL_SECONDS)
    waited = time.monotonic() - started
    logger.info("lock %s taken%s", name, f" after waiting {waited:.1f} s" if announced else "")
    with stack:
        yield name
    logger.info("lock %s released", name)
