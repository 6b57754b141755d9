"""Bad input is refused before a run exists; severities are one closed set; one-pass config check.

The CLI cases replace the scenario flow, history and Slack by counters: a refused input must
call none of them (the lab-backed twin, counting real flow runs, history rows and Slack
messages, is tests/integration/lifecycle/test_bad_input.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from cli.run_input import check_run_input, options_model
from deployments.alerts.payloads import IncomingAlert
from deployments.alerts.routing import with_severity
from dr.config import Mode, parse_config
from dr.errors import ConfigError, RecoveryRefused
from flows.backup_verification import backup_verification_flow
from flows.data_corruption import data_corruption_flow
from flows.region_failover import region_failover_flow


def _config_dict(**extra: Any) -> dict[str, Any]:
    return {
        "targets": {
            "lab": {
                "production": False,
                "drills_allowed": True,
                "postgres": {
                    "primary": {"name": "pg1", "host": "127.0.0.1", "port": 1},
                    "replicas": [{"name": "pg2", "host": "127.0.0.1", "port": 2}],
                    "databases": ["app"],
                },
                "backup": {"repository": "file:///var/backups/lab"},
            }
        },
        **extra,
    }


# ---------------------------------------------------------------------- config, one pass


def test_config_check_reports_tier_port_and_unknown_key_in_one_pass(tmp_path: Path) -> None:
    data = _config_dict()
    target = data["targets"]["lab"]
    target["tier"] = "legendary"
    target["postgres"]["primary"]["port"] = "not-a-port"
    target["colour"] = "blue"
    path = tmp_path / "dr.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    for key in ("targets.lab.tier", "targets.lab.postgres.primary.port", "targets.lab.colour"):
        assert key in result.stderr, result.stderr
    assert "legendary" in result.stderr


def test_cross_field_problems_come_with_the_field_errors() -> None:
    data = _config_dict(
        alerts={"routes": [{"name": "r", "scenario": "region-failover", "target": "nope"}]},
        approval={"auto_approve_severities": ["SEV9"]},
    )
    data["targets"]["lab"]["postgres"]["replicas"][0]["port"] = 1  # same as the primary
    data["targets"]["lab"]["postgres"]["primary"]["region"] = ["not", "a", "string"]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = dict(info.value.problems)
    assert "targets.lab.postgres.primary.region" in paths
    assert "same host and port" in paths["targets.lab.postgres.replicas.0"]
    assert "unknown target 'nope'" in paths["alerts.routes.0.target"]
    assert "unknown severity 'SEV9'" in paths["approval.auto_approve_severities.0"]


def test_severities_are_a_closed_set_and_alert_labels_map_onto_it() -> None:
    cfg = parse_config(_config_dict(alerts={"severity_map": {"Disaster": "SEV1"}}))
    assert cfg.severities == ["SEV1", "SEV2", "SEV3", "SEV4"]
    assert cfg.severity("sev2") == "SEV2"
    with pytest.raises(ConfigError, match="unknown severity 'SEV99'"):
        cfg.severity("SEV99")
    assert cfg.alert_severity("critical") == "SEV1"
    assert cfg.alert_severity("warning") == "SEV3"
    assert cfg.alert_severity("disaster") == "SEV1"  # a mapped label, any case
    assert cfg.alert_severity("SEV4") == "SEV4"
    assert cfg.alert_severity("meh") is None
    with pytest.raises(ConfigError) as info:
        parse_config(_config_dict(alerts={"severity_map": {"x": "SEV9"}}))
    assert [k for k, _ in info.value.problems] == ["alerts.severity_map.x"]


def test_alert_severity_is_mapped_or_the_alert_is_refused() -> None:
    cfg = parse_config(_config_dict())
    alert = IncomingAlert(source="alertmanager", fingerprint="f", firing=True, severity="critical")
    mapped, problem = with_severity(alert, cfg.alert_severity)
    assert problem is None and mapped.severity == "SEV1"
    odd = IncomingAlert(source="plain", fingerprint="f", firing=True, severity="SEV99")
    _, problem = with_severity(odd, cfg.alert_severity)
    assert problem is not None and "SEV99" in problem


# ---------------------------------------------------------------------- run input


def test_options_model_is_read_from_each_flow() -> None:
    assert options_model(data_corruption_flow).__name__ == "CorruptionOptions"
    assert options_model(region_failover_flow).__name__ == "FailoverOptions"
    assert options_model(backup_verification_flow).__name__ == "BackupVerificationOptions"


@pytest.mark.parametrize(
    ("flow", "options", "severity", "key"),
    [
        (data_corruption_flow, {"variant": "nonsense"}, None, "--option variant"),
        (data_corruption_flow, {"inject": "nonsense"}, None, "--inject"),
        (data_corruption_flow, {"no_such_option": 1}, None, "--option no_such_option"),
        (region_failover_flow, {"inject": "nonsense"}, None, "--inject"),
        (data_corruption_flow, {"recovery_time": "yesterday"}, None, "--option recovery_time"),
        (
            data_corruption_flow,
            {"recovery_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            None,
            "--option recovery_time",
        ),
        (region_failover_flow, {}, "SEV99", "--severity"),
        (region_failover_flow, {"severity": "SEV99"}, None, "--option severity"),
    ],
)
def test_bad_input_is_named_by_its_flag(flow, options, severity, key) -> None:
    cfg = parse_config(_config_dict())
    with pytest.raises(ConfigError) as info:
        check_run_input(
            flow, cfg, target="lab", mode=Mode.drill, severity=severity, options=options
        )
    assert [k for k, _ in info.value.problems] == [key], info.value.problems


def test_good_input_passes_and_the_severity_is_spelled_as_the_config_does() -> None:
    cfg = parse_config(_config_dict())
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert (
        check_run_input(
            data_corruption_flow,
            cfg,
            target="lab",
            mode=Mode.incident,
            severity="sev1",
            options={"recovery_time": past, "variant": "mass-delete"},
        )
        == "SEV1"
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A config, and counters of flow runs, history rows and Slack messages."""
    calls: dict[str, Any] = {"flow": 0, "history": 0, "slack": 0}
    from flows.lifecycle import finish, run
    from flows.registry import load_flow as real_load_flow

    def load_flow(scenario: Any) -> Any:
        real = real_load_flow(scenario)

        class Counted:
            fn = real.fn

            def __call__(self, **kwargs: Any) -> Any:
                calls["flow"] += 1
                raise AssertionError("no flow run may start on bad input")

        return Counted()

    monkeypatch.setattr("flows.registry.load_flow", load_flow)
    monkeypatch.setattr(
        finish.history_store, "record_run", lambda *a, **k: calls.__setitem__("history", 1)
    )
    monkeypatch.setattr(
        run.notify_thread, "slack_thread_for", lambda *a, **k: calls.__setitem__("slack", 1)
    )
    path = tmp_path / "dr.yaml"
    path.write_text(yaml.safe_dump(_config_dict()))
    calls["config"] = str(path)
    return calls


@pytest.mark.parametrize(
    "args",
    [
        ["drill", "data-corruption", "--option", "variant=nonsense"],
        ["drill", "data-corruption", "--option", "no_such_option=1"],
        ["drill", "region-failover", "--inject", "nonsense"],
        ["drill", "data-corruption", "--option", "recovery_time=yesterday"],
        ["drill", "data-corruption", "--option", "recovery_time=2999-01-01T00:00:00Z"],
        ["drill", "region-failover", "--severity", "SEV99"],
        ["run", "data-corruption", "--option", "recovery_time=2999-01-01T00:00:00Z"],
    ],
)
def test_cli_refuses_bad_input_with_exit_2_before_any_run(counted, args) -> None:
    result = CliRunner().invoke(
        app, [*args, "--target", "lab", "--json", "--config", counted["config"]]
    )
    assert result.exit_code == 2, (result.stdout, result.stderr)
    obj = json.loads(result.stdout)
    assert obj["outcome"] == "refused" and obj["problems"], obj
    assert (counted["flow"], counted["history"], counted["slack"]) == (0, 0, 0)
    assert "error:" in result.stderr


def test_report_on_an_unknown_target_exits_2(counted) -> None:
    result = CliRunner().invoke(app, ["report", "--target", "nope", "-c", counted["config"]])
    assert result.exit_code == 2
    assert "unknown target 'nope'" in result.stderr


def test_evidence_verify_of_a_missing_bundle_says_so(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/no-such-bundle"
    (tmp_path / "dr.yaml").write_text(yaml.safe_dump(_config_dict()))
    result = CliRunner().invoke(app, ["evidence", "verify", url, "-c", str(tmp_path / "dr.yaml")])
    assert result.exit_code == 1
    assert "no evidence bundle at" in result.stderr and "manifest.json" in result.stderr
    assert "┃" not in result.stdout, "no empty table"


def test_pitr_refusals_are_recovery_refused() -> None:
    from tasks.pitr import base_backup
    from tasks.pitr.target import RecoveryTarget

    future = RecoveryTarget(time=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(RecoveryRefused, match="in the future"):
        base_backup.choose_base_backup([], future)


# ---------------------------------------------------------------------- forms


def _fields_without_description(model: type, seen: set[type]) -> list[str]:
    import typing

    from pydantic import BaseModel

    if model in seen:
        return []
    seen.add(model)
    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(f"{model.__name__}.{name}")
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            for inner in typing.get_args(arg) or (arg,):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    missing += _fields_without_description(inner, seen)
    return missing


@pytest.mark.parametrize(
    "flow",
    [
        region_failover_flow,
        data_corruption_flow,
        backup_verification_flow,
        pytest.param("breach", id="breach-response"),
    ],
)
def test_every_option_of_the_form_is_described(flow: Any) -> None:
    from prefect.utilities.callables import parameter_schema

    if flow == "breach":
        from flows.breach_response import breach_response_flow as flow
    model = options_model(flow)
    assert model is not None
    assert _fields_without_description(model, set()) == []
    schema = parameter_schema(flow.fn)
    described = json.dumps(schema.model_dump())
    assert ":class:" not in described
    for name in ("auto_approve", "declared_at", "alert_labels", "alert_fingerprint"):
        assert name in model.model_fields


def test_report_shows_refused_runs_apart(counted, monkeypatch, tmp_path: Path) -> None:
    from tasks.history import store as history_store

    def row(outcome: str, reason: str) -> dict[str, Any]:
        return {
            "declared_at": datetime(2026, 1, 1, 3, 0, tzinfo=UTC),
            "scenario": "data-corruption",
            "target": "lab",
            "mode": "drill",
            "outcome": outcome,
            "objectives_met": False,
            "rto_seconds": None,
            "rpo_seconds": None,
            "summary": {"reason": reason},
        }

    rows = [row("failed", "the check failed"), row("refused", "a WAL gap; nothing was changed")]
    monkeypatch.setattr(history_store, "query_runs", lambda *a, **k: rows)
    html = tmp_path / "r.html"
    args = ["report", "-c", counted["config"], "--html", str(html)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.stderr
    assert "DR history (1 run(s))" in result.stdout
    assert "Refused, nothing changed (1 run(s))" in result.stdout
    assert "a WAL gap" in result.stdout
    as_json = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(as_json.stdout)["refused"] == 1


def test_an_unknown_drill_table_refuses_the_drill_and_is_a_config_error() -> None:
    from flows.data_corruption.drill import DrillTableRefused, choose_drill_table
    from flows.data_corruption.options import Variant

    with pytest.raises(DrillTableRefused) as info:
        choose_drill_table(Variant.bad_update, [], database="app", requested="public.nope")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, RecoveryRefused)
