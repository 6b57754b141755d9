"""Fixtures for the PostgreSQL adapter: real servers from the machine's binaries.

One primary + streaming replica is shared by the whole session (tests on it only add
objects of their own); tests that destroy something (promote, fence, stop) get a fresh
server or pair of their own. Everything lives in a folder from ``tempfile.mkdtemp`` made
traversable (0o755): pytest's ``tmp_path`` is not, and the servers run as ``postgres``.
"""

from __future__ import annotations

import getpass
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dr.config import PostgresNode
from lab.pgcluster import Cluster, free_port, pg_bin_dir, server_user
from tasks.postgres import client

STREAMING_WAIT_SECONDS = 30


def _node(cluster: Cluster) -> PostgresNode:
    return PostgresNode(name=cluster.name, host="127.0.0.1", port=cluster.port)


def ci(
    cluster: Cluster,
    dbname: str = "postgres",
    user: str = "postgres",
    password: str | None = None,
) -> str:
    """A conninfo for a test cluster, built with the function under test."""
    return client.conninfo(
        _node(cluster), user=user, dbname=dbname, password=password, connect_timeout_seconds=3
    )


def os_user() -> str:
    """The OS user owning the test clusters' data directories."""
    return server_user() or getpass.getuser()


def wait_streaming(primary: Cluster, replica_name: str) -> None:
    deadline = time.monotonic() + STREAMING_WAIT_SECONDS
    # Streaming, and the standby has reported a replay position (its first feedback).
    query = (
        "SELECT state FROM pg_catalog.pg_stat_replication "
        f"WHERE application_name = '{replica_name}' AND replay_lsn IS NOT NULL"
    )
    while primary.psql(query) != "streaming":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replica_name} is not streaming from {primary.name}")
        time.sleep(0.05)


@dataclass
class Pair:
    primary: Cluster
    replica: Cluster

    def destroy(self) -> None:
        self.replica.destroy()
        self.primary.destroy()


def _make_pair(base: Path, prefix: str) -> Pair:
    primary = Cluster(base / f"{prefix}-primary", free_port(), name=f"{prefix}-primary")
    primary.initdb()
    primary.start()
    try:
        replica = primary.create_replica(
            base / f"{prefix}-replica",
            free_port(avoid=[primary.port]),
            name=f"{prefix}-replica",
        )
        wait_streaming(primary, replica.name)
    except BaseException:
        primary.destroy()
        raise
    return Pair(primary, replica)


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    try:
        pg_bin_dir()
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL tests need server binaries: {exc}")
    base = Path(tempfile.mkdtemp(prefix="dr-pg-tests-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_pair(pg_base_dir: Path) -> Iterator[Pair]:
    """A primary and its streaming replica, shared by the session."""
    pair = _make_pair(pg_base_dir, "shared")
    yield pair
    pair.destroy()


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def fresh_pair(pg_base_dir: Path) -> Iterator[Pair]:
    """A primary and replica of this test's own (for promotion)."""
    pair = _make_pair(pg_base_dir, f"t{next(_counter)}")
    yield pair
    pair.destroy()


@pytest.fixture
def fresh_primary(pg_base_dir: Path) -> Iterator[Cluster]:
    """A lone server of this test's own (for fencing and stopping)."""
    name = f"t{next(_counter)}-solo"
    cluster = Cluster(pg_base_dir / name, free_port(), name=name)
    cluster.initdb()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
