"""The machine the lab runs on: PostgreSQL's binaries, free loopback ports, the server user.

When invoked as root, server tools run as the ``postgres`` OS user (PostgreSQL refuses to
run as root), from ``/`` so that user can read the working directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from dr.localexec import server_argv, server_os_user

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
    return server_os_user()


def run_as_server(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the server user (``runuser -u postgres``) from a readable cwd.

    The command line comes from :func:`dr.localexec.server_argv` (the one place that knows how
    to run as the server's user); only the error type is the lab's own.
    """
    args, run_env = server_argv(argv, env)
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
            f"{Path(str(argv[0])).name} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout or '').strip()[-2000:]}"
        )
    return proc
