"""What a scenario's steps need from a run: the lifecycle's RunContext or a standalone recorder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from dr.changes import Change

__all__ = ["Recorder"]


class Recorder(Protocol):
    """What steps need from a run: the lifecycle's RunContext, or failback's own ``FailbackRun``."""

    @property
    def dry_run(self) -> bool: ...

    def phase(self, name: str, *, detail: str = "") -> contextlib.AbstractContextManager[Any]: ...

    def plan(self, action: str, obj: str) -> bool: ...

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None: ...

    def record_check(
        self,
        name: str,
        ok: bool,
        *,
        critical: bool = True,
        detail: str = "",
        value: Any = None,
    ) -> Any: ...

    def note(self, text: str) -> None: ...
