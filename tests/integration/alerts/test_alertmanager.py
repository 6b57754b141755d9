"""A real Alertmanager (Debian's ``prometheus-alertmanager``) against ``dr serve-alerts``.

Alertmanager runs on loopback with its webhook pointed at the receiver; alerts are posted
to its API the way Prometheus does. It fires, repeats (``repeat_interval`` 2 s) and
resolves: one run per fingerprint, a second alert for the same target attaches to that
run, and the resolution cancels the run (no worker takes it: it never began).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow
from pydantic import BaseModel

from deployments.alerts.app import create_app
from deployments.alerts.runs import ATTACHED_TAG
from dr.config import DRConfig, Mode

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "alertmanager-test-token"
POOL = "dr-alertmanager-test-pool"
ALERTMANAGER = "prometheus-alertmanager"


class RunOptions(BaseModel):
    severity: str = "SEV2"
    auto_approve: bool = False
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] = {}
    alert_starts_at: str | None = None


@flow(name="region-failover")
def region_failover_stub(target: str, mode: Mode = Mode.drill, options: RunOptions | None = None):
    """Stands in for the scenario flow (same name and parameters); no worker runs it."""
    return {"target": target}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def deployment_id(prefect_api: str) -> UUID:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    deployment = region_failover_stub.to_deployment(
        name="region-failover-incident", work_pool_name=POOL
    )
    return deployment.apply()


@pytest.fixture(scope="module")
def receiver_url(prefect_api: str, deployment_id: UUID, live_server: Any) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("DR_IT_AM_TOKEN", TOKEN)
    # The receiver's decisions, in the test's captured log when it fails.
    mp.setattr(logging.getLogger("deployments.alerts"), "level", logging.INFO)
    config = DRConfig.model_validate(
        {
            "targets": {
                "orders": {
                    "postgres": {
                        "primary": {"name": "pg1", "host": "127.0.0.1"},
                        "databases": ["orders"],
                    },
                    "backup": {"repository": "file:///tmp/dr-it-backups"},
                }
            },
            "alerts": {
                "bearer_token": {"env": "DR_IT_AM_TOKEN"},
                "routes": [
                    {
                        "name": "primary-down",
                        "match": {"alertname": "PostgresPrimaryDown"},
                        "scenario": "region-failover",
                        "target": "orders",
                        "mode": "incident",
                    }
                ],
            },
            "prefect_api_url": prefect_api,
        }
    )
    with live_server(create_app(config)) as server:
        yield server.url
    mp.undo()


@pytest.fixture(scope="module")
def alertmanager(receiver_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Alertmanager on a loopback port, its webhook pointed at the receiver."""
    binary = shutil.which(ALERTMANAGER)
    if binary is None:
        pytest.fail(f"{ALERTMANAGER} is not installed: run scripts/setup.sh")
    folder = tmp_path_factory.mktemp("alertmanager")
    (folder / "token").write_text(TOKEN)
    (folder / "token").chmod(0o600)
    (folder / "alertmanager.yml").write_text(
        f"""
route:
  receiver: dr
  group_by: [instance]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: dr
    webhook_configs:
      - url: {receiver_url}/alerts/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {folder / "token"}
"""
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: _ready(url), 30, "Alertmanager ready", proc, folder)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(
    check: Callable[[], Any],
    seconds: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    folder: Path | None = None,
) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    detail = (folder / "alertmanager.log").read_text()[-2000:] if folder else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def _post_alert(url: str, instance: str, starts: datetime, ends: datetime) -> None:
    alert = {
        "labels": {"alertname": "PostgresPrimaryDown", "instance": instance, "severity": "SEV1"},
        "annotations": {"summary": f"primary down seen from {instance}"},
        "startsAt": starts.isoformat(),
        "endsAt": ends.isoformat(),
    }
    httpx.post(f"{url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def _runs(deployment_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.ID_DESC,
            limit=50,
        )


def test_fire_repeat_attach_and_resolve(alertmanager: str, deployment_id: UUID) -> None:
    starts = datetime.now(UTC) - timedelta(seconds=5)
    firing_until = starts + timedelta(minutes=10)
    _post_alert(alertmanager, "pg-a", starts, firing_until)
    [run] = _wait(lambda: _runs(deployment_id), 30, "the alert's flow run")
    options = run.parameters["options"]
    fingerprint_a = options["alert_fingerprint"]
    assert options["alert_labels"]["instance"] == "pg-a"
    assert datetime.fromisoformat(options["alert_starts_at"]) == starts

    # Repeats (every 2 s, and Prometheus-style re-posts) are answered with the same run.
    for _ in range(3):
        time.sleep(2)
        _post_alert(alertmanager, "pg-a", starts, firing_until)
    assert [r.id for r in _runs(deployment_id)] == [run.id]

    # A second alert for the same target attaches to the run instead of starting one.
    _post_alert(alertmanager, "pg-b", starts, firing_until)

    def attached() -> list[str]:
        [current] = _runs(deployment_id)
        return [t for t in current.tags if t.startswith(ATTACHED_TAG)]

    [tag] = _wait(attached, 30, "the second alert attached to the run")
    assert tag != f"{ATTACHED_TAG}{fingerprint_a}"
    time.sleep(3)  # its repeats too
    assert [r.id for r in _runs(deployment_id)] == [run.id]

    # Both resolve: the run, which never began (no worker), is cancelled.
    now = datetime.now(UTC)
    _post_alert(alertmanager, "pg-a", starts, now)
    _post_alert(alertmanager, "pg-b", starts, now)

    def cancelled() -> Any:
        [current] = _runs(deployment_id)
        return current if current.state.type.value == "CANCELLED" else None

    done = _wait(cancelled, 60, "the resolved alerts' run cancelled")
    assert "resolved before the run began" in (done.state.message or "")
    assert len(_runs(deployment_id)) == 1
