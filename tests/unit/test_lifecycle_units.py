"""Units of the shared lifecycle: RTO/RPO arithmetic, reports, the chart, redaction (no I/O)."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flows.registry as registry
from cli.runs import parse_options
from dr.changes import Change
from dr.config import Mode, Objectives, Scenario, parse_config
from dr.errors import ConfigError, register_secret
from flows.lifecycle import (
    Measurement,
    RunContext,
    RunResult,
    derive_measurement,
    lock_name,
    meets_objectives,
)
from tasks.notify.thread import NullThread
from tasks.report.chart import svg_data_uri, trend_svg
from tasks.report.html_report import render_html
from tasks.report.markdown import render_markdown
from tasks.report.tables import artifact_key, table_rows

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
OBJ = Objectives(rto_seconds=900, rpo_seconds=300)
SVG_NS = "{http://www.w3.org/2000/svg}"


# ---------------------------------------------------------------------- RTO / RPO


def test_drill_rto_runs_from_failure_to_restored():
    m = derive_measurement(
        Mode.drill,
        declared_at=T0,
        failure_at=T0 + timedelta(seconds=10),
        restored_at=T0 + timedelta(seconds=52.5),
        explicit=Measurement(rpo_seconds=1.25, lost_rows=25, rpo_basis="heartbeat"),
    )
    assert m.rto_seconds == 42.5
    assert m.rto_basis.startswith("restored_at - failure_at")
    assert (m.rpo_seconds, m.lost_rows, m.rpo_basis) == (1.25, 25, "heartbeat")
    assert meets_objectives(m, OBJ, Mode.drill)


def test_incident_rto_runs_from_the_known_failure_not_the_declaration():
    m = derive_measurement(
        Mode.incident,
        declared_at=T0,
        failure_at=T0 - timedelta(minutes=5),
        restored_at=T0 + timedelta(minutes=20),
        explicit=Measurement(rpo_seconds=0),
    )
    assert m.rto_seconds == 1500
    assert m.failure_at == T0 - timedelta(minutes=5)
    assert m.rto_basis.startswith("restored_at - failure_at (failure_at")
    assert not meets_objectives(m, OBJ, Mode.incident)  # 25 min > 15 min
    declared = derive_measurement(
        Mode.incident, declared_at=T0, failure_at=None, restored_at=T0 + timedelta(minutes=2)
    )
    assert declared.rto_seconds == 120 and declared.failure_at_basis == "declared_at"


def test_scenario_rto_only_when_never_restored_and_objectives_are_inclusive():
    m = derive_measurement(
        Mode.drill,
        declared_at=T0,
        failure_at=T0,
        restored_at=T0 + timedelta(hours=1),
        explicit=Measurement(rto_seconds=900, rpo_seconds=300, rto_basis="restore duration"),
    )
    assert m.rto_seconds == 3600, "the observed outage wins over a scenario's own figure"
    unrestored = derive_measurement(
        Mode.drill,
        declared_at=T0,
        failure_at=T0,
        restored_at=None,
        explicit=Measurement(rto_seconds=900, rpo_seconds=300, rto_basis="restore duration"),
    )
    assert (unrestored.rto_seconds, unrestored.rto_basis) == (900, "restore duration")
    assert meets_objectives(unrestored, OBJ, Mode.drill)
    over = Measurement(rto_seconds=900, rpo_seconds=300.001)
    assert not meets_objectives(over, OBJ, Mode.drill)


def test_unmeasured_values_never_meet_objectives():
    m = derive_measurement(Mode.drill, declared_at=T0, failure_at=T0, restored_at=None)
    assert m.rto_seconds is None and m.rto_basis.startswith("not measured")
    assert m.rpo_basis == "not measured"
    assert not meets_objectives(m, OBJ, Mode.drill)
    assert not meets_objectives(Measurement(rto_seconds=1), OBJ, Mode.drill)


def test_dry_run_measures_nothing_and_passes_ci_on_outcome_alone():
    m = derive_measurement(Mode.dry_run, declared_at=T0, failure_at=None, restored_at=None)
    assert m.rto_seconds is None and m.rto_basis == "dry run: nothing measured"
    assert not meets_objectives(Measurement(rto_seconds=1, rpo_seconds=0), OBJ, Mode.dry_run)
    base = {
        "scenario": "region-failover",
        "target": "lab",
        "objectives": OBJ,
        "declared_at": T0,
    }
    assert RunResult(mode="dry-run", outcome="passed", objectives_met=False, **base).ok
    assert RunResult(mode="drill", outcome="passed", objectives_met=True, **base).ok
    assert not RunResult(mode="drill", outcome="passed", objectives_met=False, **base).ok
    assert not RunResult(mode="incident", outcome="aborted", objectives_met=True, **base).ok


# ---------------------------------------------------------------------- run context


def _config() -> Any:
    return parse_config(
        {
            "targets": {
                "lab": {
                    "production": False,
                    "drills_allowed": True,
                    "postgres": {
                        "primary": {"name": "pg1", "host": "127.0.0.1", "port": 6543},
                        "databases": ["app"],
                    },
                    "backup": {"repository": "file:///var/backups/lab"},
                }
            },
            "approval": {"auto_approve_severities": ["SEV1"]},
        }
    )


def _ctx(mode: Mode, severity: str = "SEV2", options: dict | None = None) -> RunContext:
    return RunContext(
        config=_config(),
        target_name="lab",
        scenario=Scenario.region_failover,
        mode=mode,
        severity=severity,
        options=options or {},
        declared_at=T0,
        flow_run_id=None,
        flow_run_url=None,
        slack=NullThread(),
    )


def test_plan_guards_every_step_in_a_dry_run_only():
    dry = _ctx(Mode.dry_run)
    assert dry.plan("promote", "replica pg2") is False
    dry.approve("promote replica pg2")
    assert dry.stamp_failure() and dry.failure_at is None
    assert dry.plan_steps == [
        "would promote replica pg2",
        "would ask for approval before: promote replica pg2",
    ]
    live = _ctx(Mode.incident, severity="SEV1")
    assert live.plan("promote", "replica pg2") is True and live.plan_steps == []


@pytest.mark.parametrize(
    ("mode", "severity", "options", "why"),
    [
        (Mode.drill, "drill", {}, "drills are auto-approved"),
        (Mode.incident, "SEV1", {}, "severity SEV1 is auto-approved"),
        (Mode.incident, "SEV3", {"auto_approve": True}, "auto-approved by the alert route"),
    ],
)
def test_policy_auto_approves_without_pausing(mode, severity, options, why):
    ctx = _ctx(mode, severity, options)
    ctx.approve("fence old primary")  # would need a flow run if it paused
    assert ctx.approvals[0].automatic and ctx.approvals[0].approved
    assert ctx.approvals[0].why.startswith(why)


def test_phase_records_failure_and_reraises():
    ctx = _ctx(Mode.drill)
    with pytest.raises(RuntimeError), ctx.phase("promote", detail="pg2"):
        raise RuntimeError("promote failed: password=hunter2")
    phase = ctx.phases[0]
    assert phase.outcome == "failed" and phase.ended_at is not None
    assert "password=***" in phase.detail and "hunter2" not in phase.detail


def test_only_compensable_changes_with_an_undo_go_on_the_stack():
    ctx = _ctx(Mode.drill)
    changed = Change(system="docker", action="stop", object="app", outcome="changed")
    ctx.record_change(changed, undo=lambda: None)
    ctx.record_change(changed.model_copy(update={"outcome": "unchanged"}), undo=lambda: None)
    ctx.record_change(changed.model_copy(update={"compensable": False}), undo=lambda: None)
    assert len(ctx.changes) == 3 and len(ctx._undo_stack) == 1


# ---------------------------------------------------------------------- reports


def _run(**overrides: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "scenario": "region-failover",
        "target": "lab",
        "mode": "drill",
        "severity": "drill",
        "outcome": "passed",
        "objectives_met": True,
        "rto_seconds": 42.5,
        "rpo_seconds": 1.25,
        "lost_rows": 25,
        "objectives": {"rto_seconds": 900.0, "rpo_seconds": 300.0},
        "rto_basis": "restored_at - failure_at",
        "rpo_basis": "heartbeat",
        "declared_at": T0.isoformat(),
        "failure_at": (T0 + timedelta(seconds=10)).isoformat(),
        "restored_at": (T0 + timedelta(seconds=52.5)).isoformat(),
        "phases": [
            {
                "name": "inject failure",
                "started_at": T0.isoformat(),
                "ended_at": (T0 + timedelta(seconds=10)).isoformat(),
                "outcome": "ok",
                "detail": "stop pg1 | immediate",
            },
            {
                "name": "promote",
                "started_at": (T0 + timedelta(seconds=10)).isoformat(),
                "ended_at": (T0 + timedelta(seconds=12)).isoformat(),
                "outcome": "ok",
                "detail": "",
            },
        ],
        "checks": [{"name": "http: api", "ok": True, "critical": True, "detail": "HTTP 200"}],
        "changes": [
            {
                "system": "postgres",
                "action": "promote",
                "object": "pg2",
                "outcome": "changed",
                "undo": "pg_rewind pg1 and follow pg2",
                "compensable": False,
                "at": (T0 + timedelta(seconds=11)).isoformat(),
            }
        ],
        "undone": [],
        "not_undone": [],
        "plan": [],
        "approvals": [],
        "notes": [],
        "slack_failures": [],
        "reason": "",
        "flow_run_id": "3f0c",
        "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/3f0c",
    }
    run.update(overrides)
    return run


def test_table_rows_list_phases_then_rto_and_rpo_against_objectives():
    rows = table_rows(_run(rpo_seconds=301.0))
    assert [r["phase"] for r in rows] == ["inject failure", "promote", "RTO", "RPO"]
    assert rows[0]["duration_seconds"] == 10.0 and rows[0]["result"] == "ok"
    assert rows[0]["start"] == "2026-03-01 12:00:00.000Z"
    rto, rpo = rows[2], rows[3]
    assert (rto["duration_seconds"], rto["objective"], rto["result"]) == (
        42.5,
        "<= 15 min 00 s",
        "pass",
    )
    assert rto["start"] == "2026-03-01 12:00:10.000Z"  # drills: from failure_at
    assert (rpo["result"], rpo["objective"]) == ("fail", "<= 5 min 00 s")
    assert table_rows(_run(rto_seconds=None))[2]["result"] == "not measured"


def test_markdown_report_sections_escaping_and_checklist():
    md = render_markdown(
        _run(
            outcome="failed",
            reason="critical check(s) failed: http: api",
            undone=["docker stop app (undo: docker start app)"],
            not_undone=["postgres promote pg2: not compensable; by hand: pg_rewind pg1"],
            slack_failures=["2026-03-01T12:00:05+00:00 reply (chat.postMessage): HTTP 503"],
        ),
        history_note="History was not written for this run; the chart shows this run only.",
    )
    assert md.startswith("# DR drill: region-failover on lab: FAILED")
    for heading in (
        "## Measurements against objectives",
        "## Timeline (UTC)",
        "## Checks run",
        "## Changes made and how to undo them",
        "## Compensation",
        "## Notifications",
        "## RTO and RPO over past runs",
        "## Follow-up checklist",
    ):
        assert heading in md
    assert "| RTO | 42.5 s | <= 15 min 00 s | PASS |" in md
    assert "stop pg1 \\| immediate" in md  # a pipe cannot break the table
    assert "| pg_rewind pg1 and follow pg2 | no |" in md
    assert "HTTP 503" in md and "History was not written" in md
    assert "- [x] Recovery time measured and compared with the objective" in md
    assert "- [ ] Post-drill review held with the people on call" in md
    incident = render_markdown(_run(mode="incident"))
    assert "## Post-incident checklist" in incident
    assert "- [ ] Blameless post-mortem within 7 days" in incident


def test_dry_run_report_lists_the_ordered_plan():
    md = render_markdown(
        _run(
            mode="dry-run",
            rto_seconds=None,
            rpo_seconds=None,
            plan=["would stop container app", "would promote replica pg2"],
        )
    )
    assert "## Plan (dry run: nothing was changed)" in md
    assert "1. would stop container app\n2. would promote replica pg2" in md
    assert "- [x] Plan reviewed" in md


def test_chart_is_embedded_as_a_data_uri_svg():
    md = render_markdown(_run())
    assert "<svg" not in md  # the Prefect UI strips inline SVG
    match = re.search(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", md)
    assert match
    root = ET.fromstring(base64.b64decode(match.group(1)))
    assert root.tag == f"{SVG_NS}svg"
    assert svg_data_uri("<svg/>") == "data:image/svg+xml;base64,PHN2Zy8+"


def test_trend_chart_plots_measured_runs_green_within_and_red_beyond_objectives():
    rows = [
        {
            "declared_at": T0 + timedelta(days=i),
            "mode": "drill",
            "rto_seconds": rto,
            "rpo_seconds": rpo,
            "rto_objective_seconds": 900,
            "rpo_objective_seconds": 300,
        }
        for i, (rto, rpo) in enumerate([(120, 0), (1000, 2), (600, None)])
    ]
    rows.append({"declared_at": T0 + timedelta(days=9), "mode": "dry-run", "rto_seconds": 5})
    root = ET.fromstring(trend_svg(rows, title="region-failover on lab"))
    circles = root.findall(f"{SVG_NS}circle")
    assert len(circles) == 5  # 3 RTO + 2 RPO; the dry run and the unmeasured RPO are left out
    fills = [c.get("fill") for c in circles]
    assert fills.count("#c0392b") == 1  # only RTO 1000 s > 900 s
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG_NS}text"))
    assert "(3 runs)" in texts and "objective 15 min 00 s" in texts
    assert len(root.findall(f"{SVG_NS}polyline")) == 2
    empty = ET.fromstring(trend_svg([]))
    assert "no measurements yet" in " ".join(t.text or "" for t in empty.iter(f"{SVG_NS}text"))


def test_reports_never_show_secrets():
    register_secret("s3cr3t-rotated-value")
    run = _run(
        reason="psycopg: FATAL password=hunter2 for postgresql://dr:pa55word@db/app",
        notes=["new key is s3cr3t-rotated-value"],
        changes=[
            {
                "system": "iam",
                "action": "rotate",
                "object": "ci-user",
                "outcome": "changed",
                "undo": "restore key s3cr3t-rotated-value",
                "compensable": False,
                "at": T0.isoformat(),
            }
        ],
    )
    md = render_markdown(run)
    html = render_html(
        [
            {
                "scenario": "breach-response",
                "target": "lab",
                "mode": "drill",
                "outcome": "passed",
                "declared_at": T0,
                "flow_run_id": "token=xoxb-123-abc",
            }
        ]
    )
    for text in (md, html, str(table_rows(run))):
        for secret in ("hunter2", "pa55word", "s3cr3t-rotated-value", "xoxb-123-abc"):
            assert secret not in text


def test_keys_and_lock_names_are_stable_and_valid():
    assert artifact_key("backup-verification", "lab") == "dr-backup-verification-lab"
    assert artifact_key("region-failover", "Prod_DB.eu", "report") == (
        "dr-region-failover-prod-db-eu-report"
    )
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("x", "Ünïcode  name!!"))
    assert lock_name("Prod.EU") == "dr-target-prod-eu"


def test_targets_on_one_cluster_share_its_lock():
    from dr.config import parse_config
    from flows.lifecycle import lock_names

    def target(port: int) -> dict:
        return {
            "postgres": {
                "primary": {"name": "p", "host": "DB.internal", "port": port},
                "databases": ["x"],
            },
            "backup": {"repository": "file:///b"},
        }

    cfg = parse_config({"targets": {"a": target(6000), "b": target(6000), "c": target(6001)}})
    assert lock_names(cfg, "a") == ["dr-target-a", "dr-cluster-db-internal-6000"]
    assert lock_names(cfg, "b")[1] == lock_names(cfg, "a")[1]
    assert lock_names(cfg, "c")[1] != lock_names(cfg, "a")[1]


# ---------------------------------------------------------------------- CLI helpers, registry


def test_options_are_parsed_as_yaml_scalars():
    assert parse_options(["a=1", "b=true", "c=some text", "d=", "e=x=y"]) == {
        "a": 1,
        "b": True,
        "c": "some text",
        "d": "",
        "e": "x=y",
    }
    with pytest.raises(ConfigError):
        parse_options(["novalue"])


def test_registry_maps_every_scenario_and_explains_a_missing_one(monkeypatch):
    assert registry.flow_import_path("region-failover") == (
        "flows.region_failover:region_failover_flow"
    )
    assert {s.value for s in registry.SCENARIO_FLOWS} == {s.value for s in Scenario}
    monkeypatch.setitem(
        registry.SCENARIO_FLOWS, Scenario.breach_response, "flows.no_such_module:flow"
    )
    with pytest.raises(ConfigError, match="'breach-response' is not installed"):
        registry.load_flow("breach-response")
    with pytest.raises(ConfigError, match="unknown scenario"):
        registry.flow_import_path("meteor-strike")


def test_config_path_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DR_CONFIG", raising=False)
    assert registry.find_config_path() == registry.Path("dr.yaml")
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "dr.yaml").write_text("{}")
    assert registry.find_config_path() == registry.LAB_CONFIG_PATH
    (tmp_path / "dr.yaml").write_text("{}")
    assert registry.find_config_path() == registry.Path("dr.yaml")
    monkeypatch.setenv("DR_CONFIG", "/etc/dr.yaml")
    assert registry.find_config_path() == registry.Path("/etc/dr.yaml")
    assert registry.find_config_path("given.yaml") == registry.Path("given.yaml")


def test_always_ask_pauses_even_when_policy_would_approve(monkeypatch):
    ctx = _ctx(Mode.drill)
    asked: list[str] = []
    monkeypatch.setattr(ctx, "_pause_for_approval", asked.append)
    ctx.approve("promote while pg1 is not proven fenced", always_ask=True)
    assert asked == ["promote while pg1 is not proven fenced"] and ctx.approvals == []
