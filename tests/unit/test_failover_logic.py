"""Pure logic of the region failover: which replica, how far behind, which severity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dr.config import PostgresNode
from dr.errors import ApprovalError, PreconditionError
from flows.region_failover.assess import declare_severity, identify_old_primary
from flows.region_failover.choose import choose_replica, estimate_lag_seconds, node_position
from flows.region_failover.fence import unproven_gate
from flows.region_failover.measure import rto_breakdown
from flows.region_failover.models import Assessment, NodeView, ServiceView
from flows.region_failover.options import FailoverOptions
from flows.region_failover.run import Failover
from tasks.postgres.models import FenceProof

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def view(name: str, state: str = "standby", *, region: str = "dr", **kw: object) -> NodeView:
    role = "primary" if name == "p" else "replica"
    writable = state == "primary"
    return NodeView(
        name=name,
        region=region,
        configured_role=role,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        writable=writable,
        **kw,  # type: ignore[arg-type]
    )


def dead_primary() -> NodeView:
    return view("p", "unreachable", region="main", error="connection refused")


def test_position_uses_received_wal_when_ahead_of_replay() -> None:
    v = view("r1", received_lsn="0/5000000", replayed_lsn="0/4000000")
    assert node_position(v) == 0x5000000
    assert node_position(view("r2", "primary", current_lsn="1/0")) == 1 << 32
    assert node_position(view("r3", "unreachable")) is None


def test_highest_wal_position_wins_over_region_preference() -> None:
    choice = choose_replica(
        [
            dead_primary(),
            view("near", region="main", replayed_lsn="0/3000100"),
            view("far", region="dr", replayed_lsn="0/3000000"),
        ],
        old_primary="p",
        failed_region="main",
        preferred_regions=["dr"],
    )
    assert choice.chosen == "near"
    assert choice.ranked == ["near", "far"]
    assert "most WAL" in choice.reason


def test_ties_go_outside_the_failed_region_then_preferred_then_config_order() -> None:
    nodes = [
        dead_primary(),
        view("same-region", region="main", replayed_lsn="0/3000000"),
        view("other", region="eu", replayed_lsn="0/3000000"),
        view("preferred", region="us", replayed_lsn="0/3000000"),
    ]
    no_pref = choose_replica(nodes, old_primary="p", failed_region="main")
    assert no_pref.chosen == "other"
    assert no_pref.ranked[-1] == "same-region"
    pref = choose_replica(nodes, old_primary="p", failed_region="main", preferred_regions=["us"])
    assert pref.chosen == "preferred"
    assert "tie" in pref.reason


def test_no_healthy_replica_says_why_for_each() -> None:
    choice = choose_replica(
        [
            dead_primary(),
            view("r1", "unreachable", error="timeout expired"),
            view("r2", "unknown", error="password authentication failed"),
        ],
        old_primary="p",
        failed_region="main",
    )
    assert choice.chosen is None
    assert "timeout expired" in choice.excluded["r1"]
    assert "password" in choice.excluded["r2"]
    assert choice.reason.startswith("no healthy replica")


def test_an_already_promoted_replica_is_resumed_and_two_are_refused() -> None:
    resumed = choose_replica(
        [
            dead_primary(),
            view("r1", replayed_lsn="0/9000000"),
            view("r2", "primary", current_lsn="0/3000000"),
        ],
        old_primary="p",
        failed_region="main",
    )
    assert resumed.chosen == "r2"
    assert resumed.lag_seconds == 0.0
    with pytest.raises(PreconditionError, match="more than one replica"):
        choose_replica(
            [
                dead_primary(),
                view("a", "primary", current_lsn="0/1"),
                view("b", "primary", current_lsn="0/2"),
            ],
            old_primary="p",
            failed_region="main",
        )


def test_lag_is_measured_against_the_reference_moment() -> None:
    replica = view("r1", replayed_lsn="0/1", newest_heartbeat_at=T0)
    seconds, basis = estimate_lag_seconds(replica, T0 + timedelta(seconds=3.5))
    assert seconds == pytest.approx(3.5)
    assert "newest heartbeat" in basis
    # The replica's clock being ahead never gives a negative lag.
    assert estimate_lag_seconds(replica, T0 - timedelta(seconds=1))[0] == 0.0
    # Without heartbeat rows, the last replayed commit is used.
    old = view("r2", replayed_lsn="0/1", last_replay_at=T0)
    assert estimate_lag_seconds(old, T0 + timedelta(seconds=2))[0] == pytest.approx(2.0)
    assert estimate_lag_seconds(view("r3", replayed_lsn="0/1"), T0)[0] is None


def test_choice_reports_lag_relative_to_freshest_candidate_without_reference() -> None:
    choice = choose_replica(
        [
            dead_primary(),
            view("r1", replayed_lsn="0/5", newest_heartbeat_at=T0),
            view("r2", replayed_lsn="0/4", newest_heartbeat_at=T0 - timedelta(seconds=9)),
        ],
        old_primary="p",
        failed_region="main",
    )
    assert choice.chosen == "r1"
    assert choice.lag_seconds == 0.0
    behind = choose_replica(
        [dead_primary(), view("r1", replayed_lsn="0/5", newest_heartbeat_at=T0)],
        old_primary="p",
        failed_region="main",
        reference_at=T0 + timedelta(seconds=7),
    )
    assert behind.lag_seconds == pytest.approx(7.0)


def test_old_primary_is_the_configured_one_unless_another_node_leads() -> None:
    assert identify_old_primary([dead_primary(), view("r1")], "p") == "p"
    after_failover = [view("p", "standby", region="main"), view("r1", "primary")]
    assert identify_old_primary(after_failover, "p") == "r1"
    with pytest.raises(PreconditionError, match="more than one node"):
        identify_old_primary([view("p", "primary"), view("r1", "primary")], "p")


def _assessment(primary: NodeView, services: list[ServiceView]) -> Assessment:
    return Assessment(
        nodes={"p": primary, "r1": view("r1")},
        services=services,
        old_primary="p",
        failed_region="main",
    )


def test_severity_follows_the_seeds_scale() -> None:
    sev, why = declare_severity(_assessment(dead_primary(), []))
    assert sev == "SEV1" and "takes no writes" in why
    broken_app = ServiceView(kind="docker", name="app", region="main", role="writer", ok=False)
    assert declare_severity(_assessment(view("p", "primary"), [broken_app]))[0] == "SEV2"
    assert declare_severity(_assessment(view("p", "primary"), []))[0] == "SEV3"


def test_rto_breakdown_is_seconds_after_the_failure() -> None:
    out = rto_breakdown(
        T0,
        {
            "fenced": T0 + timedelta(seconds=0.25),
            "promoted": T0 + timedelta(seconds=0.5),
            "x": None,
        },
    )
    assert out == {"fenced": 0.25, "promoted": 0.5, "x": None}
    assert rto_breakdown(None, {"fenced": T0}) == {"fenced": None}


def test_options_refuse_unknown_keys_and_accept_alert_fields() -> None:
    opts = FailoverOptions.model_validate(
        {
            "severity": "SEV1",
            "auto_approve": True,
            "alert_fingerprint": "abc",
            "inject": "immediate",
        }
    )
    assert opts.inject == "immediate"
    assert opts.allow_unproven_fence is False
    with pytest.raises(ValueError, match="extra"):
        FailoverOptions.model_validate({"allow_unproven": True})


class StubContext:
    """Just what the fence gate touches of the lifecycle's RunContext."""

    def __init__(self, *, drill: bool) -> None:
        self.is_drill = drill
        self.dry_run = False
        self.approved: list[str] = []
        self.paused: list[str] = []
        self.notes: list[str] = []

    def approve(self, step: str, *, irreversible: bool = True, always_ask: bool = False) -> None:
        # Like RunContext.approve: policy approves unless a person must always be asked;
        # nobody answers here, so asking times out.
        if always_ask:
            self.paused.append(step)
            raise ApprovalError(f"approval before {step!r} timed out")
        self.approved.append(step)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _gate(ctx: StubContext, **options: object) -> Failover:
    run = Failover.__new__(Failover)
    run.ctx = ctx  # type: ignore[assignment]
    run.opts = FailoverOptions.model_validate(options)
    return run


NODE = PostgresNode(name="p", host="10.0.0.1")
PROOF = FenceProof(target="p", proven=False, method="write_succeeded", reason="a write succeeded")


def test_unproven_fence_is_refused_in_drills_even_though_drills_auto_approve() -> None:
    ctx = StubContext(drill=True)
    with pytest.raises(ApprovalError, match="refused: p could not be proven fenced"):
        unproven_gate(_gate(ctx), NODE, PROOF)
    assert ctx.approved == [] and ctx.paused == []


def test_unproven_fence_in_an_incident_asks_a_person_whatever_the_policy() -> None:
    ctx = StubContext(drill=False)
    with pytest.raises(ApprovalError, match="timed out"):
        unproven_gate(_gate(ctx, auto_approve=True), NODE, PROOF)
    assert len(ctx.paused) == 1 and "NOT proven fenced" in ctx.paused[0]
    assert ctx.approved == []


def test_only_the_explicit_option_lets_a_run_go_on_without_proof() -> None:
    ctx = StubContext(drill=True)
    unproven_gate(_gate(ctx, allow_unproven_fence=True), NODE, PROOF)
    assert len(ctx.approved) == 1 and "two primaries are possible" in ctx.approved[0]
    assert any("allow_unproven_fence" in n for n in ctx.notes)
