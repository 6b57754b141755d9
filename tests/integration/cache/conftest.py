"""A real redis-server of the tests' own: a free loopback port, no persistence, a password.

Never the machine's Redis on 6379 (tests/conftest.py refuses that port).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dr.config_state import CacheConfig
from lab.pgcluster import Cluster, pg_bin_dir, temporary_cluster
from tasks.cache.client import connect

PASSWORD = "cache-test-password"
STARTUP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Start redis-server for the session (``--save "" --appendonly no`` in a tmp dir)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    port = free_port()
    folder: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--requirepass",
            PASSWORD,
        ],
        stdout=(folder / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError((folder / "redis.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start in time") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


_db = itertools.cycle(range(1, 16))


@pytest.fixture
def cache(redis_port: int, monkeypatch: pytest.MonkeyPatch) -> CacheConfig:
    """A cache entry on a database of its own (1..15), its password from the environment."""
    monkeypatch.setenv("DR_TEST_REDIS_PASSWORD", PASSWORD)
    entry = CacheConfig.model_validate(
        {
            "name": "app",
            "url": f"redis://127.0.0.1:{redis_port}/{next(_db)}",
            "password": {"env": "DR_TEST_REDIS_PASSWORD"},
        }
    )
    client = connect(entry)
    client.flushdb()
    client.close()
    return entry


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the tests' own, for SQL warm-ups."""
    try:
        pg_bin_dir()
    except RuntimeError as exc:
        pytest.skip(f"needs PostgreSQL server binaries: {exc}")
    base = Path(tempfile.mkdtemp(prefix="dr-cache-tests-"))
    base.chmod(0o755)
    with temporary_cluster(base, "cache-pg") as cluster:
        yield cluster
    shutil.rmtree(base, ignore_errors=True)
