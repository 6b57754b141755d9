"""The run context a scenario body gets: one object, assembled from one part per concern.

- :class:`~flows.lifecycle.timeline.Timeline`: phases, plan, stamps, checks, changes, notes;
- :class:`~flows.lifecycle.approval.ApprovalGates`: approval gates and pauses;
- :class:`~flows.lifecycle.measuring.Measuring`: heartbeat probe, health wait, RTO/RPO;
- :class:`~flows.lifecycle.compensation.Compensation`: undo on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dr.changes import Change
from dr.config import DRConfig, Mode, Objectives, Scenario, Target
from flows.lifecycle.approval import ApprovalGates
from flows.lifecycle.compensation import Compensation
from flows.lifecycle.measuring import Measuring
from flows.lifecycle.models import ApprovalRecord, CheckRecord, Measurement, PhaseRecord
from flows.lifecycle.runlog import run_logger
from flows.lifecycle.timeline import Timeline
from tasks.notify import thread as notify_thread
from tasks.report import artifacts as report_artifacts

if TYPE_CHECKING:
    from tasks.postgres.heartbeat import HeartbeatProbe

__all__ = ["RunContext"]


class RunContext(Timeline, ApprovalGates, Measuring, Compensation):
    """What a scenario body uses to act, record and measure.

    Created by :func:`flows.lifecycle.run.run_scenario`; a body never builds one itself.
    """

    def __init__(
        self,
        *,
        config: DRConfig,
        target_name: str,
        scenario: Scenario,
        mode: Mode,
        severity: str,
        options: dict[str, Any],
        declared_at: datetime,
        flow_run_id: str | None,
        flow_run_url: str | None,
        slack: notify_thread.SlackThread | notify_thread.NullThread,
    ) -> None:
        self.config = config
        self.target_name = target_name
        self.target: Target = config.target(target_name)
        self.objectives: Objectives = config.objectives(target_name)
        self.scenario = scenario
        self.mode = mode
        self.severity = severity
        self.options = options
        self.declared_at = declared_at
        self.failure_at: datetime | None = None
        self.restored_at: datetime | None = None
        self.flow_run_id = flow_run_id
        self.flow_run_url = flow_run_url
        self.slack = slack
        self.phases: list[PhaseRecord] = []
        self.checks: list[CheckRecord] = []
        self.changes: list[Change] = []
        self.plan_steps: list[str] = []
        self.approvals: list[ApprovalRecord] = []
        self.notes: list[str] = []
        self.undone: list[str] = []
        self.not_undone: list[str] = []
        self.details: dict[str, Any] = {}
        self.measurement = Measurement()
        self._undo_stack: list[tuple[Change, Callable[[], Any]]] = []
        self._current_phase: str | None = None
        self._waiting_for: str | None = None
        self._started = time.monotonic()
        self._progress: report_artifacts.ProgressArtifact | None = None
        self._probe: HeartbeatProbe | None = None
        self._log = run_logger()
