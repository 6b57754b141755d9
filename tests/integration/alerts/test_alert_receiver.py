"""The alert receiver against a real Prefect API and real deployments.

Stand-in scenario flows (named like the real ones, typed like them) are deployed to a
process work pool; no worker runs them: what is checked here is which flow runs the
receiver creates, with which parameters and keys, and which it refuses to create.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect import flow
from pydantic import BaseModel

from deployments.alerts import create_app
from dr.config import DRConfig, Mode

# ~18 s on an idle machine (Prefect harness ~10 s), ~55 s with load average 11.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "integration-alert-token"
POOL = "dr-alerts-test-pool"


class RunOptions(BaseModel):
    severity: str = "SEV2"
    auto_approve: bool = False
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] = {}
    alert_starts_at: str | None = None


def scenario_stub(target: str, mode: Mode = Mode.drill, options: RunOptions | None = None):
    """Stands in for a scenario flow: same name, same typed parameters, does nothing."""
    return {"target": target, "mode": mode.value}


FLOWS = {
    name: flow(name=name)(scenario_stub)
    for name in ("region-failover", "data-corruption", "backup-verification")
}

ROUTES = [
    {
        "name": "primary-down",
        "match": {"alertname": "PostgresPrimaryDown"},
        "scenario": "region-failover",
        "target": "orders",
        "mode": "incident",
        "auto_approve": False,
        "rate_limit_per_minute": 600,
    },
    {
        "name": "corruption",
        "match": {"alertname": "ChecksumFailure"},
        "scenario": "data-corruption",
        "target": "orders",
        "mode": "incident",
        "auto_approve": True,
        "rate_limit_per_minute": 600,
    },
    {
        "name": "stale-backup",
        "match": {"alertname": "BackupStale"},
        "scenario": "backup-verification",
        "target": "orders",
        "mode": "drill",
        "rate_limit_per_minute": 3,
    },
]

DEPLOYMENTS = {
    "primary-down": ("region-failover", "region-failover-incident"),
    "corruption": ("data-corruption", "data-corruption-incident"),
    "stale-backup": ("backup-verification", "backup-verification-drill"),
}


def alertmanager_payload(alertname: str, fingerprint: str, status: str = "firing") -> dict:
    """Alertmanager's documented version 4 webhook body, for one alert."""
    labels = {"alertname": alertname, "target": "orders", "severity": "critical"}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "dr-pipelines",
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": {"summary": f"{alertname} on orders"},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": f"{alertname} on orders"},
                "startsAt": "2024-05-01T10:00:00.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


@pytest.fixture(scope="module")
def deployment_ids(prefect_api: str) -> dict[str, UUID]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    ids = {}
    for route, (flow_name, deployment_name) in DEPLOYMENTS.items():
        deployment = FLOWS[flow_name].to_deployment(name=deployment_name, work_pool_name=POOL)
        ids[route] = deployment.apply()
    return ids


@pytest.fixture(scope="module")
def dr_config(prefect_api: str) -> Iterator[DRConfig]:
    mp = pytest.MonkeyPatch()
    mp.setenv("DR_IT_ALERT_TOKEN", TOKEN)
    yield DRConfig.model_validate(
        {
            "targets": {
                "orders": {
                    "postgres": {
                        "primary": {"name": "pg1", "host": "127.0.0.1"},
                        "databases": ["orders"],
                    },
                    "backup": {"repository": "file:///tmp/dr-it-backups"},
                    "drills_allowed": True,
                }
            },
            "alerts": {"bearer_token": {"env": "DR_IT_ALERT_TOKEN"}, "routes": ROUTES},
            "prefect_api_url": prefect_api,
        }
    )
    mp.undo()


@pytest.fixture(scope="module")
def receiver_url(
    dr_config: DRConfig, deployment_ids: dict[str, UUID], live_server: Any
) -> Iterator[str]:
    with live_server(create_app(dr_config)) as server:
        yield server.url


def count_runs(deployment_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        # limit and sort given explicitly: with FastAPI >= 0.148 the server answers 422 to
        # the nulls Prefect 3.8's client sends for them by default.
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.ID_DESC,
            limit=200,
        )


def read_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


def complete(flow_run_id: UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Completed(), force=True)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_alertmanager_post_starts_one_run_with_parameters(
    receiver_url: str, deployment_ids: dict[str, UUID], dr_config: DRConfig
) -> None:
    payload = alertmanager_payload("PostgresPrimaryDown", "a1b2c3d4e5f60718")
    response = httpx.post(f"{receiver_url}/alerts/alertmanager", json=payload, headers=AUTH)
    assert response.status_code == 201, response.text
    [run] = response.json()["runs"]
    assert (run["route"], run["scenario"], run["target"], run["mode"]) == (
        "primary-down",
        "region-failover",
        "orders",
        "incident",
    )
    assert run["flow_run_url"].endswith(f"/runs/flow-run/{run['flow_run_id']}")

    flow_run = read_run(run["flow_run_id"])
    assert flow_run.deployment_id == deployment_ids["primary-down"]
    assert flow_run.idempotency_key == "primary-down:a1b2c3d4e5f60718:20240501T100000.123456Z"
    assert flow_run.parameters == {
        "target": "orders",
        "mode": "incident",
        "options": {
            "severity": "SEV1",  # the label "critical", mapped by alerts.severity_map
            "auto_approve": False,
            "alert_fingerprint": "a1b2c3d4e5f60718",
            "alert_labels": {
                "alertname": "PostgresPrimaryDown",
                "severity": "critical",
                "target": "orders",
            },
            "alert_starts_at": "2024-05-01T10:00:00.123456+00:00",
        },
    }
    assert {"dr", "alert", "route:primary-down", "alert-source:alertmanager"} <= set(flow_run.tags)
    assert flow_run.state.type.value == "SCHEDULED"

    again = httpx.post(f"{receiver_url}/alerts/alertmanager", json=payload, headers=AUTH)
    assert again.status_code == 200
    assert again.json()["runs"][0] | {"deduplicated": False} == run
    assert again.json()["runs"][0]["deduplicated"] is True

    # A second receiver (say, after a restart) has an empty cache: Prefect's idempotency
    # key still answers with the same run, and the receiver says it was a duplicate.
    with TestClient(create_app(dr_config)) as other:
        third = other.post("/alerts/alertmanager", json=payload, headers=AUTH)
    assert third.status_code == 200, third.text
    assert third.json()["runs"][0]["flow_run_id"] == run["flow_run_id"]
    assert third.json()["runs"][0]["deduplicated"] is True
    assert len(count_runs(deployment_ids["primary-down"])) == 1


def test_thousand_posts_of_ten_fingerprints_make_one_run_the_others_attach_to(
    receiver_url: str, deployment_ids: dict[str, UUID]
) -> None:
    fingerprints = [f"{i:016x}" for i in range(10)]
    bodies = [alertmanager_payload("ChecksumFailure", fingerprints[i % 10]) for i in range(1000)]

    async def post_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=25)
        async with httpx.AsyncClient(
            base_url=receiver_url, headers=AUTH, limits=limits, timeout=30
        ) as c:
            gate = asyncio.Semaphore(25)

            async def post(body: dict) -> httpx.Response:
                async with gate:
                    return await c.post("/alerts/alertmanager", json=body)

            return await asyncio.gather(*(post(b) for b in bodies))

    responses = asyncio.run(post_all())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 201}, {c for c in codes if c not in (200, 201)}
    # One target, one scenario: the first alert starts the run, the nine others attach.
    assert codes.count(201) == 1
    run_ids = {r.json()["runs"][0]["flow_run_id"] for r in responses}
    assert len(run_ids) == 1

    [flow_run] = count_runs(deployment_ids["corruption"])
    assert {str(flow_run.id)} == run_ids
    assert flow_run.parameters["options"]["auto_approve"] is True
    starter = flow_run.parameters["options"]["alert_fingerprint"]
    attached = {t.removeprefix("attached-alert:") for t in flow_run.tags if ":" in t}
    attached = {t for t in attached if t in fingerprints}
    assert attached | {starter} == set(fingerprints) and starter not in attached


def test_unauthenticated_malformed_resolved_and_unrouted_start_nothing(
    receiver_url: str, deployment_ids: dict[str, UUID]
) -> None:
    before = len(count_runs(deployment_ids["primary-down"]))
    url = f"{receiver_url}/alerts/alertmanager"
    payload = alertmanager_payload("PostgresPrimaryDown", "ffffffff00000001")

    assert httpx.post(url, json=payload).status_code == 401
    wrong = httpx.post(url, json=payload, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401

    malformed = copy.deepcopy(payload)
    malformed["alerts"][0]["startsAt"] = "yesterday"
    response = httpx.post(url, json=malformed, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["alerts", 0, "startsAt"]
    not_json = httpx.post(url, content=b"{", headers=AUTH | {"Content-Type": "application/json"})
    assert not_json.status_code == 422

    resolved = alertmanager_payload("PostgresPrimaryDown", "ffffffff00000001", "resolved")
    response = httpx.post(url, json=resolved, headers=AUTH)
    assert response.status_code == 202
    assert response.json()["resolved"][0]["action"] == "no run to cancel"

    unrouted = alertmanager_payload("DiskAlmostFull", "ffffffff00000002")
    response = httpx.post(url, json=unrouted, headers=AUTH)
    assert response.status_code == 202
    assert response.json()["ignored"][0]["reason"] == "no route"

    assert len(count_runs(deployment_ids["primary-down"])) == before


def test_rate_limit_answers_429_with_retry_after(
    receiver_url: str, deployment_ids: dict[str, UUID]
) -> None:
    url = f"{receiver_url}/alerts/alertmanager"
    codes = []
    for i in range(4):
        body = alertmanager_payload("BackupStale", f"b{i:015x}")
        codes.append(httpx.post(url, json=body, headers=AUTH))
        # Finished runs take no new alerts: each alert starts its own run.
        for flow_run in count_runs(deployment_ids["stale-backup"]):
            complete(flow_run.id)
    assert [r.status_code for r in codes] == [201, 201, 201, 429]
    # 3 per minute: one token every 20 s.
    assert 1 <= int(codes[3].headers["Retry-After"]) <= 20
    assert codes[3].json()["rate_limited"] == [
        {
            "fingerprint": f"b{3:015x}",
            "route": "stale-backup",
            "retry_after_seconds": int(codes[3].headers["Retry-After"]),
        }
    ]
    # A repeat of an alert that already has its run is answered, limit or not.
    repeat = httpx.post(url, json=alertmanager_payload("BackupStale", f"b{0:015x}"), headers=AUTH)
    assert repeat.status_code == 200
    assert len(count_runs(deployment_ids["stale-backup"])) == 3
