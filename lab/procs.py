"""Background processes the lab starts, and how it recognises them again.

The lab runs moto, the Prefect server, the Slack stand-in and (without Podman) the app as
background processes that outlive ``dr lab up``. Each is recorded as a :class:`ProcessInfo`
in ``state.json``; a later ``up`` or ``down`` (another Python process) only signals a PID
when its start time (``/proc/PID/stat``) and a piece of its command line still match, so a
reused PID is never killed. Every child also carries ``DR_LAB_OWNER=<lab folder>`` in its
environment, which lets ``down`` find anything the lab started even without its state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from dr.errors import PreconditionError

__all__ = [
    "OWNER_ENV",
    "ProcessInfo",
    "child_env",
    "cmdline",
    "http_ok",
    "kill",
    "owned",
    "owner_pids",
    "spawn",
    "start_ticks",
    "tail",
    "wait_until",
]

log = logging.getLogger(__name__)

#: Set in the environment of every process (and container) the lab starts, with the lab's
#: folder as value.
OWNER_ENV = "DR_LAB_OWNER"
STOP_WAIT_SECONDS = 10.0

# Popen objects of processes started by this Python process, so they can be reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ProcessInfo(BaseModel):
    """A background process the lab started, and how to recognise it again.

    ``start_ticks`` (from ``/proc/PID/stat``) and ``marker`` (a piece of its command line)
    guard against PID reuse: a PID is only ever signalled when both still match.
    ``fingerprint`` summarises the configuration it was started with (e.g. its database
    address) so a changed configuration restarts it.
    """

    model_config = ConfigDict(extra="forbid")

    pid: int
    start_ticks: int
    marker: str
    log_file: Path
    fingerprint: str = ""


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot); None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def owned(rec: ProcessInfo | None) -> bool:
    """True when ``rec``'s PID is still the very process the lab started."""
    if rec is None:
        return False
    _reap(rec.pid)
    return start_ticks(rec.pid) == rec.start_ticks and rec.marker in cmdline(rec.pid)


def child_env(base_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without ``PREFECT_*`` (the caller's Prefect is not the lab's), plus
    the lab's owner marker and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env[OWNER_ENV] = str(base_dir)
    env.update(extra or {})
    return env


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_file: Path,
    marker: str,
    env: Mapping[str, str],
    fingerprint: str = "",
) -> ProcessInfo:
    """Start a background process in its own session (it outlives this one).

    Args:
        argv: the command.
        cwd: its working directory.
        log_file: where its standard output and error go (appended).
        marker: a piece of its command line that identifies it later.
        env: its whole environment (see :func:`child_env`).
        fingerprint: see :class:`ProcessInfo`.

    Returns:
        The record to keep in the lab's state.

    Raises:
        PreconditionError: it exited at once (the message quotes its log).
    """
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise PreconditionError(
            f"{Path(argv[0]).name} exited at once; see {log_file}: {tail(log_file)}"
        )
    log.info("started %s (pid %s)", marker, proc.pid)
    return ProcessInfo(
        pid=proc.pid, start_ticks=ticks, marker=marker, log_file=log_file, fingerprint=fingerprint
    )


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file on one line (for error messages)."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def kill(rec: ProcessInfo | None, *, timeout_seconds: float = STOP_WAIT_SECONDS) -> bool:
    """Stop a process the lab started, and its process group: SIGTERM, then SIGKILL.

    Returns:
        True when it was running (and is now gone), False when it was not the lab's
        process any more (exited, or its PID reused by another program).
    """
    if rec is None or not owned(rec):
        return False
    pid = rec.pid
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return False

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        _reap(pid)
        if start_ticks(pid) != rec.start_ticks:
            break
        time.sleep(0.05)
    else:
        log.warning("pid %s did not stop on SIGTERM: SIGKILL", pid)
    send(signal.SIGKILL)  # the rest of the group, or a process that ignored SIGTERM
    while start_ticks(pid) == rec.start_ticks:
        _reap(pid)
        time.sleep(0.02)
    _CHILDREN.pop(pid, None)
    log.info("stopped %s (pid %s)", rec.marker, pid)
    return True


def owner_pids(base_dir: Path) -> list[int]:
    """PIDs whose environment says the lab in ``base_dir`` started them (``DR_LAB_OWNER``)."""
    needle = f"{OWNER_ENV}={base_dir}".encode() + b"\0"
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
        except OSError:
            continue
        if needle in environ and start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def http_ok(url: str, *, method: str = "GET", timeout: float = 1.0, **kw: Any) -> bool:
    """True when ``url`` answers with a 2xx status."""
    try:
        return httpx.request(method, url, timeout=timeout, **kw).status_code < 300
    except httpx.HTTPError:
        return False


def wait_until(
    what: str, check: Callable[[], bool], timeout_seconds: float, log_file: Path
) -> None:
    """Poll ``check`` every 0.1 s.

    Raises:
        PreconditionError: still false after ``timeout_seconds`` (quotes ``log_file``).
    """
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise PreconditionError(
                f"{what} did not come up within {timeout_seconds:.0f} s; "
                f"see {log_file}: {tail(log_file)}"
            )
        time.sleep(0.1)
