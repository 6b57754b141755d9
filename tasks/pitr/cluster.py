"""Local clusters this package creates: start, stop, remove them, read their control data.

They run as the server's OS user (:mod:`dr.localexec`), on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from dr.errors import PostgresError, UnsafeTargetError
from dr.localexec import chown_for_server, run_as_server, server_tool, tool_failed
from dr.tasking import dr_task

log = logging.getLogger(__name__)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never 5432 (the machine's own PostgreSQL)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 5432:
            return port


def control_data(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> dict[str, str]:
    """``pg_controldata`` of a data directory, as a dict of its lines.

    Raises:
        PostgresError: the tool failed (not a data directory).
    """
    proc = run_as_server([server_tool("pg_controldata", bin_dir), "-D", data_dir], timeout=60)
    if proc.returncode != 0:
        raise tool_failed("pg_controldata", proc)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def system_identifier(control: Mapping[str, str]) -> str | None:
    """The database system identifier from :func:`control_data` output."""
    return control.get("Database system identifier")


def pg_ctl(
    action: str,
    data_dir: Path,
    *,
    bin_dir: str | Path | None,
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return run_as_server(
        [server_tool("pg_ctl", bin_dir), action, "-D", data_dir, *extra], timeout=timeout + 10
    )


def server_log_file(data_dir: Path, *, fresh: bool = False) -> Path:
    """``<data_dir>.log`` next to the data directory, writable by the server user."""
    log_file = data_dir.parent / f"{data_dir.name}.log"
    if fresh:
        log_file.unlink(missing_ok=True)
    log_file.touch()
    chown_for_server(log_file)
    return log_file


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def cluster_is_running(data_dir: str | Path) -> bool:
    """Tell whether a postmaster runs on ``data_dir``."""
    return _postmaster_pid(Path(data_dir)) is not None


def stop_cluster(
    data_dir: str | Path, *, bin_dir: str | Path | None = None, mode: str = "fast"
) -> bool:
    """Stop a server started by this module (no-op when it is not running).

    Returns:
        True when a running server was stopped.
    """
    data = Path(data_dir)
    if not cluster_is_running(data):
        return False
    proc = pg_ctl("stop", data, bin_dir=bin_dir, extra=["-m", mode, "-w", "-t", "60"])
    if proc.returncode != 0 and cluster_is_running(data):
        raise tool_failed("pg_ctl stop", proc)
    log.info("stopped the server on %s (%s)", data, mode)
    return True


def start_cluster(
    data_dir: str | Path, *, bin_dir: str | Path | None = None, timeout_seconds: float = 120
) -> bool:
    """Start a stopped server on ``data_dir`` (its settings unchanged); no-op when running.

    Returns:
        True when it was started.
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        return False
    log_file = server_log_file(data)
    proc = pg_ctl(
        "start",
        data,
        bin_dir=bin_dir,
        extra=["-w", "-t", str(int(timeout_seconds)), "-l", str(log_file)],
        timeout=timeout_seconds,
    )
    if proc.returncode != 0:
        raise tool_failed("pg_ctl start", proc)
    return True


def remove_cluster(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> bool:
    """Stop (immediately) and delete a server folder this module created.

    Refuses a folder without the ``recovery.signal``-era marker written by
    :func:`start_recovery` or :func:`make_stopped_copy`, so it can never remove a server it
    did not make.

    Returns:
        True when something was removed.

    Raises:
        UnsafeTargetError: the folder was not made here.
    """
    data = Path(data_dir)
    if not data.exists():
        return False
    auto = data / "postgresql.auto.conf"
    marker = auto.exists() and "by DR pipelines" in auto.read_text(errors="replace")
    if not marker:
        raise UnsafeTargetError(f"refusing to remove {data}: not a copy made by DR pipelines")
    with contextlib.suppress(PostgresError):
        stop_cluster(data, bin_dir=bin_dir, mode="immediate")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(data.parent / f"{data.name}.sock", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (data.parent / f"{data.name}.log").unlink()
    log.info("removed server folder %s", data)
    return True


control_data_task = dr_task(control_data, name="pitr-control-data", timeout_seconds=120)
stop_cluster_task = dr_task(stop_cluster, name="pitr-stop-cluster", timeout_seconds=300)
start_cluster_task = dr_task(start_cluster, name="pitr-start-cluster", timeout_seconds=300)
remove_cluster_task = dr_task(remove_cluster, name="pitr-remove-cluster", timeout_seconds=300)
