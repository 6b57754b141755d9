"""Rejoin: make a node a streaming standby of the primary (pg_rewind, else a base backup)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Literal

from dr.config import PostgresConfig, PostgresNode
from dr.errors import PostgresError, PreconditionError, VerificationError, redact
from flows.common.failback.models import FailbackOptions, NodeRejoin
from flows.common.failback.nodes import is_local, start_node, stop_node, streaming_names, wait_until
from flows.common.recorder import Recorder
from flows.common.systems import node_conninfo
from tasks.postgres import datadir, rejoin, standby

__all__ = ["rejoin_as_standby"]

#: How long a rejoin waits for a tool an interrupted run left on the node's data directory.
TOOLS_WAIT_SECONDS = 300.0


def rejoin_as_standby(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
    opts: FailbackOptions,
) -> NodeRejoin:
    """Make ``node`` a streaming standby of ``primary`` (rewind, else a fresh base backup).

    Args:
        rec: where changes, checks and notes go.
        pgc: the target's PostgreSQL section.
        node: the node to rejoin; needs ``data_directory`` and ``bin_dir`` (local).
        primary: the current primary.
        password: the resolved password, if any.
        opts: timeouts and the method.

    Returns:
        A :class:`NodeRejoin`.

    Raises:
        PreconditionError: the node is not local (it must be rebuilt by hand).
        PostgresError, VerificationError: both methods failed.
    """
    if not is_local(node):
        raise PreconditionError(
            f"{node.name} has no data_directory/bin_dir in the config: rebuild it as a standby"
            f" of {primary.name} by hand"
        )
    started = time.monotonic()
    obj = f"{node.name} ({node.host}:{node.port}) as a standby of {primary.name}"
    if not rec.plan("rejoin", f"{obj} (pg_rewind, else a fresh base backup)"):
        return NodeRejoin(node=node.name, primary=primary.name, method="planned")
    primary_ci = node_conninfo(pgc, primary, password)
    slot = standby.slot_name_for(node.name)
    # A killed run's pg_rewind, pg_basebackup or pg_ctl may still work on it: let it end.
    waited = datadir.wait_for_tools(Path(str(node.data_directory)), TOOLS_WAIT_SECONDS)
    if waited:
        rec.note(f"{node.name}: waited for {waited} an interrupted run left working on it")
    # A node running now is either the diverged old primary (it must not take writes) or a
    # standby of something else: either way it is stopped before its data is touched.
    stop_node(rec, node, "fast")
    standby.checkpoint_task(primary_ci)
    rec.record_change(standby.ensure_physical_slot_task(primary_ci, slot))
    method: Literal["rewind", "base_backup"] = opts.rejoin_method
    fallback_reason = ""
    rewind_required: bool | None = None
    if method == "rewind":
        method, fallback_reason, rewind_required = _rewind(
            rec, pgc, node, primary, password, slot, opts
        )
    if method == "base_backup":
        change = rejoin.rebuild_from_base_backup_task(
            str(node.data_directory),
            str(node.bin_dir),
            node.os_user,
            source_conninfo=primary_ci,
        )
        rec.record_change(change)
        _configure_start_and_wait(rec, pgc, node, primary, password, slot, opts)
    _drop_leftover_slot(rec, pgc, node, primary, password)
    result = NodeRejoin(
        node=node.name,
        primary=primary.name,
        method=method,
        rewind_required=rewind_required,
        fallback_reason=redact(fallback_reason),
        seconds=round(time.monotonic() - started, 3),
    )
    rec.record_check(
        f"{node.name} streams from {primary.name}",
        True,
        detail=f"rejoined by {method} in {result.seconds:.2f} s",
    )
    return result


def _rewind(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
    slot: str,
    opts: FailbackOptions,
) -> tuple[Literal["rewind", "base_backup"], str, bool | None]:
    """pg_rewind the node and start it; ``base_backup`` when either step fails.

    Returns:
        ``(method, fallback reason, rewind required)``.
    """
    try:
        change = rejoin.rewind_task(
            str(node.data_directory),
            str(node.bin_dir),
            node.os_user,
            source_conninfo=node_conninfo(pgc, primary, password),
        )
    except (PostgresError, PreconditionError) as exc:
        reason = f"pg_rewind failed: {exc}"
        rec.note(f"{node.name}: {reason}; falling back to a fresh base backup")
        return "base_backup", reason, None
    rec.record_change(change)
    try:
        _configure_start_and_wait(rec, pgc, node, primary, password, slot, opts)
    except (PostgresError, VerificationError) as exc:
        reason = f"the rewound node did not stream: {exc}"
        rec.note(f"{node.name}: {reason}; falling back to a fresh base backup")
        stop_node(rec, node, "immediate")
        return "base_backup", reason, change.changed
    return "rewind", "", change.changed


def _drop_leftover_slot(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
) -> None:
    """The slot this node's standby used while it was primary is a leftover now."""
    with contextlib.suppress(PostgresError):
        leftover = standby.drop_inactive_slot_task(
            node_conninfo(pgc, node, password), standby.slot_name_for(primary.name)
        )
        if leftover.changed:
            rec.record_change(leftover)


def _configure_start_and_wait(
    rec: Recorder,
    pgc: PostgresConfig,
    node: PostgresNode,
    primary: PostgresNode,
    password: str | None,
    slot: str,
    opts: FailbackOptions,
) -> None:
    change = standby.configure_standby_task(
        str(node.data_directory),
        primary_host=primary.host,
        primary_port=primary.port,
        user=pgc.user,
        application_name=node.name,
        slot_name=slot,
        password=password,
    )
    rec.record_change(change)
    start_node(rec, node, opts)
    wait_until(
        f"{node.name} streaming from {primary.name}",
        lambda: node.name in streaming_names(pgc, primary, password),
        opts.streaming_timeout_seconds,
    )
