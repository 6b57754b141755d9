"""Failure injection for drills: crash a local PostgreSQL server the way a machine dies.

A drill must break something real at a moment it can stamp. ``pg_ctl stop -m immediate``
(:func:`tasks.postgres.stop_local_server`) is one way, but it is still an orderly signal
the server handles. :func:`kill_local_server` is the harsh one: every process of the
server is frozen with ``SIGSTOP`` first, so none of them gets to run another instruction
(no backend finishes a commit, no WAL sender sends one more record), then all are killed
with ``SIGKILL``. That is what a power cut or a kernel panic looks like to the replicas
and to the clients.

Only servers on this machine can be crashed, and only by a runner allowed to signal them
(root, or the data directory's owner). Nothing here talks to PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import PostgresError, PreconditionError
from dr.tasking import dr_task

__all__ = [
    "kill_local_server",
    "kill_local_server_task",
    "server_processes",
    "server_processes_task",
]

log = logging.getLogger(__name__)

SYSTEM = "postgres"
#: How long to wait for the killed processes to disappear.
KILL_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.01


def _postmaster_pid(data_directory: Path) -> int | None:
    """The postmaster's PID from ``postmaster.pid`` when that process is alive."""
    try:
        first = (data_directory / "postmaster.pid").read_text().splitlines()[0]
    except FileNotFoundError:
        return None
    except IndexError:
        return None
    except PermissionError as exc:
        raise PreconditionError(
            f"cannot read {data_directory}/postmaster.pid: run as root or as its owner"
        ) from exc
    try:
        pid = int(first.strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; it no longer runs anything.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a postmaster's backends and auxiliary processes)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # Field 4 is the parent PID; the command name (field 2) may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def server_processes(data_directory: str | os.PathLike[str]) -> list[int]:
    """The PIDs of a local server: postmaster first, then its children; empty when down.

    Args:
        data_directory: the server's data directory.

    Returns:
        The PIDs (Linux ``/proc``).

    Raises:
        PreconditionError: ``postmaster.pid`` cannot be read by this runner.
    """
    pid = _postmaster_pid(Path(data_directory))
    if pid is None:
        return []
    return [pid, *_children(pid)]


def kill_local_server(
    data_directory: str | os.PathLike[str], *, wait_seconds: float = KILL_WAIT_SECONDS
) -> Change:
    """Crash a local server: freeze every one of its processes, then SIGKILL them all.

    Why freeze first: killing the postmaster alone lets its backends run on until they
    notice, and killing processes one by one lets the last ones act; stopped processes do
    nothing more, so the crash happens at one instant, the one the drill stamps.

    Args:
        data_directory: the server's data directory (its ``postmaster.pid`` names the
            postmaster).
        wait_seconds: how long to wait for the processes to be gone.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when the server was not running;
        ``after["killed_at"]`` is the moment the first process was frozen. The undo is
        starting the server again (crash recovery runs), which only a flow that promoted
        nothing may do.

    Raises:
        PreconditionError: this runner may not read or signal the server's processes.
        PostgresError: processes were still alive after ``wait_seconds``.
    """
    data = Path(data_directory)
    obj = f"{data} (local server)"
    pids = server_processes(data)
    if not pids:
        change = Change(
            system=SYSTEM,
            action="kill",
            object=obj,
            outcome="unchanged",
            before={"running": False},
            after={"running": False},
            compensable=False,
        )
        log.info("%s", change.summary())
        return change
    killed_at = utcnow()
    try:
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        # Children forked between the listing and the freeze (a new backend) are caught
        # here: the postmaster is frozen, so no more can appear.
        late = [p for p in _children(pids[0]) if p not in pids]
        for pid in late:
            _signal(pid, signal.SIGSTOP)
        everything = pids + late
        for pid in everything:
            _signal(pid, signal.SIGKILL)
    except PermissionError as exc:
        raise PreconditionError(
            f"cannot signal the processes of {obj}: run as root or as the data directory's owner"
        ) from exc
    deadline = time.monotonic() + wait_seconds
    while any(_alive(p) for p in everything):
        if time.monotonic() > deadline:
            alive = [p for p in everything if _alive(p)]
            raise PostgresError(f"{obj}: processes {alive} still alive after SIGKILL")
        time.sleep(POLL_SECONDS)
    change = Change(
        system=SYSTEM,
        action="kill",
        object=obj,
        outcome="changed",
        before={"running": True, "pid": pids[0], "processes": len(everything)},
        after={"running": False, "killed_at": killed_at.isoformat()},
        undo=f"pg_ctl start -D {data} (crash recovery runs) — only if no other node was promoted",
        compensable=True,
        undo_data={"data_directory": str(data)},
    )
    log.info(
        "postgres kill %s: %d processes frozen and killed at %s",
        obj,
        len(everything),
        killed_at.isoformat(timespec="milliseconds"),
    )
    return change


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone: nothing left to stop


# A crash is injected once: a retry after a partial kill would hide what happened.
kill_local_server_task = dr_task(kill_local_server, name="faults-kill-local-server", retries=0)
server_processes_task = dr_task(
    server_processes, name="faults-server-processes", timeout_seconds=30
)
