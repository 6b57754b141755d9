"""End to end: ``dr worker`` runs alert-started runs as ordinary Prefect runs, and crashes show.

The fast dispatcher (issue 16) must change how a run's process starts, nothing else: an
Alertmanager alert posted to ``dr serve-alerts`` starts a run of the drill deployment; ``dr
worker`` (not Prefect's worker: none runs in these tests) takes it, its flow code runs,
takes the target's lock and completes with its report, and the run's history in Prefect is
the usual Scheduled -> Pending -> Submitting -> Running -> Completed. A run whose process is killed ends
Crashed. Timings are the benchmark's business (``bench/dispatch.py``), not asserted here.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRILL = "backup-verification/backup-verification-drill"
BACKUP = "backup/backup-hourly"


def _alert(alertname: str, fingerprint: str) -> dict[str, Any]:
    """An Alertmanager version 4 webhook body with one firing alert."""
    labels = {"alertname": alertname, "severity": "warning", "target": "lab"}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(alertname) + "}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "dr-pipelines",
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "backups of lab not verified"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def _taken_by(api: Any, flow_run_id: str) -> list[str]:
    """The workers whose "submitting flow run" line is in the run's logs."""
    logs = api.logs(flow_run_id, limit=200).splitlines()
    return [line.split("'")[1] for line in logs if line.startswith("Worker '")]


def _states(api: Any, flow_run_id: str) -> list[str]:
    resp = api.http.get("flow_run_states/", params={"flow_run_id": flow_run_id})
    resp.raise_for_status()
    return [s["name"] for s in sorted(resp.json(), key=lambda s: s["timestamp"])]


def test_alert_started_drill_runs_through_dr_worker_with_its_lock_and_report(
    dr_worker: Any, alert_receiver: Any, e2e_prefect: Any, e2e: Any
) -> None:
    api = e2e_prefect.api
    # The drill verifies the newest backup: take one, through the same worker.
    backup = api.create_run(BACKUP, {"target": "lab"}, tags=["e2e-dispatch"])
    assert backup.status_code == 201, backup.text
    api.wait_run(backup.json()["id"], timeout_seconds=180)
    assert _taken_by(api, backup.json()["id"]) == [e2e.dr_worker_name]

    # The schedules dr deploy attached left drill runs Scheduled for later; an alert would
    # attach to one of those (the receiver's rule) instead of starting its own run.
    for scheduled in api.runs_of(DRILL):
        if scheduled["state"]["type"] in {"SCHEDULED", "PENDING"}:
            api.delete_run(scheduled["id"])
    fingerprint = "d15a7c4e" + os.urandom(4).hex()
    resp = httpx.post(
        f"{alert_receiver.url}/alerts/alertmanager",
        json=_alert(e2e.alertname, fingerprint),
        headers={"Authorization": f"Bearer {alert_receiver.token}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    (run,) = resp.json()["runs"]
    assert (run["scenario"], run["mode"], run["target"]) == ("backup-verification", "drill", "lab")

    finished = api.wait_run(run["flow_run_id"], timeout_seconds=180)
    flow_run_id = run["flow_run_id"]
    # An ordinary run of the deployment, taken by dr worker alone.
    assert finished["deployment_id"] == api.deployment(DRILL)["id"]
    assert _taken_by(api, flow_run_id) == [e2e.dr_worker_name]
    assert _states(api, flow_run_id) == [
        "Scheduled",
        "Pending",
        "Submitting",
        "Running",
        "Completed",
    ]
    assert finished["infrastructure_pid"], "the worker records the run's process"
    # Its flow code ran: it took the target's lock and wrote its report.
    logs = api.logs(flow_run_id, limit=200)
    assert any(
        line.startswith("lock ") and "dr-target-lab" in line and " taken" in line
        for line in logs.splitlines()
    ), logs
    artifacts = {a["key"]: a for a in api.artifacts(flow_run_id) if a["key"]}
    report = artifacts["dr-backup-verification-lab-report"]["data"]
    assert report.startswith("# DR drill: backup-verification on lab: PASSED"), report[:300]
    assert dr_worker.alive()


def test_a_run_whose_process_is_killed_ends_crashed(
    dr_worker: Any, e2e_prefect: Any, e2e: Any
) -> None:
    api = e2e_prefect.api
    resp = api.create_run(BACKUP, {"target": "lab"}, tags=["e2e-dispatch-crash"])
    assert resp.status_code == 201, resp.text
    flow_run_id = resp.json()["id"]
    deadline = time.monotonic() + 120
    while True:  # until its flow code runs in a process the worker recorded
        run = api.get(f"flow_runs/{flow_run_id}")
        if run["state"]["type"] == "RUNNING" and run.get("infrastructure_pid"):
            break
        assert run["state"]["type"] not in {"COMPLETED", "FAILED", "CRASHED"}, run["state"]
        assert time.monotonic() < deadline, f"run still {run['state']['type']}"
        time.sleep(0.05)
    pid = int(run["infrastructure_pid"])
    assert pid != dr_worker.proc.pid
    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + 60
    while (state := api.get(f"flow_runs/{flow_run_id}")["state"])["type"] != "CRASHED":
        assert state["type"] not in {"COMPLETED", "FAILED"}, state
        assert time.monotonic() < deadline, f"run still {state['type']} after its process died"
        time.sleep(0.2)
    assert "-9" in state["message"] or "SIGKILL" in state["message"], state["message"]
    assert dr_worker.alive(), "the worker survives a run's crash"
