"""The state every part of a run context shares (see :mod:`flows.lifecycle.context`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dr.changes import Change
from dr.config import DRConfig, Mode, Objectives, Scenario, Target
from flows.lifecycle.models import ApprovalRecord, CheckRecord, Measurement, PhaseRecord
from tasks.notify import thread as notify_thread
from tasks.report import artifacts as report_artifacts

if TYPE_CHECKING:
    from tasks.postgres.heartbeat import HeartbeatProbe

__all__ = ["RunBase"]


class RunBase:
    """Attributes set by :class:`flows.lifecycle.context.RunContext`, and what they mean."""

    config: DRConfig
    target_name: str
    target: Target
    objectives: Objectives
    scenario: Scenario
    mode: Mode
    severity: str
    options: dict[str, Any]
    declared_at: datetime
    failure_at: datetime | None
    restored_at: datetime | None
    flow_run_id: str | None
    flow_run_url: str | None
    slack: notify_thread.SlackThread | notify_thread.NullThread
    phases: list[PhaseRecord]
    checks: list[CheckRecord]
    changes: list[Change]
    plan_steps: list[str]
    approvals: list[ApprovalRecord]
    notes: list[str]
    undone: list[str]
    not_undone: list[str]
    details: dict[str, Any]
    measurement: Measurement
    _undo_stack: list[tuple[Change, Callable[[], Any]]]
    _current_phase: str | None
    _waiting_for: str | None
    _started: float
    _progress: report_artifacts.ProgressArtifact | None
    _probe: HeartbeatProbe | None
    _log: logging.Logger | logging.LoggerAdapter[logging.Logger]

    @property
    def dry_run(self) -> bool:
        """True in dry-run mode: nothing may change."""
        return self.mode == Mode.dry_run

    @property
    def is_drill(self) -> bool:
        """True in drill mode."""
        return self.mode == Mode.drill

    @property
    def current_phase(self) -> str | None:
        """The phase running now, if any."""
        return self._current_phase

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started
