"""The alert lifecycle (issue 14): attach to the target's run, cancel on resolve, startsAt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.alerts.app import create_app
from deployments.alerts.payloads import parse_payload
from deployments.alerts.receiver import AlertReceiver
from deployments.alerts.runs import ATTACHED_TAG
from tests.unit.test_alert_payloads import (
    HEADERS,
    ROUTES,
    FakePrefect,
    am_payload,
    body_of,
    make_config,
)


@pytest.fixture
def fake() -> FakePrefect:
    return FakePrefect(["region-failover/region-failover-incident"])


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, fake: FakePrefect) -> Any:
    app = create_app(make_config(monkeypatch, ROUTES), prefect_client_factory=lambda: fake)
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, fingerprint: str, status: str = "firing") -> Any:
    return client.post(
        "/alerts/alertmanager", json=am_payload(fingerprint, status=status), headers=HEADERS
    )


def test_second_alert_for_the_target_attaches_to_its_run(
    client: TestClient, fake: FakePrefect
) -> None:
    first = post(client, "pg-a").json()["runs"][0]
    second = post(client, "pg-b")
    assert second.status_code == 200
    [run] = second.json()["runs"]
    assert run["flow_run_id"] == first["flow_run_id"]
    assert (run["attached"], run["deduplicated"]) == (True, False)
    assert len(fake.calls) == 1
    [flow_run] = fake.runs.values()
    assert f"{ATTACHED_TAG}pg-b" in flow_run.tags
    # Its repeats answer the same run, without tagging it twice.
    again = post(client, "pg-b").json()["runs"][0]
    assert again["flow_run_id"] == first["flow_run_id"]
    assert flow_run.tags.count(f"{ATTACHED_TAG}pg-b") == 1


def test_two_alerts_in_one_notification_start_one_run(
    client: TestClient, fake: FakePrefect
) -> None:
    payload = am_payload("pg-a")
    other = dict(payload["alerts"][0], fingerprint="pg-b")
    payload["alerts"].append(other)
    runs = client.post("/alerts/alertmanager", json=payload, headers=HEADERS).json()["runs"]
    assert len({r["flow_run_id"] for r in runs}) == 1
    assert [r["attached"] for r in runs] == [False, True]
    assert len(fake.calls) == 1


def test_finished_run_does_not_take_new_alerts(client: TestClient, fake: FakePrefect) -> None:
    post(client, "pg-a")
    for flow_run in fake.runs.values():
        flow_run.state_type = "COMPLETED"
    assert post(client, "pg-b").status_code == 201
    assert len(fake.calls) == 2


def test_resolve_cancels_the_run_that_has_not_begun(client: TestClient, fake: FakePrefect) -> None:
    run_id = post(client, "pg-a").json()["runs"][0]["flow_run_id"]
    resolved = post(client, "pg-a", status="resolved")
    assert resolved.status_code == 200
    [answer] = resolved.json()["resolved"]
    assert answer | {"state": None} == {
        "fingerprint": "pg-a",
        "route": "primary-down",
        "flow_run_id": run_id,
        "state": None,
        "action": "cancelled",
    }
    assert answer["state"] == "SCHEDULED"
    [flow_run] = fake.runs.values()
    assert flow_run.state_type == "CANCELLED"
    assert "pg-a resolved" in flow_run.state_message


def test_resolve_leaves_a_running_run_and_says_so_in_slack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakePrefect(["region-failover/region-failover-incident"])
    said: list[tuple[str, str]] = []

    async def notify(target: str, text: str) -> None:
        said.append((target, text))

    config = make_config(monkeypatch, ROUTES)

    async def scenario() -> Any:
        receiver = AlertReceiver(config.alerts.routes, fake, "http://ui", notify=notify)
        [alert] = parse_payload("alertmanager", body_of(am_payload("pg-a")))
        await receiver.receive([alert])
        for flow_run in fake.runs.values():
            flow_run.state_type = "RUNNING"
        [resolved] = parse_payload("alertmanager", body_of(am_payload("pg-a", status="resolved")))
        return await receiver.receive([resolved])

    outcome = asyncio.run(scenario())
    [answer] = outcome.resolved
    assert (answer["state"], answer["action"]) == ("RUNNING", "left to finish")
    assert outcome.status_code == 200
    [flow_run] = fake.runs.values()
    assert flow_run.state_type == "RUNNING"
    [(target, text)] = said
    assert target == "orders"
    assert "left to finish" in text and str(flow_run.id) in text


def test_resolve_of_an_attached_alert_cancels_nothing(
    client: TestClient, fake: FakePrefect
) -> None:
    run_id = post(client, "pg-a").json()["runs"][0]["flow_run_id"]
    post(client, "pg-b")
    [answer] = post(client, "pg-b", status="resolved").json()["resolved"]
    assert answer["flow_run_id"] == run_id
    assert answer["action"] == "left to the run it attached to"
    [flow_run] = fake.runs.values()
    assert flow_run.state_type == "SCHEDULED"


def test_alert_started_run_records_starts_at(client: TestClient, fake: FakePrefect) -> None:
    post(client, "pg-a")
    [call] = fake.calls
    assert call["parameters"]["options"]["alert_starts_at"] == "2024-05-01T08:00:00.123456+00:00"


def test_lifecycle_counts_an_alert_run_from_its_starts_at() -> None:
    from flows.lifecycle.run import _declared_at

    moment = _declared_at({"alert_starts_at": "2024-05-01T08:00:00+00:00"})
    assert moment.isoformat() == "2024-05-01T08:00:00+00:00"
    given = _declared_at(
        {"declared_at": "2024-05-01T09:00:00+00:00", "alert_starts_at": "2024-05-01T08:00:00Z"}
    )
    assert given.hour == 9


def test_a_run_is_cancelled_once_every_alert_it_serves_resolved(
    client: TestClient, fake: FakePrefect
) -> None:
    run_id = post(client, "pg-a").json()["runs"][0]["flow_run_id"]
    post(client, "pg-b")
    [first] = post(client, "pg-a", status="resolved").json()["resolved"]
    assert first["flow_run_id"] == run_id
    assert first["action"] == "left: alerts attached to it still fire (pg-b)"
    [flow_run] = fake.runs.values()
    assert flow_run.state_type == "SCHEDULED"
    [last] = post(client, "pg-b", status="resolved").json()["resolved"]
    assert (last["flow_run_id"], last["action"]) == (run_id, "cancelled")
    assert flow_run.state_type == "CANCELLED"
