"""A real S3 stand-in for the storage adapter's tests: moto's server on a loopback port.

The server runs as a separate process (not ``ThreadedMotoServer``) so that memory tests
measure only the client's allocations, not the server holding the objects.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tasks.storage.client import make_s3_client, open_repository
from tasks.storage.s3 import S3Repository

MiB = 1024 * 1024
STARTUP_TIMEOUT_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``moto.server`` on 127.0.0.1 for the session; stop it afterwards."""
    port = free_port()
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
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _only_the_stand_in(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    """Any client built without an explicit endpoint still talks to moto, with fake keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    return make_s3_client(
        endpoint_url=moto_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


def _new_bucket(client: Any, *, object_lock: bool) -> str:
    name = f"dr-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh bucket without Object Lock."""
    return _new_bucket(s3_client, object_lock=False)


@pytest.fixture
def locked_bucket(s3_client: Any) -> str:
    """A fresh bucket with Object Lock enabled (and so versioning)."""
    return _new_bucket(s3_client, object_lock=True)


@pytest.fixture
def make_repo(s3_client: Any) -> Callable[..., S3Repository]:
    """Open ``s3://<bucket>/backups`` with small multipart and resume sizes for fast tests."""

    def make(bucket_name: str, prefix: str = "backups", **kwargs: Any) -> S3Repository:
        options: dict[str, Any] = {
            "multipart_threshold_bytes": 5 * MiB,
            "part_size_bytes": 5 * MiB,
            "resume_min_bytes": 1 * MiB,
        }
        options.update(kwargs)
        repo = open_repository(f"s3://{bucket_name}/{prefix}", s3_client=s3_client, **options)
        assert isinstance(repo, S3Repository)
        return repo

    return make


@pytest.fixture
def repo(make_repo: Callable[..., S3Repository], bucket: str) -> S3Repository:
    return make_repo(bucket)


@pytest.fixture
def s3_calls(s3_client: Any) -> Iterator[Counter[str]]:
    """Count the S3 API operations the client makes during a test."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    s3_client.meta.events.register("before-call.s3", count)
    try:
        yield calls
    finally:
        s3_client.meta.events.unregister("before-call.s3", count)
