"""An incident (not a drill) on the lab: services come back only after a person approves.

A suspect login role holds a session; the incident response disables it, isolates the app
and blocks an attacker network, then pauses at the approval gate. While it waits, the app
must still be stopped (nothing resumes on its own). A person approves (who and why are
recorded), the app comes back and writes again; the suspect role stays disabled and the
network stays blocked (an incident does not undo containment).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from dr.changes import Change
from dr.config import load_config
from tasks.containers import inspection
from tasks.containers.client import make_client
from tasks.postgres import hba, intruder, security

from .conftest import BreachLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SUSPECT = "dr_test_suspect"
SUSPECT_PASSWORD = "dr-test-suspect-password-0123"
ATTACKER = "203.0.113.0/24"


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _paused_run(since: float) -> UUID | None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["breach-response"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    runs = [r for r in runs if r.created is not None and r.created.timestamp() >= since - 1]
    return runs[0].id if runs else None


def test_services_resume_only_after_approval(breach_lab: BreachLab) -> None:
    from prefect.flow_runs import resume_flow_run

    admin = f"host=127.0.0.1 port={breach_lab.lab.primary.port} dbname=postgres user=postgres"
    with breach_lab.primary_conn("postgres") as conn:
        conn.execute(f"DROP ROLE IF EXISTS {SUSPECT}")
    intruder.create_login_role(admin, SUSPECT, SUSPECT_PASSWORD)
    suspect = intruder.HeldSession(
        f"host=127.0.0.1 port={breach_lab.lab.primary.port} dbname=app user={SUSPECT} "
        f"password={SUSPECT_PASSWORD}"
    ).start()
    docker = make_client(load_config(breach_lab.config_path).docker.base_url)
    box: dict[str, Any] = {}
    started = time.time()

    def run() -> None:
        try:
            box["result"] = breach_lab.run_flow(
                {"compromised_roles": [SUSPECT], "block_cidrs": [ATTACKER]}, mode="incident"
            )
        except BaseException as exc:  # surfaced by the assertions below
            box["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    try:
        run_id = _wait_for(lambda: _paused_run(started), 120, "the approval gate")
        # Paused at the gate: contained, and nothing came back on its own.
        assert not inspection.health(docker, "dr-lab-app").running
        assert suspect.wait_ended(5)
        assert security.role_can_login(admin, SUSPECT) is False
        assert any(ATTACKER in line for line in breach_lab.hba_blocks())
        time.sleep(1.0)
        assert not inspection.health(docker, "dr-lab-app").running
        resume_flow_run(
            run_id, run_input={"approve": "approve", "who": "alice", "why": "evidence reviewed"}
        )
        thread.join(120)
        assert "error" not in box, box.get("error")
        result = box["result"]
        failed = [c for c in result["checks"] if not c["ok"] and c["critical"]]
        assert result["outcome"] == "passed", (result["reason"], failed)
        [approval] = result["approvals"]
        assert (approval["who"], approval["why"], approval["automatic"]) == (
            "alice",
            "evidence reviewed",
            False,
        )
        assert approval["step"] == "resume services with the new credentials"
        timeline = result["details"]["breach"]["timeline"]
        resumed = datetime.fromisoformat(timeline["resume_started_at"])
        assert resumed >= datetime.fromisoformat(approval["at"].replace("Z", "+00:00"))
        assert inspection.health(docker, "dr-lab-app").running
        assert breach_lab.wait_app_writing()
        # An incident keeps the containment: the role stays disabled, the network blocked.
        assert security.role_can_login(admin, SUSPECT) is False
        assert any(ATTACKER in line for line in breach_lab.hba_blocks())
        assert any("stay NOLOGIN" in note for note in result["notes"])
        assert result["details"]["breach"]["evidence"]["verified"]
        assert "drill" not in result["details"]["breach"]
    finally:
        suspect.close()
        docker.close()
        if "result" in box:
            ports = {
                str(breach_lab.lab.primary.data_dir): breach_lab.lab.primary.port,
                str(breach_lab.lab.replica.data_dir): breach_lab.lab.replica.port,
            }
            for change in box["result"]["changes"]:
                if change["action"] == "block-cidrs-in-hba" and change["outcome"] == "updated":
                    folder = str(Path(change["after"]["hba_file"]).parent)
                    node = f"host=127.0.0.1 port={ports[folder]} dbname=postgres user=postgres"
                    hba.unblock_cidrs_in_hba(node, Change.model_validate(change))
        intruder.drop_role(admin, SUSPECT, dbnames=["app"])
    assert breach_lab.hba_blocks() == []
