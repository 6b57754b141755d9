"""The recorder of a standalone failback (a drill's failback records through its RunContext)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import redact
from flows.common.recorder import Recorder

__all__ = ["CheckLog", "FailbackRun", "PhaseLog", "Recorder"]


log = logging.getLogger(__name__)


class PhaseLog(BaseModel):
    """One phase of a standalone failback (UTC)."""

    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: Literal["ok", "failed", "planned"] = "ok"
    detail: str = ""


class CheckLog(BaseModel):
    name: str
    ok: bool
    critical: bool = True
    detail: str = ""


class FailbackRun:
    """The recorder of a standalone failback: phases, changes, checks, notes, dry-run plan.

    Args:
        dry_run: record "would ..." steps instead of acting.
    """

    def __init__(self, *, dry_run: bool = False) -> None:
        self._dry_run = dry_run
        self.phases: list[PhaseLog] = []
        self.changes: list[Change] = []
        self.checks: list[CheckLog] = []
        self.notes: list[str] = []
        self.plan_steps: list[str] = []
        self._undo: list[tuple[Change, Callable[[], Any]]] = []
        self.undone: list[str] = []
        self.not_undone: list[str] = []

    @property
    def dry_run(self) -> bool:
        """True when nothing may change."""
        return self._dry_run

    @contextlib.contextmanager
    def phase(self, name: str, *, detail: str = "") -> Iterator[PhaseLog]:
        """Record a phase; an exception inside marks it failed and is re-raised."""
        record = PhaseLog(name=name, started_at=utcnow(), detail=detail)
        self.phases.append(record)
        log.info("failback phase %s: started", name)
        try:
            yield record
        except BaseException as exc:
            record.outcome = "failed"
            record.detail = redact("; ".join(p for p in (record.detail, str(exc)) if p))
            raise
        else:
            if self._dry_run:
                record.outcome = "planned"
        finally:
            record.ended_at = utcnow()
            log.info("failback phase %s: %s", name, record.outcome)

    def plan(self, action: str, obj: str) -> bool:
        """In a dry run record "would <action> <obj>" and say no; else say yes."""
        if not self._dry_run:
            return True
        self.plan_steps.append(redact(f"would {action} {obj}"))
        return False

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None:
        """Keep a change; push its undo when it is compensable."""
        self.changes.append(change)
        if change.changed and change.compensable and undo is not None:
            self._undo.append((change, undo))
        log.info("failback change: %s", redact(change.summary()))

    def record_check(
        self, name: str, ok: bool, *, critical: bool = True, detail: str = "", value: Any = None
    ) -> CheckLog:
        """Keep a check's answer."""
        record = CheckLog(name=name, ok=ok, critical=critical, detail=redact(detail))
        self.checks.append(record)
        log.log(logging.INFO if ok else logging.WARNING, "failback check %s: %s", name, ok)
        return record

    def note(self, text: str) -> None:
        """Keep a remark for the report."""
        self.notes.append(redact(text))
        log.info("failback note: %s", redact(text))

    def compensate(self) -> None:
        """Undo compensable changes in reverse order (after a failure)."""
        for change, undo in reversed(self._undo):
            what = f"{change.system} {change.action} {change.object}"
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - every undo gets its chance
                self.not_undone.append(redact(f"{what}: {exc}; by hand: {change.undo}"))
            else:
                self.undone.append(redact(what))
        self._undo.clear()
