"""What a run records and returns: phases, checks, approvals, the measurement, the result."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from dr.changes import Change
from dr.config import Mode, Objectives
from dr.errors import DRError

__all__ = [
    "ApprovalRecord",
    "CheckRecord",
    "Measurement",
    "PhaseOutcome",
    "PhaseRecord",
    "RpoBound",
    "RunFailed",
    "RunOutcome",
    "RunResult",
]

PhaseOutcome = Literal["ok", "failed", "skipped", "planned", "aborted"]
#: ``refused``: the recovery was impossible for a reason found at run time (no base backup
#: before the point, a WAL gap, ...) and nothing was changed; ``failed``: it was tried and
#: did not work. Both end the Prefect flow run Failed (``fail_flow``), with the reason.
RunOutcome = Literal["passed", "failed", "refused", "aborted"]


class PhaseRecord(BaseModel):
    """One phase of the timeline (UTC)."""

    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: PhaseOutcome = "ok"
    detail: str = ""

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start to end, once ended."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class CheckRecord(BaseModel):
    """A check that ran, with its answer. Critical failures fail the run."""

    name: str
    ok: bool
    critical: bool = True
    detail: str = ""
    value: Any = None


#: ``lower``: the loss may be larger (never meets the RPO); ``upper``: the loss is at most
#: this (a window rolled back, of which some writes may have been bad ones); else exact.
RpoBound = Literal["exact", "lower", "upper"]


class Measurement(BaseModel):
    """RTO and RPO as measured, and how.

    The outage runs from ``failure_at`` (the last acknowledged write before the failure) to
    ``restored_at`` (the first acknowledged write after recovery); ``rto_seconds`` is their
    difference. ``rto_phases`` splits it; ``rpo_bound`` says whether the RPO is exact, only
    a lower bound, or an upper bound.
    """

    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    lost_rows: int | None = None
    rto_basis: str = ""
    rpo_basis: str = ""
    rpo_bound: RpoBound | None = None
    lost_rows_basis: str = ""
    failure_at: datetime | None = None
    failure_at_basis: str = ""
    restored_at: datetime | None = None
    restored_at_basis: str = ""
    detected_at: datetime | None = None
    detected_at_basis: str = ""
    rto_phases: dict[str, float | None] = Field(default_factory=dict)


class ApprovalRecord(BaseModel):
    """The answer at an approval gate (by a person or by policy)."""

    step: str
    approved: bool
    who: str
    why: str
    at: datetime
    automatic: bool = False
    timed_out: bool = False


class RunResult(BaseModel):
    """What every scenario flow returns; ``dr ... --json`` prints it."""

    scenario: str
    target: str
    mode: str
    severity: str = ""
    outcome: RunOutcome
    objectives_met: bool
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    lost_rows: int | None = None
    objectives: Objectives
    rto_basis: str = ""
    rpo_basis: str = ""
    rpo_bound: RpoBound | None = None
    lost_rows_basis: str = ""
    rto_phases: dict[str, float | None] = Field(default_factory=dict)
    declared_at: datetime
    failure_at: datetime | None = None
    failure_at_basis: str = ""
    restored_at: datetime | None = None
    restored_at_basis: str = ""
    phases: list[PhaseRecord] = Field(default_factory=list)
    checks: list[CheckRecord] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)
    undone: list[str] = Field(default_factory=list)
    not_undone: list[str] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    slack_failures: list[str] = Field(default_factory=list)
    reason: str = ""
    history_written: bool = False
    artifacts: dict[str, str] = Field(default_factory=dict)
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when a CI pipeline should pass: outcome passed and objectives met.

        A dry run measures nothing, so it only needs to have passed.
        """
        if self.outcome != "passed":
            return False
        return self.mode == Mode.dry_run.value or self.objectives_met


class RunFailed(DRError):
    """Raised by a scenario flow after reporting, when asked to end Failed (``fail_flow``).

    Its message (outcome and reason) becomes the flow run's state message in Prefect.
    """

    def __init__(self, result: RunResult) -> None:
        super().__init__(
            f"{result.mode} {result.scenario} on {result.target}: {result.outcome}"
            + (f" ({result.reason})" if result.reason else "")
        )
        self.result = result
