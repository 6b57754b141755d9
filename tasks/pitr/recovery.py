"""Recover a restored data directory to the recovery point: settings, start, wait until promoted.

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

import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow
from dr.errors import PostgresError, PreconditionError, UnsafeTargetError
from dr.localexec import chown_for_server
from dr.tasking import dr_task
from tasks.pitr.cluster import cluster_is_running, control_data, free_port, pg_ctl, server_log_file
from tasks.pitr.target import RecoveryTarget
from tasks.postgres.client import connect

log = logging.getLogger(__name__)


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    socket_dir, log_file = _configure_recovery(
        data, target, restore_command, port, cluster_name, extra_settings
    )
    before = control_data(data, bin_dir=bin_dir)
    started = utcnow()
    t0 = time.perf_counter()
    _start_for_recovery(data, bin_dir, log_file, timeout_seconds)
    consistent_at = utcnow()
    conninfo = _local_conninfo(port, user=user, password=password)
    promoted_at = _wait_until_promoted(data, conninfo, log_file, bin_dir, timeout_seconds)
    last_replayed_at, timeline_after = _replay_outcome(conninfo)
    result = RecoveredCluster(
        data_dir=str(data),
        port=port,
        socket_dir=str(socket_dir),
        bin_dir=str(bin_dir) if bin_dir else None,
        log_file=str(log_file),
        base_backup_id=base_backup_id,
        target=target,
        timeline_before=_int_or_none(before.get("Latest checkpoint's TimeLineID")),
        timeline_after=_int_or_none(timeline_after),
        started_at=started,
        consistent_at=consistent_at,
        promoted_at=promoted_at,
        replay_seconds=round(time.perf_counter() - t0, 3),
        last_replayed_at=last_replayed_at,
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


def _configure_recovery(
    data: Path,
    target: RecoveryTarget,
    restore_command: str,
    port: int,
    cluster_name: str,
    extra_settings: Mapping[str, str] | None,
) -> tuple[Path, Path]:
    """Write the recovery settings and signal; returns the socket folder and the log file."""
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
    return socket_dir, log_file


def _start_for_recovery(
    data: Path, bin_dir: str | Path | None, log_file: Path, timeout_seconds: float
) -> None:
    """``pg_ctl start -w``: returns once the copy is consistent (replay goes on after)."""
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


def _promoted(conninfo: str) -> bool:
    """Whether the server has left recovery; refuses a recovery paused at its target."""
    with connect(conninfo, autocommit=True) as conn:
        in_recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
        if not in_recovery:
            return True
        state = conn.execute("SELECT pg_catalog.pg_get_wal_replay_pause_state()").fetchone()[0]  # type: ignore[index]
    if state == "paused":
        raise PreconditionError(
            "recovery paused at its target instead of promoting "
            "(recovery_target_action was overridden?)"
        )
    return False


def _wait_until_promoted(
    data: Path,
    conninfo: str,
    log_file: Path,
    bin_dir: str | Path | None,
    timeout_seconds: float,
) -> datetime:
    """Poll until the server promotes; a server that exits or times out is reported.

    Raises:
        PreconditionError: the server stopped during recovery (the log line is quoted).
        PostgresError: no promotion within the timeout (the server is then stopped).
    """
    deadline = time.monotonic() + timeout_seconds
    last_error = ""
    while time.monotonic() < deadline:
        if not cluster_is_running(data):
            fatal = _fatal_in_log(log_file)
            raise PreconditionError(
                f"recovery stopped: {fatal or 'the server exited during recovery'} (log {log_file})"
            )
        try:
            if _promoted(conninfo):
                return utcnow()
        except (PostgresError, psycopg.OperationalError) as exc:
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        time.sleep(POLL_SECONDS)
    pg_ctl("stop", data, bin_dir=bin_dir, extra=["-m", "fast", "-w"])
    raise PostgresError(
        f"recovery did not finish within {timeout_seconds:.0f} s ({last_error}); "
        f"the server was stopped (log {log_file})",
        transient=False,
    )


def _replay_outcome(conninfo: str) -> tuple[datetime | None, Any]:
    """The last replayed commit's time and the new timeline, once promoted."""
    with connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_last_xact_replay_timestamp(), "
            "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# A recovery attempt is not retried blindly: its folder is half-configured after a failure.


start_recovery_task = dr_task(start_recovery, name="pitr-start-recovery", retries=0)
