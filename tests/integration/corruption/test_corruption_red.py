"""The data-corruption red twin on the lab: ``--inject wal-gap``.

The drill damages ``shop.orders`` like bad-update, then sets aside the archived WAL segment
every recovery past its stamp needs: the plan must refuse the recovery before the writers
are touched, the drill must end ``failed`` with exit 1 naming the check, and compensation
must put the segment back and the rows as they were, leaving the lab healthy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

from .conftest import CorruptionLab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECK = "WAL archive continuous to the recovery point"


def orders(lab: CorruptionLab) -> str:
    return lab.psql("SELECT count(*), sum(total) FROM shop.orders")


def test_wal_gap_is_red_refused_before_any_change_and_put_back(healthy_lab: CorruptionLab):
    lab = healthy_lab
    before = orders(lab)
    app_before = lab.app_container()
    args = [
        "drill", "data-corruption", "--target", "lab", "--json",
        "--config", str(lab.config_path), "--inject", "wal-gap",
        "--option", "base_backup_max_age_minutes=0.25",
    ]  # fmt: skip
    for key, value in lab.options().items():
        args += ["--option", f"{key}={value}"]
    out = CliRunner().invoke(app, args)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON on stdout (exit {out.exit_code}): {out.output[-3000:]}"
    result = json.loads(lines[-1])
    lab.last_result = result
    assert out.exit_code == 1, result["reason"]
    assert result["outcome"] == "failed"
    assert CHECK in result["reason"] and "gap" in result["reason"], result["reason"]
    check = [c for c in result["checks"] if c["name"] == CHECK]
    assert check and check[-1]["ok"] is False, result["checks"]
    names = [p["name"] for p in result["phases"]]
    assert "inject WAL gap" in names and "plan recovery" in names, names
    # Refused before anything changes: the writers were never stopped, nothing recovered.
    for phase in ("stop writers", "preserve evidence", "recover", "switch"):
        assert phase not in names, names
    again = lab.app_container()
    assert (again.id, again.status) == (app_before.id, "running")
    # Compensation: the segment is back in the archive, the rows as they were.
    segment = result["details"]["wal_gap"]["segment"]
    url = lab.raw_config["targets"]["lab"]["backup"]["wal_archive"]
    assert (Path(url[len("file://") :]) / segment).exists(), f"{segment} not put back"
    assert orders(lab) == before
    assert lab.damaged_databases() == []
    # The lab healthy with no repair: the app still writes to the primary.
    assert lab.app_env().get("DB_PORT") == str(lab.primary.port)
    deadline = time.monotonic() + 15
    while lab.newest_heartbeat_age() >= 1.0:
        assert time.monotonic() < deadline, "the app stopped writing"
        time.sleep(0.2)
