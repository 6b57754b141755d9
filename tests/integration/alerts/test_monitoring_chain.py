"""The whole alert chain with the real binaries: a killed primary is failed over, no human.

A lab of its own with ``--monitoring`` (Debian's postgres_exporter, Prometheus and
Alertmanager, ``dr serve-alerts``, a Prefect worker), then the via-alert drill: it kills the
primary and only watches. Prometheus must fire the shipped rule, Alertmanager deliver it
with the bearer token, the receiver create the incident run, the worker run it, and the
flow promote the replica and repoint the application. No timing is asserted (the bench
measures); every stage must be reached, in order, with one primary at every sample.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from lab import down, monitoring, up
from lab.monitoring_chain import receiver_url
from lab.monitoring_drill import drill_via_alert
from lab.monitoring_status import monitoring_status
from lab.state import load_state
from tests.conftest import assert_lab_gone, lab_pids

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_shipped_files_pass_the_tools_own_checks() -> None:
    """What a user copies is valid for Prometheus 2.42 and Alertmanager 0.25 themselves."""
    for tool in ("promtool", "amtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh")
    rules = subprocess.run(
        ["promtool", "check", "rules", str(monitoring.RULES_FILE)], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(
        ["amtool", "check-config", str(monitoring.ALERTMANAGER_FILE)],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_a_killed_primary_is_recovered_by_the_chain(new_lab_dir: Path) -> None:
    state = up.up(new_lab_dir, prefect=True, monitoring=True)
    try:
        mon = monitoring_status(state)
        assert mon["up"], mon
        assert {n: e["scrape"] for n, e in mon["exporters"].items()} == {
            "primary": "up",
            "replica1": "up",
        }
        # The receiver refuses Alertmanager's path without the token.
        refused = httpx.post(f"{receiver_url(state)}/alerts/alertmanager", json={}, timeout=5)
        assert refused.status_code == 401

        result = drill_via_alert(new_lab_dir, failback=False)
        assert result["outcome"] == "passed", result
        stages = result["stages"]
        assert all(stages[k] is not None for k in stages), stages
        moments = [datetime.fromisoformat(result["moments"][k]) for k in (
            "failure_at", "alert_starts_at", "run_created_at", "run_started_at",
            "promoted_at", "first_write_at",
        )]  # fmt: skip
        assert moments == sorted(moments), result["moments"]
        assert result["max_primaries"] == 1 and result["samples"] > 10
        assert result["run_outcome"] == "passed"
        assert result["alert"]["alertname"] in monitoring.DR_ALERTS
        assert isinstance(result["lost_rows"], int)
        assert result["new_primary"] == state.replica.name
    finally:
        final = load_state(new_lab_dir) or state
        pids = lab_pids(final)
        down.down(new_lab_dir)
        assert_lab_gone(new_lab_dir, pids)
