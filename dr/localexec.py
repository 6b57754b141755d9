"""Run PostgreSQL's tools: server tools as a data directory's owner, client tools as ourselves.

PostgreSQL refuses to run as root, and a data directory belongs to one OS user: when this
runner is root, tools run through ``runuser -u OWNER`` from ``/`` (a folder every user can
read). Shared by the packages that act on local servers (``tasks.postgres``,
``tasks.standby``, ``tasks.pitr``) and by the backup tools (``tasks.backups``), which may
not import each other.

Three ways in, by who owns the files:

- :func:`run_as_owner`: a node's configured OS user (pg_ctl, pg_rewind, pg_basebackup on a
  configured node).
- :func:`run_as_server`: the local server user (``postgres`` when we are root, else
  ourselves) for the clusters point-in-time recovery creates; :func:`chown_for_server`
  hands it the files first.
- :func:`run_tool`: client tools (``pg_dump``, ``pg_restore``, ``psql``) as this runner,
  failures as PostgresError, transient when the server may come back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dr.errors import ConfigError, PostgresError, PreconditionError, redact, register_secret

__all__ = [
    "chown_for_server",
    "current_os_user",
    "find_tool",
    "run_as_owner",
    "run_as_server",
    "run_tool",
    "server_argv",
    "server_os_user",
    "server_tool",
    "tool_env",
    "tool_error",
    "tool_failed",
    "tool_version",
]


def current_os_user() -> str:
    """The OS user this runner runs as."""
    return pwd.getpwuid(os.geteuid()).pw_name


def run_as_owner(
    os_user: str | None,
    argv: Sequence[str | os.PathLike[str]],
    *,
    password: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_seconds: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``os_user`` (itself when None or already that user).

    Args:
        os_user: the data directory's owner, from the node's config.
        argv: the tool and its arguments.
        password: given to the tool as PGPASSWORD, through the environment (never the
            command line, where ``ps`` would show it).
        env: more environment for the tool.
        timeout_seconds: the tool's time limit.

    Returns:
        The finished process (text output captured); the caller reads its return code.

    Raises:
        PreconditionError: the runner cannot become ``os_user`` (not root, no such user), or
            the tool does not exist.
        PostgresError: the tool did not finish in time (transient).
    """
    args = [str(a) for a in argv]
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    run_env.update(env or {})
    if password:
        register_secret(password)
        run_env["PGPASSWORD"] = password
    me = current_os_user()
    if os_user and os_user != me:
        if os.geteuid() != 0:
            raise PreconditionError(
                f"cannot run {Path(args[0]).name} as {os_user}: this runner is {me}, not root"
            )
        try:
            run_env["HOME"] = pwd.getpwnam(os_user).pw_dir
        except KeyError:
            raise PreconditionError(f"no OS user {os_user!r} on this machine") from None
        # runuser without --login keeps the environment given here (PGPASSWORD included).
        args = ["runuser", "-u", os_user, "--", *args]
    else:
        run_env["HOME"] = os.environ.get("HOME", "/")
    try:
        return subprocess.run(
            args,
            cwd="/",
            env=run_env,
            text=True,
            capture_output=True,
            timeout=timeout_seconds,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PreconditionError(f"cannot run {args[0]}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(
            f"{Path(str(argv[0])).name} did not finish in {timeout_seconds:g} s", transient=True
        ) from exc


# --------------------------------------------------------------------------- the local server user


def server_os_user() -> str | None:
    """The OS user to run server tools as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def chown_for_server(path: Path) -> None:
    """Give ``path`` (recursively) to the server user, so the server can read and write it."""
    user = server_os_user()
    if user is None:
        return
    pw = pwd.getpwnam(user)
    if not path.is_dir():
        os.lchown(path, pw.pw_uid, pw.pw_gid)
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def server_tool(name: str, bin_dir: str | Path | None) -> str:
    """A server tool's path: ``bin_dir`` if it has it, else the newest installed, else $PATH.

    Raises:
        PreconditionError: the tool is nowhere to be found.
    """
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if path.exists():
            return str(path)
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    raise PreconditionError(f"PostgreSQL tool {name} not found (bin_dir={bin_dir})")


def server_argv(
    argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str] | None]:
    """The command line (and environment) that runs ``argv`` as the server's OS user.

    ``env`` goes through the process environment (``runuser`` keeps it), never the command
    line, so a password in it is not visible in ``ps``.
    """
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    args = [str(a) for a in argv]
    user = server_os_user()
    run_env = {**os.environ, **base, **(env or {})}
    if user is not None:
        home = pwd.getpwnam(user).pw_dir
        args = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in base.items()]]
        args += [f"HOME={home}", *[str(a) for a in argv]]
    return args, run_env


def run_as_server(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the server's OS user (PostgreSQL refuses root) from ``/``."""
    args, run_env = server_argv(argv, env)
    try:
        return subprocess.run(
            args,
            cwd="/",
            env=run_env,
            text=True,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(
            f"{Path(str(argv[0])).name} timed out after {timeout} s", transient=True
        ) from exc


def tool_failed(tool: str, proc: subprocess.CompletedProcess[str]) -> PostgresError:
    """A server tool's failure as a (permanent) PostgresError quoting its redacted output."""
    text = (proc.stderr or proc.stdout or "").strip()
    return PostgresError(f"{tool} failed ({proc.returncode}): {redact(text[-1500:])}")


# --------------------------------------------------------------------------- client tools


#: Server messages that mean "try again later" rather than "this will never work".
_TRANSIENT_MARKERS = (
    "could not connect",
    "connection refused",
    "connection reset",
    "timeout expired",
    "server closed the connection unexpectedly",
    "the database system is starting up",
    "the database system is shutting down",
    "too many clients",
    "remaining connection slots are reserved",
)


def find_tool(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate a PostgreSQL client tool.

    Args:
        name: ``pg_dump``, ``pg_restore``, ``psql``, ...
        bin_dir: the folder to use (a node's ``bin_dir``); else the newest
            ``/usr/lib/postgresql/*/bin`` holding the tool, else ``$PATH``.

    Returns:
        The tool's path.

    Raises:
        ConfigError: the tool is nowhere to be found.
    """
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if path.exists():
            return path
        raise ConfigError(f"{name} not found in {bin_dir}", [("bin_dir", f"no {name}")])

    def _major(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=_major)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"{name} not found (install PostgreSQL client tools)", [(name, "missing")])


def tool_version(tool: str | os.PathLike[str]) -> str:
    """The ``--version`` line of a tool, e.g. ``pg_dump (PostgreSQL) 15.20``."""
    proc = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip()


def tool_env(password: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A client tool's environment: ours without PGOPTIONS, plus PGPASSWORD and ``extra``."""
    env = dict(os.environ)
    env.pop("PGOPTIONS", None)
    if password is not None:
        env["PGPASSWORD"] = password
    if extra:
        env.update(extra)
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def _is_transient_message(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _TRANSIENT_MARKERS)


def tool_error(tool: str, returncode: int, stderr: str) -> PostgresError:
    """A client tool's failure; transient when its message says the server may come back."""
    tail = stderr.strip()[-2000:] or "(no output)"
    return PostgresError(
        f"{tool} failed (exit {returncode}): {tail}", transient=_is_transient_message(stderr)
    )


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    password: str | None = None,
    env_extra: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client tool, turning failures into PostgresError (transient when it may pass)."""
    args = [str(a) for a in argv]
    name = Path(args[0]).name
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env=tool_env(password, env_extra),
            timeout=timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"{name} timed out after {timeout_seconds} s", transient=True) from exc
    if proc.returncode != 0:
        raise tool_error(name, proc.returncode, proc.stderr or proc.stdout)
    return proc
