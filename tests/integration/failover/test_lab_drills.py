"""Region failover drills on the lab, through the ``dr`` command as a person or CI runs them.

The lab (tests/conftest.py) has a primary, a streaming replica in another region and the
heartbeat application in a container writing to the primary every 50 ms. Each drill
crashes the primary, fails over, repoints the application, measures RTO and RPO, and
fails back; three in a row prove the failback leaves the lab ready for the next one. The
fixture heals the lab afterwards whatever happened.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app

from .conftest import LabDrill, in_recovery

pytestmark = pytest.mark.integration

#: The issue's target: kill -> first application write on the new primary, median.
RTO_TARGET_SECONDS = 5.0
MILESTONES = ["assessed", "fenced", "promoted", "repointed", "first_app_write"]


def drill(lab: LabDrill, *options: str) -> tuple[int, dict[str, Any]]:
    args = [
        "drill",
        "region-failover",
        "--target",
        "lab",
        "--json",
        "--config",
        str(lab.config_path),
    ]
    for option in options:
        args += ["--option", option]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON on stdout (exit {result.exit_code}): {result.output[-3000:]}"
    return result.exit_code, json.loads(lines[-1])


def assert_green(code: int, result: dict[str, Any]) -> None:
    assert code == 0, result["reason"]
    assert result["outcome"] == "passed" and result["objectives_met"], result["reason"]
    failover = result["details"]["failover"]
    assert (failover["old_primary"], failover["new_primary"]) == ("primary", "replica1")
    # RTO: the failure to the application's first write on the new primary, with the steps.
    # (from the last acknowledged write before the stamped failure_at: the outage's start)
    assert result["rto_basis"].startswith("restored_at - failure_at (last acknowledged write")
    assert "-> first application write" in result["rto_basis"]
    breakdown = failover["rto_breakdown"]
    assert all(breakdown[m] is not None for m in MILESTONES), breakdown
    # The container is recreated after the promotion; the application may write before the
    # recreate call returns, so "repointed" and the first write are not ordered.
    in_order = [breakdown[m] for m in ("assessed", "fenced", "promoted", "first_app_write")]
    assert in_order == sorted(in_order), f"milestones out of order: {breakdown}"
    assert breakdown["promoted"] <= breakdown["repointed"], breakdown
    outage = datetime.fromisoformat(result["restored_at"]) - datetime.fromisoformat(
        result["failure_at"]
    )
    assert result["rto_seconds"] == pytest.approx(outage.total_seconds(), abs=0.002)
    # The outage starts up to one probe interval before the stamp, never after it.
    assert 0 <= result["rto_seconds"] - breakdown["first_app_write"] < 0.2
    assert set(result["rto_phases"]) >= {"detection", "dispatch", "recovery"}
    # RPO: heartbeat rows acknowledged by the old primary and missing on the new one.
    assert result["lost_rows"] is not None and result["rpo_seconds"] is not None
    assert result["rpo_basis"].startswith("heartbeat")
    names = [p["name"] for p in result["phases"]]
    for phase in ("preflight", "inject failure", "fence old primary", "promote", "repoint"):
        assert phase in names
    assert all(p["outcome"] == "ok" for p in result["phases"]), result["phases"]
    # The failback put the configured roles back, losing nothing.
    failback = result["details"]["failback"]
    assert failback["roles_as_configured"] is True
    assert failback["switch_back_lost_nothing"] is True
    assert failback["app_write_on_primary_at"] is not None


@pytest.mark.slow
def test_cli_drill_three_times_in_a_row_all_green(lab_drill: LabDrill) -> None:
    rtos = []
    for _ in range(3):
        code, result = drill(lab_drill)
        assert_green(code, result)
        rtos.append(result["rto_seconds"])
        status = lab_drill.status()
        assert status["primary"]["role"] == "primary"
        assert status["replica"]["streaming"] is True
        assert status["app"]["db_port"] == lab_drill.state.primary.port
    assert statistics.median(rtos) < RTO_TARGET_SECONDS, rtos
    assert in_recovery(lab_drill.cluster("primary")) is False
    assert in_recovery(lab_drill.cluster("replica1")) is True
