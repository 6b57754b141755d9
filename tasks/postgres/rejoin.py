"""Put a stopped old primary back on the new primary's history: ``pg_rewind`` or a base backup.

Why so careful: the old primary holds WAL the new primary never saw; a failed rewind must
never be followed by a start (it could come up as a second primary), so exit codes are
checked, and a replaced data directory is kept aside. Tools run as the data directory's
owner (:mod:`dr.localexec`); a password goes through ``PGPASSWORD``, never a command line.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import PostgresError, PreconditionError, redact
from dr.localexec import run_as_owner
from dr.tasking import dr_task
from tasks.postgres.client import describe_conninfo
from tasks.postgres.datadir import (
    owner_of,
    repair_ownership,
    restore_config,
    save_config,
    server_running,
)
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)


REWIND_TIMEOUT_SECONDS = 600.0


BASE_BACKUP_TIMEOUT_SECONDS = 3600.0


def _tail(proc: subprocess.CompletedProcess[str], chars: int = 800) -> str:
    return redact(((proc.stderr or "") + (proc.stdout or "")).strip()[-chars:])


def _source_without_password(source_conninfo: str) -> str:
    """The source conninfo for a command line: any password moves to PGPASSWORD."""
    d = conninfo_to_dict(source_conninfo)
    d.pop("password", None)
    return make_conninfo(**d)


def last_checkpoint(
    data_directory: str | os.PathLike[str], bin_dir: str | os.PathLike[str], os_user: str | None
) -> dict[str, str]:
    """What a stopped server's control file says (``pg_controldata``): state and last checkpoint.

    Why: after a clean shutdown of the primary in a switchover, its shutdown checkpoint is the
    last thing it wrote; a standby that replayed past it holds every acknowledged write.

    Args:
        data_directory: the server's data directory.
        bin_dir: PostgreSQL binaries (``pg_controldata``).
        os_user: the data directory's owner.

    Returns:
        ``{"state", "checkpoint_lsn", "redo_lsn", "timeline"}`` as text.

    Raises:
        PostgresError: ``pg_controldata`` failed.
    """
    proc = run_as_owner(
        os_user,
        [Path(bin_dir) / "pg_controldata", "-D", str(data_directory)],
        password=None,
        timeout_seconds=60,
    )
    if proc.returncode != 0:
        raise PostgresError(f"pg_controldata {data_directory} failed: {_tail(proc)}")
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return {
        "state": fields.get("Database cluster state", ""),
        "checkpoint_lsn": fields.get("Latest checkpoint location", ""),
        "redo_lsn": fields.get("Latest checkpoint's REDO location", ""),
        "timeline": fields.get("Latest checkpoint's TimeLineID", ""),
    }


def rewind(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    *,
    source_conninfo: str,
    password: str | None = None,
    restore_target_wal: bool = True,
    timeout_seconds: float = REWIND_TIMEOUT_SECONDS,
) -> Change:
    """Rewind a stopped old primary onto the new primary's timeline with ``pg_rewind``.

    Why each detail: ``--restore-target-wal`` fetches WAL the node already archived and no
    longer holds; the exit code is checked because a node whose rewind failed must never be
    started (it could come up as a second primary); the node's configuration is put back
    afterwards because ``pg_rewind`` copies the source's (its port included). Run
    :func:`~tasks.postgres.standby.checkpoint` on the source first. A node that crashed is recovered by ``pg_rewind``
    itself in single-user mode before it rewinds (PostgreSQL 13 and later).

    Args:
        data_directory: the node's data directory (the server must be stopped).
        bin_dir: PostgreSQL binaries (``pg_rewind``, and ``postgres`` for the recovery).
        os_user: the data directory's owner; the tool runs as that user.
        source_conninfo: a superuser connection to the new primary.
        password: the password, if the role needs one (passed as ``PGPASSWORD``).
        restore_target_wal: use the node's ``restore_command`` for WAL it lacks (dropped when
            it has none).
        timeout_seconds: bound for the tool.

    Returns:
        A :class:`~dr.changes.Change`: ``changed`` when blocks were copied, ``unchanged``
        when ``pg_rewind`` found no divergence. Not compensable: the WAL the node had beyond
        the fork point is gone (it was never acknowledged by the new primary).

    Raises:
        PreconditionError: the server is running, or the tool cannot run as ``os_user``.
        PostgresError: ``pg_rewind`` failed (exit code and its last lines in the message).
    """
    data = Path(data_directory)
    if server_running(data):
        raise PreconditionError(f"{data} (local server) is running: stop it before pg_rewind")
    obj, saved = f"{data} (local server)", save_config(data)
    ownership_fixed = repair_ownership(data)
    source = _source_without_password(source_conninfo)
    argv: list[str | os.PathLike[str]] = [
        Path(bin_dir) / "pg_rewind",
        f"--target-pgdata={data}",
        f"--source-server={source}",
        *(["--restore-target-wal"] if restore_target_wal else []),
    ]
    started = time.monotonic()
    proc, output = _run_rewind(
        os_user, argv, obj, password=password, timeout_seconds=timeout_seconds
    )
    replaced = restore_config(data, saved)
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_rewind of {obj} from {describe_conninfo(source)} failed (exit {proc.returncode}): "
            f"{_tail(proc)}"
        )
    required = "no rewind required" not in output
    change = Change(
        system=SYSTEM,
        action="rewind",
        object=obj,
        outcome="changed" if required else "unchanged",
        before={"timeline": "diverged" if required else "already on the source's history"},
        after={
            "source": describe_conninfo(source),
            "seconds": round(time.monotonic() - started, 3),
            "config_restored": replaced,
            "ownership_fixed": ownership_fixed[:20],
        },
        undo="none: WAL beyond the fork point is discarded (never acknowledged by the new primary)"
        if required
        else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def _run_rewind(
    os_user: str | None,
    argv: list[str | os.PathLike[str]],
    obj: str,
    *,
    password: str | None,
    timeout_seconds: float,
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run pg_rewind; once more without ``--restore-target-wal`` when no restore_command."""
    proc = run_as_owner(os_user, argv, password=password, timeout_seconds=timeout_seconds)
    output = (proc.stdout or "") + (proc.stderr or "")
    if (
        proc.returncode != 0
        and "--restore-target-wal" in argv
        and "restore_command is not set" in output
    ):
        log.info("postgres rewind %s: no restore_command; again without --restore-target-wal", obj)
        argv.remove("--restore-target-wal")
        proc = run_as_owner(os_user, argv, password=password, timeout_seconds=timeout_seconds)
        output = (proc.stdout or "") + (proc.stderr or "")
    return proc, output


def _move_aside(data: Path) -> Path:
    """Rename a data directory aside and leave an empty one in its place (same owner, mode)."""
    owner = owner_of(data)
    mode = data.stat().st_mode & 0o777
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    aside = data.with_name(f"{data.name}.dr-replaced-{stamp}")
    os.rename(data, aside)
    data.mkdir(mode=mode or 0o700)
    if os.geteuid() == 0:
        os.chown(data, *owner)
    os.chmod(data, mode or 0o700)
    return aside


def _check_replaceable(data: Path, obj: str) -> None:
    """Refuse a running server, and tablespaces (their paths would collide with the source's)."""
    if server_running(data):
        raise PreconditionError(f"{obj} is running: stop it before replacing its data")
    tablespaces = data / "pg_tblspc"
    if tablespaces.is_dir() and any(tablespaces.iterdir()):
        raise PreconditionError(f"{obj} uses tablespaces: rebuild it by hand")


def rebuild_from_base_backup(
    data_directory: str | os.PathLike[str],
    bin_dir: str | os.PathLike[str],
    os_user: str | None,
    *,
    source_conninfo: str,
    password: str | None = None,
    timeout_seconds: float = BASE_BACKUP_TIMEOUT_SECONDS,
) -> Change:
    """Replace a stopped node's data with a fresh ``pg_basebackup`` of the primary.

    The fallback when ``pg_rewind`` cannot do it (WAL gone, no checksums or hints). The old
    folder is kept aside, renamed ``<folder>.dr-replaced-<UTC time>``: it may hold the only
    copy of transactions the new primary never received, for a person to look at. The
    node's own configuration files are carried over to the new copy.

    Args:
        data_directory: the node's data directory (the server must be stopped).
        bin_dir: PostgreSQL binaries (``pg_basebackup``).
        os_user: the data directory's owner; the tool runs as that user.
        source_conninfo: a superuser or REPLICATION connection to the primary.
        password: the password, if the role needs one (passed as ``PGPASSWORD``).
        timeout_seconds: bound for the copy.

    Returns:
        A :class:`~dr.changes.Change` (``changed``); ``after["previous_data_directory"]``
        is where the old folder went. Not compensable.

    Raises:
        PreconditionError: the server is running, or it uses tablespaces (their paths would
            collide with the primary's), or the tool cannot run as ``os_user``.
        PostgresError: ``pg_basebackup`` failed; the old folder is then put back.
    """
    data = Path(data_directory)
    obj = f"{data} (local server)"
    _check_replaceable(data, obj)
    saved = save_config(data)
    aside = _move_aside(data)
    source = _source_without_password(source_conninfo)
    argv = [
        Path(bin_dir) / "pg_basebackup",
        "--pgdata",
        str(data),
        f"--dbname={source}",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--no-password",
    ]
    started = time.monotonic()
    try:
        proc = run_as_owner(os_user, argv, password=password, timeout_seconds=timeout_seconds)
        if proc.returncode != 0:
            raise PostgresError(
                f"pg_basebackup of {describe_conninfo(source)} into {obj} failed (exit {proc.returncode}): "
                f"{_tail(proc)}"
            )
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        os.rename(aside, data)
        log.warning("postgres base backup into %s failed: the previous folder is back", obj)
        raise
    replaced = restore_config(data, saved)
    change = Change(
        system=SYSTEM,
        action="rebuild-from-base-backup",
        object=obj,
        outcome="changed",
        before={"data_directory": str(data)},
        after={
            "source": describe_conninfo(source),
            "previous_data_directory": str(aside),
            "seconds": round(time.monotonic() - started, 3),
            "config_restored": replaced,
        },
        undo=f"the previous data directory is kept at {aside}; remove it once not needed",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- Prefect tasks

# Each acts on the world as it is now: never cached. Tools are not retried automatically:
# a failed rewind is answered by a base backup, not by running it again.
rewind_task = dr_task(rewind, name="postgres-rewind", retries=0)
rebuild_from_base_backup_task = dr_task(
    rebuild_from_base_backup,
    name="postgres-rebuild-from-base-backup",
    retries=0,
)
last_checkpoint_task = dr_task(last_checkpoint, name="postgres-last-checkpoint", retries=0)
