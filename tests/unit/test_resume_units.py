"""Every run resumes from what the world is: half-done failovers and switch-backs."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from flows.common.failback import resume
from flows.region_failover.assess import half_done
from flows.region_failover.models import Assessment, NodeView

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 3, 10, 5, tzinfo=UTC)


def _view(name: str, state: str, hb: datetime | None = None) -> NodeView:
    return NodeView(
        name=name,
        region="a" if name == "primary" else "b",
        configured_role="primary" if name == "primary" else "replica",
        state=state,
        writable=state == "primary",
        newest_heartbeat_at=hb,
    )


def _assessment(*views: NodeView) -> Assessment:
    return Assessment(nodes={v.name: v for v in views}, old_primary="primary", failed_region="a")


def test_promoted_but_not_repointed_is_found_and_failure_is_the_standby_side_newest_write():
    a = _assessment(
        _view("primary", "unreachable"),
        _view("replica1", "primary", T1),
        _view("r2", "standby", T0),
    )
    out = half_done(a, "primary")
    assert any("replica1 already promoted" in f for f in out["found"])
    assert out["failure_at"] == T0.isoformat()


def test_fenced_but_not_promoted_is_found():
    a = _assessment(_view("primary", "unreachable"), _view("replica1", "standby", T0))
    out = half_done(a, "primary")
    assert out["found"] == ["primary unreachable and no replica promoted yet"]
    assert out["failure_at"] == T0.isoformat()


def test_healthy_primary_is_nothing_half_done():
    a = _assessment(_view("primary", "primary", T1), _view("replica1", "standby", T0))
    assert half_done(a, "primary") == {"found": [], "failure_at": None, "writers_stopped": []}


class Rec:
    dry_run = False

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.changes: list[object] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def plan(self, action: str, obj: str) -> bool:
        return True

    def record_check(self, *args: object, **kw: object) -> None:
        return None

    def record_change(self, change: object, undo: object = None) -> None:
        self.changes.append(change)


def _pgc():
    def node(name: str) -> SimpleNamespace:
        return SimpleNamespace(
            name=name, host="127.0.0.1", port=1, data_directory="/d", bin_dir="/b", os_user=None
        )

    p, r = node("primary"), node("replica1")
    return SimpleNamespace(nodes=[p, r], primary=p)


def _patch(monkeypatch, state: str, caught_up: bool) -> list[str]:
    promoted: list[str] = []
    monkeypatch.setattr(resume, "is_local", lambda n: True)
    monkeypatch.setattr(resume, "node_conninfo", lambda pgc, n, pw: n.name)
    monkeypatch.setattr(
        resume.rejoin,
        "last_checkpoint_task",
        lambda *a: {"state": state, "checkpoint_lsn": "0/5000028"},
    )
    monkeypatch.setattr(resume, "replayed_at_least", lambda ci, lsn: caught_up)
    monkeypatch.setattr(resume.fence, "ensure_promoted_task", lambda ci: promoted.append(ci) or ci)
    return promoted


def _healths():
    return {
        "replica1": SimpleNamespace(reachable=False, in_recovery=None),
        "primary": SimpleNamespace(reachable=True, in_recovery=True),
    }


def test_switch_back_killed_after_clean_stop_promotes_the_caught_up_standby(monkeypatch):
    promoted = _patch(monkeypatch, "shut down", caught_up=True)
    rec = Rec()
    node = resume.resume_interrupted_switch_back(rec, _pgc(), _healths(), None)
    assert node is not None and node.name == "primary"
    assert promoted == ["primary"]
    assert "interrupted switch-back" in rec.notes[0]


def test_no_promotion_when_the_standby_is_behind_or_the_stop_was_not_clean(monkeypatch):
    promoted = _patch(monkeypatch, "shut down", caught_up=False)
    assert resume.resume_interrupted_switch_back(Rec(), _pgc(), _healths(), None) is None
    _patch(monkeypatch, "in production", caught_up=True)
    assert resume.resume_interrupted_switch_back(Rec(), _pgc(), _healths(), None) is None
    assert promoted == []


def test_no_writer_and_configured_primary_a_standby_fails_over_from_the_node_that_is_down():
    from flows.region_failover.assess import identify_old_primary

    views = [_view("primary", "standby"), _view("replica1", "unreachable")]
    assert identify_old_primary(views, "primary") == "replica1"
    views = [_view("primary", "unreachable"), _view("replica1", "standby")]
    assert identify_old_primary(views, "primary") == "primary"


# --------------------------------------------------------------- never a second primary


def test_undoing_a_fence_asks_the_world_not_only_the_runs_memory(monkeypatch):
    """A promotion that timed out here may still have happened: the old primary stays down."""
    import pytest

    from dr.errors import PreconditionError
    from flows.region_failover.run import Failover

    run = Failover.__new__(Failover)
    run.failed_back = False
    run.promoted = False  # what this run remembers
    started: list[str] = []
    monkeypatch.setattr(run, "writable_others", lambda name: ["replica1"], raising=False)
    undo = run.guarded("starting primary again", lambda: started.append("primary"), "primary")
    with pytest.raises(PreconditionError, match=r"promoted \(replica1\).*second primary"):
        undo()
    assert started == []
    monkeypatch.setattr(run, "writable_others", lambda name: [], raising=False)
    undo()
    assert started == ["primary"]


def _datadir(monkeypatch, files: set[str], state: str):
    from pathlib import Path

    from tasks.postgres import local_server

    monkeypatch.setattr(
        local_server, "_exists_as_owner", lambda user, path: Path(path).name in files
    )
    monkeypatch.setattr(local_server, "last_checkpoint", lambda *a: {"state": state})
    return local_server


def test_a_former_standby_without_its_signal_file_is_refused(monkeypatch):
    from pathlib import Path

    d, b = Path("/d"), Path("/b")
    ls = _datadir(monkeypatch, set(), "shut down in recovery")
    assert "was a standby" in (ls.why_not_start(d, b, None) or "")
    ls = _datadir(monkeypatch, set(), "in archive recovery")  # killed standby, or rewound
    assert "was a standby" in (ls.why_not_start(d, b, None) or "")
    ls = _datadir(monkeypatch, {"backup_label"}, "in production")  # base backup, unconfigured
    assert "base backup" in (ls.why_not_start(d, b, None) or "")
    ls = _datadir(monkeypatch, {"standby.signal"}, "shut down in recovery")
    assert ls.why_not_start(d, b, None) is None
    ls = _datadir(monkeypatch, set(), "shut down")  # a primary stopped cleanly
    assert ls.why_not_start(d, b, None) is None
    ls = _datadir(monkeypatch, set(), "in production")  # a primary that crashed
    assert ls.why_not_start(d, b, None) is None


def test_a_healthy_primary_with_stopped_writers_is_finished_not_failed_over_again():
    """A switch-back killed after its promotion: start the writers, never stop the leader."""
    from flows.region_failover.assess import identify_old_primary, stopped_writers
    from flows.region_failover.models import ServiceView

    def svc(name: str, running: bool | None) -> ServiceView:
        return ServiceView(
            kind="docker", name=name, region="a", role="writer", ok=bool(running), running=running
        )

    assert stopped_writers([svc("api", False), svc("app", True), svc("gone", None)]) == ["api"]
    # The configured primary leads again, replica1 is down: fail over "from" replica1.
    views = [_view("primary", "primary"), _view("replica1", "unreachable")]
    assert identify_old_primary(views, "primary", writers_stopped=True) == "replica1"
    assert identify_old_primary(views, "primary") == "primary"  # writers run: planned
    # replica1 still leads (killed at "stop writes"): the configured primary is the old one.
    views = [_view("primary", "standby"), _view("replica1", "primary")]
    assert identify_old_primary(views, "primary", writers_stopped=True) == "primary"
    assert identify_old_primary(views, "primary") == "replica1"
    a = _assessment(_view("primary", "standby"), _view("replica1", "primary", T1))
    a.services = [svc("app", False)]
    out = half_done(a, "primary")
    assert out["writers_stopped"] == ["app"]
    assert any("writer(s) app stopped" in f for f in out["found"])


def test_a_resumed_incident_counts_the_old_primarys_lost_acks_not_a_zero_lag(monkeypatch):
    """Promoted by the killed run, the replica is "0 s behind": the ack log says what was lost."""
    from datetime import timedelta

    from flows.region_failover import measure as m
    from tasks.postgres.heartbeat import Ack

    old = SimpleNamespace(name="primary", host="127.0.0.1", port=5001)
    new = SimpleNamespace(name="replica1", host="127.0.0.1", port=5002)
    t = [T0 + timedelta(seconds=i * 0.05) for i in range(4)]
    acks = [Ack(i + 1, t[i], "127.0.0.1:5001", t[i]) for i in range(4)]
    measured: dict[str, object] = {}
    ctx = SimpleNamespace(
        is_drill=False,
        measurement=SimpleNamespace(failure_at=t[3]),
        measure=lambda **kw: measured.update(kw),
        record_check=lambda *a, **kw: None,
        note=lambda text: None,
    )
    run = SimpleNamespace(
        ctx=ctx,
        opts=SimpleNamespace(app_heartbeat_writer="app"),
        old=old,
        pgc=SimpleNamespace(heartbeat_db="app"),
        ci=lambda node, db: node.name,
    )
    monkeypatch.setattr(m, "_app_acks", lambda r: acks)
    # Rows 1 and 2 reached replica1; 3 and 4 died with the primary.
    monkeypatch.setattr(m, "heartbeat_rows_present", lambda ci, w, a, b: {1: t[0], 2: t[1]})
    assert m._incident_app_loss(run, new) is True
    assert measured["lost_rows"] == 2 and measured["rpo_bound"] == "exact"
    assert abs(measured["rpo_seconds"] - 0.1) < 1e-6
    assert "2 of 4 write(s)" in measured["rpo_basis"]


def test_data_corruption_finishes_only_when_nothing_is_damaged_any_more():
    """Writers stopped and no damage found: a killed run repaired it; anything else recovers."""
    from flows.data_corruption.options import CorruptionOptions
    from flows.data_corruption.resume import nothing_to_recover

    def run(**kw: object) -> SimpleNamespace:
        base = {"damaged": [], "suspected_lsn": None, "damage_lsn": None}
        opts = CorruptionOptions.model_validate(kw.pop("opts", {}))
        return SimpleNamespace(opts=opts, **{**base, **kw})

    assert nothing_to_recover(run())
    assert not nothing_to_recover(run(damaged=["shop.orders"]))
    assert not nothing_to_recover(run(suspected_lsn="0/5000028"))
    assert not nothing_to_recover(run(opts={"recovery_lsn": "0/5000028"}))
    assert not nothing_to_recover(run(opts={"whole_database": True}))
