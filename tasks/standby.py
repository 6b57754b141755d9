"""Rejoining a PostgreSQL node as a standby: ``pg_rewind``, a fresh base backup, its settings.

After a failover the old primary holds WAL the new primary never saw (the transactions in
flight at the crash) and sits on the old timeline: it can never simply be started again,
or it would be a second primary. The way back (shared/lab/postgres.md, measured here):

1. ``CHECKPOINT`` on the new primary first (:func:`checkpoint`): its control file only
   shows the new timeline after a checkpoint, and without it ``pg_rewind`` can answer "no
   rewind required" for a node that diverged, which then refuses to start;
2. ``pg_rewind --restore-target-wal`` as the data directory's owner (:func:`rewind`), and
   its exit code checked: a failed rewind must never be followed by a start;
3. if the rewind fails, a fresh ``pg_basebackup`` into the node's folder
   (:func:`rebuild_from_base_backup`), the previous folder kept aside;
4. the standby settings (:func:`configure_standby`): ``primary_conninfo`` with the node's
   name as ``application_name`` (what ``synchronous_standby_names`` refers to),
   ``primary_slot_name`` and ``standby.signal``.

Both tools copy the *source's* configuration files (its port included) over the node's:
each function here puts the node's own configuration back afterwards, so the node keeps
its port, its sockets, its archive command and its ``synchronous_standby_names`` for the
day it is primary again. Starting and stopping the server is :mod:`tasks.postgres`'s
(``start_local_server`` / ``stop_local_server``); the flow puts the steps together.

Tools run as the data directory's owner (``runuser`` when this runner is root); a password,
when the role needs one, goes through ``PGPASSWORD`` in the tool's environment, never on a
command line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dr.changes import Change
from dr.errors import PostgresError, PreconditionError, redact, register_secret
from dr.localexec import run_as_owner
from dr.tasking import dr_task

__all__ = [
    "FENCE_SETTINGS",
    "checkpoint",
    "checkpoint_task",
    "configure_standby",
    "configure_standby_task",
    "drop_inactive_slot",
    "drop_inactive_slot_task",
    "ensure_physical_slot",
    "ensure_physical_slot_task",
    "last_checkpoint",
    "read_auto_conf",
    "rebuild_from_base_backup",
    "rebuild_from_base_backup_task",
    "rewind",
    "rewind_task",
    "slot_name_for",
]

log = logging.getLogger(__name__)

SYSTEM = "postgres"
AUTO_CONF = "postgresql.auto.conf"
STANDBY_SIGNAL = "standby.signal"
RECOVERY_SIGNAL = "recovery.signal"
#: Settings a fence may have left in ``postgresql.auto.conf``; a rejoined node drops them.
FENCE_SETTINGS: tuple[str, ...] = ("default_transaction_read_only",)
#: Settings :func:`configure_standby` owns in ``postgresql.auto.conf``.
STANDBY_SETTINGS: tuple[str, ...] = ("primary_conninfo", "primary_slot_name")
REWIND_TIMEOUT_SECONDS = 600.0
BASE_BACKUP_TIMEOUT_SECONDS = 3600.0
STATEMENT_TIMEOUT_MS = 300_000
#: Files a node keeps across pg_rewind and pg_basebackup: its own configuration.
CONFIG_SUFFIX = ".conf"
CONFIG_DIRS: tuple[str, ...] = ("conf.d",)

_AUTO_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")


# --------------------------------------------------------------------------- SQL


def _connect(conninfo: str, password: str | None) -> psycopg.Connection[Any]:
    """The one place this module opens a connection; failures become PostgresError."""
    kwargs: dict[str, Any] = {"autocommit": True}
    if password:
        register_secret(password)
        kwargs["password"] = password
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"cannot connect to {_describe(conninfo)}: {_first_line(exc)}", transient=True
        ) from exc
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to {_describe(conninfo)}: {_first_line(exc)}") from exc


@contextmanager
def _session(conninfo: str, password: str | None, what: str) -> Iterator[psycopg.Connection[Any]]:
    conn = _connect(conninfo, password)
    try:
        with conn:
            conn.execute(
                "SELECT pg_catalog.set_config('statement_timeout', %s, false)",
                [str(STATEMENT_TIMEOUT_MS)],
            )
            yield conn
    except psycopg.Error as exc:
        transient = isinstance(exc, psycopg.OperationalError) or (exc.sqlstate or "").startswith(
            ("08", "57P")
        )
        raise PostgresError(
            f"{what} on {_describe(conninfo)} failed: {_first_line(exc)}", transient=transient
        ) from exc


def _describe(conninfo: str) -> str:
    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<invalid conninfo>"
    return redact(f"{d.get('user', '')}@{d.get('host', '')}:{d.get('port', '')}/{d.get('dbname')}")


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def checkpoint(conninfo: str, *, password: str | None = None) -> None:
    """Run ``CHECKPOINT`` on a server (the new primary, before ``pg_rewind`` reads it).

    Why: right after a promotion the control file still names the old timeline until the
    next checkpoint; ``pg_rewind`` reads it and may wrongly decide no rewind is needed.

    Args:
        conninfo: a superuser (or ``pg_checkpoint``) connection.
        password: the password, if the role needs one.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    with _session(conninfo, password, "CHECKPOINT") as conn:
        conn.execute("CHECKPOINT")
    log.info("postgres checkpoint %s: done", _describe(conninfo))


def slot_name_for(node_name: str) -> str:
    """The physical replication slot a node uses as a standby (valid slot characters only).

    Args:
        node_name: the node's name in ``dr.yaml``.

    Returns:
        Lower case letters, digits and underscores (``replica-1`` gives ``replica_1``).
    """
    name = re.sub(r"[^a-z0-9_]", "_", node_name.lower())
    return name[:63] or "standby"


def ensure_physical_slot(
    conninfo_primary: str, slot_name: str, *, password: str | None = None
) -> Change:
    """Create a physical replication slot on the primary unless it exists.

    Why a slot: the primary keeps the WAL a rejoining standby still needs, however long it
    takes to start.

    Args:
        conninfo_primary: a superuser (or REPLICATION) connection to the primary.
        slot_name: from :func:`slot_name_for`.
        password: the password, if the role needs one.

    Returns:
        A :class:`~dr.changes.Change`: ``created`` or ``unchanged``; the undo drops it.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = _describe(conninfo_primary)
    with _session(conninfo_primary, password, f"create slot {slot_name}") as conn:
        row = conn.execute(
            "SELECT slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
            [slot_name],
        ).fetchone()
        if row is not None and row[0] != "physical":
            raise PreconditionError(f"slot {slot_name} on {target} exists and is {row[0]}")
        if row is None:
            # immediately_reserve: WAL is kept from now on, before the standby connects.
            conn.execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", [slot_name]
            )
    change = Change(
        system=SYSTEM,
        action="create-slot",
        object=f"slot {slot_name} on {target}",
        outcome="unchanged" if row is not None else "created",
        before={"exists": row is not None},
        after={"exists": True},
        undo=f"SELECT pg_drop_replication_slot('{slot_name}')" if row is None else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def drop_inactive_slot(conninfo: str, slot_name: str, *, password: str | None = None) -> Change:
    """Drop a replication slot nobody uses (a leftover from when this node was primary).

    Why: a slot nobody consumes keeps WAL forever; a node that was primary and is a standby
    again still holds the slot its own standby used.

    Args:
        conninfo: the server holding the slot (a standby is fine for physical slots).
        slot_name: the slot.
        password: the password, if the role needs one.

    Returns:
        A :class:`~dr.changes.Change`: ``deleted``, or ``unchanged`` when the slot does not
        exist or is in use (``after["active"]`` says which).

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = _describe(conninfo)
    with _session(conninfo, password, f"drop slot {slot_name}") as conn:
        row = conn.execute(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", [slot_name]
        ).fetchone()
        dropped = row is not None and not row[0]
        if dropped:
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [slot_name])
    change = Change(
        system=SYSTEM,
        action="drop-slot",
        object=f"slot {slot_name} on {target}",
        outcome="deleted" if dropped else "unchanged",
        before={"exists": row is not None, "active": bool(row and row[0])},
        after={"exists": row is not None and not dropped, "active": bool(row and row[0])},
        undo=f"SELECT pg_create_physical_replication_slot('{slot_name}')" if dropped else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- files


def _owner(data: Path) -> tuple[int, int]:
    st = data.stat()
    return st.st_uid, st.st_gid


def _write_owned(path: Path, content: bytes, owner: tuple[int, int], mode: int = 0o600) -> None:
    """Write a file in a data directory atomically, owned by the directory's owner."""
    tmp = path.with_name(path.name + ".dr-tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def _repair_ownership(data: Path) -> list[str]:
    """Give every file of a data directory to its owner (only possible, and needed, as root).

    Why: ``pg_rewind`` runs as the data directory's owner and must write every file it copies
    over; one file left owned by root (a configuration file written by a tool running as
    root) makes it fail with "Permission denied" halfway.
    """
    if os.geteuid() != 0:
        return []
    uid, gid = _owner(data)
    fixed: list[str] = []
    for root, dirs, files in os.walk(data):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(path, uid, gid)
                fixed.append(os.path.relpath(path, data))
    if fixed:
        log.info(
            "postgres %s: gave %d file(s) back to the data directory's owner", data, len(fixed)
        )
    return fixed


def _save_config(data: Path) -> dict[str, bytes]:
    """The node's own configuration files (relative path -> bytes)."""
    saved: dict[str, bytes] = {}
    for path in sorted(data.iterdir()):
        if path.is_file() and path.name.endswith(CONFIG_SUFFIX):
            saved[path.name] = path.read_bytes()
    for folder in CONFIG_DIRS:
        base = data / folder
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    saved[str(path.relative_to(data))] = path.read_bytes()
    if "postgresql.conf" not in saved:
        raise PreconditionError(f"{data} has no postgresql.conf: not a data directory")
    return saved


def _restore_config(data: Path, saved: Mapping[str, bytes]) -> list[str]:
    """Put the node's configuration back after a tool copied the source's over it."""
    owner = _owner(data)
    replaced = []
    for rel, content in saved.items():
        path = data / rel
        if path.exists() and path.read_bytes() == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path.parent, *owner)
        _write_owned(path, content, owner)
        replaced.append(rel)
    # Configuration files the source had and this node did not: the source's, remove them.
    for folder in CONFIG_DIRS:
        base = data / folder
        if base.is_dir():
            for path in base.rglob("*"):
                if path.is_file() and str(path.relative_to(data)) not in saved:
                    path.unlink()
                    replaced.append(str(path.relative_to(data)))
    return replaced


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_auto_conf(data_directory: str | os.PathLike[str]) -> dict[str, str]:
    """Settings in a data directory's ``postgresql.auto.conf`` (values unquoted).

    Args:
        data_directory: the data directory.

    Returns:
        ``{name: value}``; empty when the file does not exist.
    """
    path = Path(data_directory) / AUTO_CONF
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _AUTO_LINE.match(line)
        if match:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1].replace("''", "'")
            out[match.group(1)] = value
    return out


def _rewrite_auto_conf(data: Path, updates: Mapping[str, str | None]) -> None:
    """Set (or remove, for None) settings in ``postgresql.auto.conf``, keeping the rest."""
    path = data / AUTO_CONF
    lines = path.read_text().splitlines() if path.exists() else []
    keep: list[str] = []
    for line in lines:
        match = _AUTO_LINE.match(line)
        if match and not line.lstrip().startswith("#") and match.group(1) in updates:
            continue
        keep.append(line)
    if not keep or not keep[0].startswith("#"):
        keep.insert(0, "# Do not edit this file manually!")
    for name, value in updates.items():
        if value is not None:
            keep.append(f"{name} = {_quote(value)}")
    _write_owned(path, ("\n".join(keep) + "\n").encode(), _owner(data))


# --------------------------------------------------------------------------- tools


def _run_as(
    os_user: str | None,
    argv: Sequence[str | os.PathLike[str]],
    *,
    password: str | None = None,
    timeout_seconds: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the data directory's owner (see :mod:`dr.localexec`)."""
    return run_as_owner(os_user, argv, password=password, timeout_seconds=timeout_seconds)


def _tail(proc: subprocess.CompletedProcess[str], chars: int = 800) -> str:
    return redact(((proc.stderr or "") + (proc.stdout or "")).strip()[-chars:])


def _server_running(data: Path) -> bool:
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    proc = _run_as(
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
    :func:`checkpoint` on the source first. A node that crashed is recovered by ``pg_rewind``
    itself in single-user mode before it rewinds (PostgreSQL 13 and later).

    Args:
        data_directory: the node's data directory (the server must be stopped).
        bin_dir: PostgreSQL binaries (``pg_rewind``, and ``postgres`` for the recovery).
        os_user: the data directory's owner; the tool runs as that user.
        source_conninfo: a superuser connection to the new primary.
        password: the password, if the role needs one (passed as ``PGPASSWORD``).
        restore_target_wal: use the node's ``restore_command`` for WAL it lacks (dropped
            automatically when the node has no ``restore_command``).
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
    obj = f"{data} (local server)"
    if _server_running(data):
        raise PreconditionError(f"{obj} is running: stop it before pg_rewind")
    saved = _save_config(data)
    ownership_fixed = _repair_ownership(data)
    source = _source_without_password(source_conninfo)
    argv: list[str | os.PathLike[str]] = [
        Path(bin_dir) / "pg_rewind",
        f"--target-pgdata={data}",
        f"--source-server={source}",
    ]
    if restore_target_wal:
        argv.append("--restore-target-wal")
    started = time.monotonic()
    proc = _run_as(os_user, argv, password=password, timeout_seconds=timeout_seconds)
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 and restore_target_wal and "restore_command is not set" in output:
        log.info("postgres rewind %s: no restore_command; again without --restore-target-wal", obj)
        argv.remove("--restore-target-wal")
        proc = _run_as(os_user, argv, password=password, timeout_seconds=timeout_seconds)
        output = (proc.stdout or "") + (proc.stderr or "")
    replaced = _restore_config(data, saved)
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_rewind of {obj} from {_describe(source)} failed (exit {proc.returncode}): "
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
            "source": _describe(source),
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
    if _server_running(data):
        raise PreconditionError(f"{obj} is running: stop it before replacing its data")
    tablespaces = data / "pg_tblspc"
    if tablespaces.is_dir() and any(tablespaces.iterdir()):
        raise PreconditionError(f"{obj} uses tablespaces: rebuild it by hand")
    saved = _save_config(data)
    owner = _owner(data)
    mode = data.stat().st_mode & 0o777
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data.with_name(f"{data.name}.dr-replaced-{stamp}")
    os.rename(data, aside)
    data.mkdir(mode=mode or 0o700)
    if os.geteuid() == 0:
        os.chown(data, *owner)
    os.chmod(data, mode or 0o700)
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
        proc = _run_as(os_user, argv, password=password, timeout_seconds=timeout_seconds)
        if proc.returncode != 0:
            raise PostgresError(
                f"pg_basebackup of {_describe(source)} into {obj} failed (exit {proc.returncode}): "
                f"{_tail(proc)}"
            )
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        os.rename(aside, data)
        log.warning("postgres base backup into %s failed: the previous folder is back", obj)
        raise
    replaced = _restore_config(data, saved)
    change = Change(
        system=SYSTEM,
        action="rebuild-from-base-backup",
        object=obj,
        outcome="changed",
        before={"data_directory": str(data)},
        after={
            "source": _describe(source),
            "previous_data_directory": str(aside),
            "seconds": round(time.monotonic() - started, 3),
            "config_restored": replaced,
        },
        undo=f"the previous data directory is kept at {aside}; remove it once not needed",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def configure_standby(
    data_directory: str | os.PathLike[str],
    *,
    primary_host: str,
    primary_port: int,
    user: str,
    application_name: str,
    slot_name: str | None = None,
    password: str | None = None,
    drop_settings: Sequence[str] = FENCE_SETTINGS,
) -> Change:
    """Make a stopped node start as a streaming standby of ``primary_host:primary_port``.

    Writes ``primary_conninfo`` and ``primary_slot_name`` into ``postgresql.auto.conf``
    (read last, so it wins over the other files), removes settings a fence may have left
    (``default_transaction_read_only``) and creates ``standby.signal``.

    Args:
        data_directory: the node's data directory.
        primary_host: the primary's host.
        primary_port: the primary's port.
        user: the replication role.
        application_name: the node's name as the primary sees it (what
            ``synchronous_standby_names`` lists).
        slot_name: a physical slot on the primary (:func:`ensure_physical_slot`), or None.
        password: written into ``primary_conninfo`` when the role needs one (the file is
            the server owner's, mode 0600, as ``pg_basebackup -R`` does).
        drop_settings: settings to remove from ``postgresql.auto.conf``.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when it was already so).

    Raises:
        PreconditionError: not a data directory.
    """
    data = Path(data_directory)
    obj = f"{data} (local server)"
    if not (data / "PG_VERSION").exists():
        raise PreconditionError(f"{data} is not a PostgreSQL data directory")
    params: dict[str, Any] = {
        "host": primary_host,
        "port": str(primary_port),
        "user": user,
        "application_name": application_name,
    }
    if password:
        register_secret(password)
        params["password"] = password
    wanted: dict[str, str | None] = {
        "primary_conninfo": make_conninfo(**params),
        "primary_slot_name": slot_name or "",
    }
    current = read_auto_conf(data)
    for name in drop_settings:
        if name in current:
            wanted[name] = None
    signal_present = (data / STANDBY_SIGNAL).exists()
    recovery_signal = (data / RECOVERY_SIGNAL).exists()
    differs = {k: v for k, v in wanted.items() if current.get(k) != v}
    if differs:
        _rewrite_auto_conf(data, differs)
    if not signal_present:
        _write_owned(data / STANDBY_SIGNAL, b"", _owner(data))
    if recovery_signal:
        (data / RECOVERY_SIGNAL).unlink()
    changed = bool(differs) or not signal_present or recovery_signal
    change = Change(
        system=SYSTEM,
        action="configure-standby",
        object=obj,
        outcome="changed" if changed else "unchanged",
        before={
            "standby_signal": signal_present,
            "primary_conninfo_set": bool(current.get("primary_conninfo")),
            "dropped_settings": [k for k, v in differs.items() if v is None],
        },
        after={
            "standby_signal": True,
            "primary": f"{primary_host}:{primary_port}",
            "application_name": application_name,
            "slot": slot_name,
        },
        undo=f"remove {data / STANDBY_SIGNAL} (the node would start as a primary)"
        if changed
        else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


# --------------------------------------------------------------------------- Prefect tasks

# Each acts on the world as it is now: never cached. Tools are not retried automatically:
# a failed rewind is answered by a base backup, not by running it again.
checkpoint_task = dr_task(checkpoint, name="postgres-checkpoint")
ensure_physical_slot_task = dr_task(ensure_physical_slot, name="postgres-ensure-slot")
drop_inactive_slot_task = dr_task(drop_inactive_slot, name="postgres-drop-inactive-slot")
rewind_task = dr_task(rewind, name="postgres-rewind", retries=0)
rebuild_from_base_backup_task = dr_task(
    rebuild_from_base_backup,
    name="postgres-rebuild-from-base-backup",
    retries=0,
)
configure_standby_task = dr_task(configure_standby, name="postgres-configure-standby", retries=0)

# --- wrappers added for flows (lead: move on merge)
last_checkpoint_task = dr_task(last_checkpoint, name="postgres-last-checkpoint", retries=0)
