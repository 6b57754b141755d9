"""prefect.yaml + dr.yaml -> deployments, without a server: planning, the form, the templates."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dr.config import Mode, Scenario, parse_config
from dr.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"


def _target(drills: bool, production: bool = True) -> dict[str, Any]:
    return {
        "production": production,
        "drills_allowed": drills,
        "postgres": {"primary": {"name": "p", "host": "db.internal"}, "databases": ["app"]},
        "backup": {"repository": "s3://backups/pg"},
    }


def _config(**targets: dict[str, Any]) -> Any:
    schedules = {"backup": "7 * * * *", "region_failover": "1 2 3 4 *", "timezone": "Europe/Berlin"}
    return parse_config({"targets": targets, "schedules": schedules})


@pytest.fixture
def three_targets() -> Any:
    return _config(orders=_target(False), staging=_target(True, False), ledger=_target(False))


@pytest.fixture
def raw() -> list[dict[str, Any]]:
    from deployments.deploy import load_prefect_file

    return load_prefect_file(PREFECT_YAML)


def _by_name(specs: list[Any]) -> dict[str, Any]:
    return {s.name: s for s in specs}


def test_prefect_yaml_passes_prefects_own_validation_and_names_every_deployment() -> None:
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    names = {d.name for d in model.deployments}
    scenario_deployments = {f"{s.value}-{m}" for s in Scenario for m in ("drill", "incident")}
    assert names == scenario_deployments | {"backup-hourly", "base-backup-daily", "failback"}
    for d in model.deployments:
        module, _, function = (d.entrypoint or "").partition(":")
        assert module.startswith("flows.") and function, d.entrypoint
        assert d.work_pool is not None and d.work_pool.name == "dr-process"
        assert d.concurrency_limit is not None
        assert "dr" in (d.tags or [])


def test_schedules_and_targets_in_prefect_yaml_are_only_references_to_dr_yaml(
    raw: list[dict[str, Any]],
) -> None:
    for d in raw:
        for s in d.get("schedules") or []:
            assert s["cron"].startswith("{{ prefect.variables.dr_schedule_"), d["name"]
            assert s["timezone"] == "{{ prefect.variables.dr_schedule_timezone }}"
            assert s["parameters"]["target"] in (
                "{{ prefect.variables.dr_backup_target }}",
                "{{ prefect.variables.dr_drill_target }}",
            )
        target = (d.get("parameters") or {}).get("target")
        assert target is None or target.startswith("{{ prefect.variables."), d["name"]


def test_every_schedule_variable_is_one_dr_yaml_provides(
    three_targets: Any, raw: list[dict[str, Any]]
) -> None:
    from prefect.utilities.templating import find_placeholders

    from deployments.deploy import config_variables

    provided = set(config_variables(three_targets))
    used = {
        p.name.removeprefix("prefect.variables.")
        for p in find_placeholders(json.dumps(raw))
        if p.name.startswith("prefect.variables.")
    }
    assert used <= provided, used - provided
    assert {f"dr_schedule_{f}" for f in three_targets.schedules.model_fields} <= provided


def test_config_variables_come_from_the_config(three_targets: Any) -> None:
    from deployments.deploy import config_variables

    values = config_variables(three_targets)
    assert values["dr_schedule_backup"] == "7 * * * *"
    assert values["dr_schedule_region_failover"] == "1 2 3 4 *"
    assert values["dr_schedule_backup_verification"] == "0 3 1 * *"  # the default
    assert values["dr_schedule_timezone"] == "Europe/Berlin"
    assert values["dr_backup_target"] == "orders"
    assert values["dr_drill_target"] == "staging"
    assert values["dr_drills_active"] is True


def test_resolve_placeholders_behaves_like_prefect_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.deploy import resolve_placeholders

    monkeypatch.setenv("DR_TEST_REGION", "eu-west-1")
    variables = {"flag": True, "cron": "0 * * * *", "n": 3}
    template = {
        "active": "{{ prefect.variables.flag }}",
        "cron": "{{ prefect.variables.cron }}",
        "text": "every {{ prefect.variables.n }} hours in {{ $DR_TEST_REGION }}",
        "missing": "{{ prefect.variables.nope }}",
        "other": "{{ build-image.image }}",
        "items": ["{{ prefect.variables.n }}", 1],
    }
    assert resolve_placeholders(template, variables) == {
        "active": True,
        "cron": "0 * * * *",
        "text": "every 3 hours in eu-west-1",
        "missing": "",
        "other": "{{ build-image.image }}",
        "items": [3, 1],
    }


def test_plan_repeats_schedules_per_target_named_by_target(
    three_targets: Any, raw: list[dict[str, Any]]
) -> None:
    from deployments.deploy import plan_deployments

    specs = _by_name(plan_deployments(raw, three_targets))
    backup = specs["backup-hourly"]
    assert [(s.slug, s.parameters["target"], s.cron, s.timezone) for s in backup.schedules] == [
        ("backup-orders", "orders", "7 * * * *", "Europe/Berlin"),
        ("backup-staging", "staging", "7 * * * *", "Europe/Berlin"),
        ("backup-ledger", "ledger", "7 * * * *", "Europe/Berlin"),
    ]
    assert backup.parameters == {"kind": "logical", "target": "orders"}
    assert (backup.concurrency_limit, backup.collision_strategy) == (2, "ENQUEUE")
    assert backup.targets == ["orders", "staging", "ledger"] and backup.modes is None

    drill = specs["region-failover-drill"]
    assert [(s.slug, s.parameters["target"], s.cron, s.active) for s in drill.schedules] == [
        ("drill-staging", "staging", "1 2 3 4 *", True)
    ]
    assert drill.targets == ["staging"] and drill.modes == ["drill"]
    assert drill.parameters == {"mode": "drill", "target": "staging", "fail_flow": True}
    assert drill.scenario == "region-failover"

    incident = specs["region-failover-incident"]
    assert incident.schedules == []
    assert incident.parameters == {"mode": "incident", "fail_flow": True}
    assert incident.targets == ["orders", "staging", "ledger"]
    assert incident.modes == ["incident", "dry-run"]
    assert specs["failback"].scenario is None and specs["backup-hourly"].scenario is None


def test_plan_without_drill_targets_schedules_no_drill(raw: list[dict[str, Any]]) -> None:
    from deployments.deploy import config_variables, plan_deployments

    cfg = _config(orders=_target(False))
    assert config_variables(cfg)["dr_drills_active"] is False
    specs = _by_name(plan_deployments(raw, cfg, pool="dr-k8s"))
    for scenario in Scenario:
        drill = specs[f"{scenario.value}-drill"]
        assert drill.schedules == [] and drill.targets == []
        assert "target" not in drill.parameters
    assert {s.work_pool_name for s in specs.values()} == {"dr-k8s"}


def test_plan_refuses_a_schedule_whose_cron_is_empty(
    three_targets: Any, raw: list[dict[str, Any]]
) -> None:
    from deployments.deploy import plan_deployments

    broken = copy.deepcopy(raw)
    broken[0]["schedules"][0]["cron"] = "{{ prefect.variables.dr_schedule_nope }}"
    with pytest.raises(ConfigError, match="without a cron line"):
        plan_deployments(broken, three_targets)


def test_load_prefect_file_names_what_is_wrong(tmp_path: Path) -> None:
    from deployments.deploy import load_prefect_file

    with pytest.raises(ConfigError, match="no such file"):
        load_prefect_file(tmp_path / "absent.yaml")
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n")
    with pytest.raises(ConfigError) as info:
        load_prefect_file(bad)
    assert info.value.problems == [("deployments.0", "needs a name and an entrypoint")]


def test_patch_parameter_schema_makes_drop_downs() -> None:
    from deployments.deploy import patch_parameter_schema

    schema = {
        "type": "object",
        "properties": {
            "target": {"type": "string", "title": "target", "description": "d", "position": 0},
            "mode": {"$ref": "#/definitions/Mode", "default": "drill", "position": 1},
            "severity": {"type": "string", "default": "SEV2"},
        },
        "definitions": {"Mode": {"enum": ["incident", "drill", "dry-run"], "type": "string"}},
    }
    drill = patch_parameter_schema(schema, targets=["staging"], modes=["drill"])
    assert drill["properties"]["target"] == {
        "type": "string", "enum": ["staging"], "title": "target", "description": "d", "position": 0,
    }  # fmt: skip
    assert drill["properties"]["mode"] == {
        "type": "string", "enum": ["drill"], "default": "drill", "position": 1, "readOnly": True,
        "description": "drill: inject the failure, recover, measure RTO/RPO (and fail back).",
    }  # fmt: skip
    assert drill["properties"]["severity"] == schema["properties"]["severity"]
    sev = patch_parameter_schema(schema, targets=["a"], modes=["drill"], severities=["P1", "P2"])
    assert sev["properties"]["severity"] == {"type": "string", "enum": ["P1", "P2"]}
    sev = patch_parameter_schema(schema, targets=["a"], modes=None, severities=["SEV1", "SEV2"])
    assert sev["properties"]["severity"]["default"] == "SEV2"
    incident = patch_parameter_schema(schema, targets=["a", "b"], modes=["incident", "dry-run"])
    assert incident["properties"]["mode"]["default"] == "incident"
    assert "readOnly" not in incident["properties"]["mode"]
    described = incident["properties"]["mode"]["description"]
    assert "incident:" in described and "dry-run:" in described and "drill" not in described
    assert schema["properties"]["mode"] == {
        "$ref": "#/definitions/Mode",
        "default": "drill",
        "position": 1,
    }


def test_drills_on_one_cluster_are_never_due_at_the_same_minute(
    raw: list[dict[str, Any]],
) -> None:
    from deployments.deploy import plan_deployments

    other = _target(True, False)
    other["postgres"]["primary"]["host"] = "other.internal"
    cfg = parse_config(
        {
            "targets": {
                "a": _target(True, False),
                "b": _target(True, False),
                "c": _target(True, False),
                "elsewhere": other,
            },
            # Two scenarios due at the same moment: still apart on each cluster.
            "schedules": {"data_corruption": "0 3 1 * *", "backup_verification": "0 3 1 * *"},
        }
    )
    specs = plan_deployments(raw, cfg)
    by_cluster: dict[str, list[str]] = {}
    for spec in specs:
        if spec.modes != ["drill"]:
            continue
        assert [s.slug for s in spec.schedules] == [
            f"drill-{t}" for t in ("a", "b", "c", "elsewhere")
        ]
        for s in spec.schedules:
            host = "other" if s.parameters["target"] == "elsewhere" else "db"
            by_cluster.setdefault(host, []).append(s.cron)
    for crons in by_cluster.values():
        assert len(crons) == len(set(crons)), crons
    assert "0 3 1 * *" in by_cluster["other"] and "15 3 1 * *" in by_cluster["db"]


def test_spec_version_changes_exactly_with_the_payload() -> None:
    from deployments.deploy import spec_version

    a = {"name": "x", "schedules": [{"cron": "0 * * * *"}]}
    assert spec_version(a) == spec_version(copy.deepcopy(a))
    assert spec_version(a) != spec_version({**a, "schedules": [{"cron": "5 * * * *"}]})


def test_process_pool_template_adds_dr_config_and_keeps_other_env(tmp_path: Path) -> None:
    from deployments.deploy import process_pool_template

    base = {"job_configuration": {"env": "{{ env }}"},
            "variables": {"properties": {"env": {"type": "object", "default": {"TZ": "UTC"}}}}}  # fmt: skip
    out = process_pool_template(tmp_path / "dr.yaml", base)
    assert out["variables"]["properties"]["env"]["default"] == {
        "TZ": "UTC",
        "DR_CONFIG": str((tmp_path / "dr.yaml").resolve()),
    }
    assert base["variables"]["properties"]["env"]["default"] == {"TZ": "UTC"}
    default = process_pool_template(tmp_path / "dr.yaml")
    assert "command" in default["variables"]["properties"]  # Prefect's own process template


# ----------------------------------------------------------------------------- the form


def _flows() -> dict[str, Any]:
    import importlib

    from deployments.deploy import load_prefect_file

    flows: dict[str, Any] = {}
    for d in load_prefect_file(PREFECT_YAML):
        module, _, attr = d["entrypoint"].partition(":")
        try:
            flows[d["entrypoint"]] = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return flows


def test_every_flow_parameter_is_typed_and_described() -> None:
    from prefect.utilities.callables import parameter_schema

    flows = _flows()
    assert "flows.backup_verification:backup_verification_flow" in flows
    for entrypoint, flow in flows.items():
        schema = parameter_schema(flow).model_dump(mode="json")
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{entrypoint}: {name} has no description"
            assert prop.get("type") or prop.get("$ref") or prop.get("anyOf"), (
                f"{entrypoint}: {name}"
            )
        assert schema["properties"]["target"]["type"] == "string"
        assert "target" in schema.get("required", [])
        if "mode" in schema["properties"]:
            assert schema["properties"]["mode"]["$ref"] == "#/definitions/Mode"
            assert schema["definitions"]["Mode"]["enum"] == [m.value for m in Mode]


@pytest.mark.parametrize("scenario", list(Scenario))
@pytest.mark.parametrize("mode", [Mode.drill, Mode.incident, Mode.dry_run])
def test_alert_receiver_parameters_pass_each_scenario_deployments_schema(
    scenario: Scenario, mode: Mode, three_targets: Any
) -> None:
    """What ``dr serve-alerts`` sends must pass the server's check of the deployment's form."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from deployments.alerts import deployment_for, flow_parameters
    from deployments.alerts.payloads import IncomingAlert
    from deployments.deploy import load_prefect_file, patch_parameter_schema, plan_deployments
    from dr.config import AlertRoute
    from flows.registry import load_flow

    try:
        flow = load_flow(scenario)
    except ConfigError as exc:
        pytest.skip(str(exc))
    specs = _by_name(plan_deployments(load_prefect_file(PREFECT_YAML), three_targets))
    flow_name, _, deployment = deployment_for(scenario, mode).partition("/")
    assert flow.name == flow_name
    spec = specs[deployment]
    target = spec.targets[0]
    schema = patch_parameter_schema(
        parameter_schema(flow).model_dump(mode="json"), targets=spec.targets, modes=spec.modes
    )
    route = AlertRoute(name="r", scenario=scenario, target=target, mode=mode, auto_approve=True)
    alert = IncomingAlert(
        source="alertmanager", fingerprint="5b2c1f0e9a7d4c3b", firing=True,
        labels={"alertname": "PostgresPrimaryDown", "target": target}, severity="SEV1",
    )  # fmt: skip
    params = {**spec.parameters, **flow_parameters(route, alert)}
    validate(params, schema, raise_on_error=True)


# ----------------------------------------------------------------------------- Kubernetes


def test_k8s_work_pool_template_is_valid_and_renders_the_job() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    from deployments.deploy import K8S_TEMPLATE_PATH

    template = json.loads(K8S_TEMPLATE_PATH.read_text())
    validate_base_job_template(template)  # every placeholder is a declared variable
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values["command"] = "prefect flow-run execute"
    values["name"] = "dr-run"
    values["labels"] = {}
    job = apply_values(template["job_configuration"], values)
    manifest = job["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["metadata"]["namespace"] == job["namespace"] == "dr"
    assert pod["serviceAccountName"] == "dr-flows"
    assert container["image"] == props["image"]["default"]
    assert job["env"]["DR_CONFIG"] == "/etc/dr/dr.yaml"
    assert job["env"]["PREFECT_API_URL"].endswith("/api")
    assert container["volumeMounts"] == [
        {"name": "dr-config", "mountPath": "/etc/dr", "readOnly": True}
    ]
    assert pod["volumes"] == [{"name": "dr-config", "configMap": {"name": "dr-config"}}]
    assert container["envFrom"] == [{"secretRef": {"name": "dr-credentials", "optional": True}}]
