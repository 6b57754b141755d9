"""The red twins' choices and the WAL-gap verdict (no I/O): a drill's refused recovery is red."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dr.errors import PreconditionError, VerificationError
from flows.breach_response.options import BreachOptions
from flows.data_corruption import plan as corruption_plan
from flows.data_corruption.options import CorruptionOptions, Variant
from flows.region_failover.options import FailoverOptions

GAP = "the WAL archive file:///a has a gap: segment 000000010000000000000007 is missing"
CHECK = "WAL archive continuous to the recovery point"


def test_every_red_twin_is_an_inject_choice() -> None:
    assert FailoverOptions(inject="app-cannot-connect").inject == "app-cannot-connect"
    assert CorruptionOptions.model_validate({"inject": "wal-gap"}).variant is Variant.wal_gap
    assert BreachOptions(inject="credential-survives").inject == "credential-survives"
    with pytest.raises(ValueError):
        BreachOptions(inject="nope")  # type: ignore[arg-type]


class _Ctx:
    def __init__(self, *, is_drill: bool) -> None:
        self.is_drill, self.dry_run = is_drill, False
        self.checks: list[tuple[str, bool, str]] = []

    def record_check(self, name: str, ok: bool, *, detail: str = "", **_: Any) -> None:
        self.checks.append((name, ok, detail))


def _run(ctx: _Ctx, variant: Variant = Variant.bad_update, **details: Any) -> Any:
    return SimpleNamespace(
        ctx=ctx, opts=CorruptionOptions(variant=variant), details=details, wal_repo=lambda: None
    )


def _gap(*_: Any, **__: Any) -> Any:
    raise PreconditionError(GAP)


def test_a_gap_fails_a_drill_naming_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corruption_plan.wal, "plan_wal_task", _gap)
    ctx = _Ctx(is_drill=True)
    with pytest.raises(VerificationError, match=CHECK):
        corruption_plan._plan_wal(_run(ctx), None, None)  # type: ignore[arg-type]
    assert ctx.checks == [(CHECK, False, GAP)]


def test_a_gap_still_refuses_an_incident(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corruption_plan.wal, "plan_wal_task", _gap)
    ctx = _Ctx(is_drill=False)
    with pytest.raises(PreconditionError, match="gap"):
        corruption_plan._plan_wal(_run(ctx), None, None)  # type: ignore[arg-type]
    assert ctx.checks == []


def test_a_wal_gap_drill_whose_plan_sees_no_gap_is_red(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corruption_plan.wal, "plan_wal_task", lambda *a, **k: "plan")
    ctx = _Ctx(is_drill=True)
    run = _run(ctx, Variant.wal_gap, wal_gap={"segment": "000000010000000000000007"})
    with pytest.raises(VerificationError, match="did not see the gap"):
        corruption_plan._plan_wal(run, None, None)  # type: ignore[arg-type]
    assert [c[:2] for c in ctx.checks] == [(CHECK, False)]
