"""The nodes of a failback: which one leads, who streams from it, waiting, start and stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from dr.changes import Change
from dr.config import PostgresConfig, PostgresNode
from dr.errors import PostgresError, PreconditionError, VerificationError
from flows.common.failback.models import FailbackOptions
from flows.common.recorder import Recorder
from flows.common.systems import node_conninfo
from tasks.postgres import assess, local_server
from tasks.postgres import models as postgres_models

__all__ = [
    "find_primary",
    "is_local",
    "replayed_at_least",
    "start_node",
    "stop_node",
    "streaming_names",
    "wait_until",
]

POLL_SECONDS = 0.05


def is_local(node: PostgresNode) -> bool:
    """True when this runner can stop, start and rewind the node (its files are here)."""
    return node.data_directory is not None and node.bin_dir is not None


def find_primary(
    pgc: PostgresConfig, password: str | None
) -> tuple[PostgresNode | None, dict[str, postgres_models.NodeHealth]]:
    """Find the one node that takes writes now.

    Args:
        pgc: the target's PostgreSQL section.
        password: the resolved password, if any.

    Returns:
        ``(primary or None, {node name: health})``.

    Raises:
        PreconditionError: more than one node takes writes (split brain: a person decides).
    """
    healths = {n.name: assess.health_task(node_conninfo(pgc, n, password)) for n in pgc.nodes}
    writable = [n for n in pgc.nodes if healths[n.name].is_accepting_writes]
    if len(writable) > 1:
        names = ", ".join(n.name for n in writable)
        raise PreconditionError(
            f"more than one node takes writes ({names}): fence all but one before failing back"
        )
    return (writable[0] if writable else None), healths


def streaming_names(pgc: PostgresConfig, primary: PostgresNode, password: str | None) -> set[str]:
    """The application names of the standbys streaming from ``primary``."""
    rows = assess.replication_status(node_conninfo(pgc, primary, password))
    return {r.application_name for r in rows if r.state == "streaming" and r.replay_lsn}


def wait_until(
    what: str, check: Callable[[], bool], timeout_seconds: float, poll: float = POLL_SECONDS
) -> float:
    """Poll ``check`` until it is true; returns the seconds waited; raises on timeout."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except PostgresError as exc:
            if not exc.transient:
                raise
        if time.monotonic() - started > timeout_seconds:
            raise VerificationError(f"{what}: not reached within {timeout_seconds:g} s")
        time.sleep(poll)


def replayed_at_least(conninfo_standby: str, lsn: str) -> bool:
    """True when the standby (or the node it was promoted to) is at ``lsn`` or past it."""
    status = assess.standby_status(conninfo_standby)
    position = status.replayed_lsn
    if not status.in_recovery:
        # Promoted meanwhile: its current position counts.
        position = assess.current_wal_lsn(conninfo_standby)
    return position is not None and assess.wal_lsn_diff(position, lsn) >= 0


def start_node(rec: Recorder, node: PostgresNode, opts: FailbackOptions) -> None:
    """Start a local node and record the change."""
    change = local_server.start_local_server_task(
        str(node.data_directory),
        str(node.bin_dir),
        node.os_user,
        timeout_seconds=opts.start_timeout_seconds,
    )
    rec.record_change(change)


def stop_node(rec: Recorder, node: PostgresNode, mode: Literal["fast", "immediate"]) -> Change:
    """Stop a local node and record the change."""
    change = local_server.stop_local_server_task(
        str(node.data_directory), str(node.bin_dir), node.os_user, mode
    )
    rec.record_change(change)
    return change
