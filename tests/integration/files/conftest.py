"""Fixtures for the files package: moto's S3 server (versioned buckets) and a PostgreSQL server.

Both are the tests' own: moto on a free loopback port (as in tests/integration/storage),
PostgreSQL from the machine's binaries on a free port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dr.config import AWSConfig
from lab.pgcluster import Cluster, pg_bin_dir, temporary_cluster
from tasks.files.client import s3_client

STARTUP_TIMEOUT_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto.server`` on 127.0.0.1 for the session."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start in time") from None
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _only_the_stand_in(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    """Fake keys in the environment; any client without an endpoint still reaches moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(moto_endpoint: str) -> AWSConfig:
    return AWSConfig(endpoint_url=moto_endpoint, region="us-east-1")


@pytest.fixture
def s3(aws: AWSConfig) -> Any:
    return s3_client(aws)


@pytest.fixture
def versioned_bucket(s3: Any) -> str:
    """A fresh bucket with versioning on."""
    name = f"dr-files-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def backup_bucket(s3: Any) -> str:
    name = f"dr-backups-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the tests' own, for the link checks."""
    try:
        pg_bin_dir()
    except RuntimeError as exc:
        pytest.skip(f"needs PostgreSQL server binaries: {exc}")
    base = Path(tempfile.mkdtemp(prefix="dr-files-tests-"))
    base.chmod(0o755)
    with temporary_cluster(base, "files-pg") as cluster:
        yield cluster
    shutil.rmtree(base, ignore_errors=True)
