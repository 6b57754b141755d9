"""Run PostgreSQL's server tools (pg_ctl, pg_rewind, pg_basebackup) as a data directory's owner.

PostgreSQL refuses to run as root, and a data directory belongs to one OS user: when this
runner is root, tools run through ``runuser -u OWNER`` from ``/`` (a folder every user can
read). Shared by the adapters that act on local servers (``tasks.postgres``,
``tasks.standby``), which may not import each other.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from dr.errors import PostgresError, PreconditionError, register_secret

__all__ = ["current_os_user", "run_as_owner"]


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
