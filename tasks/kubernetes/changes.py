"""Changes recorded by the Kubernetes steps: built one way, and checked before an undo."""

from __future__ import annotations

from typing import Any

from dr.changes import Change
from dr.errors import PreconditionError

SYSTEM = "kubernetes"


def make_change(obj: str, action: str, outcome: str, **fields: Any) -> Change:
    """A Change of ``obj`` (``namespace/name``; ``fields``: before, after, undo, ...)."""
    return Change(system=SYSTEM, action=action, object=obj, outcome=outcome, **fields)


def expect_change(change: Change, action: str) -> None:
    """Refuse to restore from a Change that another step (or system) recorded."""
    if change.system != SYSTEM or change.action != action:
        raise PreconditionError(
            f"expected a {SYSTEM} {action} change, got {change.system} {change.action}"
        )
