"""The heartbeat probe and the health wait against a real primary + streaming replica.

The probe must follow the primary through a failover (multi-host conninfo with
``target_session_attrs=read-write``), count only acknowledged rows, and measure RPO from
what is present after recovery.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from dr.config import parse_config
from flows.lifecycle.measure import heartbeat_rpo, probe_rpo
from lab.pgcluster import Cluster, free_port, temporary_cluster
from tasks.health.checks import wait_until_healthy
from tasks.postgres.heartbeat import HeartbeatProbe, heartbeat_conninfo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    """A primary and its streaming hot standby, destroyed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dr-measure-tests-"))
    root.chmod(0o755)
    primary = Cluster(root / "pg1", free_port(), name="pg1")
    replica: Cluster | None = None
    try:
        primary.initdb()
        primary.start()
        replica = primary.create_replica(root / "pg2", free_port(), name="pg2")
        yield primary, replica
    finally:
        for cluster in (replica, primary):
            if cluster is not None:
                cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def single() -> Iterator[Cluster]:
    """One primary, destroyed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dr-measure-tests-"))
    root.chmod(0o755)
    try:
        with temporary_cluster(root, "pg1") as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _target(primary: Cluster, replica: Cluster | None = None, **extra):
    replicas = [{"name": "pg2", "host": "127.0.0.1", "port": replica.port}] if replica else []
    cfg = parse_config(
        {
            "targets": {
                "t": {
                    "production": False,
                    "postgres": {
                        "primary": {"name": "pg1", "host": "127.0.0.1", "port": primary.port},
                        "replicas": replicas,
                        "databases": ["postgres"],
                        "connect_timeout_seconds": 2,
                    },
                    "backup": {"repository": "file:///var/backups/t"},
                    **extra,
                }
            }
        }
    )
    return cfg.target("t")


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_probe_follows_the_primary_through_a_failover_and_measures_rpo(pair):
    primary, replica = pair
    target = _target(
        primary,
        replica,
        health_checks={"sql": [{"name": "writable", "sql": "SELECT NOT pg_is_in_recovery()"}]},
    )
    conninfo = heartbeat_conninfo(target.postgres)
    assert "target_session_attrs=read-write" in conninfo
    probe = HeartbeatProbe(conninfo, writer="failover-test").start()
    try:
        _wait(lambda: len(probe.acked) >= 10)
        assert {a.server for a in probe.acked} == {f"127.0.0.1:{primary.port}"}

        failure_at = datetime.now(UTC)
        primary.stop("immediate")
        replica.promote()
        new_primary = f"127.0.0.1:{replica.port}"
        landed = _wait(lambda: probe.first_write_after(failure_at, server=new_primary))
        health = wait_until_healthy(
            target, timeout_seconds=20, interval_seconds=0.05, heartbeat=probe, since=failure_at
        )
    finally:
        probe.stop()

    assert probe.errors, "the probe saw the primary go away"
    assert health.ok and health.primary == new_primary
    assert health.restored_at is not None and health.restored_at >= landed
    assert {c.name for c in health.checks} == {"writable", "heartbeat"}
    seqs = [a.seq for a in probe.acked]
    assert seqs == sorted(set(seqs)), "each seq acknowledged once, in order"
    assert 0 < probe.outage(failure_at) < 15

    rpo = probe_rpo(probe, conninfo, failure_at)
    last = probe.last_acked_before(failure_at)
    assert last is not None and rpo.newest_acked_seq == last.seq
    # Asynchronous replication on loopback: nothing acknowledged is lost (lab/postgres.md).
    assert (rpo.lost_rows, rpo.seconds) == (0, 0.0)
    same = heartbeat_rpo(conninfo, "failover-test", last.seq, last.ts, first_seq=probe.first_seq)
    assert (same.lost_rows, same.seconds) == (0, 0.0)

    # Rows acknowledged before the failure but missing afterwards are counted and timed.
    with psycopg.connect(replica.conninfo(), autocommit=True) as conn:
        conn.execute(
            "DELETE FROM public.dr_heartbeat WHERE writer = %s AND seq > %s",
            ("failover-test", last.seq - 5),
        )
    lost = probe_rpo(probe, conninfo, failure_at)
    by_seq = {a.seq: a for a in probe.acked}
    assert lost.lost_rows == 5 and lost.newest_present_seq == last.seq - 5
    expected = (last.ts - by_seq[last.seq - 5].ts).total_seconds()
    assert lost.seconds == pytest.approx(expected)
    assert heartbeat_rpo(conninfo, "failover-test", last.seq, last.ts).lost_rows == 5


def test_health_wait_gives_up_at_its_timeout_with_the_failing_checks(single):
    target = _target(
        single,
        health_checks={
            "http": [{"name": "api", "url": f"http://127.0.0.1:{free_port()}/health"}],
            "sql": [{"name": "db", "sql": "SELECT 1 = 1"}],
        },
        validation_queries=[
            {"name": "no orphans", "sql": "SELECT 1 WHERE false", "expect": "no_rows"}
        ],
    )
    started = time.monotonic()
    result = wait_until_healthy(target, timeout_seconds=0.6, interval_seconds=0.1)
    assert not result.ok and result.restored_at is None
    assert 0.5 <= time.monotonic() - started < 5
    assert result.attempts >= 2
    assert [c.name for c in result.failing] == ["api"]
    assert {c.name: c.ok for c in result.checks} == {"api": False, "db": True, "no orphans": True}
