"""Bad input and faults of the breach response, on the real lab.

- An unknown role, service or network is refused before anything changes (the flow raises
  ConfigError; ``dr drill`` exits 2); the lab is exactly as before.
- A dry run lists the plan and changes nothing.
- One drill with three faults at once (module fixture): the evidence repository does not
  exist, an IAM key cannot be rotated (its user does not exist), and one store of the app's
  password cannot be written. Isolation still happens, the report says the evidence is
  incomplete (the staged copy is kept), the failures are reported, everything else is
  finished (the app password is rotated, stored elsewhere and proven, services resume),
  then the run ends failed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dr.errors import ConfigError

from .conftest import BreachLab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MISSING_BUCKET = "s3://dr-lab-no-such-evidence-bucket/lab"
LEAKED_KEY_BLOCK = "dr-test-breach-leaked-key"
UNWRITABLE_STORE = Path("/nonexistent-dr-breach-test-dir/app-password")


def _state(breach_lab: BreachLab) -> dict[str, Any]:
    return {
        "rogue": breach_lab.rogue_roles(),
        "hba": breach_lab.hba_blocks(),
        "password": breach_lab.app_password(),
        "writing": breach_lab.wait_app_writing(),
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compromised_roles": ["dr_no_such_role"]}, "role dr_no_such_role"),
        (
            {"services": ["no-such-app"]},
            "no-such-app: not a service of the target (known: dr-lab-api, dr-lab-app)",
        ),
    ],
)
def test_unknown_role_or_service_fails_the_flow_before_anything_changes(
    breach_lab: BreachLab, options: dict[str, Any], message: str
) -> None:
    before = _state(breach_lab)
    with pytest.raises(ConfigError) as info:
        breach_lab.run_flow(options)
    assert message in str(info.value) and "nothing changed" in str(info.value)
    assert _state(breach_lab) == before


@pytest.mark.parametrize(
    ("options", "mode", "message"),
    [
        (
            {"block_cidrs": ["10.0.0.300/8"]},
            "drill",
            "does not appear to be an IPv4 or IPv6 network",
        ),
        (
            {"compromised_roles": ["postgres"]},
            "incident",
            "postgres is the role this run acts with",
        ),
        (
            {"restore_to": "2025-01-01T00:00:00+00:00", "restore_files": False},
            "drill",
            "restore_to needs the tables",
        ),
        ({"restore_files": True}, "incident", "restore_files needs a moment"),
        ({"restore_tables": ["shop.customers"]}, "incident", "restore_tables needs a moment"),
        (
            {"credentials": [{"role": "dr_app", "containers": ["ghost"]}]},
            "incident",
            "ghost: not a service",
        ),
        (
            {"compromised_roles": ["dr_ghost"], "services": ["x"]},
            "drill",
            "role dr_ghost: does not exist",
        ),
    ],
)
def test_preflight_lists_every_problem(
    breach_lab: BreachLab, options: dict[str, Any], mode: str, message: str
) -> None:
    from dr.config import Mode, load_config
    from flows.breach_response.assess import preflight
    from flows.breach_response.options import BreachOptions
    from flows.breach_response.systems import Systems

    cfg = load_config(breach_lab.config_path)
    systems = Systems(cfg)
    try:
        with pytest.raises(ConfigError) as info:
            preflight(cfg, "lab", Mode(mode), BreachOptions.model_validate(options), systems)
    finally:
        systems.close()
    assert message in str(info.value)
    assert all(isinstance(where, str) and why for where, why in info.value.problems)


def test_preflight_resolves_the_drill_s_leaked_credential(breach_lab: BreachLab) -> None:
    from dr.config import Mode, load_config
    from flows.breach_response.assess import preflight
    from flows.breach_response.options import BreachOptions
    from flows.breach_response.systems import Systems

    cfg = load_config(breach_lab.config_path)
    systems = Systems(cfg)
    try:
        pf = preflight(cfg, "lab", Mode.drill, BreachOptions(), systems)
    finally:
        systems.close()
    [cred] = pf.credentials
    assert cred.role == "dr_app" and cred.containers == ["dr-lab-api", "dr-lab-app"]
    assert cred.old is not None and cred.old.get_secret_value() == breach_lab.app_password()
    assert pf.block_cidrs == ["192.0.2.0/24"] and pf.primary_reachable
    assert [s.name for s in pf.services] == ["dr-lab-api", "dr-lab-app"]


def test_cli_exits_2_on_an_unknown_role(breach_lab: BreachLab) -> None:
    code, out, err = breach_lab.invoke(
        "drill", "breach-response", "--target", "lab", "--json",
        "--config", str(breach_lab.config_path), "--option", "compromised_roles=[dr_nobody]",
    )  # fmt: skip
    assert code == 2, err
    assert "dr_nobody" in json.loads(out)["reason"]


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_changes_nothing(breach_lab: BreachLab) -> None:
    before = _state(breach_lab)
    code, out, err = breach_lab.invoke(
        "run", "breach-response", "--target", "lab", "--dry-run", "--json",
        "--config", str(breach_lab.config_path),
        "--option", "compromised_roles=[dr_app]", "--option", "block_cidrs=[203.0.113.9]",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    plan = "\n".join(result["plan"])
    for step in (
        "would stop container dr-lab-app",
        "would forbid login role dr_app",
        "would reject 203.0.113.9/32 in pg_hba of primary",
        "would write once the evidence bundle",
        "would ask for approval before: resume services",
        "would resume dr-lab-app in its recorded state, with the new credentials",
    ):
        assert step in plan, plan
    assert result["changes"] == []
    assert _state(breach_lab) == before


# --------------------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def faulty(breach_lab: BreachLab) -> Iterator[dict[str, Any]]:
    """A drill whose evidence store is missing and one of whose credentials cannot rotate."""
    from prefect.blocks.system import Secret

    Secret(value="dr-test-fake-aws-secret-0123456789").save(LEAKED_KEY_BLOCK, overwrite=True)
    config = breach_lab.write_config(
        "missing-evidence.yaml",
        lambda d: d["targets"]["lab"].__setitem__("evidence_repository", MISSING_BUCKET),
    )
    old = breach_lab.app_password()
    result = breach_lab.run_flow(
        {
            # The app's password rotates, but one of its stores cannot take the new value.
            "credentials": [{"role": "dr_app", "stores": [{"file": str(UNWRITABLE_STORE)}]}],
            "access_keys": [
                {
                    "user_name": "dr-no-such-user",
                    "key_id": "AKIADRNOSUCHKEY00000",
                    "secret_store": {"prefect_secret": LEAKED_KEY_BLOCK},
                }
            ],
        },
        config=config,
    )
    yield {"result": result, "old": old, "new": breach_lab.app_password()}
    staged = result["details"]["breach"]["evidence"].get("staged_at")
    if staged:
        shutil.rmtree(staged, ignore_errors=True)


def _checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


@pytest.mark.slow
def test_evidence_storage_unavailable_isolation_still_proceeds(
    faulty: dict[str, Any], breach_lab: BreachLab
) -> None:
    r = faulty["result"]
    checks = _checks(r)
    assert r["outcome"] == "failed"
    assert "evidence bundle stored" in r["reason"]
    assert checks["contained: stop container dr-lab-app"]["ok"]
    rogue = r["details"]["breach"]["drill"]["rogue_role"]
    assert checks[f"contained: disable role {rogue}"]["ok"]
    assert checks["drill: intruder cannot reconnect to primary"]["ok"]
    stored = checks["evidence bundle stored"]
    assert (
        not stored["ok"]
        and "INCOMPLETE" in stored["detail"]
        and "does not exist" in stored["detail"]
    )
    ev = r["details"]["breach"]["evidence"]
    assert ev["stored"] is False and ev["complete"] is False and ev["items"] > 0
    staged = Path(ev["staged_at"])
    assert (staged / "postgres" / "primary" / "sessions.json").is_file()
    assert any("evidence is incomplete" in n for n in r["notes"])
    # Containment was not held up: contained before the evidence was given up on.
    timeline = r["details"]["breach"]["timeline"]
    assert timeline["contained_at"] and timeline["services_resumed_at"]


@pytest.mark.slow
def test_credential_that_cannot_rotate_is_reported_and_the_rest_finishes(
    faulty: dict[str, Any], breach_lab: BreachLab
) -> None:
    r = faulty["result"]
    checks = _checks(r)
    failed = checks["credential rotated: access key AKIADRNOSUCHKEY00000"]
    assert (
        not failed["ok"]
        and "NOT rotated" in failed["detail"]
        and "dr-no-such-user" in failed["detail"]
    )
    assert "credential rotated: access key AKIADRNOSUCHKEY00000" in r["reason"]
    assert "rotate access key AKIADRNOSUCHKEY00000" in r["details"]["breach"]["rotations_failed"]
    # A store that cannot take the new value is reported; the value still reached the others.
    follow_up = checks["credential followed up: db-role dr_app"]
    assert not follow_up["ok"] and str(UNWRITABLE_STORE.parent) in follow_up["detail"]
    assert checks["db-role dr_app: prefect-secret:lab-app-password holds the new value"]["ok"]
    assert not checks[f"db-role dr_app: file:{UNWRITABLE_STORE} holds the new value"]["ok"]
    # The rest was finished: the app's password rotated and proven, services resumed.
    assert faulty["new"] != faulty["old"]
    for node in ("primary", "replica1"):
        assert checks[f"db-role dr_app: old password rejected on {node}"]["ok"]
        assert checks[f"db-role dr_app: new password works on {node}"]["ok"]
    assert checks["application (app) writes again with the new credentials"]["ok"]
    step = next(a["step"] for a in r["approvals"] if a["step"].startswith("resume"))
    assert "NOT rotated" in step and "rotate access key AKIADRNOSUCHKEY00000" in step
    assert r["rto_seconds"] is not None
    assert breach_lab.wait_app_writing()
    assert breach_lab.rogue_roles() == [] and breach_lab.hba_blocks() == []
