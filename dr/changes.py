"""What a mutating step did, and how to undo it.

Every ``ensure_*`` style step in ``tasks/`` returns a :class:`Change`: which system and
object it acted on, the outcome (``unchanged`` when the world was already as asked), the
state before and after, a human-readable undo instruction, and whether the step can be
compensated automatically. Flows keep these records for rollback hooks and the report.

Secrets never go into ``before``/``after``/``undo``: those are logged and written to
artifacts. When undoing needs a secret (the previous value of a rotated password, the old
environment of a container), the adapter keeps it in :attr:`Change.undo_data`, which is
left out of ``model_dump()``, JSON and ``repr()``; it lives only in the memory of the run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow

__all__ = ["Change", "Outcome"]

Outcome = Literal["created", "changed", "unchanged", "updated", "deleted"]


class Change(BaseModel):
    """One action on one object of an external system, with how to undo it.

    Attributes:
        system: the system acted on (``docker``, ``kubernetes``, ``postgres``, ...).
        action: what was asked (``stop``, ``scale``, ``replace-secret-key``, ...).
        object: the object acted on, as a person would name it (``ns/deployment``).
        outcome: ``unchanged`` when nothing had to be done.
        before: the relevant state before the action (no secret values).
        after: the relevant state after the action (no secret values).
        undo: how to undo it, as a command or sentence a person can run or read;
            empty when there is nothing to undo.
        compensable: True when the adapter can undo it automatically (its ``restore_*``).
        at: when the action happened (UTC).
        undo_data: values the automatic undo needs but that must never be logged or
            serialized (excluded from ``model_dump()``, JSON and ``repr()``).
    """

    model_config = ConfigDict(extra="forbid")

    system: str
    action: str
    object: str
    outcome: Outcome
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    undo: str = ""
    compensable: bool = True
    at: datetime = Field(default_factory=utcnow)
    undo_data: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def changed(self) -> bool:
        """True when the action changed something (anything but ``unchanged``)."""
        return self.outcome != "unchanged"

    def summary(self) -> str:
        """One readable line for logs and timelines."""
        text = f"{self.system} {self.action} {self.object}: {self.outcome}"
        if self.changed and self.undo:
            text += f" (undo: {self.undo})"
        return text
