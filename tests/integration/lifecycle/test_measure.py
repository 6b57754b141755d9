"""The heartbeat probe and the health wait against a real primary + streaming replica.

The probe must follow the primary through a failover (multi-host conninfo with
``target_session_attrs=read-write``), count only acknowledged rows, and measure RPO from
what is present after recovery.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr.config import Mode, parse_config
from flows.lifecycle.measure import derive_measurement, heartbeat_rpo, probe_rpo
from flows.lifecycle.measuring import Measuring
from flows.lifecycle.models import Measurement
from lab import heartbeat_app
from lab.pgcluster import Cluster, free_port, temporary_cluster
from tasks import faults
from tasks.health.checks import wait_until_healthy
from tasks.postgres.ack_log import read_ack_log
from tasks.postgres.heartbeat import HeartbeatProbe, heartbeat_conninfo, newest_heartbeat_before

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


class _Measured(Measuring):
    """Just the measuring part of a run context, over a probe of the test's own."""

    def __init__(self, target: Any, probe: HeartbeatProbe, failure_at: datetime) -> None:
        self.target = target
        self._probe = probe
        self.failure_at = failure_at
        self.measurement = Measurement()


def _freeze(primary: Cluster) -> list[int]:
    """SIGSTOP the WAL senders and the archiver: acknowledged writes stop leaving the primary."""
    rows = primary.psql(
        "SELECT pid FROM pg_catalog.pg_stat_activity"
        " WHERE backend_type IN ('walsender', 'archiver')"
    )
    pids = [int(p) for p in rows.split()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _independent_loss(
    log: Path, replica: Cluster, writer: str
) -> tuple[int, int, datetime, datetime]:
    """The independent writer's own count: acknowledged (seq, ts) missing on the new primary."""
    acked = [json.loads(line) for line in log.read_text().splitlines()]
    with psycopg.connect(replica.conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, ts FROM public.dr_heartbeat WHERE writer = %s", (writer,)
        ).fetchall()
    present = {(seq, ts) for seq, ts in rows}
    kept = [a for a in acked if (a["seq"], datetime.fromisoformat(a["ts"])) in present]
    newest = datetime.fromisoformat(acked[-1]["ts"])
    return len(acked) - len(kept), len(acked), datetime.fromisoformat(kept[-1]["ts"]), newest


def test_forced_loss_counts_what_an_independent_writer_lost(pair, tmp_path: Path):
    """Walsender and archiver frozen before the kill: every probe row is lost; the drill's
    lost rows equal the independent writer's own count plus the probe's, and the RPO comes
    from the writer's acknowledgements (exact), not from the probe's window."""
    primary, replica = pair
    target = _target(primary, replica)
    primary.psql(
        "CREATE TABLE public.dr_heartbeat (writer text NOT NULL, seq bigint NOT NULL,"
        " ts timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (writer, seq))"
    )
    log = tmp_path / "acks.jsonl"
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(primary.port),
        "DB_NAME": "postgres",
        "DB_USER": "postgres",
        "HEARTBEAT_WRITER": "indep",
        "HEARTBEAT_INTERVAL_MS": "10",
        "HEARTBEAT_ACK_LOG": str(log),
    }
    stop = threading.Event()
    app = threading.Thread(target=heartbeat_app.run, args=(env, stop), daemon=True)
    app.start()
    probe = None
    try:
        _wait(lambda: log.exists() and len(log.read_text().splitlines()) >= 20)
        _wait(lambda: replica.psql("SELECT count(*) FROM public.dr_heartbeat").strip() != "0")
        _freeze(primary)
        time.sleep(1.0)  # the application's writes pile up unreplicated before the probe
        probe = HeartbeatProbe(heartbeat_conninfo(target.postgres), writer="dr-probe-x").start()
        _wait(lambda: len(probe.acked) >= 10)
        time.sleep(0.5)
        # Like the drill: failure_at is the moment the first server process was frozen.
        killed = faults.kill_local_server(primary.data_dir)
        failure_at = datetime.fromisoformat(killed.after["killed_at"])
        stop.set()
        app.join(10)
        replica.promote()
        _wait(lambda: probe.first_write_after(failure_at, server=f"127.0.0.1:{replica.port}"))
    finally:
        stop.set()
        if probe is not None:
            probe.stop()

    app_lost, app_acked, app_kept_ts, app_newest = _independent_loss(log, replica, "indep")
    before = [a for a in probe.acked if a.acked_at < failure_at]
    assert app_lost >= 20 and app_acked > app_lost
    m = _Measured(target, probe, failure_at)
    rpo = m.measure_heartbeat_rpo(app_writer="indep", app_acks=read_ack_log(log))
    assert rpo is not None
    assert rpo.lost_rows == len(before) + app_lost, "every acknowledged write, by membership"
    assert f", {app_lost} of {app_acked} application write(s)" in m.measurement.lost_rows_basis
    assert rpo.bound == "exact" and m.measurement.rpo_bound == "exact"
    probe_window = (before[-1].ts - before[0].ts).total_seconds()
    newest_lost = max(before[-1].ts, app_newest)
    assert rpo.seconds == pytest.approx((newest_lost - app_kept_ts).total_seconds())
    assert rpo.seconds > probe_window + 0.5, "the loss reaches back past the probe's window"
    # A write acknowledged at failure_at or just after (its answer was on the wire when the
    # server died) and missing is lost as well: leaving it out would report a smaller loss.
    acks = read_ack_log(log)
    straggler_ts = failure_at + timedelta(milliseconds=1)
    straggler = acks[-1]._replace(seq=acks[-1].seq + 10_000, ts=straggler_ts, acked_at=straggler_ts)
    late = _Measured(target, probe, failure_at)
    late_rpo = late.measure_heartbeat_rpo(app_writer="indep", app_acks=[*acks, straggler])
    assert late_rpo is not None and late_rpo.lost_rows == rpo.lost_rows + 1
    assert f", {app_lost + 1} of {app_acked + 1} application write(s)" in (
        late.measurement.lost_rows_basis or ""
    )
    assert "acknowledged at or after failure_at" in (late.measurement.lost_rows_basis or "")
    assert late_rpo.seconds is not None and late_rpo.seconds >= rpo.seconds
    # Without the application's log the same loss is only a lower bound, and says so.
    alone = _Measured(target, probe, failure_at).measure_heartbeat_rpo()
    assert alone is not None and alone.lost_rows == len(before) and alone.bound == "lower"


def test_alert_started_run_rto_covers_the_gap_in_heartbeat_rows(single):
    """The application's write gap on the primary starts the outage, not the alert or run."""
    target = _target(single)
    conninfo = heartbeat_conninfo(target.postgres)
    single.psql(
        "CREATE TABLE public.dr_heartbeat (writer text NOT NULL, seq bigint NOT NULL,"
        " ts timestamptz NOT NULL, PRIMARY KEY (writer, seq))"
    )
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    gap_start, gap_end = t0 + timedelta(seconds=5), t0 + timedelta(seconds=26.2)
    rows = [(i, t0 + timedelta(seconds=i * 0.05)) for i in range(101)]  # up to gap_start
    rows += [(200 + i, gap_end + timedelta(seconds=i * 0.05)) for i in range(20)]
    with psycopg.connect(single.conninfo(), autocommit=True) as conn:
        for seq, ts in rows:
            conn.execute("INSERT INTO public.dr_heartbeat VALUES ('app', %s, %s)", (seq, ts))
    alert_at = gap_start + timedelta(seconds=12)
    run_start = alert_at + timedelta(seconds=4)
    last = newest_heartbeat_before(conninfo, "app", alert_at)
    assert last == gap_start
    m = derive_measurement(
        Mode.incident,
        declared_at=run_start,
        failure_at=None,
        restored_at=gap_end,
        explicit=Measurement(failure_at=last),
        alert_starts_at=alert_at,
        run_started_at=run_start,
    )
    assert m.rto_seconds == pytest.approx((gap_end - gap_start).total_seconds())
    assert m.rto_seconds > (gap_end - run_start).total_seconds() + 15
    assert m.rto_phases["detection"] == pytest.approx(12.0)
