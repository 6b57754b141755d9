"""Containment of a compromised role, with the waits that prove it took effect.

These loop inside one task (polling every 0.1 s) rather than in the flow, so a proof is one
task run, not hundreds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime

from dr.changes import Change
from dr.errors import PostgresError
from dr.tasking import dr_task
from tasks.postgres.admin import set_role_login, terminate_sessions
from tasks.postgres.security import newest_heartbeat, role_can_login, session_snapshot, try_login

log = logging.getLogger(__name__)


def disable_role(
    primary_conninfo: str, replica_conninfos: dict[str, str], role: str
) -> list[Change]:
    """NOLOGIN on the primary (its sessions ended), then the role's sessions ended on standbys.

    Why standbys too: ``NOLOGIN`` replicates, but a session already open on a standby stays
    open until it is terminated there. A standby that cannot be reached is logged, not fatal.

    Args:
        primary_conninfo: an admin connection to the primary.
        replica_conninfos: standby name -> an admin connection to it.
        role: the compromised role.

    Returns:
        The primary's change, then one per standby reached.
    """
    changes = [set_role_login(primary_conninfo, role, False)]
    for name, conninfo in replica_conninfos.items():
        try:
            ended = terminate_sessions(conninfo, role=role)
        except PostgresError as exc:
            log.warning("sessions of %s on %s not ended: %s", role, name, exc)
            continue
        changes.append(
            Change(
                system="postgres",
                action="terminate-sessions",
                object=f"role {role} on {name}",
                outcome="changed" if ended else "unchanged",
                after={"terminated_sessions": ended},
                compensable=False,
            )
        )
    return changes


def login_outcome_within(
    conninfo: str, *, expect: bool, wait_seconds: float, poll_seconds: float = 0.1
) -> tuple[bool | None, str]:
    """Try a login until it gives the expected outcome or the wait is over.

    Why wait: a standby replays a role change a moment after the primary made it.

    Returns:
        ``(logged_in, why)``; ``logged_in`` None when the server cannot be reached.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        result: bool | None
        try:
            result, why = try_login(conninfo)
        except PostgresError as exc:
            result, why = None, f"unreachable: {exc}"
        if result is expect or time.monotonic() > deadline:
            return result, why
        time.sleep(poll_seconds)


def role_disabled_within(
    conninfo: str, role: str, *, wait_seconds: float, poll_seconds: float = 0.1
) -> tuple[bool | None, list[int], str | None]:
    """Ask until the role cannot log in and has no session, or the wait is over.

    Returns:
        ``(rolcanlogin, pids of its open sessions, error)``; ``error`` is set (and the
        others None and empty) when the server could not be asked before the deadline.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            can = role_can_login(conninfo, role)
            pids = [s["pid"] for s in session_snapshot(conninfo) if s["user"] == role]
        except PostgresError as exc:
            if time.monotonic() > deadline:
                return None, [], str(exc)
        else:
            if (can is False and not pids) or time.monotonic() > deadline:
                return can, pids, None
        time.sleep(poll_seconds)


def heartbeat_after(
    conninfo: str,
    writer: str,
    after: datetime,
    *,
    timeout_seconds: float,
    poll_seconds: float = 0.1,
) -> tuple[datetime | None, datetime | None]:
    """Wait for a heartbeat of ``writer`` newer than ``after``.

    Returns:
        ``(the first heartbeat after, the newest seen)``; the first is None on timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    newest = None
    while time.monotonic() < deadline:
        with contextlib.suppress(PostgresError):
            newest = newest_heartbeat(conninfo, writer)
        if newest is not None and newest > after:
            return newest, newest
        time.sleep(poll_seconds)
    return None, newest


disable_role_task = dr_task(disable_role, name="postgres-disable-role", timeout_seconds=300)
# Proofs: never retried (a retry could turn a failed proof into a pass).
login_outcome_within_task = dr_task(
    login_outcome_within, name="postgres-login-outcome", retries=0, timeout_seconds=120
)
role_disabled_within_task = dr_task(
    role_disabled_within, name="postgres-role-disabled", retries=0, timeout_seconds=120
)
# Bounded by its own timeout_seconds argument.
heartbeat_after_task = dr_task(heartbeat_after, name="postgres-heartbeat-after", retries=0)
