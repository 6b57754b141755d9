"""``dr drill breach-response --target lab --json`` on the real lab, end to end.

One drill runs through the command line (module fixture): it plants an intruder (a rogue
login role with an open session; the app's database password "leaked", the intruder holding
a session with it), responds, and must end green with every proof recorded. The tests then
check the proofs against the lab itself, verify the evidence bundle with ``dr evidence
verify``, and grep every log line (captured here and read back from the Prefect API), every
artifact and every Slack message of the run for the old and the new password, then the
lab folder, every server's configuration files, the containers' stored environment and
every object of the backup repositories.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

import psycopg
import pytest

from .conftest import BreachLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


class _Capture(logging.Handler):
    """Every log record emitted in this process while installed (what caplog sees, and more)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg!r} {record.args!r}"
        self.lines.append(f"{record.name} {text}")
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.append(repr(record.exc_info[1]))


@dataclass
class Drill:
    exit_code: int
    result: dict[str, Any]
    stderr: str
    old_password: str
    new_password: str
    log_lines: list[str] = field(default_factory=list)
    thread: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def drill(breach_lab: BreachLab) -> Iterator[Drill]:
    """One CLI drill on the lab; the old and new app passwords are known to the test only."""
    breach_lab.sync_lab_secrets()
    assert breach_lab.wait_app_writing(), "the lab app does not write before the drill"
    old = breach_lab.app_password()
    assert old == breach_lab.file_password()
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        code, out, err = breach_lab.invoke(
            "drill", "breach-response", "--target", "lab", "--json",
            "--config", str(breach_lab.config_path),
        )  # fmt: skip
    finally:
        for lg, level in zip(loggers, previous, strict=True):
            lg.removeHandler(capture)
            lg.setLevel(level)
    new = breach_lab.app_password()
    breach_lab.sync_lab_secrets()
    result = json.loads(out)
    run = Drill(code, result, err, old, new, capture.lines)
    for message in _slack_messages(breach_lab):
        texts = [message["text"]] + [h["text"] for h in message.get("history", [])]
        if message["thread_ts"] is None and any(result["flow_run_id"] in t for t in texts):
            run.thread.add(message["ts"])
    yield run


def _checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def test_drill_is_green_with_every_proof(drill: Drill) -> None:
    r = drill.result
    failed = [c for c in r["checks"] if not c["ok"]]
    assert drill.exit_code == 0, (r["reason"], failed, drill.stderr[-3000:])
    assert r["outcome"] == "passed" and r["objectives_met"], r["reason"]
    assert r["scenario"] == "breach-response" and r["mode"] == "drill"
    checks = _checks(r)
    breach = r["details"]["breach"]
    rogue = breach["drill"]["rogue_role"]
    assert rogue.startswith("dr_intruder_")
    for node in ("primary", "replica1"):
        assert checks[f"role {rogue} cannot log in and has no session on {node}"]["ok"]
        assert checks[f"drill: intruder cannot reconnect to {node}"]["ok"]
        assert (
            "not permitted to log in"
            in checks[f"drill: intruder cannot reconnect to {node}"]["detail"]
        )
        assert checks[f"db-role dr_app: old password rejected on {node}"]["ok"]
        assert (
            "password authentication failed"
            in checks[f"db-role dr_app: old password rejected on {node}"]["detail"]
        )
        assert checks[f"db-role dr_app: new password works on {node}"]["ok"]
    assert checks[f"drill: intruder session of {rogue} is gone"]["ok"]
    assert checks["drill: session opened with the leaked password of dr_app is gone"]["ok"]
    assert checks["db-role dr_app: prefect-secret:lab-app-password holds the new value"]["ok"]
    assert checks["container dr-lab-app has the new password of dr_app"]["ok"]
    assert checks["application (app) writes again with the new credentials"]["ok"]
    assert checks["evidence bundle stored"]["ok"]
    assert checks["evidence bundle checksums verify"]["ok"]
    assert checks["evidence preserved before remediation"]["ok"]
    assert checks["contained: stop container dr-lab-app"]["ok"]
    assert checks[f"drill: rogue role {rogue} dropped"]["ok"]
    # Approvals recorded: who and why (drills are approved by policy).
    assert [(a["who"], a["automatic"]) for a in r["approvals"]] == [("policy", True)] * 2
    assert [a["step"].split(" ")[0] for a in r["approvals"]] == ["restore", "resume"]
    assert all("drill" in a["why"] for a in r["approvals"])
    # Phases in the runbook's order.
    names = [p["name"] for p in r["phases"]]
    assert names.index("capture volatile evidence") < names.index("contain and preserve evidence")
    assert names.index("contain and preserve evidence") < names.index("rotate credentials")
    assert (
        names.index("rotate credentials")
        < names.index("restore files")
        < names.index("approve resume")
        < names.index("resume services")
    )
    assert all(p["outcome"] == "ok" for p in r["phases"]), r["phases"]
    assert r["not_undone"] == [] and r["undone"] == []


def test_both_times_are_measured(drill: Drill) -> None:
    r = drill.result
    m = r["details"]["breach"]["measurements"]
    t = r["details"]["breach"]["timeline"]
    detected = datetime.fromisoformat(t["detected_at"])
    contained = datetime.fromisoformat(t["contained_at"])
    resumed = datetime.fromisoformat(t["services_resumed_at"])
    assert datetime.fromisoformat(t["intrusion_at"]) <= detected < contained < resumed
    assert m["detected_to_contained_seconds"] == pytest.approx(
        (contained - detected).total_seconds(), abs=0.002
    )
    assert m["detected_to_resumed_seconds"] == pytest.approx(
        (resumed - detected).total_seconds(), abs=0.002
    )
    assert 0 < m["detected_to_contained_seconds"] < m["detected_to_resumed_seconds"]
    # RTO is the whole outage: from the planted intrusion (failure_at) to services resumed.
    intrusion = datetime.fromisoformat(t["intrusion_at"])
    assert datetime.fromisoformat(r["failure_at"]) == intrusion
    assert r["rto_seconds"] == pytest.approx((resumed - intrusion).total_seconds(), abs=0.002)
    assert r["rto_phases"]["detection"] == pytest.approx(
        (detected - intrusion).total_seconds(), abs=0.002
    )
    # Detection is measured: the assessment saw the rogue session, after it was planted.
    seen = r["details"]["breach"]["detection"]
    assert seen["how"].startswith("session of a compromised role")
    assert datetime.fromisoformat(seen["observed_at"]) == detected > intrusion
    assert m["intrusion_to_detected_seconds"] > 0
    # RPO: the heartbeat rows acknowledged before containment are counted (none lost); the
    # files went back to restore_to, so the window restore_to -> contained bounds the loss.
    assert r["lost_rows"] == 0 and r["rpo_bound"] == "upper"
    restore_to = datetime.fromisoformat(r["details"]["breach"]["files_restore"][0]["point"])
    assert restore_to < intrusion
    assert r["rpo_seconds"] == pytest.approx((contained - restore_to).total_seconds(), abs=0.002)
    assert r["rpo_basis"].startswith("upper bound: restore_to -> contained: changes to files")
    assert "0 heartbeat row(s)" in r["rpo_basis"]
    assert "app" in r["details"]["breach"]["writes_before"]


def test_objects_back_as_before_the_intrusion_and_the_damage_kept(
    drill: Drill, breach_lab: BreachLab
) -> None:
    """The drill's intruder overwrote one object, deleted one and planted one; afterwards
    each is at its pre-intrusion version (the planted one out of the live prefix), and all
    three are evidence: the bundle (with the bytes) and copies beside the prefix."""
    r = drill.result
    checks = _checks(r)
    breach = r["details"]["breach"]
    damage = breach["files_drill_damage"]["uploads"]
    for name in (
        "files uploads restored",
        "files uploads as before the intrusion",
        "drill: files uploads planted object gone, kept as evidence",
    ):
        assert checks[name]["ok"], (name, checks[name]["detail"])
    (restore,) = breach["files_restore"]
    assert damage["overwritten"] in restore["restored"]
    assert damage["deleted"] in restore["restored"]
    assert restore["removed"] == [damage["planted"]]
    evidence = breach["files_evidence"]["uploads"]
    assert evidence[damage["overwritten"]]["change"] == "overwritten"
    assert evidence[damage["deleted"]]["change"] == "deleted"
    assert evidence[damage["planted"]]["change"] == "created"
    for key in (damage["overwritten"], damage["planted"]):
        assert evidence[key]["bundle_path"] == f"files/uploads/objects/{key}"
        assert evidence[key]["kept_at"].startswith("s3://")
    # On the lab's S3 itself: the old bytes back, the planted object gone but kept aside.
    s3 = breach_lab.lab_s3()
    bucket, prefix = breach_lab.uploads_location()
    point = datetime.fromisoformat(restore["point"])
    for key in (damage["overwritten"], damage["deleted"]):
        versions = s3.list_object_versions(Bucket=bucket, Prefix=prefix + key)["Versions"]
        old = max(
            (v for v in versions if v["LastModified"] < point), key=lambda v: v["LastModified"]
        )
        current = s3.get_object(Bucket=bucket, Key=prefix + key)
        was = s3.get_object(Bucket=bucket, Key=prefix + key, VersionId=old["VersionId"])
        assert current["Body"].read() == was["Body"].read()
    live = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    assert prefix + damage["planted"] not in {o["Key"] for o in live}
    kept_bucket, _, kept_key = evidence[damage["planted"]]["kept_at"][5:].partition("/")
    planted = s3.get_object(Bucket=kept_bucket, Key=kept_key)["Body"].read()
    assert planted.startswith(b"dr drill: written by the intruder")
    assert checks["drill: files uploads damage undone"]["ok"]


def test_regulatory_clock_in_report_and_slack(drill: Drill, breach_lab: BreachLab) -> None:
    reg = drill.result["details"]["breach"]["regulatory"]
    detected = datetime.fromisoformat(reg["detected_at"])
    [gdpr] = reg["deadlines"]
    assert gdpr["name"] == "GDPR notification" and gdpr["hours"] == 72
    due = datetime.fromisoformat(gdpr["due_at"])
    assert due.utcoffset() == timedelta(0)
    assert abs((due - detected) - timedelta(hours=72)) < timedelta(seconds=1)
    texts = [m["text"] for m in _slack_messages(breach_lab) if _in_run(m, drill)]
    assert any("Regulatory clock" in t and gdpr["due_at"] in t for t in texts), texts
    assert any(t.startswith("Reminder, regulatory deadlines") and "GDPR" in t for t in texts)


def test_lab_is_left_working_with_the_new_password(drill: Drill, breach_lab: BreachLab) -> None:
    assert drill.new_password != drill.old_password
    assert breach_lab.file_password() == drill.new_password
    assert breach_lab.wait_app_writing()
    port = breach_lab.lab.primary.port
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="dr_app",
                        password=drill.old_password, connect_timeout=3)  # fmt: skip
    with psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="dr_app",
                         password=drill.new_password, connect_timeout=3) as conn:  # fmt: skip
        assert conn.execute("SELECT current_user").fetchone()[0] == "dr_app"
    assert breach_lab.rogue_roles() == []
    assert breach_lab.hba_blocks() == []


def test_evidence_bundle_verifies_with_the_documented_command(
    drill: Drill, breach_lab: BreachLab
) -> None:
    ev = drill.result["details"]["breach"]["evidence"]
    assert ev["stored"] and ev["verified"] and ev["complete"] and ev["locked"]
    assert ev["lock_mode"] == "GOVERNANCE"
    assert ev["verify_command"].startswith(f"dr evidence verify {ev['url']} --manifest-sha256 ")
    args = ev["verify_command"].split()[1:]
    code, out, err = breach_lab.invoke(*args, "--config", str(breach_lab.config_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["manifest_sha256"] == ev["manifest_sha256"]
    paths = {i["path"] for i in report["items"]}
    for expected in (
        "postgres/primary/sessions.json",
        "postgres/replica1/sessions.json",
        "postgres/primary/roles-app.json",
        "containers/dr-lab-app/logs.txt",
        "containers/dr-lab-app/state.json",
    ):
        assert expected in paths, paths
    assert any(p.startswith("postgres/primary/log/") for p in paths)
    assert all(i["status"] == "ok" and i["lock_mode"] == "GOVERNANCE" for i in report["items"])
    # The intruder's session is in the evidence taken before containment.
    rogue = drill.result["details"]["breach"]["drill"]["rogue_role"]
    sessions = _read_object(breach_lab, ev["url"], "postgres/primary/sessions.json")
    assert any(s["user"] == rogue for s in json.loads(sessions))
    # A wrong manifest hash is caught.
    code, out, _ = breach_lab.invoke(
        "evidence", "verify", ev["url"], "--manifest-sha256", "0" * 64,
        "--config", str(breach_lab.config_path), "--json",
    )  # fmt: skip
    assert code == 1 and not json.loads(out)["ok"]


def test_no_secret_in_logs_artifacts_slack_or_evidence(drill: Drill, breach_lab: BreachLab) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    secrets = {"old": drill.old_password, "new": drill.new_password}
    run_id = UUID(drill.result["flow_run_id"])
    with get_client(sync_client=True) as client:
        logs: list[Any] = []
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=len(logs),
            )
            logs.extend(page)
            if len(page) < 200:
                break
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        flow_run = client.read_flow_run(run_id)
    assert len(logs) > 50, "the run's logs did not reach the Prefect API"
    assert {a.key for a in artifacts} >= {"dr-breach-response-lab", "dr-breach-response-lab-report"}
    haystacks = {
        "captured log lines": "\n".join(drill.log_lines),
        "command stderr": drill.stderr,
        "Prefect logs": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(
            json.dumps(a.data, default=str) + (a.description or "") for a in artifacts
        ),
        "flow run parameters": json.dumps(flow_run.parameters, default=str),
        "result": json.dumps(drill.result),
        "Slack messages": json.dumps([m for m in _slack_messages(breach_lab) if _in_run(m, drill)]),
        "Slack state file": breach_lab.lab.slack_state_file.read_text(),
        "evidence bundle": _bundle_text(breach_lab, drill.result["details"]["breach"]["evidence"]),
    }
    assert len(drill.log_lines) > 50
    for where, text in haystacks.items():
        assert text or where == "command stderr", where
        for which, secret in secrets.items():
            assert secret not in text, f"the {which} password appears in the {where}"


#: Where secrets belong in the lab folder: the lab's own secret store, the passfiles beside
#: the data directories, and the container engine's store (checked through its API below).
_SECRET_STORES = ("secrets", "podman")

#: A server's configuration files, relative to its data directory.
_SERVER_CONFIGS = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")


def test_no_secret_in_the_lab_folder_server_configs_containers_or_backups(
    drill: Drill, breach_lab: BreachLab, tmp_path: Path
) -> None:
    from dr.config import load_config
    from dr.secretscan import scan_paths
    from tasks.containers.client import make_client

    secrets = {"the old password": drill.old_password, "the new password": drill.new_password}
    lab = breach_lab.lab
    base = Path(lab.base_dir)
    folder = [p for p in base.iterdir() if p.name not in _SECRET_STORES]
    hits = [h for h in scan_paths(folder, secrets) if not h.path.endswith(".pgpass")]
    assert hits == [], [h.describe() for h in hits]

    configs: list[Path] = []
    for node in (lab.primary, lab.replica, lab.control):
        data = Path(node.data_dir)
        configs += [data / name for name in _SERVER_CONFIGS if (data / name).exists()]
        configs += sorted((data / "conf.d").glob("*")) if (data / "conf.d").is_dir() else []
    assert len(configs) >= 6, configs
    assert scan_paths(configs, secrets) == []

    # The engine keeps each container's environment; none may still hold the old password.
    cfg = load_config(breach_lab.config_path)
    engine = make_client(cfg.docker.base_url)
    try:
        for container in engine.containers.list(all=True):
            env = "\n".join((container.attrs.get("Config") or {}).get("Env") or [])
            assert drill.old_password not in env, f"container {container.name} holds it"
    finally:
        engine.close()

    for url in (lab.file_repository, lab.s3_repository, lab.wal_archive):
        repo = _repo(breach_lab, url)
        for i, obj in enumerate(repo.list("")):
            copy = tmp_path / f"{i}-{PurePosixPath(obj.key).name}"
            copy.write_bytes(b"".join(repo.iter_chunks(obj.key)))
            hits = scan_paths([copy], secrets)
            assert hits == [], f"{url} {obj.key}: {[h.describe() for h in hits]}"
            copy.unlink()


# --------------------------------------------------------------------------- helpers


def _slack_messages(breach_lab: BreachLab) -> list[dict[str, Any]]:
    base = breach_lab.lab.slack_url.rstrip("/").removesuffix("/api")
    with urllib.request.urlopen(f"{base}/_standin/messages", timeout=5) as resp:
        return json.loads(resp.read())["messages"]


def _in_run(message: dict[str, Any], drill: Drill) -> bool:
    """A message of the run's thread: its opening (which names the flow run) or a reply."""
    return message["ts"] in drill.thread or message.get("thread_ts") in drill.thread


def _repo(breach_lab: BreachLab, url: str) -> Any:
    from dr.config import load_config
    from tasks.storage import client as storage_client

    cfg = load_config(breach_lab.config_path)
    return storage_client.open_repository(url, s3_client=storage_client.make_s3_client(cfg.aws))


def _read_object(breach_lab: BreachLab, url: str, key: str) -> str:
    repo = _repo(breach_lab, url)
    return b"".join(repo.iter_chunks(key)).decode()


def _bundle_text(breach_lab: BreachLab, ev: dict[str, Any]) -> str:
    repo = _repo(breach_lab, ev["url"])
    return "\n".join(
        b"".join(repo.iter_chunks(o.key)).decode("utf-8", "replace") for o in repo.list("")
    )
