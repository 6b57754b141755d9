"""The lab's monitoring: shipped files, rendered configurations, the lab's alert routes, and
the stage arithmetic of the via-alert drill (no process is started here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from dr.config import parse_config
from flows.lifecycle.measure import alert_chain_stages
from lab import monitoring
from lab.drconfig import lab_config
from lab.monitoring_chain import worker_command
from lab.state import new_state

T0 = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def _state(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = new_state(tmp_path)
    names = (
        "exporter-primary",
        "exporter-replica1",
        monitoring.PROMETHEUS,
        monitoring.ALERTMANAGER,
    )
    for name in names:
        state.ports[name] = 40000 + len(state.ports)
    state.prefect_api_url = "http://127.0.0.1:4200/api"
    return state


def test_shipped_rules_fire_on_failed_scrapes_and_absent_series() -> None:
    rules = yaml.safe_load(monitoring.RULES_FILE.read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    down = by_name["PostgresPrimaryDown"]["expr"]
    assert 'up{job="postgres"} == 0' in down and "pg_up" in down
    assert "unless" in by_name["PostgresNoPrimary"]["expr"]  # no primary series at all
    assert set(monitoring.DR_ALERTS) <= set(by_name)


def test_prometheus_config_scrapes_every_server_with_its_target(tmp_path: Path) -> None:
    state = _state(tmp_path)
    config = monitoring.prometheus_config(state)
    assert config["global"]["scrape_interval"] == "1s"
    assert config["rule_files"] == [str(monitoring.RULES_FILE)]
    [job] = config["scrape_configs"]
    nodes = {c["labels"]["node"]: c for c in job["static_configs"]}
    assert set(nodes) == {"primary", "replica1"}
    assert all(c["labels"]["target"] == "lab" for c in nodes.values())
    alertmanager = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanager == [f"127.0.0.1:{state.ports[monitoring.ALERTMANAGER]}"]


def test_alertmanager_config_carries_the_receiver_and_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = monitoring.alertmanager_config("http://127.0.0.1:9999", token)
    [hook] = next(r for r in config["receivers"] if r["name"] == "dr-pipelines")["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9999/alerts/alertmanager"
    assert hook["http_config"]["authorization"]["credentials_file"] == str(token)
    [route] = config["route"]["routes"]
    assert route["group_wait"] == "0s"


def match_route(routes, labels):  # type: ignore[no-untyped-def]
    """The first route whose ``match`` labels are all on the alert (as the receiver does)."""
    return next((r for r in routes if r.match.items() <= labels.items()), None)


def test_lab_routes_send_a_dead_primary_to_an_approved_failover(tmp_path: Path) -> None:
    data = lab_config(_state(tmp_path), prefect_on=True)
    cfg = parse_config(data, "dr.yaml")
    assert cfg.alerts.bearer_token is not None
    for name in monitoring.DR_ALERTS:
        route = match_route(cfg.alerts.routes, {"alertname": name, "target": "lab"})
        assert route is not None
        assert (route.scenario.value, route.target, route.mode.value) == (
            "region-failover",
            "lab",
            "incident",
        )
        assert route.auto_approve
    assert match_route(cfg.alerts.routes, {"alertname": "PostgresDown", "target": "lab"}) is None


def test_the_worker_is_one_command(tmp_path: Path) -> None:
    cmd = worker_command(_state(tmp_path))
    assert cmd.marker in " ".join(cmd.argv)
    assert cmd.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert "--pool" in cmd.argv and "dr-process" in cmd.argv


def test_chain_stages_add_up_to_the_outage() -> None:
    moments = {
        "failure_at": T0,
        "alert_starts_at": T0 + timedelta(seconds=2),
        "run_created_at": T0 + timedelta(seconds=2.2),
        "run_started_at": T0 + timedelta(seconds=5),
        "promoted_at": T0 + timedelta(seconds=6),
        "first_write_at": T0 + timedelta(seconds=7.5),
    }
    stages = alert_chain_stages(moments)
    assert stages == {
        "detection": 2.0,
        "alert": 0.2,
        "dispatch": 2.8,
        "recovery": 1.0,
        "first_write": 1.5,
        "total": 7.5,
    }
    missing = alert_chain_stages({**moments, "promoted_at": None, "first_write_at": None})
    assert missing["recovery"] is None and missing["total"] is None
    assert missing["detection"] == 2.0
