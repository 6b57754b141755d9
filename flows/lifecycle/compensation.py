"""Compensation: on failure, undo the compensable changes in reverse order.

Why an explicit stack rather than Prefect transactions: ``on_rollback`` hooks attach only to
tasks, run only for tasks completed inside the ``transaction()`` block, and report nothing
back; a DR run must undo changes made by any kind of step, in reverse order, and tell the
report exactly what was and was not undone.
"""

from __future__ import annotations

from dr.errors import redact
from flows.lifecycle.base import RunBase
from flows.lifecycle.timeline import join_details

__all__ = ["Compensation"]


class Compensation(RunBase):
    """The undo part of :class:`flows.lifecycle.context.RunContext`."""

    def _compensate(self) -> None:
        """Undo compensable changes in reverse order; list what could not be undone."""
        changed = [c for c in self.changes if c.changed]
        if not changed:
            return
        stacked = {id(change) for change, _ in self._undo_stack}
        with self.phase(
            "compensate", detail=f"undoing {len(self._undo_stack)} change(s) in reverse order"
        ) as record:
            failures = 0
            for change, undo in reversed(self._undo_stack):
                what = f"{change.system} {change.action} {change.object}"
                try:
                    undo()
                except Exception as exc:  # noqa: BLE001 - every undo gets its chance
                    failures += 1
                    self.not_undone.append(
                        redact(
                            f"{what}: automatic undo failed ({type(exc).__name__}: {exc});"
                            f" by hand: {change.undo or 'see the change record'}"
                        )
                    )
                    self._log.error("compensation: %s failed: %s", what, redact(str(exc)))
                else:
                    self.undone.append(redact(f"{what} (undo: {change.undo or 'automatic'})"))
                    self._log.info("compensation: undid %s", what)
            for change in changed:
                if id(change) in stacked:
                    continue
                why = "not compensable" if not change.compensable else "no automatic undo"
                self.not_undone.append(
                    redact(
                        f"{change.system} {change.action} {change.object}: {why};"
                        f" by hand: {change.undo or 'nothing recorded'}"
                    )
                )
            if failures:
                record.outcome = "failed"
                record.detail = join_details(record.detail, f"{failures} undo(s) failed")
