"""The region-failover red twin on the lab: ``--inject app-cannot-connect``.

Before the crash the replica's pg_hba refuses the application's role (a reject line under
the drill's marker), so after the promotion the application cannot write: the end-to-end
check must fail, the drill must end ``failed`` with exit 1 naming that check, and the drill
must still lift its injection, fail back and leave the lab healthy with no repair by hand
(checked here before the fixture's own heal).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from tasks.postgres.hba import DRILL_MARKER

from .conftest import LabDrill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECK = "application writes land on replica1"


def lab_healthy(lab: LabDrill, within_seconds: float = 30) -> dict[str, Any]:
    """The lab's status once it shows one primary, a streaming replica, a fresh heartbeat."""
    deadline = time.monotonic() + within_seconds
    while True:
        status = lab.status()
        healthy = (
            status["primary"]["role"] == "primary"
            and status["replica"]["role"] == "standby"
            and status["replica"]["streaming"] is True
            and status["heartbeat"]["up"] is True
            and status["app"]["db_port"] == lab.state.primary.port
        )
        if healthy or time.monotonic() > deadline:
            return {"healthy": healthy, **status}
        time.sleep(0.5)


def test_app_cannot_connect_is_red_and_the_lab_stays_healthy(lab_drill: LabDrill) -> None:
    args = [
        "drill", "region-failover", "--target", "lab", "--json",
        "--config", str(lab_drill.config_path), "--inject", "app-cannot-connect",
        "--option", "verify_timeout_seconds=8",
    ]  # fmt: skip
    out = CliRunner().invoke(app, args)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON on stdout (exit {out.exit_code}): {out.output[-3000:]}"
    result = json.loads(lines[-1])
    assert out.exit_code == 1, result["reason"]
    assert result["outcome"] == "failed"
    assert CHECK in result["reason"], result["reason"]
    check = [c for c in result["checks"] if c["name"] == CHECK]
    assert check and check[-1]["ok"] is False, result["checks"]
    # It did promote (the failure is the application's, not the failover's), then failed back.
    failover = result["details"]["failover"]
    assert failover["new_primary"] == "replica1"
    failback = result["details"]["failback"]
    assert failback["roles_as_configured"] is True
    assert failback["switch_back_lost_nothing"] is True
    actions = [c["action"] for c in result["changes"]]
    assert "inject-hba-rules" in actions and "remove-hba-rules" in actions, actions
    for name in ("primary", "replica1"):
        hba = Path(lab_drill.cluster(name).psql("SHOW hba_file"))
        assert DRILL_MARKER not in hba.read_text(), f"{name}: the reject line was left"
    status = lab_healthy(lab_drill)
    assert status["healthy"], status
