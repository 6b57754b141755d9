"""Ask before the first change that hurts (issue 14): the planned-failover gate, the form."""

from __future__ import annotations

import pytest

from dr.config import PostgresNode
from dr.errors import ApprovalError
from flows.lifecycle.approval import ApprovalInput
from flows.region_failover import fence as fencing
from flows.region_failover.models import Assessment, NodeView, ReplicaChoice
from flows.region_failover.options import FailoverOptions
from flows.region_failover.run import Failover

OLD = PostgresNode(name="p", host="10.0.0.1", data_directory="/srv/p", bin_dir="/usr/bin")


class GateContext:
    """What the fence phase touches of RunContext; approving is refused (nobody approves)."""

    def __init__(self, *, refuse: bool) -> None:
        self.refuse = refuse
        self.dry_run = False
        self.is_drill = False
        self.events: list[str] = []

    def approve(self, step: str, *, irreversible: bool = True, always_ask: bool = False) -> None:
        self.events.append(f"approve: {step}" + (" [a person]" if always_ask else ""))
        if self.refuse:
            raise ApprovalError(f"{step!r} rejected by bob: not now")

    def plan(self, action: str, detail: str = "") -> bool:
        self.events.append(f"change: {action}")
        return False  # change nothing in this test

    def note(self, text: str) -> None:
        self.events.append(f"note: {text}")

    def record_check(self, *args: object, **kw: object) -> None:
        self.events.append("check")


def _run(ctx: GateContext, old_state: str) -> Failover:
    run = Failover.__new__(Failover)
    run.ctx = ctx  # type: ignore[assignment]
    run.opts = FailoverOptions()
    run.approved_promotion = None
    run.details = {}
    run.assessment = Assessment(
        nodes={
            "p": NodeView(
                name="p",
                region="main",
                configured_role="primary",
                state=old_state,  # type: ignore[arg-type]
                writable=old_state == "primary",
            )
        },
        old_primary="p",
        failed_region="main",
    )
    run.choice = ReplicaChoice(chosen="r1", reason="most WAL")
    return run


def test_a_primary_that_answers_is_not_stopped_before_approval() -> None:
    ctx = GateContext(refuse=True)
    with pytest.raises(ApprovalError, match="rejected"):
        fencing.fence(_run(ctx, "primary"), OLD)
    [asked] = ctx.events
    assert asked.startswith("approve: planned failover: stop the primary p (10.0.0.1:5432)")
    assert "cannot write until r1 is promoted" in asked


def test_approved_planned_failover_gate_covers_the_promotion_it_named() -> None:
    ctx = GateContext(refuse=False)
    run = _run(ctx, "primary")
    fencing.planned_failover_gate(run, OLD)
    assert run.approved_promotion == "r1"
    assert ctx.events[0].startswith("approve: planned failover")


def test_an_alert_started_run_asks_a_person_before_stopping_a_primary_that_answers() -> None:
    ctx = GateContext(refuse=False)
    run = _run(ctx, "primary")
    run.opts = FailoverOptions(alert_fingerprint="3b15fd163e5e6f3a")
    fencing.planned_failover_gate(run, OLD)
    assert ctx.events[0].endswith("[a person]")
    run.opts = FailoverOptions()
    fencing.planned_failover_gate(run, OLD)
    assert not ctx.events[1].endswith("[a person]")


@pytest.mark.parametrize("state", ["unreachable", "standby"])
def test_a_primary_really_down_is_fenced_without_asking(state: str) -> None:
    ctx = GateContext(refuse=True)
    run = _run(ctx, state)
    fencing.planned_failover_gate(run, OLD)
    assert ctx.events == [] and run.approved_promotion is None


def test_approval_form_has_no_default_answer() -> None:
    schema = ApprovalInput.model_json_schema()
    decision = schema["properties"]["approve"]
    assert decision["enum"] == ["approve", "reject"] and "default" not in decision
    assert "approve" in schema["required"]
    assert ApprovalInput(approve="approve", who="a", why="b").approved is True
    assert ApprovalInput(approve="reject", who="a", why="b").approved is False
    with pytest.raises(ValueError, match="approve"):
        ApprovalInput.model_validate({"who": "a", "why": "b"})
