"""End to end: deployments, a worker and the alerting API against a real Prefect server.

The chain a team relies on in an incident: ``dr deploy`` (and a plain ``prefect deploy
--all``) put every flow on the server with dr.yaml's schedules and targets; a worker
started as the README says runs them; Alertmanager posts its documented webhook to ``dr
serve-alerts`` and exactly one drill runs per alert, completes, and leaves its report.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from deployments.deploy.specs import stagger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRILL = "backup-verification/backup-verification-drill"
INCIDENT = "backup-verification/backup-verification-incident"
BACKUP = "backup/backup-hourly"


def alertmanager_v4(
    alertname: str, fingerprint: str, starts_at: str, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A webhook body as Alertmanager sends it (``version: "4"``).

    The shape and every field are those of the example in Alertmanager's documentation
    (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config), filled
    with the values of a "backups not verified" alert.
    """
    labels = {
        "alertname": alertname,
        "severity": "warning",
        "target": "lab",
        **(extra_labels or {}),
    }
    annotations = {"summary": "no verified backup of lab for 26 h"}
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(alertname) + "}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "dr-pipelines",
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph?g0.expr="
                "dr_backup_verified_age_seconds+%3E+93600",
                "fingerprint": fingerprint,
            }
        ],
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _schedules(deployment: dict[str, Any]) -> list[tuple[str, str, str | None, bool]]:
    return sorted(
        (s["schedule"]["cron"], s["schedule"]["timezone"], s["parameters"].get("target"),
         s["active"])
        for s in deployment["schedules"]
    )  # fmt: skip


def test_deploy_puts_every_flow_on_the_server_with_config_schedules_and_targets(
    deployed: Any, e2e_prefect: Any, e2e: Any, record_property: Any
) -> None:
    api = e2e_prefect.api
    cfg = deployed.config
    targets = list(cfg["targets"])
    drill_targets = [n for n, t in cfg["targets"].items() if t.get("drills_allowed")]
    s = e2e.schedules

    # `dr deploy --no-deployments` stored dr.yaml's schedules as variables and made the pool.
    prepared = {o["name"]: o for o in deployed.prepare_report["outcomes"]}
    assert prepared["dr_schedule_backup"]["detail"] == repr(s["backup"])
    assert prepared["dr_schedule_timezone"]["detail"] == repr(s["timezone"])
    assert prepared[e2e.pool]["kind"] == "work-pool"

    # A plain `prefect deploy --all` resolved prefect.yaml's placeholders from them.
    plain = deployed.after_prefect_deploy
    assert (s["backup"], s["timezone"], targets[0], True) in _schedules(plain[BACKUP])
    assert _schedules(plain[DRILL]) == [
        (s["backup_verification"], s["timezone"], drill_targets[0], True)
    ]
    assert plain[DRILL]["parameters"] == {
        "mode": "drill",
        "target": drill_targets[0],
        "fail_flow": True,
    }
    assert plain[DRILL]["work_pool_name"] == e2e.pool
    assert plain[DRILL]["global_concurrency_limit"]["limit"] == 1
    assert plain[DRILL]["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert plain[INCIDENT]["schedules"] == []

    # `dr deploy`: every deployment of prefect.yaml, nothing skipped, one schedule per target.
    outcomes = {
        o["name"]: o["outcome"] for o in deployed.report["outcomes"] if o["kind"] == "deployment"
    }
    expected = {
        "backup/backup-hourly", "backup/base-backup-daily", "failback/failback",
        *(f"{sc}/{sc}-{m}" for sc in ("backup-verification", "region-failover",
                                      "data-corruption", "breach-response")
          for m in ("drill", "incident")),
    }  # fmt: skip
    assert set(outcomes) == expected
    assert set(outcomes.values()) <= {"created", "updated"}

    backup = api.deployment(BACKUP)
    assert _schedules(backup) == sorted((s["backup"], s["timezone"], t, True) for t in targets)
    base = api.deployment("backup/base-backup-daily")
    assert _schedules(base) == sorted((s["base_backup"], s["timezone"], t, True) for t in targets)
    for scenario, key in (
        ("backup-verification", "backup_verification"),
        ("region-failover", "region_failover"),
        ("data-corruption", "data_corruption"),
        ("breach-response", "breach_response"),
    ):
        drill = api.deployment(f"{scenario}/{scenario}-drill")
        got = _schedules(drill)
        assert sorted(t for _, _, t, _ in got) == sorted(drill_targets)
        assert all(tz == s["timezone"] and active for _, tz, _, active in got)
        # Staggered: dr.yaml's cron, moved by 15-minute steps where a cluster is busy.
        assert {c for c, *_ in got} <= {stagger(s[key], 15 * i) for i in range(96)}
        assert {f"drill-{t}" for t in drill_targets} == {x["slug"] for x in drill["schedules"]}
        props = drill["parameter_openapi_schema"]["properties"]
        assert props["target"]["enum"] == drill_targets
        assert props["mode"]["enum"] == ["drill"] and props["mode"]["readOnly"] is True
        incident = api.deployment(f"{scenario}/{scenario}-incident")
        assert incident["schedules"] == []
        props = incident["parameter_openapi_schema"]["properties"]
        assert props["target"]["enum"] == targets
        assert props["mode"]["enum"] == ["incident", "dry-run"]
        assert incident["enforce_parameter_schema"] is True

    pool = api.get(f"work_pools/{e2e.pool}")
    assert pool["type"] == "process"
    env_default = pool["base_job_template"]["variables"]["properties"]["env"]["default"]
    assert env_default["DR_CONFIG"] == str(deployed.config_path)

    # Bad values are refused by the server before any run exists (HTTP 409).
    before = len(api.runs_of(DRILL))
    refused = api.create_run(DRILL, {"target": "no-such-target", "mode": "drill"})
    assert refused.status_code == 409, refused.text
    refused = api.create_run(DRILL, {"target": drill_targets[0], "mode": "incident"})
    assert refused.status_code == 409, refused.text
    assert len(api.runs_of(DRILL)) == before

    # The scheduler turns the schedules into runs, one per target, with its parameters.
    deadline = time.monotonic() + 60
    while True:
        scheduled = api.runs_of(BACKUP, tags=["auto-scheduled"])
        seen = {r["parameters"].get("target") for r in scheduled}
        if seen >= set(targets) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen >= set(targets), f"scheduled runs of {BACKUP}: {seen}"
    assert all(r["parameters"]["kind"] == "logical" for r in scheduled)

    # Deploying again changes nothing (in this process: the CLI ran three times above).
    from deployments.deploy import deploy
    from dr.config import load_config

    t0 = time.monotonic()
    again = deploy(
        load_config(deployed.config_path),
        config_path=deployed.config_path,
        api_url=e2e_prefect.api_url,
    )
    assert {o.outcome for o in again.outcomes} == {"unchanged"}, again.outcomes
    timings = {**deployed.seconds, "deploy again (unchanged)": time.monotonic() - t0}
    record_property("deploy_seconds", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print("deploy timings:", {k: round(v, 1) for k, v in timings.items()})


def test_unauthenticated_and_malformed_posts_get_401_and_422_and_start_nothing(
    alert_receiver: Any, e2e_prefect: Any, e2e: Any
) -> None:
    api = e2e_prefect.api
    before = api.count_runs(["alert"])
    body = alertmanager_v4(e2e.alertname, secrets.token_hex(8), _now())
    url = f"{alert_receiver.url}/alerts/alertmanager"
    good = {"Authorization": f"Bearer {alert_receiver.token}"}
    with httpx.Client(timeout=10) as http:
        assert http.post(url, json=body).status_code == 401
        wrong = http.post(url, json=body, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert alert_receiver.token not in wrong.text
        broken = http.post(
            url,
            content=b'{"version": "4", "alerts": [',
            headers={**good, "Content-Type": "application/json"},
        )
        assert broken.status_code == 422, broken.text
        no_alerts = {k: v for k, v in body.items() if k != "alerts"}
        assert http.post(url, json=no_alerts, headers=good).status_code == 422
        assert http.post(url, json={**body, "version": "3"}, headers=good).status_code == 422
    assert api.count_runs(["alert"]) == before


def test_1000_posts_of_10_alerts_for_one_target_start_one_run_per_alert_or_attach(
    alert_receiver: Any, e2e_prefect: Any, e2e: Any, record_property: Any
) -> None:
    api = e2e_prefect.api
    fingerprints = [secrets.token_hex(8) for _ in range(10)]
    starts_at = _now()
    url = f"{alert_receiver.url}/alerts/alertmanager"
    headers = {"Authorization": f"Bearer {alert_receiver.token}"}
    bodies = [
        json.dumps(alertmanager_v4(e2e.alertname, fp, starts_at, {"e2e": "burst"})).encode()
        for fp in fingerprints
    ]

    async def burst() -> list[tuple[int, float, dict[str, Any]]]:
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as http:

            async def post(i: int) -> tuple[int, float, dict[str, Any]]:
                async with limit:
                    t0 = time.perf_counter()
                    resp = await http.post(
                        url,
                        content=bodies[i % 10],
                        headers={**headers, "Content-Type": "application/json"},
                    )
                    return resp.status_code, time.perf_counter() - t0, resp.json()

            return await asyncio.gather(*(post(i) for i in range(1000)))

    started = time.perf_counter()
    results = asyncio.run(burst())
    elapsed = time.perf_counter() - started
    codes = {code for code, _, _ in results}
    assert codes <= {200, 201}, {c: sum(1 for r in results if r[0] == c) for c in codes}
    # Ten alerts for ONE target: each is answered with exactly one run, its own or the
    # target's active dry-run it attached to (issue 14: never a second run per target while
    # one is active), and the server holds exactly the runs that were answered.
    runs_by_fp: dict[str, set[str]] = {}
    attached: set[str] = set()
    for _, _, payload in results:
        for run in payload["runs"]:
            assert run["route"] == e2e.burst_route and run["mode"] == "dry-run"
            runs_by_fp.setdefault(run["fingerprint"], set()).add(run["flow_run_id"])
            if run.get("attached"):
                attached.add(run["fingerprint"])
    assert set(runs_by_fp) == set(fingerprints)
    assert all(len(ids) == 1 for ids in runs_by_fp.values())
    answered = {next(iter(ids)) for ids in runs_by_fp.values()}

    on_server = api.runs_of(INCIDENT, tags=[f"route:{e2e.burst_route}"])
    assert {r["id"] for r in on_server} == answered
    assert 1 <= len(on_server) <= 10
    assert len(on_server) + len(attached) == 10  # every alert started a run or attached
    started_by = {r["parameters"]["options"]["alert_fingerprint"] for r in on_server}
    assert started_by | attached == set(fingerprints) and not started_by & attached
    latencies = sorted(t for _, t, _ in results)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    record_property("burst", f"1000 posts in {elapsed:.1f} s, p99 {p99 * 1000:.0f} ms")
    print(f"burst: 1000 posts in {elapsed:.1f} s, p99 {p99 * 1000:.0f} ms")
    for run in on_server:  # dry runs of no interest beyond the count
        api.delete_run(run["id"])


def test_documented_alertmanager_webhook_runs_the_drill_to_completion_with_its_report(
    alert_receiver: Any,
    worker: Any,
    backup_taken: dict[str, Any],
    e2e_prefect: Any,
    e2e: Any,
    record_property: Any,
) -> None:
    api = e2e_prefect.api
    fingerprint = "3b15fd163e5e6f3a"
    body = alertmanager_v4(e2e.alertname, fingerprint, _now())
    url = f"{alert_receiver.url}/alerts/alertmanager"
    headers = {"Authorization": f"Bearer {alert_receiver.token}"}
    t0 = time.perf_counter()
    resp = httpx.post(url, json=body, headers=headers, timeout=30)
    answered = time.perf_counter() - t0
    assert resp.status_code == 201, resp.text
    (run,) = resp.json()["runs"]
    assert (run["route"], run["scenario"], run["target"], run["mode"]) == (
        e2e.drill_route, "backup-verification", "lab", "drill",
    )  # fmt: skip
    assert run["flow_run_url"].startswith(e2e_prefect.ui_url)
    assert run["flow_run_url"].endswith(run["flow_run_id"])

    started = time.monotonic()
    finished = api.wait_run(run["flow_run_id"], timeout_seconds=180)
    took = time.monotonic() - started
    assert finished["deployment_id"] == api.deployment(DRILL)["id"]
    assert finished["parameters"]["options"]["alert_fingerprint"] == fingerprint
    assert {"alert", "alert-source:alertmanager", f"route:{e2e.drill_route}"} <= set(
        finished["tags"]
    )

    artifacts = {a["key"]: a for a in api.artifacts(run["flow_run_id"]) if a["key"]}
    assert {"dr-backup-verification-lab", "dr-backup-verification-lab-report"} <= set(artifacts)
    report = artifacts["dr-backup-verification-lab-report"]["data"]
    assert report.startswith("# DR drill: backup-verification on lab: PASSED"), report[:300]

    # The same alert again (Alertmanager repeats it): the same run, nothing new.
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["runs"][0]["flow_run_id"] == run["flow_run_id"]
    assert again.json()["runs"][0]["deduplicated"] is True
    fp_runs = [
        r
        for r in api.runs_of(DRILL, tags=[f"route:{e2e.drill_route}"])
        if r["parameters"]["options"]["alert_fingerprint"] == fingerprint
    ]
    assert [r["id"] for r in fp_runs] == [run["flow_run_id"]]
    timing = (
        f"answered in {answered * 1000:.0f} ms; drill ran in {took:.1f} s; "
        f"backup before it {backup_taken['e2e_seconds']} s"
    )
    record_property("drill", timing)
    print("alert drill:", timing)
