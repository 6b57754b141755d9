"""The AWS stand-in for the cloud adapter's tests: moto's server on a loopback port.

One server process per test module (``moto_endpoint``). The IAM key tests use their own
server with moto's request authentication switched on (``moto_auth``), so that a call
signed with a wrong secret or an unknown key is really refused; moto's authentication
mishandles some Route 53 requests, so the other tests run against a server without it.

``flaky_proxy`` sits in front of moto and answers the first requests with scripted errors
(503, Throttling), to show the SDK's own retry handler at work.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from dr.config import AWSConfig, SecretRef

STARTUP_TIMEOUT_SECONDS = 20.0
REGION = "us-east-1"
# Fake credentials, distinctive so that redacting them (they get registered as secrets)
# cannot blank out ordinary words in other tests' messages.
FAKE_KEY_ID = "AKIADRCLOUDTESTKEY00"
FAKE_SECRET = "dr-cloud-test-fake-secret-0000"
ENV_KEY_ID = "DR_TEST_AWS_ACCESS_KEY_ID"
ENV_SECRET = "DR_TEST_AWS_SECRET_ACCESS_KEY"
ALLOW_ALL_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return proc, endpoint
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start in time") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raw_client(endpoint: str, service: str, key_id: str, secret: str) -> Any:
    """A client for test set-up only (creating zones, groups, users the adapter acts on)."""
    return boto3.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=REGION
    ).client(service, endpoint_url=endpoint, config=Config(retries={"max_attempts": 1}))


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client built without the stand-in's endpoint fails loudly instead of reaching AWS."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-0000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server for this module, without request authentication."""
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield endpoint
    finally:
        _stop(proc)


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AWSConfig:
    """The ``aws`` config section pointing at the stand-in, credentials by reference."""
    monkeypatch.setenv(ENV_KEY_ID, FAKE_KEY_ID)
    monkeypatch.setenv(ENV_SECRET, FAKE_SECRET)
    return AWSConfig(
        region=REGION,
        endpoint_url=moto_endpoint,
        access_key_id=SecretRef(env=ENV_KEY_ID),
        secret_access_key=SecretRef(env=ENV_SECRET),
    )


@dataclass(frozen=True)
class MotoAuth:
    """A moto server that checks signatures, and an administrator allowed everything."""

    endpoint: str
    admin_key_id: str
    admin_secret: str


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAuth]:
    """moto's server with authentication on: unknown keys and wrong secrets are refused."""
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto-auth") / "moto.log")
    try:
        iam = raw_client(endpoint, "iam", FAKE_KEY_ID, FAKE_SECRET)
        iam.create_user(UserName="dr-admin")
        iam.put_user_policy(
            UserName="dr-admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL_POLICY)
        )
        key = iam.create_access_key(UserName="dr-admin")["AccessKey"]
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass
        yield MotoAuth(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        _stop(proc)


@pytest.fixture
def aws_auth(moto_auth: MotoAuth, monkeypatch: pytest.MonkeyPatch) -> AWSConfig:
    """The ``aws`` config section for the authenticating server (the administrator's key)."""
    monkeypatch.setenv(ENV_KEY_ID, moto_auth.admin_key_id)
    monkeypatch.setenv(ENV_SECRET, moto_auth.admin_secret)
    return AWSConfig(
        region=REGION,
        endpoint_url=moto_auth.endpoint,
        access_key_id=SecretRef(env=ENV_KEY_ID),
        secret_access_key=SecretRef(env=ENV_SECRET),
    )


# --------------------------------------------------------------------------- flaky proxy


@dataclass
class FlakyProxy:
    """A loopback HTTP proxy to moto that answers the next requests with scripted errors."""

    endpoint: str = ""
    failures: list[tuple[int, bytes]] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, body: bytes = b"") -> None:
        with self.lock:
            self.failures.append((status, body))


def _handler(proxy: FlakyProxy, upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with proxy.lock:
                failure = proxy.failures.pop(0) if proxy.failures else None
            if failure is not None:
                status, payload = failure
                proxy.requests.append((self.command, self.path, status))
                self._reply(status, payload, [("Content-Type", "text/xml")])
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "transfer-encoding", "content-length")
                }
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                kept = [
                    (k, v)
                    for k, v in answer.getheaders()
                    if k.lower() not in ("connection", "transfer-encoding", "content-length")
                ]
                proxy.requests.append((self.command, self.path, answer.status))
                self._reply(answer.status, data, kept)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    return Handler


@pytest.fixture
def flaky_proxy(moto_endpoint: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy, moto_endpoint))
    proxy.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def raw(moto_endpoint: str) -> Any:
    """Set-up clients on the plain server: ``raw("ec2")``."""
    return lambda service: raw_client(moto_endpoint, service, FAKE_KEY_ID, FAKE_SECRET)


@pytest.fixture
def admin_raw(moto_auth: MotoAuth) -> Any:
    """Set-up clients on the authenticating server, signed by its administrator."""
    return lambda service: raw_client(
        moto_auth.endpoint, service, moto_auth.admin_key_id, moto_auth.admin_secret
    )
