"""Stop and start a PostgreSQL server on this machine with ``pg_ctl``, as its data directory's owner.

Stopping is the strongest fence: nobody can write to a server that does not run.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

from dr.changes import Change
from dr.errors import PostgresError, PreconditionError
from dr.localexec import current_os_user, run_as_owner
from dr.tasking import dr_task
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)


def _pg_ctl_status(data_directory: Path, bin_dir: Path, os_user: str | None) -> int | None:
    """The postmaster's PID when the server runs, None when it does not."""
    proc = run_as_owner(os_user, [Path(bin_dir) / "pg_ctl", "status", "-D", data_directory])
    if proc.returncode == 3:
        return None
    if proc.returncode == 4:
        raise PreconditionError(f"{data_directory} is not a PostgreSQL data directory")
    if proc.returncode != 0:
        raise PostgresError(f"pg_ctl status failed: {(proc.stderr or proc.stdout).strip()}")
    match = re.search(r"PID:\s*(\d+)", proc.stdout)
    return int(match.group(1)) if match else -1


def stop_local_server(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    mode: Literal["fast", "immediate"] = "fast",
    *,
    timeout_seconds: float = 60,
) -> Change:
    """Stop a server on this machine: the strongest fence (nobody can write to it).

    Args:
        data_directory: the server's data directory.
        bin_dir: its PostgreSQL binaries (``pg_ctl``).
        os_user: the OS user owning the data directory; tools run as that user
            (``runuser`` when this runner is root).
        mode: ``fast`` (clean shutdown, sessions disconnected) or ``immediate`` (a crash:
            recovery runs at the next start).
        timeout_seconds: how long ``pg_ctl`` may wait for the server to stop.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when it was not running. The undo is
        :func:`start_local_server` (only if the failover was abandoned before a promotion).

    Raises:
        PreconditionError: not a data directory, or the tools cannot run as ``os_user``.
        PostgresError: ``pg_ctl stop`` failed, or the server still runs afterwards.
    """
    data = Path(data_directory)
    bins = Path(bin_dir)
    pid = _pg_ctl_status(data, bins, os_user)
    obj = f"{data} (local server)"
    if pid is None:
        change = Change(
            system=SYSTEM,
            action=f"stop-{mode}",
            object=obj,
            outcome="unchanged",
            before={"running": False},
            after={"running": False},
            compensable=False,
        )
        log.info("%s", change.summary())
        return change
    proc = run_as_owner(
        os_user,
        [bins / "pg_ctl", "stop", "-D", data, "-m", mode, "-w", "-t", str(int(timeout_seconds))],
        timeout_seconds=timeout_seconds + 15,
    )
    still = _pg_ctl_status(data, bins, os_user)
    if still is not None:
        raise PostgresError(
            f"{obj} still runs after pg_ctl stop -m {mode} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}",
            transient=True,
        )
    change = Change(
        system=SYSTEM,
        action=f"stop-{mode}",
        object=obj,
        outcome="changed",
        before={"running": True, "pid": pid},
        after={"running": False},
        undo=(
            f"start_local_server({str(data)!r}, ...): pg_ctl start -D {data} as {os_user or current_os_user()}"
            " — only if no other node was promoted meanwhile"
        ),
        compensable=True,
        undo_data={"data_directory": str(data), "bin_dir": str(bins), "os_user": os_user},
    )
    log.info("%s", change.summary())
    return change


def start_local_server(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    *,
    timeout_seconds: float = 60,
) -> Change:
    """Start a server on this machine (the undo of :func:`stop_local_server`).

    Args:
        data_directory: the server's data directory.
        bin_dir: its PostgreSQL binaries (``pg_ctl``).
        os_user: the OS user owning the data directory.
        timeout_seconds: how long to wait until it accepts connections.

    Returns:
        A :class:`~dr.changes.Change`: ``unchanged`` when it was already running.

    Raises:
        PreconditionError: not a data directory, or the tools cannot run as ``os_user``.
        PostgresError: ``pg_ctl start`` failed.
    """
    data = Path(data_directory)
    bins = Path(bin_dir)
    obj = f"{data} (local server)"
    pid = _pg_ctl_status(data, bins, os_user)
    if pid is not None:
        change = Change(
            system=SYSTEM,
            action="start",
            object=obj,
            outcome="unchanged",
            before={"running": True, "pid": pid},
            after={"running": True, "pid": pid},
            compensable=False,
        )
        log.info("%s", change.summary())
        return change
    # pg_ctl -l: the server's output must not go to our pipes (we would wait on them
    # forever); its own log_directory takes over once the logging collector runs.
    startup_log = (data / "log" if (data / "log").is_dir() else data) / "dr-startup.log"
    proc = run_as_owner(
        os_user,
        [
            bins / "pg_ctl",
            "start",
            "-D",
            data,
            "-w",
            "-t",
            str(int(timeout_seconds)),
            "-l",
            startup_log,
        ],
        timeout_seconds=timeout_seconds + 15,
    )
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_ctl start -D {data} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    pid = _pg_ctl_status(data, bins, os_user)
    change = Change(
        system=SYSTEM,
        action="start",
        object=obj,
        outcome="changed",
        before={"running": False},
        after={"running": True, "pid": pid},
        undo=f"stop_local_server({str(data)!r}, ...)",
        compensable=True,
        undo_data={"data_directory": str(data), "bin_dir": str(bins), "os_user": os_user},
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- Prefect tasks

stop_local_server_task = dr_task(
    stop_local_server,
    name="postgres-stop-local-server",
    timeout_seconds=180,
)
start_local_server_task = dr_task(
    start_local_server,
    name="postgres-start-local-server",
    timeout_seconds=180,
)
