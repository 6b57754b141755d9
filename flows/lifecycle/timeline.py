"""The run's timeline: phases, the dry-run plan, failure/restored stamps, checks, changes."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import ApprovalError, redact
from flows.lifecycle.base import RunBase
from flows.lifecycle.models import CheckRecord, PhaseRecord
from tasks.notify import blocks as notify_blocks
from tasks.report import artifacts as report_artifacts
from tasks.report import tables as report_tables

if TYPE_CHECKING:
    from flows.lifecycle.context import RunContext

__all__ = ["StatusTicker", "Timeline", "join_details"]


class StatusTicker:
    """Posts "still running: phase X, elapsed N s" to the thread at a fixed cadence."""

    def __init__(self, ctx: RunContext, cadence_seconds: float) -> None:
        self._ctx = ctx
        self._cadence = cadence_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dr-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self._cadence):
            self._ctx._status_update()


class Timeline(RunBase):
    """The recording part of :class:`flows.lifecycle.context.RunContext`."""

    # ------------------------------------------------------------------ timeline

    @contextlib.contextmanager
    def phase(self, name: str, *, detail: str = "") -> Iterator[PhaseRecord]:
        """Record a phase: UTC start and end, outcome, detail; reply in the Slack thread.

        An exception inside marks the phase ``failed`` (``aborted`` for an approval that was
        rejected or timed out) and is re-raised. In a dry run a phase that completes is
        ``planned``. The body may set ``record.outcome = "skipped"`` or amend ``detail``.

        Args:
            name: the phase's name, as in the runbook ("promote replica").
            detail: what it is about to do.

        Yields:
            The :class:`PhaseRecord`.
        """
        record = PhaseRecord(name=name, started_at=utcnow(), detail=detail)
        self.phases.append(record)
        previous, self._current_phase = self._current_phase, name
        self._log.info("phase %s: started", name)
        try:
            yield record
        except ApprovalError as exc:
            record.outcome = "aborted"
            record.detail = join_details(record.detail, str(exc))
            raise
        except BaseException as exc:
            record.outcome = "failed"
            record.detail = join_details(record.detail, f"{type(exc).__name__}: {exc}")
            raise
        else:
            if self.dry_run and record.outcome == "ok":
                record.outcome = "planned"
        finally:
            record.ended_at = utcnow()
            record.detail = redact(record.detail)
            self._current_phase = previous
            duration = record.duration_seconds or 0.0
            self._log.info("phase %s: %s in %.2f s", name, record.outcome, duration)
            self.slack.reply(
                f"{name}: {record.outcome} in {duration:.1f} s"
                + (f" ({record.detail})" if record.detail else ""),
                notify_blocks.phase_reply_blocks(
                    name, record.outcome, duration, record.detail or None
                ),
            )

    def plan(self, action: str, obj: str) -> bool:
        """Guard a mutating step: in a dry run record "would <action> <obj>" and say no.

        Every mutating step of a scenario is written ``if ctx.plan("stop", "container app"):
        ...``, so a dry run lists the whole ordered plan and changes nothing.

        Args:
            action: the verb ("promote", "stop", "restore").
            obj: the object, named so a person can find it ("replica pg-2 (127.0.0.1:5433)").

        Returns:
            False in a dry run (skip the step), True otherwise.
        """
        if not self.dry_run:
            return True
        step = redact(f"would {action} {obj}")
        self.plan_steps.append(step)
        self._log.info("plan %d: %s", len(self.plan_steps), step)
        return False

    def stamp_failure(self, at: datetime | None = None) -> datetime:
        """Record when the failure happened (drills: the moment it was injected).

        A dry run injects nothing, so it records nothing.

        Args:
            at: the moment; now when omitted.

        Returns:
            ``failure_at`` (UTC).
        """
        moment = (at or utcnow()).astimezone(UTC)
        if self.dry_run:
            return moment  # nothing was injected: a dry run has no failure time
        self.failure_at = moment
        self._log.info("failure_at %s", self.failure_at.isoformat())
        self.slack.reply(
            f"Failure {'injected' if self.is_drill else 'recorded'} at "
            f"{self.failure_at.isoformat(timespec='milliseconds')}"
        )
        return self.failure_at

    def stamp_restored(self, at: datetime | None = None) -> datetime:
        """Record when service was restored (the first moment every check passed).

        Args:
            at: the moment; now when omitted.

        Returns:
            ``restored_at`` (UTC).
        """
        self.restored_at = (at or utcnow()).astimezone(UTC)
        self._log.info("restored_at %s", self.restored_at.isoformat())
        self.slack.reply(
            f"Service restored at {self.restored_at.isoformat(timespec='milliseconds')}"
        )
        return self.restored_at

    # ------------------------------------------------------------------ changes and checks

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None:
        """Record what a step changed; push its undo on the compensation stack.

        Only a change that changed something, is marked compensable and comes with an
        ``undo`` callable is undone automatically if the run later fails; the others are
        listed in the report as "not undone" with their manual undo instruction.

        Args:
            change: from an ``ensure_*`` step.
            undo: undoes exactly this change (usually the adapter's ``restore_*``).
        """
        self.changes.append(change)
        if change.changed and change.compensable and undo is not None:
            self._undo_stack.append((change, undo))
        self._log.info("change: %s", redact(change.summary()))

    def record_check(
        self,
        name: str,
        ok: bool,
        *,
        critical: bool = True,
        detail: str = "",
        value: Any = None,
    ) -> CheckRecord:
        """Record a check's answer; a failed critical check fails the run.

        Args:
            name: what was checked.
            ok: the answer.
            critical: whether a failure fails the run.
            detail: what was seen.
            value: the raw value, if useful (must be JSON-able).

        Returns:
            The :class:`CheckRecord`.
        """
        record = CheckRecord(
            name=name, ok=ok, critical=critical, detail=redact(detail), value=value
        )
        self.checks.append(record)
        level = logging.INFO if ok or not critical else logging.WARNING
        self._log.log(level, "check %s: %s %s", name, "PASS" if ok else "FAIL", record.detail)
        return record

    # ------------------------------------------------------------------ people

    def progress(self, fraction: float, message: str = "") -> None:
        """Show progress: a progress artifact in the UI and a line on the terminal.

        Args:
            fraction: 0.0 to 1.0.
            message: what is happening.
        """
        percent = round(max(0.0, min(1.0, fraction)) * 100)
        sys.stderr.write(f"[{percent:3d}%] {redact(message)}\n")
        if self.flow_run_id is None:
            return
        try:
            if self._progress is None:
                key = report_tables.artifact_key(self.scenario.value, self.target_name, "progress")
                self._progress = report_artifacts.ProgressArtifact(
                    key, f"{self.scenario.value} progress"
                )
            self._progress.update(fraction, message)
        except Exception as exc:  # noqa: BLE001 - progress display never fails a recovery
            self._log.warning("progress artifact not updated: %s", exc)

    def note(self, text: str) -> None:
        """Add a remark to the report and the Slack thread.

        Args:
            text: one sentence for people.
        """
        text = redact(text)
        self.notes.append(text)
        self._log.info("note: %s", text)
        self.slack.reply(text)

    def _status_update(self) -> None:
        if self._waiting_for:
            where = f"waiting for approval before {self._waiting_for}"
        else:
            where = f"phase {self._current_phase or '(between phases)'}"
        self.slack.reply(f"still running: {where}, elapsed {self.elapsed_seconds:.0f}s")


def join_details(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
