"""A data directory's own files: its configuration, ``postgresql.auto.conf``, its owner.

Why keep the configuration: ``pg_rewind`` and ``pg_basebackup`` copy the *source's*
configuration files (its port included) over the node's; :func:`save_config` and
:func:`restore_config` put the node's own back, so it keeps its port, sockets, archive
command and ``synchronous_standby_names``. Files written here belong to the directory's
owner (the server refuses files it cannot read).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from dr.errors import PreconditionError

log = logging.getLogger(__name__)

AUTO_CONF = "postgresql.auto.conf"
STANDBY_SIGNAL = "standby.signal"
RECOVERY_SIGNAL = "recovery.signal"


#: Files a node keeps across pg_rewind and pg_basebackup: its own configuration.
CONFIG_SUFFIX = ".conf"


CONFIG_DIRS: tuple[str, ...] = ("conf.d",)


_AUTO_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")


def owner_of(data: Path) -> tuple[int, int]:
    st = data.stat()
    return st.st_uid, st.st_gid


def write_owned(path: Path, content: bytes, owner: tuple[int, int], mode: int = 0o600) -> None:
    """Write a file in a data directory atomically, owned by the directory's owner."""
    tmp = path.with_name(path.name + ".dr-tmp")
    # Created with its mode: a password file is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def passfile_path(data: Path) -> Path:
    """Where a node's password file lives: beside its data directory, never inside it.

    Why outside: a base backup copies the data directory (``postgresql.auto.conf``
    included) into the backup repository; a password written there would travel with it.
    """
    return data.parent / f".{data.name}.pgpass"


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_passfile(data: Path, host: str, port: int, user: str, password: str) -> Path:
    """Write the node's password file (mode 0600, the data directory's owner) for ``user``.

    One line, any database (replication connections name the pseudo-database
    ``replication``). Returns the file's path, for ``passfile=`` in a conninfo.
    """
    path = passfile_path(data)
    line = ":".join(_pgpass_field(v) for v in (host, str(port), "*", user, password))
    try:
        write_owned(path, f"{line}\n".encode(), owner_of(data), mode=0o600)
    except OSError as exc:
        raise PreconditionError(
            f"cannot write the password file {path} beside the data directory "
            f"({exc.strerror}); the password is never written inside it"
        ) from exc
    return path


def repair_ownership(data: Path) -> list[str]:
    """Give every file of a data directory to its owner (only possible, and needed, as root).

    Why: ``pg_rewind`` runs as the data directory's owner and must write every file it copies
    over; one file left owned by root (a configuration file written by a tool running as
    root) makes it fail with "Permission denied" halfway.
    """
    if os.geteuid() != 0:
        return []
    uid, gid = owner_of(data)
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


def save_config(data: Path) -> dict[str, bytes]:
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


def restore_config(data: Path, saved: Mapping[str, bytes]) -> list[str]:
    """Put the node's configuration back after a tool copied the source's over it."""
    owner = owner_of(data)
    replaced = []
    for rel, content in saved.items():
        path = data / rel
        if path.exists() and path.read_bytes() == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path.parent, *owner)
        write_owned(path, content, owner)
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


def rewrite_auto_conf(data: Path, updates: Mapping[str, str | None]) -> None:
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
    write_owned(path, ("\n".join(keep) + "\n").encode(), owner_of(data))


def server_running(data: Path) -> bool:
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


#: Tools that rewrite or start a data directory; one a killed run left may still be at work.
DATADIR_TOOLS = frozenset({"pg_rewind", "pg_basebackup", "pg_ctl", "initdb"})


def tools_at_work(data: Path) -> list[tuple[int, str]]:
    """Other processes running a PostgreSQL tool on ``data`` (``pg_rewind -D data``...).

    Why: a run killed with SIGKILL leaves its children running: a ``pg_rewind`` or
    ``pg_basebackup`` still writing the data directory, a ``pg_ctl start`` still starting
    it. The next run must not rewind, rebuild or start the same directory meanwhile.

    Returns:
        ``(pid, tool)`` pairs (Linux ``/proc``; empty elsewhere).
    """
    wanted = {str(data), str(data).rstrip("/")}
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        tools = [Path(a).name for a in args if Path(a).name in DATADIR_TOOLS]
        names_dir = any(a in wanted or a.removeprefix("--pgdata=") in wanted for a in args)
        if tools and names_dir:
            found.append((int(entry.name), tools[0]))
    return found


def wait_for_tools(data: Path, timeout_seconds: float) -> list[tuple[int, str]]:
    """Wait until no other tool works on ``data``; returns what was waited for.

    Raises:
        PreconditionError: one still runs after ``timeout_seconds`` (nothing was touched).
    """
    first = tools_at_work(data)
    if first:
        log.warning("waiting for %s on %s (left by an interrupted run)", first, data)
    deadline = time.monotonic() + timeout_seconds
    while (busy := tools_at_work(data)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if busy:
        raise PreconditionError(
            f"{data} is still being changed by {busy} after {timeout_seconds:g} s: not touched"
        )
    return first
