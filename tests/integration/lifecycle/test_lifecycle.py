"""The shared incident lifecycle, end to end, in each mode, against real local services.

The scenario under test is defined here: it stops a small HTTP service ("the thing"),
promotes it behind an approval gate, starts it again, then verifies end-to-end health
(HTTP, SQL, a validation query and, in drills, heartbeat writes on the primary). Runs go
through the real Prefect API, the Slack stand-in and PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import base64
import contextvars
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
import typer
from prefect import flow, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.flow_runs import resume_flow_run
from typer.testing import CliRunner

import flows.lifecycle as lifecycle
import flows.registry
from cli.runs import register
from dr.changes import Change
from dr.config import Mode, Scenario
from dr.errors import PreconditionError, UnsafeTargetError, VerificationError
from flows.lifecycle import RunContext, RunResult, run_scenario
from lab.pgcluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

THINGS: dict[str, Any] = {}
RUN_IDS: dict[str, str] = {}
EVENTS: list[tuple[str, str, float]] = []
_EVENTS_LOCK = threading.Lock()


def _event(tag: str, what: str) -> None:
    with _EVENTS_LOCK:
        EVENTS.append((tag, what, time.monotonic()))


def _wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------- the test scenario


def scenario_body(ctx: RunContext) -> None:
    """Stop a thing, promote it (gated), start it, verify: a runbook in miniature."""
    opts = ctx.options
    tag = str(opts.get("tag", ""))
    RUN_IDS[tag] = str(ctx.flow_run_id)
    thing = THINGS[ctx.target.health_checks.http[0].name]
    _event(tag, "enter")
    try:
        with ctx.phase("assess", detail=f"{thing.name} answers before anything changes"):
            ctx.record_check(f"{thing.name} up before", thing.running)
            if opts.get("hold_seconds"):
                time.sleep(float(opts["hold_seconds"]))  # keeps the target busy for the other run
        ctx.progress(0.25, "assessed")
        with ctx.phase("inject failure" if ctx.is_drill else "fence"):
            if ctx.is_drill:
                probe = ctx.start_heartbeat()
                assert probe is not None
                _wait_for(lambda: len(probe.acked) >= 5, what="baseline heartbeats")
            if ctx.plan("stop", f"the thing {thing.name} ({thing.url})"):
                ctx.record_change(thing.stop(), undo=thing.start)
            ctx.stamp_failure()
        with ctx.phase("recover"):
            ctx.approve(f"promote {thing.name}")
            if ctx.plan("promote", f"the thing {thing.name}"):
                ctx.record_change(thing.promote(), undo=thing.demote)
            if opts.get("fail_after_changes"):
                ctx.record_change(
                    Change(
                        system="tickets",
                        action="open",
                        object="INC-1",
                        outcome="created",
                        undo="close INC-1 by hand",
                        compensable=False,
                    )
                )
                raise VerificationError("injected: the promoted thing refused writes")
            if ctx.plan("start", f"the thing {thing.name}"):
                ctx.record_change(thing.start(), undo=thing.stop)
        with ctx.phase("verify"):
            ctx.verify_health(timeout_seconds=15, interval_seconds=0.05)
            if ctx.is_drill:
                ctx.measure_heartbeat_rpo()
            elif not ctx.dry_run:
                ctx.measure(rpo_seconds=0.0, rpo_basis="the test scenario touches no data")
        ctx.progress(1.0, "verified")
    finally:
        _event(tag, "exit")


@flow(name="lifecycle-test-scenario")
def lifecycle_test_flow(
    target: str,
    mode: Mode = Mode.drill,
    severity: str = "SEV2",
    options: dict[str, Any] | None = None,
    config_path: str | None = None,
) -> RunResult:
    return run_scenario(
        Scenario.backup_verification,
        target,
        mode,
        scenario_body,
        config_path=config_path,
        severity=severity,
        options=options,
    )


# ---------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def fresh_things(lifecycle_env, monkeypatch):
    """Every test starts with running, unpromoted things, the test flow in the registry."""
    for name in ("app", "gate-app", "busy-app", "prod-app"):
        thing = lifecycle_env.thing(name)
        thing.start()
        thing.demote()
        thing.log.clear()
        THINGS[name] = thing
    monkeypatch.setattr(flows.registry, "load_flow", lambda scenario: lifecycle_test_flow)
    yield


@pytest.fixture
def cli() -> Callable[..., tuple[int, str, str]]:
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def _artifacts(flow_run_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return {a.key: a for a in found if a.key}


def _flow_state(flow_run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


def _thread_messages(slack, channel: str, flow_run_id: str) -> tuple[dict, list[dict]]:
    """The opening message of the run's thread and its replies, from the stand-in."""
    messages = [m for m in slack.messages if m["channel_name"] == channel]
    openings = [
        m
        for m in messages
        if m["thread_ts"] is None
        and any(flow_run_id in json.dumps(v) for v in (m["blocks"], m["history"]))
    ]
    assert len(openings) == 1, f"expected one opening for {flow_run_id}, got {len(openings)}"
    opening = openings[0]
    replies = [m for m in messages if m["thread_ts"] == opening["ts"]]
    return opening, replies


def _run_in_thread(**kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    context = contextvars.copy_context()  # the module's Prefect settings, in the thread too

    def target() -> None:
        try:
            box.append(context.run(lifecycle_test_flow, **kwargs))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_paused(tag: str) -> str:
    run_id = _wait_for(lambda: RUN_IDS.get(tag), what=f"run {tag} to start")
    _wait_for(lambda: (s := _flow_state(run_id)) is not None and s.is_paused(), what="pause")
    return run_id


# ---------------------------------------------------------------------- drill


def test_drill_end_to_end_artifacts_slack_history_and_report(lifecycle_env, cli, tmp_path):
    config = lifecycle_env.write_config()
    code, out, err = cli(
        "drill", "backup-verification", "--target", "lc", "--json", "--config", str(config)
    )
    assert code == 0, err
    result = json.loads(out)  # exactly one JSON object on stdout
    assert result["outcome"] == "passed"
    assert result["objectives_met"] is True
    assert result["mode"] == "drill"
    assert [p["name"] for p in result["phases"]] == [
        "assess",
        "inject failure",
        "recover",
        "verify",
    ]
    for phase in result["phases"]:
        assert phase["started_at"] <= phase["ended_at"] and phase["outcome"] == "ok"
    assert result["objectives"] == {"rto_seconds": 900.0, "rpo_seconds": 300.0}

    # RTO measured from the real moments: failure injected -> every check passed.
    failure_at = datetime.fromisoformat(result["failure_at"])
    restored_at = datetime.fromisoformat(result["restored_at"])
    assert result["rto_seconds"] == pytest.approx((restored_at - failure_at).total_seconds())
    assert 0 < result["rto_seconds"] < 15
    assert result["rto_basis"].startswith("restored_at - failure_at")
    assert result["rpo_seconds"] == 0.0 and result["lost_rows"] == 0
    assert result["rpo_basis"].startswith("heartbeat")
    checks = {c["name"]: c for c in result["checks"]}
    assert all(c["ok"] for c in result["checks"]), checks
    kinds = {name.split(":")[0] for name in checks if ":" in name}
    assert kinds == {"http", "sql", "validation", "heartbeat"}
    assert {"http: app", "sql: customers-present", "validation: no-orphan-order-items"} <= set(
        checks
    )
    assert [(c["action"], c["outcome"]) for c in result["changes"]] == [
        ("stop", "changed"),
        ("promote", "changed"),
        ("start", "changed"),
    ]
    assert THINGS["app"].log == ["stop", "promote", "start"] and THINGS["app"].running

    # Artifacts, read back through the Prefect API under their stable keys.
    run_id = result["flow_run_id"]
    artifacts = _artifacts(run_id)
    table = artifacts["dr-backup-verification-lc"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["phase"] for r in rows] == [
        "assess",
        "inject failure",
        "recover",
        "verify",
        "RTO",
        "RPO",
    ]
    assert rows[-2]["result"] == "pass" and rows[-2]["objective"].startswith("<= 15 min")
    markdown = artifacts["dr-backup-verification-lc-report"].data
    for section in ("Measurements against objectives", "Timeline (UTC)", "Checks run"):
        assert section in markdown
    assert "Changes made and how to undo them" in markdown and "start app" in markdown
    assert "- [x] Recovery time measured and compared with the objective" in markdown
    uri = re.search(r"!\[[^\]]*\]\((data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)\)", markdown)
    assert uri, "the trend chart must be a data-URI image"
    svg = base64.b64decode(uri.group(1).split(",", 1)[1]).decode()
    assert ET.fromstring(svg).tag.endswith("svg")
    assert "<svg" not in markdown  # raw inline SVG would be stripped by the UI
    progress = artifacts["dr-backup-verification-lc-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0

    # One Slack thread: opening updated at the end, a reply per phase, status updates.
    opening, replies = _thread_messages(lifecycle_env.slack, "dr-app", run_id)
    assert "in progress" in json.dumps(opening["history"][0]["blocks"]).lower()
    assert "PASSED" in opening["text"] and "RTO" in opening["text"]
    texts = [r["text"] for r in replies]
    for phase in ("assess", "inject failure", "recover", "verify"):
        assert any(t.startswith(f"{phase}: ok") for t in texts), texts
    assert any(t.startswith("still running: ") for t in texts)
    assert texts[-1].startswith("Finished: PASSED")

    # History row, and `dr report --json` showing it with RTO/RPO against objectives.
    html = tmp_path / "report.html"
    code, out, err = cli(
        "report", "--target", "lc", "--json", "--html", str(html), "--config", str(config)
    )
    assert code == 0, err
    report = json.loads(out)
    row = next(r for r in report["runs"] if r["flow_run_id"] == run_id)
    assert row["rto_seconds"] == pytest.approx(result["rto_seconds"])
    assert row["rto_objective_seconds"] == 900.0 and row["rto_met"] is True
    assert row["rpo_seconds"] == 0.0 and row["rpo_met"] is True
    page = html.read_text()
    assert "<svg" in page and run_id in page


def test_slack_down_run_still_recovers_and_reports_slack_failures(lifecycle_env, monkeypatch):
    monkeypatch.setattr(lifecycle.finish, "SLACK_FLUSH_SECONDS", 1.0)
    config = lifecycle_env.write_config()
    lifecycle_env.slack.set_down(True, "503")
    try:
        started = time.monotonic()
        result = lifecycle_test_flow(target="lc", mode=Mode.drill, config_path=str(config))
        elapsed = time.monotonic() - started
    finally:
        lifecycle_env.slack.set_down(False)
    assert result.outcome == "passed" and result.objectives_met
    assert result.restored_at is not None and THINGS["app"].running
    assert result.slack_failures, "every undelivered message is listed"
    assert any("chat.postMessage" in f for f in result.slack_failures)
    assert elapsed < 15, f"Slack being down slowed the run: {elapsed:.1f} s"
    markdown = _artifacts(result.flow_run_id)["dr-backup-verification-lc-report"].data
    assert "Slack messages that could not be delivered" in markdown


def _target_snapshot(env) -> dict[str, Any]:
    """What a run could change: tables, probe heartbeats, shop rows, the thing."""
    with psycopg.connect(env.app_conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        probe_rows = conn.execute(
            "SELECT count(*) FROM public.dr_heartbeat WHERE writer <> 'app'"
        ).fetchone()[0]
        customers = conn.execute("SELECT count(*) FROM shop.customers").fetchone()[0]
    thing = THINGS["app"]
    return {
        "tables": tables,
        "probe_rows": probe_rows,
        "customers": customers,
        "running": thing.running,
        "promoted": thing.promoted,
        "log": list(thing.log),
    }


def test_dry_run_prints_the_plan_and_changes_nothing(lifecycle_env, cli):
    config = lifecycle_env.write_config()
    before = _target_snapshot(lifecycle_env)
    code, out, err = cli(
        "run",
        "backup-verification",
        "--target",
        "lc",
        "--dry-run",
        "--json",
        "--config",
        str(config),
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "dry-run" and result["outcome"] == "passed"
    app = THINGS["app"]
    assert result["plan"] == [
        f"would stop the thing app ({app.url})",
        "would ask for approval before: promote app",
        "would promote the thing app",
        "would start the thing app",
        "would poll the end-to-end health checks of lc",
    ]
    assert result["changes"] == [] and result["failure_at"] is None
    assert {p["outcome"] for p in result["phases"]} == {"planned"}
    assert _target_snapshot(lifecycle_env) == before  # nothing changed on the target

    code, out, _ = cli(
        "run", "backup-verification", "--target", "lc", "--dry-run", "--config", str(config)
    )
    assert code == 0
    assert "would promote the thing app" in out and "Plan (dry run" in out
    markdown = _artifacts(result["flow_run_id"])["dr-backup-verification-lc-report"].data
    assert "## Plan (dry run: nothing was changed)" in markdown
    assert "4. would start the thing app" in markdown


def test_drill_refused_on_a_target_that_does_not_allow_drills(lifecycle_env, cli):
    config = lifecycle_env.write_config()
    code, out, _ = cli(
        "drill", "backup-verification", "--target", "prod", "--json", "--config", str(config)
    )
    assert code == 2
    refused = json.loads(out)
    assert refused["outcome"] == "refused" and "does not allow drills" in refused["reason"]
    # The flow refuses too (UI and schedules do not go through the CLI).
    with pytest.raises(UnsafeTargetError, match="does not allow drills"):
        lifecycle_test_flow(target="prod", mode=Mode.drill, config_path=str(config))
    assert THINGS["prod-app"].log == []
    assert not [m for m in lifecycle_env.slack.messages if m["channel_name"] == "dr-prod-app"]


# ---------------------------------------------------------------------- approval gates


def test_paused_incident_resumes_with_dr_approve(lifecycle_env, cli):
    config = lifecycle_env.write_config()
    thread, box = _run_in_thread(
        target="gate", mode=Mode.incident, options={"tag": "approve-cli"}, config_path=str(config)
    )
    run_id = _wait_paused("approve-cli")
    assert THINGS["gate-app"].log == ["stop"], "nothing past the gate before the answer"
    code, out, err = cli("approve", run_id, "--who", "alice", "--why", "replica is healthy")
    assert code == 0, err
    assert "approved by alice" in out
    thread.join(30)
    result = box[0]
    assert isinstance(result, RunResult), result
    assert result.outcome == "passed" and result.mode == "incident"
    assert result.approvals[0].who == "alice" and result.approvals[0].approved
    # An incident without a known failure: the outage starts at the declaration.
    assert result.rto_basis.startswith("restored_at - failure_at (declared_at")
    assert result.failure_at == result.declared_at
    assert result.rto_seconds == pytest.approx(
        (result.restored_at - result.declared_at).total_seconds(), abs=0.002
    )
    assert THINGS["gate-app"].log == ["stop", "promote", "start"]
    _, replies = _thread_messages(lifecycle_env.slack, "dr-gate-app", run_id)
    assert any("Approval needed before *promote gate-app*" in r["text"] for r in replies)
    # Answering again is refused: the run is no longer paused.
    code, _, err = cli("approve", run_id, "--who", "alice", "--why", "again")
    assert code == 1 and "not waiting for approval" in err


def test_paused_incident_resumes_with_the_input_the_ui_sends(lifecycle_env):
    config = lifecycle_env.write_config()
    thread, box = _run_in_thread(
        target="gate", mode=Mode.incident, options={"tag": "approve-ui"}, config_path=str(config)
    )
    run_id = _wait_paused("approve-ui")
    # The UI posts the form to /flow_runs/{id}/resume; an invalid form is refused (200 REJECT).
    bad = httpx.post(
        f"{lifecycle_env.prefect_api_url}/flow_runs/{run_id}/resume",
        json={"run_input": {"approve": True, "who": "bob"}},
    )
    assert bad.status_code == 200 and bad.json()["status"] == "REJECT"
    assert _flow_state(run_id).is_paused()
    # The form has no default answer: a submit without a decision is no approval.
    for answer in ({"who": "x", "why": "y"}, {"approve": "perhaps", "who": "x", "why": "y"}):
        with pytest.raises(RuntimeError, match="Cannot resume"):
            resume_flow_run(UUID(run_id), run_input=answer)
    resume_flow_run(
        UUID(run_id), run_input={"approve": "approve", "who": "bob", "why": "from the UI"}
    )
    thread.join(30)
    result = box[0]
    assert isinstance(result, RunResult), result
    assert result.outcome == "passed"
    assert (result.approvals[0].who, result.approvals[0].why) == ("bob", "from the UI")


def test_rejected_incident_changes_nothing_further_and_undoes_what_was_done(lifecycle_env, cli):
    config = lifecycle_env.write_config()
    thread, box = _run_in_thread(
        target="gate", mode=Mode.incident, options={"tag": "reject"}, config_path=str(config)
    )
    run_id = _wait_paused("reject")
    code, out, err = cli("approve", run_id, "--reject", "--who", "carol", "--why", "wrong replica")
    assert code == 0, err
    assert "rejected by carol" in out
    thread.join(30)
    result = box[0]
    assert isinstance(result, RunResult), result
    assert result.outcome == "aborted" and "rejected by carol: wrong replica" in result.reason
    thing = THINGS["gate-app"]
    assert "promote" not in thing.log and not thing.promoted  # the gated step never ran
    assert thing.log == ["stop", "start"] and thing.running  # the stop was compensated
    assert result.undone == ["thing stop gate-app (undo: start gate-app)"]
    phases = {p.name: p.outcome for p in result.phases}
    assert phases["recover"] == "aborted" and "verify" not in phases
    assert phases["compensate"] == "ok"


def test_timed_out_gate_aborts_safely_and_says_what_was_done(lifecycle_env):
    config = lifecycle_env.write_config("dr-timeout.yaml", approval={"timeout_seconds": 2})
    started = time.monotonic()
    result = lifecycle_test_flow(
        target="gate", mode=Mode.incident, options={"tag": "timeout"}, config_path=str(config)
    )
    assert time.monotonic() - started < 20
    assert result.outcome == "aborted" and "timed out" in result.reason
    assert result.approvals[0].timed_out and not result.approvals[0].approved
    thing = THINGS["gate-app"]
    assert not thing.promoted and thing.log == ["stop", "start"]
    assert result.undone and not result.not_undone
    assert _flow_state(result.flow_run_id).is_completed()  # not left paused
    markdown = _artifacts(result.flow_run_id)["dr-backup-verification-gate-report"].data
    assert "timed out" in markdown and "Undone, newest first" in markdown


# ---------------------------------------------------------------------- lock, compensation


def _intervals(tags: list[str]) -> list[tuple[float, float]]:
    spans = []
    for tag in tags:
        enter = [t for g, w, t in EVENTS if g == tag and w == "enter"]
        leave = [t for g, w, t in EVENTS if g == tag and w == "exit"]
        assert len(enter) == 1 and len(leave) == 1, (tag, EVENTS)
        spans.append((enter[0], leave[0]))
    return sorted(spans)


def test_two_concurrent_runs_on_one_target_never_overlap(lifecycle_env):
    config = lifecycle_env.write_config()
    runs = [
        _run_in_thread(
            target="busy",
            mode=Mode.drill,
            options={"tag": f"busy-{i}", "hold_seconds": 0.6},
            config_path=str(config),
        )
        for i in range(2)
    ]
    for thread, _ in runs:
        thread.join(60)
    results = [box[0] for _, box in runs]
    assert all(isinstance(r, RunResult) and r.outcome == "passed" for r in results), results
    (_, first_out), (second_in, _) = _intervals(["busy-0", "busy-1"])
    assert first_out <= second_in, "the second run acted while the first held the target"


def test_busy_target_with_refuse_policy_fails_at_once(lifecycle_env):
    config = lifecycle_env.write_config(
        "dr-refuse.yaml", concurrency={"on_busy": "refuse", "wait_timeout_seconds": 60}
    )
    thread, box = _run_in_thread(
        target="busy",
        mode=Mode.drill,
        options={"tag": "holder", "hold_seconds": 2},
        config_path=str(config),
    )
    _wait_for(lambda: RUN_IDS.get("holder"), what="the first run to hold the lock")
    started = time.monotonic()
    with pytest.raises(PreconditionError, match="busy"):
        lifecycle_test_flow(
            target="busy", mode=Mode.drill, options={"tag": "refused"}, config_path=str(config)
        )
    assert time.monotonic() - started < 2  # refused at once, not after the holder left
    assert "refused" not in RUN_IDS
    thread.join(60)
    assert box[0].outcome == "passed"


def test_failure_after_two_changes_undoes_both_in_reverse_order(lifecycle_env):
    config = lifecycle_env.write_config()
    result = lifecycle_test_flow(
        target="lc",
        mode=Mode.drill,
        options={"tag": "compensate", "fail_after_changes": True},
        config_path=str(config),
    )
    assert result.outcome == "failed" and "refused writes" in result.reason
    thing = THINGS["app"]
    assert thing.log == ["stop", "promote", "demote", "start"]  # undone newest first
    assert thing.running and not thing.promoted
    assert result.undone == [
        "thing promote app (undo: demote app)",
        "thing stop app (undo: start app)",
    ]
    assert result.not_undone == [
        "tickets open INC-1: not compensable; by hand: close INC-1 by hand"
    ]
    assert result.rto_seconds is None and not result.objectives_met
    markdown = _artifacts(result.flow_run_id)["dr-backup-verification-lc-report"].data
    assert "Not undone (needs a person)" in markdown and "close INC-1 by hand" in markdown


def test_unreachable_history_does_not_stop_the_run(lifecycle_env):
    dead = f"host=127.0.0.1 port={free_port()} dbname=dr_history user=postgres connect_timeout=2"
    config = lifecycle_env.write_config("dr-nohistory.yaml", history={"dsn": dead})
    result = lifecycle_test_flow(target="lc", mode=Mode.drill, config_path=str(config))
    assert result.outcome == "passed" and result.objectives_met
    assert not result.history_written
    assert any(n.startswith("history not written") for n in result.notes)
    markdown = _artifacts(result.flow_run_id)["dr-backup-verification-lc-report"].data
    assert "History was not written for this run" in markdown
