"""Start a restored data directory in recovery, and start/stop/remove recovered clusters.

:func:`start_recovery` writes the recovery settings (``restore_command``, the target,
``recovery_target_inclusive = off``, ``recovery_target_action = promote``, the timeline, a
free port, ``archive_mode = off``), creates ``recovery.signal``, starts the server and polls
until it has left recovery. ``pg_ctl start -w`` returns once the copy is consistent,
*before* the target is reached, hence the polling; a target beyond the archived WAL ends with
``FATAL: recovery ended before configured recovery target was reached``, which is read from
the server log and raised as a PreconditionError.

Why ``archive_mode = off`` on the recovered cluster: it promotes onto a new timeline, and
archiving that timeline into the live system's archive would collide with the live system's
own next failover (one archive folder per initdb, shared/lab/postgres.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow
from dr.errors import (
    PostgresError,
    PreconditionError,
    UnsafeTargetError,
)
from dr.localexec import chown_for_server, run_as_server, server_tool, tool_failed
from dr.tasking import dr_task
from tasks.pitr.target import RecoveryTarget

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_RECOVERY_TIMEOUT_SECONDS = 900.0


POLL_SECONDS = 0.1


#: Failures of the recovered server that mean "this recovery can never reach its target".
_FATAL_MARKERS = (
    "recovery ended before configured recovery target was reached",
    "requested recovery stop point is before consistent recovery point",
    "could not locate required checkpoint record",
    "is not a valid data directory",
    "WAL file is from different database system",
    "requested timeline",
)


#: Settings a recovered copy must not inherit from the source (replication, archiving,
#: collector): it is a new, independent server until someone repoints an application to it.
COPY_OVERRIDES: dict[str, str] = {
    "archive_mode": "off",
    "archive_command": "''",
    "hot_standby": "on",
    "primary_conninfo": "''",
    "primary_slot_name": "''",
    "synchronous_standby_names": "''",
    "logging_collector": "off",
    "listen_addresses": "'127.0.0.1'",
}


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


class RecoveredCluster(_Model):
    """A server started from a base backup and the archive, now out of recovery."""

    data_dir: str
    port: int
    host: str = "127.0.0.1"
    socket_dir: str
    bin_dir: str | None = None
    log_file: str
    base_backup_id: str = ""
    target: RecoveryTarget
    timeline_before: int | None = None
    timeline_after: int | None = None
    started_at: datetime
    consistent_at: datetime | None = None
    promoted_at: datetime | None = None
    replay_seconds: float | None = None
    last_replayed_at: datetime | None = Field(
        None, description="Commit time of the last transaction replayed: the real recovery point."
    )
    stop_message: str = ""


def render_recovery_settings(
    target: RecoveryTarget,
    *,
    restore_command: str,
    port: int,
    socket_dir: str | Path,
    cluster_name: str = "dr-recovered",
    extra_settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings a recovery needs, as ``name -> value`` (values already quoted).

    ``extra_settings`` (already quoted values) come last, e.g. ``listen_addresses = '*'``
    when applications on other hosts will use the recovered server.

    Raises:
        ConfigError: bad target.
    """

    def q(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    settings = dict(COPY_OVERRIDES)
    settings.update(
        {
            "port": str(int(port)),
            "unix_socket_directories": q(str(socket_dir)),
            "cluster_name": q(cluster_name),
            "restore_command": q(restore_command),
            "recovery_target_inclusive": "on" if target.inclusive else "off",
            "recovery_target_action": "'promote'",
            "recovery_target_timeline": q(str(target.timeline) if target.timeline else "latest"),
        }
    )
    if target.time is not None:
        settings["recovery_target_time"] = q(target.time.astimezone(UTC).isoformat(sep=" "))
    else:
        settings["recovery_target_lsn"] = q(str(target.lsn))
    settings.update(extra_settings or {})
    return settings


def _write_recovery_config(data_dir: Path, settings: Mapping[str, str]) -> None:
    """Append the settings to ``postgresql.auto.conf`` (read last, so they win) + signal."""
    auto = data_dir / "postgresql.auto.conf"
    previous = auto.read_text() if auto.exists() else ""
    block = "".join(f"{k} = {v}\n" for k, v in settings.items())
    auto.write_text(previous + "\n# point-in-time recovery by DR pipelines\n" + block)
    (data_dir / "standby.signal").unlink(missing_ok=True)
    (data_dir / "recovery.signal").write_text("")
    chown_for_server(data_dir)
    os.chmod(data_dir, 0o700)


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


def _fatal_in_log(log_file: Path) -> str | None:
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if any(marker in line for marker in _FATAL_MARKERS) and (
            "FATAL" in line or "PANIC" in line
        ):
            return line.strip()
    return None


def _stop_message(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    found = [
        ln.split("LOG:", 1)[-1].strip()
        for ln in lines
        if "recovery stopping" in ln or "last completed transaction" in ln
    ]
    return "; ".join(found)


def _local_conninfo(
    port: int, dbname: str = "postgres", user: str = "postgres", password: str | None = None
) -> str:
    params: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "dbname": dbname,
        "user": user,
        "connect_timeout": 2,
        "application_name": "dr-pipelines-recovery",
    }
    if password:
        params["password"] = password
    return make_conninfo(**params)


def start_recovery(
    data_dir: str | Path,
    target: RecoveryTarget,
    *,
    restore_command: str,
    bin_dir: str | Path | None = None,
    port: int | None = None,
    user: str = "postgres",
    password: str | None = None,
    timeout_seconds: float = DEFAULT_RECOVERY_TIMEOUT_SECONDS,
    base_backup_id: str = "",
    cluster_name: str = "dr-recovered",
    extra_settings: Mapping[str, str] | None = None,
) -> RecoveredCluster:
    """Configure recovery on a restored data directory, start it, wait until promoted.

    Args:
        data_dir: from :func:`extract_base_backup` (not running).
        target: where to stop.
        restore_command: from :func:`restore_command_for`.
        bin_dir: PostgreSQL binaries.
        port: TCP port on 127.0.0.1 (default: a free one).
        user / password: to poll ``pg_is_in_recovery()`` (the source's roles are copied).
        timeout_seconds: longest replay allowed.
        base_backup_id: recorded in the result.
        cluster_name: shown in process titles.
        extra_settings: more settings (quoted values), e.g. ``listen_addresses``.

    Returns:
        The :class:`RecoveredCluster`, running and writable.

    Raises:
        PreconditionError: the server stopped because the target cannot be reached (beyond
            the archived WAL, before the consistency point, a missing segment); the server
            log line is quoted.
        PostgresError: it did not start, or did not finish within the timeout (the server
            is then stopped).
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        raise UnsafeTargetError(f"{data} is already running; refusing to reconfigure it")
    port = port or free_port()
    socket_dir = data.parent / f"{data.name}.sock"
    socket_dir.mkdir(exist_ok=True)
    chown_for_server(socket_dir)
    log_file = server_log_file(data, fresh=True)
    settings = render_recovery_settings(
        target,
        restore_command=restore_command,
        port=port,
        socket_dir=socket_dir,
        cluster_name=cluster_name,
        extra_settings=extra_settings,
    )
    _write_recovery_config(data, settings)
    before = control_data(data, bin_dir=bin_dir)
    started = utcnow()
    t0 = time.perf_counter()
    proc = pg_ctl(
        "start",
        data,
        bin_dir=bin_dir,
        extra=["-w", "-t", str(int(timeout_seconds)), "-l", str(log_file)],
        timeout=timeout_seconds,
    )
    if proc.returncode != 0:
        fatal = _fatal_in_log(log_file)
        if fatal:
            raise PreconditionError(f"recovery stopped: {fatal} (log {log_file})")
        raise PostgresError(
            f"the recovered server did not start: {(proc.stderr or proc.stdout).strip()[-500:]}"
            f" (log {log_file})"
        )
    consistent_at = utcnow()
    conninfo = _local_conninfo(port, user=user, password=password)
    deadline = time.monotonic() + timeout_seconds
    promoted_at: datetime | None = None
    last_error = ""
    while time.monotonic() < deadline:
        if not cluster_is_running(data):
            fatal = _fatal_in_log(log_file)
            raise PreconditionError(
                f"recovery stopped: {fatal or 'the server exited during recovery'} (log {log_file})"
            )
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                in_recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
                if in_recovery:
                    state = conn.execute(
                        "SELECT pg_catalog.pg_get_wal_replay_pause_state()"
                    ).fetchone()[0]  # type: ignore[index]
                    if state == "paused":
                        raise PreconditionError(
                            "recovery paused at its target instead of promoting "
                            "(recovery_target_action was overridden?)"
                        )
                else:
                    promoted_at = utcnow()
                    break
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        time.sleep(POLL_SECONDS)
    if promoted_at is None:
        pg_ctl("stop", data, bin_dir=bin_dir, extra=["-m", "fast", "-w"])
        raise PostgresError(
            f"recovery did not finish within {timeout_seconds:.0f} s ({last_error}); "
            f"the server was stopped (log {log_file})",
            transient=False,
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_last_xact_replay_timestamp(), "
            "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())"
        ).fetchone()
    assert row is not None
    result = RecoveredCluster(
        data_dir=str(data),
        port=port,
        socket_dir=str(socket_dir),
        bin_dir=str(bin_dir) if bin_dir else None,
        log_file=str(log_file),
        base_backup_id=base_backup_id,
        target=target,
        timeline_before=_int_or_none(before.get("Latest checkpoint's TimeLineID")),
        timeline_after=_int_or_none(row[1]),
        started_at=started,
        consistent_at=consistent_at,
        promoted_at=promoted_at,
        replay_seconds=round(time.perf_counter() - t0, 3),
        last_replayed_at=row[0],
        stop_message=_stop_message(log_file),
    )
    log.info(
        "recovered %s on port %s in %.1f s (%s); last replayed commit %s",
        data,
        port,
        result.replay_seconds,
        target.describe(),
        result.last_replayed_at,
    )
    return result


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


# A recovery attempt is not retried blindly: its folder is half-configured after a failure.


start_recovery_task = dr_task(start_recovery, name="recovery-start", retries=0)
