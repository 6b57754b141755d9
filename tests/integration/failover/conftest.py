"""Fixtures for the region failover tests: the shared lab, and small pairs of our own.

- Drills on the lab (``lab_drill``) use the session's ``lab`` (tests/conftest.py): its
  PostgreSQL primary + streaming replica, its heartbeat application in a container, its
  Prefect server. After them the lab is healed (:func:`lab.manager.heal`), whatever
  happened, so the tests after these find "primary + streaming replica + app writing".
- Fault tests break things the lab should not suffer: each gets a pair of its own
  (``make_pair``: a primary and a streaming replica in a temporary folder, ~2 s) and a
  ``dr.yaml`` of its own naming them (``Pair.write_config``). They still use the lab's
  Prefect server (the flows need one for the target lock and approval pauses).
- ``flaky_route53``: a loopback proxy in front of the lab's moto (which speaks Route 53
  too) that answers the next requests with scripted errors.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import psycopg
import pytest
import yaml
from botocore.config import Config

from lab import state as lab_state
from lab import status as lab_status
from lab import up
from lab.pgcluster import Cluster, free_port, pg_bin_dir, server_user

STREAMING_WAIT_SECONDS = 30
AWS_KEY_ENV = "DR_TEST_FAILOVER_AWS_KEY"
AWS_SECRET_ENV = "DR_TEST_FAILOVER_AWS_SECRET"
FAKE_KEY = "AKIADRFAILOVERTEST00"
FAKE_SECRET = "dr-failover-test-fake-secret-000"


# --------------------------------------------------------------------------- Prefect


@pytest.fixture
def prefect_lab(lab: lab_state.LabState, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point Prefect at the lab's server for one test (flow heartbeats off: faster runs)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    assert lab.prefect_api_url, "the lab runs without its Prefect server"
    monkeypatch.setenv("PREFECT_API_URL", lab.prefect_api_url)
    monkeypatch.delenv("DR_CONFIG", raising=False)
    with temporary_settings(
        updates={
            PREFECT_API_URL: lab.prefect_api_url,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
        }
    ):
        yield


# --------------------------------------------------------------------------- the lab


@dataclass
class LabDrill:
    """The shared lab, for drills that heal it afterwards."""

    state: lab_state.LabState

    @property
    def config_path(self) -> Path:
        return self.state.config_path

    def cluster(self, name: str) -> Cluster:
        return lab_state.clusters(self.state)[name]

    def status(self) -> dict[str, Any]:
        return lab_status.status(self.state.base_dir)


@pytest.fixture
def lab_drill(lab: lab_state.LabState, prefect_lab: None) -> Iterator[LabDrill]:
    """The lab, healed after the test whatever it did (primary + replica + app writing)."""
    try:
        yield LabDrill(lab)
    finally:
        up.heal(lab.base_dir)


# --------------------------------------------------------------------------- pairs


def wait_streaming(primary: Cluster, replica_name: str) -> None:
    deadline = time.monotonic() + STREAMING_WAIT_SECONDS
    query = (
        "SELECT state FROM pg_catalog.pg_stat_replication "
        f"WHERE application_name = '{replica_name}' AND replay_lsn IS NOT NULL"
    )
    while primary.psql(query) != "streaming":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replica_name} is not streaming from {primary.name}")
        time.sleep(0.05)


def in_recovery(cluster: Cluster) -> bool | None:
    """True for a standby, False for a primary, None when it does not answer."""
    try:
        with psycopg.connect(cluster.conninfo(), connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            return bool(row[0]) if row else None
    except psycopg.OperationalError:
        return None


@dataclass
class Pair:
    """A primary and its streaming replica of our own, and a dr.yaml naming them."""

    root: Path
    primary: Cluster
    replica: Cluster
    synchronous: bool = False
    configs: list[Path] = field(default_factory=list)

    def node(self, cluster: Cluster, region: str, *, local: bool = True) -> dict[str, Any]:
        node: dict[str, Any] = {
            "name": cluster.name,
            "host": "127.0.0.1",
            "port": cluster.port,
            "region": region,
        }
        if local:
            node.update(
                {
                    "data_directory": str(cluster.data_dir),
                    "bin_dir": str(pg_bin_dir()),
                    "os_user": server_user() or "postgres",
                }
            )
        return node

    def config(
        self, *, primary_local: bool = True, replica_port: int | None = None, **top: Any
    ) -> dict[str, Any]:
        """The dr.yaml as a dict; ``top`` merges into the top level (``target`` into the target)."""
        replica = self.node(self.replica, "dr-region")
        if replica_port is not None:
            replica["port"] = replica_port
        target: dict[str, Any] = {
            "tier": "critical",
            "production": False,
            "drills_allowed": True,
            "postgres": {
                "primary": self.node(self.primary, "primary-region", local=primary_local),
                "replicas": [replica],
                "user": "postgres",
                "databases": ["app"],
                "heartbeat_database": "app",
                "synchronous": self.synchronous,
                "connect_timeout_seconds": 2,
            },
            "backup": {"repository": f"file://{self.root}/repo"},
        }
        target.update(top.pop("target", {}))
        cfg: dict[str, Any] = {
            "targets": {"pair": target},
            "approval": {"timeout_seconds": 60},
            "concurrency": {"on_busy": "wait", "wait_timeout_seconds": 60},
        }
        cfg.update(top)
        return cfg

    def write_config(self, **kw: Any) -> str:
        path = self.root / f"dr-{len(self.configs)}.yaml"
        path.write_text(yaml.safe_dump(self.config(**kw), sort_keys=False))
        self.configs.append(path)
        return str(path)

    def walsender_pids(self) -> list[int]:
        rows = self.primary.psql("SELECT pid FROM pg_catalog.pg_stat_replication")
        return [int(p) for p in rows.split()]

    def destroy(self) -> None:
        for cluster in (self.replica, self.primary):
            # A frozen process would keep pg_ctl waiting: let it go first.
            pid = cluster.pid()
            if pid is not None:
                for child in _children(pid):
                    with contextlib.suppress(OSError):
                        os.kill(child, signal.SIGCONT)
            cluster.destroy()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                out.append(int(entry.name))
    return out


@dataclass
class Template:
    """A stopped primary + standby, copied for each pair (faster than initdb + base backup)."""

    root: Path
    primary: Path
    replica: Path


@pytest.fixture(scope="session")
def pair_template() -> Iterator[Template]:
    """Build one primary + streaming replica (database ``app``, ``dr_heartbeat``), stop both."""
    root = Path(tempfile.mkdtemp(prefix="dr-failover-template-"))
    root.chmod(0o755)
    primary = Cluster(root / "pair-primary", free_port(), name="pair-primary")
    try:
        primary.initdb()
        primary.start()
        primary.psql("CREATE DATABASE app")
        primary.psql(
            "CREATE TABLE public.dr_heartbeat (writer text NOT NULL, seq bigint NOT NULL,"
            " ts timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),"
            " PRIMARY KEY (writer, seq))",
            "app",
        )
        replica = primary.create_replica(
            root / "pair-replica", free_port(avoid=[primary.port]), name="pair-replica"
        )
        wait_streaming(primary, replica.name)
        # Primary first: its shutdown checkpoint reaches the standby, so the copies match.
        primary.stop("fast")
        replica.stop("fast")
        yield Template(root=root, primary=primary.data_dir, replica=replica.data_dir)
    finally:
        for data in (root / "pair-replica", root / "pair-primary"):
            Cluster(data, 1, name=data.name).destroy()
        shutil.rmtree(root, ignore_errors=True)


def _copy(source: Path, target: Path) -> None:
    # cp -a keeps the owner (the postgres user) and the modes PostgreSQL insists on.
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


@pytest.fixture
def make_pair(pair_template: Template) -> Iterator[Callable[..., Pair]]:
    """Pairs (primary + streaming replica with a slot and a WAL archive), destroyed after."""
    root = Path(tempfile.mkdtemp(prefix="dr-failover-tests-"))
    root.chmod(0o755)
    pairs: list[Pair] = []

    def make(*, synchronous: bool = False) -> Pair:
        base = root / f"pair{len(pairs)}"
        base.mkdir()
        base.chmod(0o755)
        _copy(pair_template.primary, base / "pair-primary")
        _copy(pair_template.replica, base / "pair-replica")
        primary = Cluster(base / "pair-primary", free_port(), name="pair-primary")
        replica = Cluster(
            base / "pair-replica", free_port(avoid=[primary.port]), name="pair-replica"
        )
        pair = Pair(root=base, primary=primary, replica=replica, synchronous=synchronous)
        pairs.append(pair)
        primary.set_archive_dir(base / "wal")  # also rewrites port and sockets
        primary.start()
        replica.configure_as_standby(primary, "pair_replica")
        replica.set_archive_dir(base / "wal")
        replica.start()
        wait_streaming(primary, replica.name)
        if synchronous:
            # After the base backup, so the replica does not inherit it (shared/lab/postgres.md).
            primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '\"{replica.name}\"'")
            primary.psql("SELECT pg_catalog.pg_reload_conf()")
            deadline = time.monotonic() + 10
            while (
                primary.psql(
                    "SELECT sync_state FROM pg_catalog.pg_stat_replication "
                    f"WHERE application_name = '{replica.name}'"
                )
                != "sync"
            ):
                assert time.monotonic() < deadline, "the replica did not become synchronous"
                time.sleep(0.05)
        return pair

    try:
        yield make
    finally:
        for pair in pairs:
            pair.destroy()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- Route 53


@dataclass
class FlakyRoute53:
    """A proxy to the lab's moto that answers the next requests with scripted errors."""

    endpoint: str = ""
    upstream: str = ""
    failures: list[tuple[int, bytes]] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, body: bytes = b"", times: int = 1) -> None:
        with self.lock:
            self.failures.extend([(status, body)] * times)

    def client(self) -> Any:
        """A boto3 client straight to moto, for the test's own set-up and checks."""
        return boto3.client(
            "route53",
            endpoint_url=self.upstream,
            region_name="us-east-1",
            aws_access_key_id=FAKE_KEY,
            aws_secret_access_key=FAKE_SECRET,
            config=Config(retries={"max_attempts": 1}),
        )

    def aws_section(self) -> dict[str, Any]:
        return {
            "region": "us-east-1",
            "endpoint_url": self.endpoint,
            "access_key_id": {"env": AWS_KEY_ENV},
            "secret_access_key": {"env": AWS_SECRET_ENV},
        }


def _proxy_handler(proxy: FlakyRoute53) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

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
                proxy.seen.append((self.command, self.path, failure[0]))
                self._reply(failure[0], failure[1], [("Content-Type", "text/xml")])
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
                proxy.seen.append((self.command, self.path, answer.status))
                self._reply(answer.status, data, kept)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    return Handler


@pytest.fixture
def flaky_route53(
    lab: lab_state.LabState, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlakyRoute53]:
    """Route 53 through a scriptable proxy to the lab's moto; credentials by reference."""
    monkeypatch.setenv(AWS_KEY_ENV, FAKE_KEY)
    monkeypatch.setenv(AWS_SECRET_ENV, FAKE_SECRET)
    proxy = FlakyRoute53(upstream=lab.moto_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(proxy))
    proxy.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
