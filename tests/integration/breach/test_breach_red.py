"""The breach-response red twin on the lab: ``--inject credential-survives``.

After planting the intruder the drill leaves a second way in with the old credential open
(a pg_hba trust line for the leaked application role on the primary): the "old password
rejected" proof must fail, the drill must end ``failed`` with exit 1 naming that proof, and
its cleanup must close the way in again, leaving the lab healthy (the app writing with the
new password, the old one refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from lab import status as lab_status
from tasks.postgres.hba import DRILL_MARKER

from .conftest import BreachLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _red_drill(breach_lab: BreachLab, inject: str) -> tuple[dict, list[str]]:
    """Run the drill with ``inject``: it must exit 1, failed; (result, failed critical checks)."""
    code, out, _err = breach_lab.invoke(
        "drill", "breach-response", "--target", "lab", "--json",
        "--config", str(breach_lab.config_path), "--inject", inject,
    )  # fmt: skip
    breach_lab.sync_lab_secrets()
    result = json.loads(out)
    assert code == 1, result["reason"]
    assert result["outcome"] == "failed"
    return result, [c["name"] for c in result["checks"] if c["critical"] and not c["ok"]]


def test_credential_survives_is_red_and_the_way_in_is_closed(breach_lab: BreachLab) -> None:
    breach_lab.sync_lab_secrets()
    assert breach_lab.wait_app_writing(), "the lab app does not write before the drill"
    old = breach_lab.app_password()
    result, failed = _red_drill(breach_lab, "credential-survives")
    assert any("old password rejected on primary" in n for n in failed), failed
    assert "old password rejected on primary" in result["reason"], result["reason"]
    assert result["details"]["breach"]["drill_backdoor"]["rules"], result["details"]
    actions = [c["action"] for c in result["changes"]]
    assert "inject-hba-rules" in actions and "remove-hba-rules" in actions, actions
    # The way in is closed again: no drill line, the old password refused, the new one works.
    with breach_lab.primary_conn("postgres") as conn:
        hba_file = str(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        role = conn.execute(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = 'dr_app'"
        ).fetchone()
    assert DRILL_MARKER not in Path(hba_file).read_text()
    assert role is not None
    new = breach_lab.app_password()
    assert new != old
    port = breach_lab.lab.primary.port
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1", port=port, dbname="app", user="dr_app", password=old,
            connect_timeout=5,
        ).close()  # fmt: skip
    psycopg.connect(
        host="127.0.0.1", port=port, dbname="app", user="dr_app", password=new, connect_timeout=5
    ).close()
    assert breach_lab.rogue_roles() == []
    assert breach_lab.hba_blocks() == []
    assert breach_lab.wait_app_writing(30), "the app does not write after the red drill"
    status = lab_status.status(breach_lab.lab.base_dir)
    assert status["primary"]["role"] == "primary", status["primary"]
    assert status["replica"]["streaming"] is True, status["replica"]


def test_object_survives_is_red_and_the_object_is_put_back(breach_lab: BreachLab) -> None:
    """The restore of the overwritten object is skipped: the proof that the files are as
    before the intrusion must fail the drill; its cleanup still puts the object back."""
    breach_lab.sync_lab_secrets()
    assert breach_lab.wait_app_writing(), "the lab app does not write before the drill"
    result, failed = _red_drill(breach_lab, "object-survives")
    assert failed == ["files uploads as before the intrusion"], failed
    assert "files uploads as before the intrusion" in result["reason"], result["reason"]
    breach = result["details"]["breach"]
    damage = breach["files_drill_damage"]["uploads"]
    (restore,) = breach["files_restore"]
    assert restore["skipped"] == [damage["overwritten"]]
    checks = {c["name"]: c for c in result["checks"]}
    assert damage["overwritten"] in checks["files uploads as before the intrusion"]["detail"]
    # The planted object is still taken out and kept: only the one restore was skipped.
    assert checks["drill: files uploads planted object gone, kept as evidence"]["ok"]
    # The drill's cleanup put the skipped object back: the lab is as before the drill.
    assert checks["drill: files uploads damage undone"]["ok"]
    s3 = breach_lab.lab_s3()
    bucket, prefix = breach_lab.uploads_location()
    body = s3.get_object(Bucket=bucket, Key=prefix + damage["overwritten"])["Body"].read()
    assert not body.startswith(b"dr drill: written by the intruder")
    assert breach_lab.rogue_roles() == [] and breach_lab.hba_blocks() == []
    assert breach_lab.wait_app_writing(30), "the app does not write after the red drill"
