"""Stop and start a PostgreSQL server on this machine with ``pg_ctl``, as its data directory's owner.

Stopping is the strongest fence: nobody can write to a server that does not run. Starting
is where a second primary is born: a data directory that was a standby (or a base backup
not yet configured) starts as a primary when its signal file is missing, so
:func:`start_local_server` refuses it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

from dr.changes import Change
from dr.errors import PostgresError, PreconditionError, redact
from dr.localexec import current_os_user, run_as_owner
from dr.tasking import dr_task
from tasks.postgres.models import SYSTEM
from tasks.postgres.rejoin import last_checkpoint

log = logging.getLogger(__name__)

#: ``pg_controldata`` states of a data directory last run as a standby (or rewound).
STANDBY_STATES = frozenset({"shut down in recovery", "in archive recovery"})
#: Either file makes the server start in recovery instead of as a primary.
SIGNAL_FILES = ("standby.signal", "recovery.signal")


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


def _exists_as_owner(os_user: str | None, path: Path) -> bool:
    """True when ``path`` exists, looked at as the data directory's owner (mode 0700)."""
    return run_as_owner(os_user, ["test", "-e", path]).returncode == 0


def why_not_start(data: Path, bin_dir: Path, os_user: str | None) -> str | None:
    """Why starting this stopped data directory could make a second primary (None: safe).

    Why: without ``standby.signal`` (or ``recovery.signal``) PostgreSQL starts a former
    standby, a rewound old primary or a fresh base backup as a primary, next to the real
    one. A killed run leaves exactly that between "rewind" and "configure standby", or
    during a switch-back. Such a node must be configured as a standby first.

    Args:
        data: the data directory.
        bin_dir: PostgreSQL binaries (``pg_controldata``).
        os_user: the data directory's owner.

    Returns:
        The reason to refuse, or None.
    """
    if any(_exists_as_owner(os_user, data / name) for name in SIGNAL_FILES):
        return None
    if _exists_as_owner(os_user, data / "backup_label"):
        return "it is a base backup (backup_label) without standby.signal or recovery.signal"
    state = last_checkpoint(data, bin_dir, os_user)["state"]
    if state in STANDBY_STATES:
        return f"it was a standby ({state}) and has no standby.signal"
    return None


def _tail_of(path: Path, chars: int = 600) -> str:
    """The end of the server's start-up log (why ``pg_ctl start`` failed), redacted."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - chars))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(start-up log not readable: {exc.strerror})"
    return redact(text.strip()) or "(empty)"


def _refuse_second_primary(data: Path, bin_dir: Path, os_user: str | None) -> None:
    refusal = why_not_start(data, bin_dir, os_user)
    if refusal is not None:
        raise PreconditionError(
            f"not starting {data}: {refusal}; it would come up as a second primary"
            " (configure it as a standby first: failback rejoins it)"
        )


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
        PreconditionError: not a data directory, the tools cannot run as ``os_user``, or it
            would start as a second primary (a former standby without its signal file:
            :func:`why_not_start`).
        PostgresError: ``pg_ctl start`` failed.
    """
    data = Path(data_directory)
    bins = Path(bin_dir)
    obj = f"{data} (local server)"
    pid = _pg_ctl_status(data, bins, os_user)
    if pid is None:
        _refuse_second_primary(data, bins, os_user)
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
            f"{(proc.stderr or proc.stdout).strip()[-500:]}; {startup_log}: "
            f"{_tail_of(startup_log)}"
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
