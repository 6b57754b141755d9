"""Measurement truth (issue 12): the outage, lost rows by membership, and honest bounds."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dr.config import Mode, Objectives
from flows.lifecycle.measure import (
    combine_rpo,
    derive_measurement,
    lost_app_acks,
    meets_objectives,
    outage_start,
    rpo_from_acks,
)
from flows.lifecycle.models import Measurement
from lab import heartbeat_app
from tasks.postgres.ack_log import read_ack_log
from tasks.postgres.heartbeat import Ack

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
OBJ = Objectives(rto_seconds=900, rpo_seconds=300)


def _acks(first: int, n: int, start: datetime, step: float = 0.05) -> list[Ack]:
    out = []
    for i in range(n):
        ts = start + timedelta(seconds=i * step)
        out.append(Ack(first + i, ts, "a:1", ts + timedelta(milliseconds=1)))
    return out


def test_every_probe_row_lost_is_a_lower_bound_never_silently_the_window():
    acks = _acks(1, 20, T0)
    rpo = rpo_from_acks(acks, set(), 0.05)
    assert rpo.lost_rows == 20 and rpo.bound == "lower"
    assert rpo.seconds is not None and rpo.seconds < 1.1
    m = derive_measurement(
        Mode.drill,
        declared_at=T0,
        failure_at=T0 + timedelta(seconds=2),
        restored_at=T0 + timedelta(seconds=5),
        explicit=Measurement(rpo_seconds=rpo.seconds, rpo_bound=rpo.bound),
    )
    assert m.rpo_bound == "lower"
    assert not meets_objectives(m, OBJ, Mode.drill), "a lower bound never meets the RPO"


def test_a_surviving_older_write_makes_a_total_probe_loss_exact():
    acks = _acks(1, 20, T0)
    survived = T0 - timedelta(seconds=6.5)
    rpo = rpo_from_acks(acks, set(), 0.05, survived_at=survived, survived_basis="WAL")
    assert rpo.bound == "exact"
    assert rpo.seconds == (acks[-1].ts - survived).total_seconds()


def test_app_acks_count_by_seq_and_ts_because_the_app_reuses_seqs_after_a_loss():
    app = _acks(100, 10, T0 - timedelta(seconds=7))
    # seqs 100-104 survived; 105-109 were lost, and the app wrote 105-106 again later.
    present = {a.seq: a.ts for a in app[:5]}
    present[105] = T0 + timedelta(seconds=30)
    present[106] = T0 + timedelta(seconds=30.05)
    lost, kept = lost_app_acks(app, present)
    assert [a.seq for a in lost] == [105, 106, 107, 108, 109]
    assert [a.seq for a in kept] == [100, 101, 102, 103, 104]


def test_combined_loss_adds_up_and_spans_from_the_newest_survivor():
    app = _acks(1, 100, T0 - timedelta(seconds=8), step=0.01)
    lost, kept = lost_app_acks(app, {a.seq: a.ts for a in app[:40]})
    probe_acks = _acks(1, 20, T0)
    probe = rpo_from_acks(probe_acks, set(), 0.05, survived_at=kept[-1].ts)
    both = combine_rpo(probe, lost, kept, probe_acks)
    assert both.lost_rows == 20 + 60
    assert both.bound == "exact"
    assert both.seconds == (probe_acks[-1].ts - kept[-1].ts).total_seconds()


def test_drill_outage_starts_at_the_last_write_before_the_stamp():
    start, basis = outage_start(
        Mode.drill,
        declared_at=T0,
        failure_at=T0 + timedelta(seconds=10),
        last_write_before=T0 + timedelta(seconds=9.96),
    )
    assert start == T0 + timedelta(seconds=9.96) and "last acknowledged" in basis


def test_alert_started_run_covers_the_whole_heartbeat_gap():
    gap_start = T0
    alert = T0 + timedelta(seconds=15)
    run_start = T0 + timedelta(seconds=19)
    first_write = T0 + timedelta(seconds=21.2)
    m = derive_measurement(
        Mode.incident,
        declared_at=run_start,
        failure_at=None,
        restored_at=first_write,
        explicit=Measurement(failure_at=gap_start, rpo_seconds=0),
        alert_starts_at=alert,
        run_started_at=run_start,
    )
    assert m.rto_seconds == 21.2 and m.failure_at == gap_start
    assert m.rto_phases["detection"] == 15.0
    assert m.rto_phases["dispatch"] == 0.0
    assert m.rto_phases["recovery"] == 2.2


def test_a_run_resuming_after_a_crash_starts_at_the_real_failure():
    crashed_at = T0
    rerun = T0 + timedelta(minutes=5)
    m = derive_measurement(
        Mode.incident,
        declared_at=rerun,
        failure_at=None,
        restored_at=rerun + timedelta(seconds=7),
        explicit=Measurement(failure_at=crashed_at),
    )
    assert m.rto_seconds == 307.0
    assert m.rpo_seconds is None and m.rpo_bound is None
    assert not meets_objectives(m, OBJ, Mode.incident), "an unmeasured RPO fails"


def test_the_lab_app_logs_every_acknowledged_write(tmp_path: Path, monkeypatch):
    class FakeConn:
        closed = False

        def __init__(self) -> None:
            self.seq = 0

        def execute(self, sql: str, params: tuple[object, ...]):
            conn = self

            class Result:
                def fetchone(self):
                    if "max(seq)" in sql:
                        return (1,)
                    conn.seq += 1
                    if conn.seq >= 5:
                        stop.set()
                    return (T0 + timedelta(seconds=conn.seq),)

            return Result()

        def close(self) -> None:
            self.closed = True

    stop = threading.Event()
    monkeypatch.setattr(heartbeat_app.psycopg, "connect", lambda **kw: FakeConn())
    log = tmp_path / "acks.jsonl"
    env = {
        "DB_HOST": "h",
        "DB_PORT": "1",
        "HEARTBEAT_INTERVAL_MS": "1",
        "HEARTBEAT_ACK_LOG": str(log),
    }
    last = heartbeat_app.run(env, stop)
    acks = read_ack_log(log)
    assert [a.seq for a in acks] == list(range(1, last + 1))
    assert acks[0].ts == T0 + timedelta(seconds=1) and acks[0].server == "h:1"


def test_backup_verification_rto_runs_until_every_check_passed():
    from flows.backup_verification.measure import measure_restore
    from flows.backup_verification.models import DatabaseVerification

    class Ctx:
        def __init__(self) -> None:
            self.recorded: dict[str, object] = {}
            self.restored_at = None

        def measure(self, **kw: object) -> None:
            self.recorded.update(kw)

        def stamp_restored(self, at: datetime) -> None:
            self.restored_at = at

    r = DatabaseVerification(
        database="app",
        fetch_started_at=T0,
        restored_at=T0 + timedelta(seconds=4),
        checks_seconds=3.5,
        age_seconds=60,
    )
    ctx = Ctx()
    measure_restore(ctx, [r])  # type: ignore[arg-type]
    assert ctx.restored_at == T0 + timedelta(seconds=7.5), "amcheck and validation count"
    assert ctx.recorded["rto_seconds"] == 7.5
    assert ctx.recorded["rto_phases"] == {"restore": 4.0, "checks": 3.5}
