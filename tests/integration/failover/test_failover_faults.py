"""Region failover under faults, on pairs of our own (primary + streaming replica).

Each test builds its own pair (~2 s) and its own dr.yaml, and runs the flow for real: the
servers are crashed, stopped, fenced and promoted. What each test proves is in its name;
the safety rule behind all of them: nothing is promoted while another node may still
take writes, and a run that refuses changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr.errors import PostgresError
from dr.tasking import dr_task
from flows.failback.flow import failback_flow
from flows.region_failover import fence as fencing
from flows.region_failover.flow import region_failover_flow
from flows.region_failover.options import FailoverOptions
from flows.region_failover.run import Failover
from lab import heartbeat_app
from lab.pgcluster import free_port
from tasks import faults
from tasks.postgres import fence, rejoin

from .conftest import FlakyRoute53, Pair, in_recovery

pytestmark = pytest.mark.integration


def run(config_path: str, mode: str, **options: Any) -> dict[str, Any]:
    return region_failover_flow(
        target="pair", mode=mode, options=FailoverOptions(**options), config_path=config_path
    )


def writable(pair: Pair, which: str = "primary") -> bool:
    """True when the node takes a write (the way the flow proves the opposite)."""
    cluster = pair.primary if which == "primary" else pair.replica
    proof = fence.prove_not_writable(cluster.conninfo("app"))
    return proof.method == "write_succeeded"


def check(result: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in result["checks"] if c["name"] == name]
    assert found, f"no check {name!r} in {[c['name'] for c in result['checks']]}"
    return found[-1]


# --------------------------------------------------------------------------- refusals


def test_no_healthy_replica_refuses_and_changes_nothing(
    make_pair: Callable[..., Pair], prefect_lab: None
) -> None:
    pair = make_pair()
    dead_port = free_port(avoid=[pair.primary.port, pair.replica.port])
    config = pair.write_config(replica_port=dead_port)

    incident = run(config, "incident")
    assert incident["outcome"] == "failed"
    assert "no healthy replica" in incident["reason"]
    assert "unreachable" in incident["reason"]
    assert incident["changes"] == []
    assert [p["name"] for p in incident["phases"]] == ["assess", "choose replica"]
    assert writable(pair), "the primary must be left as it was"

    drill = run(config, "drill")
    assert drill["outcome"] == "failed"
    assert "drill not started, nothing changed" in drill["reason"]
    assert drill["changes"] == []
    assert writable(pair)
    assert in_recovery(pair.replica) is True


def test_replica_too_far_behind_asks_a_person_and_promotes_nothing(
    make_pair: Callable[..., Pair], prefect_lab: None
) -> None:
    pair = make_pair()
    # A heartbeat 20 s old reaches the replica; then the replica is cut off, and the
    # primary writes a new one: the replica is 20 s behind.
    pair.primary.psql(
        "INSERT INTO dr_heartbeat (writer, seq, ts) VALUES ('app', 1, now() - interval '20 s')",
        "app",
    )
    deadline = time.monotonic() + 10
    while pair.replica.psql("SELECT count(*) FROM dr_heartbeat", "app") != "1":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pair.replica.set_settings({"primary_conninfo": "'host=127.0.0.1 port=1 user=postgres'"})
    pair.replica.psql("SELECT pg_catalog.pg_reload_conf()")
    while pair.primary.psql("SELECT count(*) FROM pg_catalog.pg_stat_replication") != "0":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pair.primary.psql("INSERT INTO dr_heartbeat (writer, seq) VALUES ('app', 2)", "app")
    config = pair.write_config(approval={"timeout_seconds": 2})

    result = run(config, "incident", max_lag_seconds=5)

    assert result["outcome"] == "aborted", result["reason"]
    assert "timed out" in result["reason"]
    assert "behind" in result["reason"]
    lag = check(result, "pair-replica within the RPO")
    assert lag["ok"] is False and lag["value"] >= 19
    assert [a["timed_out"] for a in result["approvals"]] == [True]
    # Asked before anything changed: not fenced, not promoted.
    assert result["changes"] == []
    assert in_recovery(pair.replica) is True
    assert writable(pair)


def test_unproven_fence_with_nobody_approving_promotes_nothing(
    make_pair: Callable[..., Pair], prefect_lab: None
) -> None:
    pair = make_pair()
    # The primary cannot be stopped from here (no data_directory in the config) and the
    # option forbids closing it to clients: it stays writable, the proof must fail. The
    # alert route's auto_approve would approve ordinary gates, never this one.
    config = pair.write_config(primary_local=False, approval={"timeout_seconds": 2})

    result = run(config, "incident", fence_by_connections=False, auto_approve=True)

    assert result["outcome"] == "aborted", result["reason"]
    proofs = result["details"]["failover"]["fence_proofs"]
    assert proofs[-1]["proven"] is False
    assert proofs[-1]["method"] == "write_succeeded"
    gate = result["approvals"][-1]
    assert "NOT proven fenced" in gate["step"]
    assert gate["timed_out"] is True and gate["approved"] is False
    assert not any(c["action"] == "promote" for c in result["changes"])
    assert in_recovery(pair.replica) is True
    assert writable(pair), "the old primary was left alone: it was never fenced"


# --------------------------------------------------------------------------- faults on the way


def test_old_primary_coming_back_is_fenced_again_then_failback_restores_roles(
    make_pair: Callable[..., Pair], prefect_lab: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair()
    config = pair.write_config()
    original = fencing.fence
    came_back: list[bool] = []

    def fence_then_restart(run: Failover, node: Any, *, again: bool = False) -> Any:
        proof = original(run, node, again=again)
        if not again and not came_back:
            # Someone (a watchdog, a person) starts the old primary right after the fence.
            pair.primary.start()
            came_back.append(True)
        return proof

    monkeypatch.setattr(fencing, "fence", fence_then_restart)
    result = run(config, "incident", auto_approve=True)

    assert result["outcome"] == "passed", result["reason"]
    assert came_back == [True]
    assert check(result, "pair-primary fenced again")["ok"] is True
    assert any("came back before promotion" in n for n in result["notes"])
    assert check(result, "only one primary")["ok"] is True
    assert in_recovery(pair.replica) is False
    assert not faults.server_processes(pair.primary.data_dir)
    # An incident does not fail back by itself; the failback flow does, on request.
    assert "failback" not in result["details"]

    report = failback_flow(target="pair", config_path=config)

    assert report["ok"], report["reason"]
    assert report["primary_before"] == "pair-replica"
    assert report["primary_after"] == "pair-primary"
    assert report["roles_as_configured"] is True
    assert report["switch_back_lost_nothing"] is True
    assert [r["method"] for r in report["rejoined"]] == ["rewind", "rewind"]
    assert in_recovery(pair.primary) is False and in_recovery(pair.replica) is True


def test_failback_falls_back_to_a_base_backup_when_rewind_fails(
    make_pair: Callable[..., Pair], prefect_lab: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair()
    config = pair.write_config()

    def broken_rewind(*args: Any, **kwargs: Any) -> Any:
        raise PostgresError("pg_rewind failed (exit 1): simulated: could not find WAL")

    monkeypatch.setattr(rejoin, "rewind_task", dr_task(broken_rewind, retries=0))
    result = run(config, "drill", warmup_seconds=0.3)

    assert result["outcome"] == "passed", result["reason"]
    report = result["details"]["failback"]
    methods = {r["node"]: r for r in report["rejoined"]}
    assert methods["pair-primary"]["method"] == "base_backup"
    assert "simulated" in methods["pair-primary"]["fallback_reason"]
    assert report["roles_as_configured"] is True
    rebuilt = [c for c in result["changes"] if c["action"] == "rebuild-from-base-backup"]
    assert rebuilt and all(Path(c["after"]["previous_data_directory"]).is_dir() for c in rebuilt)
    assert in_recovery(pair.primary) is False and in_recovery(pair.replica) is True


def _frozen_partition_then_kill(pair: Pair, seconds: float) -> Any:
    """An injector: the primary's WAL senders freeze (a partition), then the primary dies."""

    def inject(data_directory: str, **kw: Any) -> Any:
        for pid in pair.walsender_pids():
            os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)  # the partition lasts this long before the crash
        return faults.kill_local_server(data_directory, **kw)

    return dr_task(inject, retries=0)


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_acknowledged_rows_lost_sync_none_async_reported(
    make_pair: Callable[..., Pair],
    prefect_lab: None,
    monkeypatch: pytest.MonkeyPatch,
    synchronous: bool,
) -> None:
    pair = make_pair(synchronous=synchronous)
    config = pair.write_config()
    monkeypatch.setattr(faults, "kill_local_server_task", _frozen_partition_then_kill(pair, 1.0))

    result = run(config, "drill", failback=False, warmup_seconds=0.5)

    assert result["outcome"] == "passed", result["reason"]
    assert result["lost_rows"] is not None and result["rpo_seconds"] is not None
    rpo = result["details"]["failover"]["rpo"]
    if synchronous:
        assert result["lost_rows"] == 0
        assert result["rpo_seconds"] == 0.0
        assert check(result, "synchronous replication lost no acknowledged write")["ok"]
        assert check(result, "replication is synchronous")["ok"]
    else:
        # Rows acknowledged during the 1 s partition never reached the replica: measured.
        assert result["lost_rows"] >= 5
        assert 0.3 < result["rpo_seconds"] < 3
        assert (
            check(result, "acknowledged writes lost (asynchronous replication)")["value"]
            == (result["lost_rows"])
        )
    assert rpo["lost_rows"] == result["lost_rows"]
    assert in_recovery(pair.replica) is False


def _frozen_walsender_and_archiver_then_kill(pair: Pair, seconds: float) -> Any:
    """Nothing acknowledged leaves the primary (no streaming, no archiving), then it dies."""

    def inject(data_directory: str, **kw: Any) -> Any:
        rows = pair.primary.psql(
            "SELECT pid FROM pg_catalog.pg_stat_activity"
            " WHERE backend_type IN ('walsender', 'archiver')"
        )
        for pid in [int(p) for p in rows.split()]:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        return faults.kill_local_server(data_directory, **kw)

    return dr_task(inject, retries=0)


def test_forced_loss_lost_rows_equal_an_independent_writers_count(
    make_pair: Callable[..., Pair],
    prefect_lab: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    pair = make_pair(synchronous=False)
    config = pair.write_config()
    pair.primary.psql(
        "CREATE TABLE IF NOT EXISTS public.dr_heartbeat (writer text NOT NULL, seq bigint NOT"
        " NULL, ts timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (writer, seq))",
        dbname="app",
    )
    log = tmp_path / "acks.jsonl"
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(pair.primary.port),
        "DB_NAME": "app",
        "DB_USER": "postgres",
        "HEARTBEAT_WRITER": "indep",
        "HEARTBEAT_INTERVAL_MS": "10",
        "HEARTBEAT_ACK_LOG": str(log),
    }
    stop = threading.Event()
    writer = threading.Thread(target=heartbeat_app.run, args=(env, stop), daemon=True)
    writer.start()
    monkeypatch.setattr(
        faults, "kill_local_server_task", _frozen_walsender_and_archiver_then_kill(pair, 1.5)
    )
    try:
        time.sleep(1.0)
        result = run(
            config,
            "drill",
            failback=False,
            warmup_seconds=0.5,
            app_heartbeat_writer="indep",
            app_ack_log=str(log),
        )
    finally:
        stop.set()
        writer.join(10)

    assert result["outcome"] == "passed", result["reason"]
    acked = [json.loads(line) for line in log.read_text().splitlines()]
    with psycopg.connect(pair.replica.conninfo("app"), autocommit=True) as conn:
        rows = conn.execute("SELECT seq, ts FROM public.dr_heartbeat WHERE writer = 'indep'")
        present = {(seq, ts) for seq, ts in rows.fetchall()}
    lost = [a for a in acked if (a["seq"], datetime.fromisoformat(a["ts"])) not in present]
    assert len(lost) >= 20, "the frozen walsender and archiver forced a loss"
    assert f", {len(lost)} of {len(acked)} application write(s)" in result["lost_rows_basis"]
    probe_lost = int(result["lost_rows_basis"].split(": ", 1)[1].split(" probe")[0])
    assert result["lost_rows"] == probe_lost + len(lost)
    assert result["rpo_bound"] == "exact"
    assert result["rpo_seconds"] >= 1.4, "the whole partition, not the probe's window"


# --------------------------------------------------------------------------- other systems


def _zone_with_record(route53: FlakyRoute53, name: str, value: str) -> str:
    client = route53.client()
    zone = client.create_hosted_zone(Name="pair.test.", CallerReference=f"dr-{time.time_ns()}")
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    client.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": name,
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": value}],
                    },
                }
            ]
        },
    )
    return zone_id


def _record_value(route53: FlakyRoute53, zone_id: str, name: str) -> str:
    sets = route53.client().list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    record = next(s for s in sets if s["Name"] == name and s["Type"] == "A")
    return record["ResourceRecords"][0]["Value"]


def test_dns_throttling_and_5xx_are_retried_by_the_sdk(
    make_pair: Callable[..., Pair], prefect_lab: None, flaky_route53: FlakyRoute53
) -> None:
    pair = make_pair()
    name = "db.pair.test."
    zone_id = _zone_with_record(flaky_route53, name, "10.0.0.1")
    config = pair.write_config(
        aws=flaky_route53.aws_section(),
        target={"dns": {"zone_id": zone_id, "name": name, "type": "A", "ttl_seconds": 30}},
    )
    flaky_route53.fail_next(503, times=2)

    result = run(config, "drill", failback=False, warmup_seconds=0.3)

    assert result["outcome"] == "passed", result["reason"]
    assert _record_value(flaky_route53, zone_id, name) == "127.0.0.1"
    statuses = [status for _, _, status in flaky_route53.seen]
    assert statuses[:2] == [503, 503] and 200 in statuses[2:]
    assert check(result, f"repoint DNS {name} A to 127.0.0.1")["ok"]
    dns = [c for c in result["changes"] if c["action"] == "upsert-record"]
    assert dns and dns[0]["outcome"] == "updated"


def test_dns_permanent_error_is_reported_and_recovery_still_completes(
    make_pair: Callable[..., Pair], prefect_lab: None, flaky_route53: FlakyRoute53
) -> None:
    pair = make_pair()
    name = "db.pair.test."
    config = pair.write_config(
        aws=flaky_route53.aws_section(),
        target={"dns": {"zone_id": "ZNOSUCHZONE0000", "name": name, "ttl_seconds": 30}},
    )

    result = run(config, "drill", failback=False, warmup_seconds=0.3)

    assert result["outcome"] == "failed"
    failed = check(result, f"repoint DNS {name} CNAME to 127.0.0.1")
    assert failed["ok"] is False and "CloudError" in failed["detail"]
    assert "repoint DNS" in result["reason"]
    # Not retried by the flow (permanent); the database failover itself went through.
    assert sum(1 for *_, status in flaky_route53.seen if status == 404) <= 1
    assert in_recovery(pair.replica) is False
    assert result["rto_seconds"] is not None


def test_slack_down_does_not_stop_the_recovery(
    make_pair: Callable[..., Pair], prefect_lab: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair()
    monkeypatch.setenv("DR_TEST_FAILOVER_SLACK", "xoxb-failover-test-token")
    dead = free_port(avoid=[pair.primary.port, pair.replica.port])
    config = pair.write_config(
        slack={
            "token": {"env": "DR_TEST_FAILOVER_SLACK"},
            "base_url": f"http://127.0.0.1:{dead}/api/",
            "default_channel": "#nowhere",
        }
    )

    result = run(config, "drill", inject="immediate", failback=False, warmup_seconds=0.3)

    assert result["outcome"] == "passed", result["reason"]
    assert result["slack_failures"], "the Slack outage must be reported"
    assert result["rto_seconds"] is not None and result["rto_seconds"] < 60
    assert in_recovery(pair.replica) is False


def test_dry_run_plans_and_changes_nothing(
    make_pair: Callable[..., Pair], prefect_lab: None
) -> None:
    pair = make_pair()
    config = pair.write_config()

    result = run(config, "dry-run")

    assert result["outcome"] == "passed", result["reason"]
    plan = "\n".join(result["plan"])
    assert "would stop -m immediate the old primary pair-primary" in plan
    assert "would promote pair-replica" in plan
    assert result["changes"] == []
    assert writable(pair)
    assert in_recovery(pair.replica) is True
