"""The machine the lab runs on: PostgreSQL's binaries, free loopback ports, the server user.

When invoked as root, server tools run as the ``postgres`` OS user (PostgreSQL refuses to
run as root), from ``/`` so that user can read the working directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
FORBIDDEN_PORTS = {5432}


class ClusterError(RuntimeError):
    """A lab cluster could not be created, started or stopped."""


def pg_bin_dir() -> Path:
    """The newest PostgreSQL server binaries on this machine."""
    for cand in PG_BIN_CANDIDATES:
        if (cand / "initdb").exists():
            return cand
    raise ClusterError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")


def free_port(avoid: Sequence[int] = ()) -> int:
    """A free TCP port on 127.0.0.1 that is never 5432."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS and port not in avoid:
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def server_user() -> str | None:
    """The OS user to run server tools as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def chown_for_server(path: Path) -> None:
    """Give ``path`` (recursively) to the server user, so the server can write there."""
    user = server_user()
    if user is None:
        return
    pw = pwd.getpwnam(user)
    if not path.is_dir():
        # os.walk yields nothing for a file: a file is given to the server user directly.
        os.chown(path, pw.pw_uid, pw.pw_gid)
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def run_as_server(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the server user (``runuser -u postgres``) from a readable cwd."""
    args = [str(a) for a in argv]
    user = server_user()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    if env:
        full_env.update(env)
    if user is not None:
        full_env["HOME"] = pwd.getpwnam(user).pw_dir
        args = [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            *[f"{k}={v}" for k, v in full_env.items()],
            *args,
        ]
        run_env = None
    else:
        run_env = {**os.environ, **full_env}
    proc = subprocess.run(
        args,
        cwd="/",
        env=run_env,
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{Path(args[len(args) - len(argv)]).name} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout or '').strip()[-2000:]}"
        )
    return proc
