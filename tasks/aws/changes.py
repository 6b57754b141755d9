"""Changes recorded by the AWS steps: built one way, and checked before an undo."""

from __future__ import annotations

from typing import Any

from dr.changes import Change
from dr.errors import PreconditionError


def make_change(system: str, obj: str, action: str, outcome: str, **fields: Any) -> Change:
    """A Change of ``obj`` in ``system`` (``fields``: before, after, undo, ...)."""
    return Change(system=system, action=action, object=obj, outcome=outcome, **fields)


def expect_change(change: Change, system: str, *actions: str) -> None:
    """Refuse to restore from a Change that another step (or system) recorded."""
    if change.system != system or change.action not in actions:
        raise PreconditionError(
            f"expected a {system} {' or '.join(actions)} change, "
            f"got {change.system} {change.action}"
        )
