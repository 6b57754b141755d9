"""Fixtures for the end-to-end tests: a real Prefect server, worker and alert receiver.

Everything runs on loopback, in processes the fixtures start and stop by their own PIDs:

- ``e2e_prefect``: the lab's Prefect server (the ``lab`` fixture starts one, with the
  Secret blocks its ``dr.yaml`` names); when the lab has none, a ``prefect server start``
  on a free port with SQLite in a temporary folder.
- ``e2e_config``: the lab's ``dr.yaml`` plus what these tests need: schedules that differ
  from the defaults (so a test can see they come from the config), alert routes and a
  bearer token (an environment variable of the receiver only).
- ``deployed``: ``dr deploy --no-deployments`` (variables and work pool), then a plain
  ``prefect --no-prompt deploy --all`` from the repository root, then ``dr deploy``; what
  each step left on the server is kept for the tests to check.
- ``worker``: ``prefect worker start --pool dr-process``, as the README said before issue 16.
- ``dr_worker``: ``dr worker --pool dr-process`` (the fast dispatcher; the README's worker).
- ``alert_receiver``: ``dr serve-alerts`` on a free port.
- ``backup_taken``: one backup of the lab through the ``backup/backup-hourly`` deployment
  (the verification drill needs one).

Every process gets its own ``PREFECT_HOME`` and no inherited ``PREFECT_*`` settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lab.pgcluster import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
POOL = "dr-process"
ALERT_TOKEN_ENV = "DR_E2E_ALERT_TOKEN"
#: Schedules different from dr.config.Schedules' defaults: the deployments must show these.
E2E_SCHEDULES = {
    "backup": "7 * * * *",
    "base_backup": "45 1 * * *",
    "backup_verification": "15 4 1 * *",
    "data_corruption": "20 4 2 * *",
    "region_failover": "25 5 3 1,4,7,10 *",
    "breach_response": "35 6 4 1,4,7,10 *",
    "timezone": "Europe/Berlin",
}
#: The route the 1,000-post burst goes to: dry runs on the incident deployment.
BURST_ROUTE = "e2e-burst"
#: The route of the documented Alertmanager example: the backup-verification drill.
DRILL_ROUTE = "backups-unverified"
ALERTNAME = "BackupsUnverified"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Service:
    """A background process with its own log file, stopped by its own process group."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches its children too
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, what: str, check: Any, timeout_seconds: float) -> float:
        """Poll ``check()`` until true; fail with the log when the process dies or time runs out."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                if check():
                    return time.monotonic() - started
            if not self.alive():
                pytest.fail(f"{self.name} exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.tail()}")  # fmt: skip
            if time.monotonic() - started > timeout_seconds:
                pytest.fail(f"{self.name}: no {what} after {timeout_seconds} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        # SIGINT, not SIGTERM: Prefect's worker turns SIGTERM into a SIGINT to itself that
        # was seen not to stop it; SIGINT (Ctrl-C) stops the worker, server and uvicorn.
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def clean_env(
    home: Path, api_url: str | None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a process we start: no inherited PREFECT_*, its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra or {})
    return env


class Api:
    """The Prefect REST API, called the way any HTTP client would (no Prefect settings here)."""

    def __init__(self, api_url: str) -> None:
        self.url = api_url
        self.http = httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30)

    def get(self, path: str) -> Any:
        resp = self.http.get(path)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def deployment(self, full_name: str) -> dict[str, Any]:
        return self.get(f"deployments/name/{full_name}")

    def create_run(
        self, full_name: str, parameters: dict[str, Any], **extra: Any
    ) -> httpx.Response:
        dep = self.deployment(full_name)
        return self.post(
            f"deployments/{dep['id']}/create_flow_run", {"parameters": parameters, **extra}
        )

    def runs(self, **flow_run_filter: Any) -> list[dict[str, Any]]:
        resp = self.post("flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 200})
        resp.raise_for_status()
        return resp.json()

    def runs_of(self, full_name: str, tags: list[str] | None = None) -> list[dict[str, Any]]:
        dep = self.deployment(full_name)
        body: dict[str, Any] = {"deployments": {"id": {"any_": [dep["id"]]}}, "limit": 200}
        if tags:
            body["flow_runs"] = {"tags": {"all_": tags}}
        resp = self.post("flow_runs/filter", body)
        resp.raise_for_status()
        return resp.json()

    def count_runs(self, tags: list[str]) -> int:
        resp = self.post("flow_runs/count", {"flow_runs": {"tags": {"all_": tags}}})
        resp.raise_for_status()
        return int(resp.json())

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        resp = self.post(
            "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        )
        resp.raise_for_status()
        return resp.json()

    def logs(self, flow_run_id: str, limit: int = 60) -> str:
        resp = self.post(
            "logs/filter",
            {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_DESC",
             "limit": limit},
        )  # fmt: skip
        if resp.status_code != 200:
            return ""
        return "\n".join(item["message"] for item in reversed(resp.json()))

    def wait_run(self, flow_run_id: str, timeout_seconds: float = 180) -> dict[str, Any]:
        """Poll a flow run until it is final; fail with its logs when it is not COMPLETED."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            run = self.get(f"flow_runs/{flow_run_id}")
            state = (run.get("state") or {}).get("type")
            if state in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {flow_run_id} still {state} after {timeout_seconds} s:\n"
                            f"{self.logs(flow_run_id)}")  # fmt: skip
            time.sleep(0.5)
        if state != "COMPLETED":
            pytest.fail(f"flow run {flow_run_id} ended {state}: "
                        f"{run['state'].get('message')}\n{self.logs(flow_run_id)}")  # fmt: skip
        return run

    def delete_run(self, flow_run_id: str) -> None:
        self.http.delete(f"flow_runs/{flow_run_id}").raise_for_status()


@dataclass
class PrefectUnderTest:
    api_url: str
    ui_url: str
    own: bool
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return Api(self.api_url)


@dataclass
class Deployed:
    """What each deploy step printed and left on the server."""

    config_path: Path
    config: dict[str, Any]
    seconds: dict[str, float]
    prepare_report: dict[str, Any]
    after_prefect_deploy: dict[str, dict[str, Any]]
    prefect_deploy_output: str
    report: dict[str, Any]


def run_cli(argv: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> tuple[str, float]:
    """Run a command to completion; fail with its output when it fails."""
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}")  # fmt: skip
    return proc.stdout, elapsed


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e_prefect(lab: Any, e2e_dir: Path) -> Iterator[PrefectUnderTest]:
    """The lab's Prefect server; or our own when the lab runs without one."""
    from lab import state as lab_state

    if lab.prefect_api_url:
        yield PrefectUnderTest(api_url=lab.prefect_api_url, ui_url=lab.prefect_ui_url, own=False)
        return
    home = e2e_dir / "server-home"
    home.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        home,
        None,
        {
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": f"{base}/api",
        },
    )
    server = Service(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        e2e_dir,
        e2e_dir,
    )
    try:
        server.wait_until(
            "health", lambda: httpx.get(f"{base}/api/health", timeout=2).status_code == 200, 90
        )
        # The lab's dr.yaml names environment variables for its secrets in this case.
        yield PrefectUnderTest(
            api_url=f"{base}/api", ui_url=base, own=True, extra_env=lab_state.lab_env(lab)
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def alert_token() -> str:
    return "e2e-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def e2e_config(lab: Any, e2e_prefect: PrefectUnderTest, e2e_dir: Path) -> Path:
    """The lab's dr.yaml with test schedules, alert routes and this server's URLs."""
    data = yaml.safe_load(Path(lab.config_path).read_text())
    data["schedules"] = dict(E2E_SCHEDULES)
    data["prefect_api_url"] = e2e_prefect.api_url
    data["prefect_ui_url"] = e2e_prefect.ui_url
    data["alerts"] = {
        "bearer_token": {"env": ALERT_TOKEN_ENV},
        "routes": [
            {"name": BURST_ROUTE, "match": {"alertname": ALERTNAME, "e2e": "burst"},
             "scenario": "backup-verification", "target": "lab", "mode": "dry-run"},
            {"name": DRILL_ROUTE, "match": {"alertname": ALERTNAME},
             "scenario": "backup-verification", "target": "lab", "mode": "drill",
             "auto_approve": True},
        ],
    }  # fmt: skip
    path = e2e_dir / "dr.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def deployed(e2e_prefect: PrefectUnderTest, e2e_config: Path, e2e_dir: Path) -> Deployed:
    """Variables + pool, then ``prefect deploy --all``, then ``dr deploy``."""
    home = e2e_dir / "cli-home"
    home.mkdir(exist_ok=True)
    env = clean_env(home, e2e_prefect.api_url, e2e_prefect.extra_env)
    api = e2e_prefect.api
    seconds: dict[str, float] = {}
    out, seconds["dr deploy --no-deployments"] = run_cli(
        [str(BIN / "dr"), "deploy", "--config", str(e2e_config), "--no-deployments", "--json"], env
    )
    prepare = json.loads(out)
    out, seconds["prefect deploy --all"] = run_cli(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, cwd=REPO_ROOT
    )
    names = [
        "backup/backup-hourly",
        "backup-verification/backup-verification-drill",
        "backup-verification/backup-verification-incident",
    ]
    after_prefect = {name: api.deployment(name) for name in names}
    report_text, seconds["dr deploy"] = run_cli(
        [str(BIN / "dr"), "deploy", "--config", str(e2e_config), "--json"], env
    )
    return Deployed(
        config_path=e2e_config,
        config=yaml.safe_load(e2e_config.read_text()),
        seconds=seconds,
        prepare_report=prepare,
        after_prefect_deploy=after_prefect,
        prefect_deploy_output=out,
        report=json.loads(report_text),
    )


@pytest.fixture(scope="session")
def worker(e2e_prefect: PrefectUnderTest, deployed: Deployed, e2e_dir: Path) -> Iterator[Service]:
    """``prefect worker start --pool dr-process``, polling every second."""
    home = e2e_dir / "worker-home"
    home.mkdir(exist_ok=True)
    env = clean_env(
        home, e2e_prefect.api_url, {**e2e_prefect.extra_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    )
    svc = Service(
        "worker",
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", "e2e-worker"],
        env,
        e2e_dir,
        REPO_ROOT,
    )
    api = e2e_prefect.api

    def online() -> bool:
        resp = api.post(f"work_pools/{POOL}/workers/filter", {"limit": 50, "offset": 0})
        return any(w["name"] == "e2e-worker" for w in resp.json())

    try:
        svc.wait_until("registration with the work pool", online, 60)
        yield svc
    finally:
        svc.stop()


#: The name ``dr_worker`` registers under (the runs' logs name the worker that took them).
DR_WORKER_NAME = "e2e-dr-worker"


@pytest.fixture(scope="session")
def dr_worker(
    e2e_prefect: PrefectUnderTest, deployed: Deployed, e2e_dir: Path
) -> Iterator[Service]:
    """``dr worker --pool dr-process``: fast polling, runs forked from a warm interpreter."""
    home = e2e_dir / "dr-worker-home"
    home.mkdir(exist_ok=True)
    env = clean_env(home, e2e_prefect.api_url, e2e_prefect.extra_env)
    svc = Service(
        "dr-worker",
        [str(BIN / "dr"), "worker", "--pool", POOL, "--name", DR_WORKER_NAME],
        env,
        e2e_dir,
        REPO_ROOT,
    )
    api = e2e_prefect.api

    def online() -> bool:
        resp = api.post(f"work_pools/{POOL}/workers/filter", {"limit": 50, "offset": 0})
        return any(w["name"] == DR_WORKER_NAME and w["status"] == "ONLINE" for w in resp.json())

    try:
        svc.wait_until("registration with the work pool", online, 90)
        yield svc
    finally:
        svc.stop()


@dataclass
class Receiver:
    url: str
    token: str
    service: Service


@pytest.fixture(scope="session")
def alert_receiver(
    e2e_prefect: PrefectUnderTest,
    deployed: Deployed,
    e2e_config: Path,
    alert_token: str,
    e2e_dir: Path,
) -> Iterator[Receiver]:
    """``dr serve-alerts`` on a free loopback port."""
    home = e2e_dir / "receiver-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    env = clean_env(
        home, e2e_prefect.api_url, {**e2e_prefect.extra_env, ALERT_TOKEN_ENV: alert_token}
    )
    svc = Service(
        "alert-receiver",
        [str(BIN / "dr"), "serve-alerts", "--config", str(e2e_config), "--port", str(port)],
        env,
        e2e_dir,
        REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        svc.wait_until(
            "/healthz", lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 60
        )
        yield Receiver(url=url, token=alert_token, service=svc)
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def backup_taken(e2e_prefect: PrefectUnderTest, worker: Service) -> dict[str, Any]:
    """A logical backup of the lab, run by the worker from the backup-hourly deployment."""
    api = e2e_prefect.api
    resp = api.create_run("backup/backup-hourly", {"target": "lab"}, tags=["e2e"])
    assert resp.status_code == 201, resp.text
    started = time.monotonic()
    run = api.wait_run(resp.json()["id"], timeout_seconds=180)
    run["e2e_seconds"] = round(time.monotonic() - started, 1)
    return run


@dataclass(frozen=True)
class Support:
    """Constants and helpers for the test modules (conftest modules are not importable)."""

    alertname: str = ALERTNAME
    burst_route: str = BURST_ROUTE
    drill_route: str = DRILL_ROUTE
    schedules: dict[str, str] = field(default_factory=lambda: dict(E2E_SCHEDULES))
    pool: str = POOL
    dr_worker_name: str = DR_WORKER_NAME
    bin_dir: Path = BIN
    repo_root: Path = REPO_ROOT

    @staticmethod
    def run_cli(argv: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> tuple[str, float]:
        return run_cli(argv, env, cwd)

    @staticmethod
    def clean_env(
        home: Path, api_url: str | None, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        return clean_env(home, api_url, extra)


@pytest.fixture(scope="session")
def e2e() -> Support:
    return Support()
