"""Fixtures for the breach-response tests: the shared lab, and stand-ins of our own.

- ``breach_lab`` (module): the session's ``lab`` (tests/conftest.py) with Prefect pointed at
  its server, a ``dr`` command runner, and helpers to run the flow, read the lab's app
  password and write variants of its ``dr.yaml``. A breach drill rotates the lab app's
  database password; the lab keeps its credentials in ``<lab>/secrets/`` (what ``dr lab
  up``/``heal`` restore from), so after every drill :meth:`BreachLab.sync_lab_secrets`
  writes the new password there too, and the module ends by checking that the app writes
  heartbeats (healing the lab if it does not).
- ``moto_auth`` (module): a moto server of our own with request authentication on, so an
  IAM key rotation can be proven (the lab's moto authenticates nothing, and switching it on
  would break every other test).
- ``kube`` (module): kmock's Kubernetes emulator on loopback, with a kubeconfig.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import typer
import yaml
from botocore.config import Config
from typer.testing import CliRunner

from cli.evidence import register as register_evidence
from cli.runs import register as register_runs
from lab import state as lab_state
from lab import up
from lab.pgcluster import free_port

REGION = "us-east-1"
AUTH_ADMIN_KEY_ENV = "DR_TEST_BREACH_AWS_KEY"
AUTH_ADMIN_SECRET_ENV = "DR_TEST_BREACH_AWS_SECRET"
BOOT_KEY = "AKIADRBREACHBOOT0000"
BOOT_SECRET = "dr-breach-test-boot-secret-0000"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
HEARTBEAT_FRESH_SECONDS = 2.0


# --------------------------------------------------------------------------- the lab


@dataclass
class BreachLab:
    """The shared lab, as the breach tests use it."""

    lab: lab_state.LabState
    runner: CliRunner
    app: typer.Typer
    root: Path

    @property
    def config_path(self) -> Path:
        return self.lab.config_path

    def invoke(self, *args: str) -> tuple[int, str, str]:
        """Run a ``dr`` command in this process; returns (exit code, stdout, stderr)."""
        result = self.runner.invoke(self.app, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def run_flow(
        self,
        options: dict[str, Any] | None = None,
        *,
        config: Path | None = None,
        mode: str = "drill",
    ) -> dict[str, Any]:
        """Run the flow function in this process (exceptions propagate)."""
        from flows.breach_response.flow import breach_response_flow
        from flows.breach_response.options import BreachOptions

        opts = BreachOptions.model_validate(options or {})
        try:
            return breach_response_flow(
                target="lab", mode=mode, options=opts, config_path=str(config or self.config_path)
            )
        finally:
            self.sync_lab_secrets()

    def app_password(self) -> str:
        """The lab app's database password as the Prefect Secret block holds it now."""
        from prefect.blocks.system import Secret

        return str(Secret.load("lab-app-password").get())

    def file_password(self) -> str:
        return (self.lab.base_dir / "secrets" / "app-password").read_text().strip()

    def sync_lab_secrets(self) -> bool:
        """Write the block's (rotated) password where the lab reads it: ``<lab>/secrets``.

        Returns:
            True when the files had to change.
        """
        value = self.app_password()
        if value == self.file_password():
            return False
        secrets_dir = self.lab.base_dir / "secrets"
        fd = os.open(secrets_dir / "app-password", os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        env = "".join(
            f"export {lab_state.SECRET_ENV[block]}="
            + (secrets_dir / name).read_text().strip()
            + "\n"
            for block, name in lab_state.SECRET_BLOCKS.items()
        )
        fd = os.open(secrets_dir / "env", os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as fh:
            fh.write(env)
        return True

    def write_config(self, name: str, mutate: Callable[[dict[str, Any]], None]) -> Path:
        """A variant of the lab's dr.yaml (``mutate`` edits the mapping in place)."""
        data = yaml.safe_load(self.config_path.read_text())
        data = copy.deepcopy(data)
        mutate(data)
        path = self.root / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def lab_s3(self) -> Any:
        """The lab's S3 (moto), through the project's one client factory."""
        from dr.config import load_config
        from tasks.files.client import s3_client

        return s3_client(load_config(self.config_path).aws)

    def uploads_location(self) -> tuple[str, str]:
        """(bucket, prefix) of the lab application's uploads (its ``files:`` entry)."""
        from dr.config import load_config
        from tasks.files.client import split_s3_url

        target = load_config(self.config_path).target("lab")
        source = next(f for f in target.files if f.name == "uploads")
        assert source.s3 is not None
        return split_s3_url(source.s3)

    def primary_conn(self, dbname: str = "app") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.lab.primary.port, user="postgres", dbname=dbname,
            autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def heartbeat_age(self) -> float | None:
        with self.primary_conn() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM clock_timestamp() - max(ts))::float8 "
                "FROM public.dr_heartbeat WHERE writer = 'app'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def wait_app_writing(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            age = self.heartbeat_age()
            if age is not None and age < HEARTBEAT_FRESH_SECONDS:
                return True
            time.sleep(0.2)
        return False

    def rogue_roles(self) -> list[str]:
        with self.primary_conn("postgres") as conn:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'dr\\_intruder\\_%'"
            ).fetchall()
        return [r[0] for r in rows]

    def hba_blocks(self) -> list[str]:
        text = (self.lab.primary.data_dir / "pg_hba.conf").read_text()
        return [line for line in text.splitlines() if "reject" in line]


@pytest.fixture(scope="module")
def breach_lab(
    lab: lab_state.LabState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BreachLab]:
    """The lab with Prefect pointed at its server; left with the app writing afterwards."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    assert lab.prefect_api_url, "the lab runs without its Prefect server"
    app = typer.Typer()
    register_runs(app)
    register_evidence(app)
    with (
        pytest.MonkeyPatch.context() as mp,
        temporary_settings(
            updates={
                PREFECT_API_URL: lab.prefect_api_url,
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
            }
        ),
    ):
        mp.setenv("PREFECT_API_URL", lab.prefect_api_url)
        mp.delenv("DR_CONFIG", raising=False)
        env = BreachLab(
            lab=lab, runner=CliRunner(), app=app, root=tmp_path_factory.mktemp("breach")
        )
        try:
            yield env
        finally:
            env.sync_lab_secrets()
            if not env.wait_app_writing(15):
                up.heal(lab.base_dir)


# --------------------------------------------------------------------------- moto with auth


@dataclass(frozen=True)
class MotoAuth:
    """A moto server that checks signatures, with an administrator allowed everything."""

    endpoint: str
    admin_key_id: str
    admin_secret: str

    def client(self, service: str) -> Any:
        return boto3.Session(
            aws_access_key_id=self.admin_key_id,
            aws_secret_access_key=self.admin_secret,
            region_name=REGION,
        ).client(service, endpoint_url=self.endpoint, config=Config(retries={"max_attempts": 1}))


def _post(url: str, data: bytes) -> None:
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAuth]:
    """moto's server with authentication on: unknown keys and wrong secrets are refused."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.05)
        iam = boto3.Session(
            aws_access_key_id=BOOT_KEY, aws_secret_access_key=BOOT_SECRET, region_name=REGION
        ).client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="dr-admin")
        iam.put_user_policy(
            UserName="dr-admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL)
        )
        key = iam.create_access_key(UserName="dr-admin")["AccessKey"]
        _post(f"{endpoint}/moto-api/reset-auth", b"0")
        yield MotoAuth(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- kubernetes


class Kube:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a background event loop."""

    RESOURCES = {
        "apps/v1/deployments": ("Deployment", True),
        "v1/secrets": ("Secret", True),
        "v1/events": ("Event", True),
        "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
    }

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self.kubeconfig: Path | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-breach", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        import kmock

        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for key, (kind, namespaced) in self.RESOURCES.items():
                emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self, folder: Path) -> Kube:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        self.kubeconfig = folder / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
                    "users": [{"name": "drill", "user": {"token": "not-a-real-token"}}],
                    "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "drill"}}],
                    "current-context": "emu",
                }
            )
        )
        return self

    def stop(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    def seed(self, resource: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        body = {
            **body,
            "metadata": {"name": name, "namespace": namespace, **body.get("metadata", {})},
        }
        self._on_loop(lambda: self.emulator.objects.__setitem__((resource, namespace, name), body))

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                obj = self.emulator.objects[resource, namespace, name]
            except KeyError:
                return None
            return None if obj.deleted else dict(obj.raw)

        return self._on_loop(read)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    emulator = Kube().start(tmp_path_factory.mktemp("kube"))
    try:
        yield emulator
    finally:
        with contextlib.suppress(Exception):
            emulator.stop()
