"""Alert payloads, routing, signatures and the receiver's decisions (no network).

The receiver is exercised in memory through FastAPI's TestClient with a stand-in for the
Prefect client that records what it was asked to start.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cli.alerts import register
from deployments.alerts import TokenBucket, create_app, deployment_for, ui_url_from_api
from deployments.alerts.auth import (
    sign_body,
    verify_hmac_sha256,
    verify_pagerduty_signature,
    verify_request,
)
from deployments.alerts.payloads import (
    DEFAULT_SEVERITY,
    IncomingAlert,
    label_fingerprint,
    parse_payload,
)
from deployments.alerts.routing import idempotency_key, match_route
from dr.config import AlertRoute, DRConfig, Mode, Scenario
from dr.errors import ConfigError

TOKEN = "unit-test-token-123"
SECRET = "unit-test-hmac-secret"

# The webhook body as Alertmanager's documentation describes it
# (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config), filled in.
ALERTMANAGER_DOC_EXAMPLE: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="PostgresPrimaryDown"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "dr-pipelines",
    "groupLabels": {"alertname": "PostgresPrimaryDown"},
    "commonLabels": {"alertname": "PostgresPrimaryDown", "target": "orders"},
    "commonAnnotations": {"summary": "orders primary unreachable"},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "PostgresPrimaryDown",
                "target": "orders",
                "severity": "critical",
                "instance": "db1:5432",
            },
            "annotations": {"summary": "orders primary unreachable"},
            "startsAt": "2024-05-01T10:00:00.123456789+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up%3D%3D0",
            "fingerprint": "5b2c1f0e9a7d4c3b",
        }
    ],
}

# Grafana's documented webhook body (unified alerting), shortened to one firing and one
# resolved alert.
GRAFANA_EXAMPLE: dict[str, Any] = {
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {"summary": "This alert was triggered for zone us-1"},
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
        {
            "status": "resolved",
            "labels": {"alertname": "High CPU usage", "team": "blue", "zone": "eu-1"},
            "annotations": {},
            "startsAt": "2021-10-12T09:56:03.157076+02:00",
            "endsAt": "2021-10-12T10:01:03.157076+02:00",
            "generatorURL": "https://play.grafana.org/alerting/d1rdpdv7k/edit",
            "fingerprint": "bc97ff14869b13e3",
            "values": {"B": 44.23943737541908, "C": 1},
        },
    ],
    "groupLabels": {},
    "commonLabels": {"team": "blue"},
    "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": '{}:{alertname="High memory usage"}',
    "truncatedAlerts": 0,
    "title": "[FIRING:1, RESOLVED:1]  (blue)",
    "state": "alerting",
    "message": "**Firing**\n\nLabels:\n - alertname = High memory usage\n",
}

# A PagerDuty V3 webhook as its documentation shows one (fields we do not read kept).
PAGERDUTY_TRIGGERED: dict[str, Any] = {
    "event": {
        "id": "01DEN3M9Y2ZQKQ7ZS8SNHC1M3B",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2020-10-02T18:45:22.169Z",
        "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
        "client": None,
        "data": {
            "id": "PGR0VU2",
            "type": "incident",
            "self": "https://api.pagerduty.com/incidents/PGR0VU2",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
            "number": 2,
            "status": "triggered",
            "incident_key": "d3640fbd41094207a1c11e58e46b1662",
            "created_at": "2020-04-09T15:16:27Z",
            "title": "orders database down",
            "service": {"id": "PF9KMXH", "summary": "orders-db", "type": "service_reference"},
            "assignees": [{"id": "PTUXL6G", "summary": "User 123", "type": "user_reference"}],
            "escalation_policy": {"id": "PUS0KTE", "summary": "Default"},
            "teams": [],
            "priority": {"id": "PSO75BM", "summary": "P1", "type": "priority_reference"},
            "urgency": "high",
            "conference_bridge": None,
            "resolve_reason": None,
        },
    }
}


def body_of(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def route(name: str, scenario: str, target: str = "orders", **kw: Any) -> AlertRoute:
    return AlertRoute(name=name, scenario=Scenario(scenario), target=target, **kw)


# --------------------------------------------------------------------------- parsing


def test_alertmanager_documented_example_parses() -> None:
    [alert] = parse_payload("alertmanager", body_of(ALERTMANAGER_DOC_EXAMPLE))
    assert alert.source == "alertmanager"
    assert alert.fingerprint == "5b2c1f0e9a7d4c3b"
    assert alert.firing
    assert alert.labels["alertname"] == "PostgresPrimaryDown"
    assert alert.severity == "critical"
    assert alert.summary == "orders primary unreachable"
    # Go's nanosecond timestamps are accepted; the episode is the start in UTC.
    assert alert.episode == "20240501T080000.123456Z"


def test_alertmanager_without_fingerprint_uses_sha256_of_sorted_labels() -> None:
    data = copy.deepcopy(ALERTMANAGER_DOC_EXAMPLE)
    del data["alerts"][0]["fingerprint"]
    [alert] = parse_payload("alertmanager", body_of(data))
    labels = data["alerts"][0]["labels"]
    expected = hashlib.sha256(
        "\n".join(f"{k}={labels[k]}" for k in sorted(labels)).encode()
    ).hexdigest()
    assert alert.fingerprint == expected
    assert label_fingerprint(dict(reversed(list(labels.items())))) == expected


def test_alertmanager_without_severity_gets_default() -> None:
    data = copy.deepcopy(ALERTMANAGER_DOC_EXAMPLE)
    del data["alerts"][0]["labels"]["severity"]
    [alert] = parse_payload("alertmanager", body_of(data))
    assert alert.severity == DEFAULT_SEVERITY


def test_alertmanager_unknown_fields_are_ignored() -> None:
    data = copy.deepcopy(ALERTMANAGER_DOC_EXAMPLE)
    data["someFutureField"] = {"x": 1}
    data["alerts"][0]["anotherOne"] = True
    assert len(parse_payload("alertmanager", body_of(data))) == 1


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.__setitem__("version", "3"), ("version",)),
        (lambda d: d.pop("alerts"), ("alerts",)),
        (lambda d: d["alerts"][0].__setitem__("status", "burning"), ("alerts", 0, "status")),
        (lambda d: d["alerts"][0].pop("startsAt"), ("alerts", 0, "startsAt")),
        (lambda d: d["alerts"][0]["labels"].__setitem__("n", 5), ("alerts", 0, "labels", "n")),
    ],
)
def test_alertmanager_malformed_payload_names_the_problem(mutate: Any, where: tuple) -> None:
    data = copy.deepcopy(ALERTMANAGER_DOC_EXAMPLE)
    mutate(data)
    with pytest.raises(ValidationError) as exc_info:
        parse_payload("alertmanager", body_of(data))
    assert where in [err["loc"] for err in exc_info.value.errors()]


def test_not_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as exc_info:
        parse_payload("alertmanager", b"{not json")
    assert exc_info.value.errors()[0]["type"] == "json_invalid"


def test_grafana_example_parses_firing_and_resolved() -> None:
    firing, resolved = parse_payload("grafana", body_of(GRAFANA_EXAMPLE))
    assert (firing.source, firing.fingerprint, firing.firing) == (
        "grafana",
        "c6eadffa33fcdf37",
        True,
    )
    assert firing.labels == {"alertname": "High memory usage", "team": "blue", "zone": "us-1"}
    assert firing.episode == "20211012T075103.157076Z"
    assert (resolved.fingerprint, resolved.firing) == ("bc97ff14869b13e3", False)


def test_pagerduty_trigger_uses_incident_id_and_labels() -> None:
    [alert] = parse_payload("pagerduty", body_of(PAGERDUTY_TRIGGERED))
    assert alert.source == "pagerduty"
    assert alert.fingerprint == "PGR0VU2"
    assert alert.firing
    assert alert.episode is None
    assert alert.labels["service"] == "orders-db"
    assert alert.labels["urgency"] == "high"
    assert alert.labels["priority"] == "P1"
    assert alert.labels["event_type"] == "incident.triggered"
    assert alert.severity == "P1"


@pytest.mark.parametrize("event_type", ["incident.resolved", "incident.acknowledged"])
def test_pagerduty_other_incident_events_do_not_fire(event_type: str) -> None:
    data = copy.deepcopy(PAGERDUTY_TRIGGERED)
    data["event"]["event_type"] = event_type
    [alert] = parse_payload("pagerduty", body_of(data))
    assert not alert.firing
    assert event_type in alert.not_firing_reason


def test_pagerduty_non_incident_event_is_not_firing() -> None:
    ping = {
        "event": {
            "id": "01ABC",
            "event_type": "pagey.ping",
            "resource_type": "pagey",
            "occurred_at": "2024-05-01T10:00:00Z",
            "data": {"message": "Hello from your friend Pagey!", "type": "ping"},
        }
    }
    [alert] = parse_payload("pagerduty", body_of(ping))
    assert not alert.firing
    assert "pagey.ping" in alert.not_firing_reason


def test_pagerduty_incident_without_id_is_malformed() -> None:
    data = copy.deepcopy(PAGERDUTY_TRIGGERED)
    del data["event"]["data"]["id"]
    with pytest.raises(ValidationError) as exc_info:
        parse_payload("pagerduty", body_of(data))
    assert ("event", "incident", "data", "id") in [e["loc"] for e in exc_info.value.errors()]


def test_plain_form_parses() -> None:
    [alert] = parse_payload(
        "plain",
        body_of(
            {
                "scenario": "region-failover",
                "target": "orders",
                "mode": "drill",
                "fingerprint": "INC-1",
                "severity": "SEV1",
                "labels": {"reporter": "oncall"},
            }
        ),
    )
    assert alert.scenario is Scenario.region_failover
    assert alert.mode is Mode.drill
    assert (alert.fingerprint, alert.severity, alert.target) == ("INC-1", "SEV1", "orders")


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"scenario": "region-failover", "target": "orders"}, ("fingerprint",)),
        ({"scenario": "meteor", "target": "orders", "fingerprint": "x"}, ("scenario",)),
        (
            {"scenario": "region-failover", "target": "o", "fingerprint": "x", "colour": "red"},
            ("colour",),
        ),
        (
            {"scenario": "region-failover", "target": "o", "fingerprint": "x", "mode": "panic"},
            ("mode",),
        ),
    ],
)
def test_plain_form_refuses_bad_input(data: dict[str, Any], loc: tuple) -> None:
    with pytest.raises(ValidationError) as exc_info:
        parse_payload("plain", body_of(data))
    assert loc in [e["loc"] for e in exc_info.value.errors()]


# --------------------------------------------------------------------------- routing


def firing(labels: dict[str, str], **kw: Any) -> IncomingAlert:
    return IncomingAlert(source="alertmanager", fingerprint="fp1", firing=True, labels=labels, **kw)


def test_first_matching_route_wins() -> None:
    routes = [
        route("primary-down", "region-failover", match={"alertname": "PostgresPrimaryDown"}),
        route("orders-any", "backup-verification", match={"target": "orders"}),
        route("catch-all", "data-corruption"),
    ]
    labels = {"alertname": "PostgresPrimaryDown", "target": "orders"}
    assert match_route(routes, firing(labels)).name == "primary-down"
    assert match_route(routes, firing({"target": "orders"})).name == "orders-any"
    assert match_route(routes, firing({"anything": "else"})).name == "catch-all"


def test_all_matchers_must_match_and_no_route_is_none() -> None:
    routes = [route("r", "region-failover", match={"alertname": "A", "env": "prod"})]
    assert match_route(routes, firing({"alertname": "A"})) is None
    assert match_route(routes, firing({"alertname": "A", "env": "staging"})) is None
    assert match_route(routes, firing({"alertname": "A", "env": "prod", "x": "y"})) is not None
    assert match_route([], firing({"alertname": "A"})) is None


def plain(scenario: str, target: str, mode: Mode | None = None) -> IncomingAlert:
    return IncomingAlert(
        source="plain",
        fingerprint="INC-1",
        firing=True,
        scenario=Scenario(scenario),
        target=target,
        mode=mode,
    )


def test_plain_form_matches_by_scenario_target_and_allowed_mode() -> None:
    routes = [
        route("drill", "backup-verification", mode=Mode.drill, match={"never": "on-plain"}),
        route("incident", "region-failover", mode=Mode.incident),
    ]
    assert match_route(routes, plain("backup-verification", "orders")).name == "drill"
    assert match_route(routes, plain("backup-verification", "other")) is None
    assert match_route(routes, plain("data-corruption", "orders")) is None
    # A drill route never starts an incident; any route may run a dry run.
    assert match_route(routes, plain("backup-verification", "orders", Mode.incident)) is None
    assert match_route(routes, plain("region-failover", "orders", Mode.drill)) is None
    assert match_route(routes, plain("region-failover", "orders", Mode.dry_run)).name == "incident"


def test_idempotency_key_per_route_fingerprint_and_firing() -> None:
    r = route("primary-down", "region-failover")
    first = firing({"a": "b"}, episode="20240501T100000.000000Z")
    again = firing({"a": "b"}, episode="20240501T100000.000000Z")
    next_month = firing({"a": "b"}, episode="20240601T100000.000000Z")
    assert idempotency_key(r, first) == "primary-down:fp1:20240501T100000.000000Z"
    assert idempotency_key(r, first) == idempotency_key(r, again)
    assert idempotency_key(r, first) != idempotency_key(r, next_month)
    pagerduty = IncomingAlert(source="pagerduty", fingerprint="PGR0VU2", firing=True)
    assert idempotency_key(r, pagerduty) == "primary-down:PGR0VU2"
    assert idempotency_key(r, plain("region-failover", "orders", Mode.dry_run)) == (
        "primary-down:INC-1:dry-run"
    )
    assert idempotency_key(r, plain("region-failover", "orders", Mode.incident)) == (
        "primary-down:INC-1"
    )


@pytest.mark.parametrize("scenario", [s.value for s in Scenario])
def test_deployment_names_follow_the_convention(scenario: str) -> None:
    assert deployment_for(scenario, "incident") == f"{scenario}/{scenario}-incident"
    assert deployment_for(Scenario(scenario), Mode.drill) == f"{scenario}/{scenario}-drill"
    assert deployment_for(scenario, Mode.dry_run) == f"{scenario}/{scenario}-incident"


def test_deployment_for_refuses_unknown_names() -> None:
    with pytest.raises(ValueError):
        deployment_for("meteor-strike", "incident")
    with pytest.raises(ValueError):
        deployment_for("region-failover", "panic")


def test_ui_url_from_api() -> None:
    assert ui_url_from_api("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200"
    assert ui_url_from_api("http://127.0.0.1:4200/api/") == "http://127.0.0.1:4200"
    assert (
        ui_url_from_api("https://api.prefect.cloud/api/accounts/a1/workspaces/w1")
        == "https://app.prefect.cloud/account/a1/workspace/w1"
    )


# --------------------------------------------------------------------------- signatures


def test_hmac_good_and_bad() -> None:
    body = b'{"a": 1}'
    good = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign_body(SECRET, body) == good
    assert verify_hmac_sha256(SECRET, body, good)
    assert verify_hmac_sha256(SECRET, body, good.upper())
    assert not verify_hmac_sha256(SECRET, body + b" ", good)
    assert not verify_hmac_sha256("other-secret", body, good)
    assert not verify_hmac_sha256(SECRET, body, "")


def test_pagerduty_signatures_any_valid_v1_is_enough() -> None:
    body = body_of(PAGERDUTY_TRIGGERED)
    good = sign_body(SECRET, body)
    old = sign_body("previous-secret", body)
    assert verify_pagerduty_signature(SECRET, body, f"v1={good}")
    assert verify_pagerduty_signature(SECRET, body, f"v1={old},v1={good}")
    assert verify_pagerduty_signature(SECRET, body, f"v1={old}, v1={good}")
    assert not verify_pagerduty_signature(SECRET, body, f"v1={old}")
    assert not verify_pagerduty_signature(SECRET, body, f"v0={good}")
    assert not verify_pagerduty_signature(SECRET, body, "")
    assert not verify_pagerduty_signature(SECRET, body + b"\n", f"v1={good}")


def auth(kind: str, headers: dict[str, str], body: bytes = b"{}", **kw: Any) -> Any:
    kw.setdefault("bearer_token", TOKEN)
    kw.setdefault("hmac_secret", SECRET)
    kw.setdefault("now", 1_700_000_000.0)
    lower = {k.lower(): v for k, v in headers.items()}
    return verify_request(kind, lower, body, **kw)


def test_bearer_token() -> None:
    assert auth("alertmanager", {"Authorization": f"Bearer {TOKEN}"}).ok
    assert auth("alertmanager", {"Authorization": f"bearer {TOKEN}"}).method == "bearer"
    bad = auth("alertmanager", {"Authorization": "Bearer nope"})
    assert not bad.ok
    assert TOKEN not in bad.reason and "nope" not in bad.reason
    assert not auth("alertmanager", {}).ok
    assert not auth("alertmanager", {"Authorization": f"Basic {TOKEN}"}).ok
    assert not auth("alertmanager", {"Authorization": f"Bearer {TOKEN}"}, bearer_token=None).ok


def test_dr_signature_on_any_endpoint() -> None:
    body = b'{"x": 1}'
    header = {"X-DR-Signature": f"sha256={sign_body(SECRET, body)}"}
    for kind in ("alertmanager", "grafana", "pagerduty", "plain"):
        result = auth(kind, header, body, bearer_token=None)
        assert (result.ok, result.method) == (True, "hmac")
    assert not auth("plain", {"X-DR-Signature": f"sha1={sign_body(SECRET, body)}"}, body).ok
    assert not auth("plain", header, body + b" ").ok


def test_bad_signature_refused_even_with_good_token() -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-DR-Signature": "sha256=00"}
    assert not auth("plain", headers).ok
    # Without a configured secret, a signature cannot be checked and the token decides.
    assert auth("plain", headers, hmac_secret=None).ok


def test_pagerduty_and_grafana_headers_only_on_their_endpoints() -> None:
    body = b"{}"
    pd = {"X-PagerDuty-Signature": f"v1={sign_body(SECRET, body)}"}
    assert auth("pagerduty", pd, body, bearer_token=None).ok
    assert not auth("plain", pd, body, bearer_token=None).ok
    gf = {"X-Grafana-Alerting-Signature": sign_body(SECRET, body)}
    assert auth("grafana", gf, body, bearer_token=None).ok
    assert not auth("alertmanager", gf, body, bearer_token=None).ok


def test_grafana_signed_timestamp_must_be_recent() -> None:
    body = b'{"status": "firing"}'
    now = 1_700_000_000.0

    def headers(stamp: str) -> dict[str, str]:
        sig = sign_body(SECRET, stamp.encode() + b":" + body)
        return {"X-Grafana-Alerting-Signature": sig, "X-Grafana-Alerting-Timestamp": stamp}

    assert auth("grafana", headers(str(int(now) - 10)), body, now=now).ok
    assert not auth("grafana", headers(str(int(now) - 3600)), body, now=now).ok
    # The timestamp is part of what is signed: changing it breaks the signature.
    forged = headers(str(int(now) - 3600)) | {"X-Grafana-Alerting-Timestamp": str(int(now))}
    assert not auth("grafana", forged, body, now=now).ok


def test_token_bucket_refills_per_minute() -> None:
    now = [0.0]
    bucket = TokenBucket(2, clock=lambda: now[0])
    assert bucket.take() == 0
    assert bucket.take() == 0
    assert bucket.take() == pytest.approx(30.0)
    now[0] = 15.0
    assert bucket.take() == pytest.approx(15.0)
    now[0] = 30.0
    assert bucket.take() == 0
    now[0] = 10_000.0  # never more than the burst
    assert [bucket.take() == 0 for _ in range(3)] == [True, True, False]


# --------------------------------------------------------------------------- the app


class ObjectNotFound(Exception):
    """Raised by the stand-in like Prefect's client for an unknown deployment."""


class FakePrefect:
    """Stand-in for PrefectClient: deployments by name, idempotent run creation."""

    api_url = "http://prefect.invalid:4200/api"

    def __init__(self, deployments: list[str], *, fail: Exception | None = None) -> None:
        self.deployments = {name: uuid4() for name in deployments}
        self.calls: list[dict[str, Any]] = []
        self.lookups: list[str] = []
        self.runs: dict[str, Any] = {}
        self.fail = fail

    async def __aenter__(self) -> FakePrefect:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_deployment_by_name(self, name: str) -> Any:
        self.lookups.append(name)
        if name not in self.deployments:
            raise ObjectNotFound(name)
        return SimpleNamespace(id=self.deployments[name])

    async def create_flow_run_from_deployment(self, deployment_id: UUID, **kw: Any) -> Any:
        self.calls.append({"deployment_id": deployment_id, **kw})
        if self.fail is not None:
            raise self.fail
        key = kw["idempotency_key"]
        if key not in self.runs:
            self.runs[key] = SimpleNamespace(id=uuid4(), created=datetime.now(UTC))
        return self.runs[key]


def make_config(monkeypatch: pytest.MonkeyPatch, routes: list[dict[str, Any]]) -> DRConfig:
    monkeypatch.setenv("DR_TEST_ALERT_TOKEN", TOKEN)
    monkeypatch.setenv("DR_TEST_ALERT_HMAC", SECRET)
    return DRConfig.model_validate(
        {
            "targets": {
                "orders": {
                    "postgres": {
                        "primary": {"name": "pg1", "host": "127.0.0.1"},
                        "databases": ["orders"],
                    },
                    "backup": {"repository": "file:///tmp/dr-unit-backups"},
                    "drills_allowed": True,
                }
            },
            "alerts": {
                "bearer_token": {"env": "DR_TEST_ALERT_TOKEN"},
                "hmac_secret": {"env": "DR_TEST_ALERT_HMAC"},
                "routes": routes,
            },
            "prefect_ui_url": "http://ui.example:4200",
        }
    )


ROUTES = [
    {
        "name": "primary-down",
        "match": {"alertname": "PostgresPrimaryDown"},
        "scenario": "region-failover",
        "target": "orders",
        "mode": "incident",
        "auto_approve": True,
        "rate_limit_per_minute": 2,
    },
    {
        "name": "verify",
        "match": {"alertname": "BackupStale"},
        "scenario": "backup-verification",
        "target": "orders",
        "mode": "drill",
    },
]

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def fake() -> FakePrefect:
    return FakePrefect(
        [
            "region-failover/region-failover-incident",
            "backup-verification/backup-verification-drill",
            "backup-verification/backup-verification-incident",
        ]
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, fake: FakePrefect) -> Any:
    app = create_app(make_config(monkeypatch, ROUTES), prefect_client_factory=lambda: fake)
    with TestClient(app) as test_client:
        yield test_client


def am_payload(
    fingerprint: str, *, status: str = "firing", alertname: str = "PostgresPrimaryDown"
) -> dict:
    data = copy.deepcopy(ALERTMANAGER_DOC_EXAMPLE)
    data["status"] = status
    alert = data["alerts"][0]
    alert.update(status=status, fingerprint=fingerprint)
    alert["labels"]["alertname"] = alertname
    return data


def test_firing_alert_starts_one_run_with_parameters(client: TestClient, fake: FakePrefect) -> None:
    response = client.post("/alerts/alertmanager", json=am_payload("fp-a"), headers=HEADERS)
    assert response.status_code == 201, response.text
    [run] = response.json()["runs"]
    assert run["route"] == "primary-down"
    assert (run["scenario"], run["target"], run["mode"]) == (
        "region-failover",
        "orders",
        "incident",
    )
    assert run["deduplicated"] is False
    assert run["flow_run_url"] == f"http://ui.example:4200/runs/flow-run/{run['flow_run_id']}"
    [call] = fake.calls
    assert call["deployment_id"] == fake.deployments["region-failover/region-failover-incident"]
    assert call["idempotency_key"] == "primary-down:fp-a:20240501T080000.123456Z"
    assert call["parameters"] == {
        "target": "orders",
        "mode": "incident",
        "options": {
            "severity": "critical",
            "auto_approve": True,
            "alert_fingerprint": "fp-a",
            "alert_started_at": "2024-05-01T08:00:00.123456+00:00",
            "alert_labels": ALERTMANAGER_DOC_EXAMPLE["alerts"][0]["labels"]
            | {"alertname": "PostgresPrimaryDown"},
        },
    }
    assert "route:primary-down" in call["tags"] and "alert-source:alertmanager" in call["tags"]


def test_repeats_are_answered_from_cache(client: TestClient, fake: FakePrefect) -> None:
    first = client.post("/alerts/alertmanager", json=am_payload("fp-a"), headers=HEADERS)
    lookups = len(fake.lookups)
    for _ in range(20):
        again = client.post("/alerts/alertmanager", json=am_payload("fp-a"), headers=HEADERS)
        assert again.status_code == 200
        [run] = again.json()["runs"]
        assert run["deduplicated"] is True
        assert run["flow_run_id"] == first.json()["runs"][0]["flow_run_id"]
    assert len(fake.calls) == 1
    assert len(fake.lookups) == lookups  # deployment id cached too


def test_resolved_and_unrouted_alerts_start_nothing(client: TestClient, fake: FakePrefect) -> None:
    resolved = client.post(
        "/alerts/alertmanager", json=am_payload("fp-r", status="resolved"), headers=HEADERS
    )
    assert resolved.status_code == 202
    assert resolved.json() == {
        "runs": [],
        "ignored": [{"fingerprint": "fp-r", "source": "alertmanager", "reason": "resolved"}],
    }
    unrouted = client.post(
        "/alerts/alertmanager", json=am_payload("fp-u", alertname="DiskFull"), headers=HEADERS
    )
    assert unrouted.status_code == 202
    assert unrouted.json()["ignored"][0]["reason"] == "no route"
    assert fake.calls == []


def test_unauthenticated_and_malformed_start_nothing(client: TestClient, fake: FakePrefect) -> None:
    assert client.post("/alerts/alertmanager", json=am_payload("fp-x")).status_code == 401
    bad = client.post(
        "/alerts/alertmanager", json=am_payload("fp-x"), headers={"Authorization": "Bearer no"}
    )
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == "Bearer"
    broken = am_payload("fp-x")
    broken["version"] = "5"
    malformed = client.post("/alerts/alertmanager", json=broken, headers=HEADERS)
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["version"]
    assert fake.calls == []


def test_rate_limit_answers_429_with_retry_after(client: TestClient, fake: FakePrefect) -> None:
    codes = [
        client.post("/alerts/alertmanager", json=am_payload(f"fp-{i}"), headers=HEADERS)
        for i in range(3)
    ]
    assert [r.status_code for r in codes] == [201, 201, 429]
    assert 1 <= int(codes[2].headers["retry-after"]) <= 30
    assert codes[2].json()["rate_limited"][0]["route"] == "primary-down"
    # Duplicates of a started alert are still answered while the route is limited.
    again = client.post("/alerts/alertmanager", json=am_payload("fp-0"), headers=HEADERS)
    assert again.status_code == 200
    assert len(fake.calls) == 2


def test_pagerduty_signed_trigger_and_plain_dry_run(
    monkeypatch: pytest.MonkeyPatch, fake: FakePrefect
) -> None:
    routes = [
        *ROUTES,
        {
            "name": "pd",
            "match": {"service": "orders-db"},
            "scenario": "region-failover",
            "target": "orders",
        },
    ]
    app = create_app(make_config(monkeypatch, routes), prefect_client_factory=lambda: fake)
    with TestClient(app) as test_client:
        body = body_of(PAGERDUTY_TRIGGERED)
        signature = f"v1={sign_body('old', body)},v1={sign_body(SECRET, body)}"
        response = test_client.post(
            "/alerts/pagerduty",
            content=body,
            headers={"X-PagerDuty-Signature": signature, "Content-Type": "application/json"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["runs"][0]["route"] == "pd"
        assert fake.calls[-1]["idempotency_key"] == "pd:PGR0VU2"
        assert fake.calls[-1]["parameters"]["options"]["severity"] == "P1"

        plain_body = body_of(
            {
                "scenario": "backup-verification",
                "target": "orders",
                "fingerprint": "manual-1",
                "mode": "dry-run",
            }
        )
        response = test_client.post(
            "/alerts/plain",
            content=plain_body,
            headers={"X-DR-Signature": f"sha256={sign_body(SECRET, plain_body)}"},
        )
        assert response.status_code == 201, response.text
        [run] = response.json()["runs"]
        assert (run["route"], run["mode"]) == ("verify", "dry-run")
        # A dry run starts from the incident deployment, whose flow takes mode=dry-run.
        assert fake.lookups[-1] == "backup-verification/backup-verification-incident"


def test_prefect_errors_map_to_502_and_503(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    missing = FakePrefect([])
    app = create_app(make_config(monkeypatch, ROUTES), prefect_client_factory=lambda: missing)
    with TestClient(app) as test_client:
        response = test_client.post("/alerts/alertmanager", json=am_payload("f"), headers=HEADERS)
        assert response.status_code == 502
        assert "region-failover/region-failover-incident" in response.json()["detail"]

    down = FakePrefect(
        ["region-failover/region-failover-incident"], fail=httpx.ConnectError("refused")
    )
    app = create_app(make_config(monkeypatch, ROUTES), prefect_client_factory=lambda: down)
    with TestClient(app) as test_client:
        response = test_client.post("/alerts/alertmanager", json=am_payload("f"), headers=HEADERS)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        # Nothing was cached: once Prefect is back, the retry starts the run.
        down.fail = None
        response = test_client.post("/alerts/alertmanager", json=am_payload("f"), headers=HEADERS)
        assert response.status_code == 201


def test_receiver_refuses_to_run_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, ROUTES)
    config.alerts.bearer_token = None
    config.alerts.hmac_secret = None
    with pytest.raises(ConfigError, match="bearer_token"):
        create_app(config, prefect_client_factory=lambda: FakePrefect([]))


def test_duplicate_route_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, [ROUTES[0], ROUTES[0]])
    with pytest.raises(ConfigError) as exc_info:
        create_app(config, prefect_client_factory=lambda: FakePrefect([]))
    assert exc_info.value.problems == [
        ("alerts.routes", "repeated name: primary-down (names key rate limits)")
    ]


def test_drill_route_on_a_target_without_drills_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, ROUTES)
    config.targets["orders"].drills_allowed = False
    with pytest.raises(ConfigError) as exc_info:
        create_app(config, prefect_client_factory=lambda: FakePrefect([]))
    [(key, reason)] = exc_info.value.problems
    assert key == "alerts.routes.1"
    assert "targets.orders.drills_allowed" in reason


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_concurrent_repeats_wait_for_the_first_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests arriving while the first is still creating the run share its answer."""
    import asyncio

    from deployments.alerts import AlertReceiver

    config = make_config(monkeypatch, ROUTES)

    class SlowPrefect(FakePrefect):
        async def create_flow_run_from_deployment(self, deployment_id: UUID, **kw: Any) -> Any:
            await asyncio.sleep(0.05)
            return await super().create_flow_run_from_deployment(deployment_id, **kw)

    async def scenario() -> list[Any]:
        slow = SlowPrefect(["region-failover/region-failover-incident"])
        receiver = AlertReceiver(config.alerts.routes, slow, "http://ui")
        [alert] = parse_payload("alertmanager", body_of(am_payload("fp-c")))
        outcomes = await asyncio.gather(*(receiver.receive([alert]) for _ in range(20)))
        return [slow, outcomes]

    slow, outcomes = asyncio.run(scenario())
    assert len(slow.calls) == 1
    runs = [o.runs[0] for o in outcomes]
    assert len({r["flow_run_id"] for r in runs}) == 1
    assert sorted(r["deduplicated"] for r in runs) == [False] + [True] * 19
    # Only the creation took a rate-limit token (the route allows 2 per minute).
    assert all(o.status_code in (200, 201) for o in outcomes)


def test_serve_alerts_command_reports_config_errors(tmp_path: Any) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """dr."""

    register(app)
    missing = tmp_path / "absent.yaml"
    result = CliRunner().invoke(app, ["serve-alerts", "--config", str(missing)])
    assert result.exit_code == 2
    assert f"{missing}: no such file" in result.output
