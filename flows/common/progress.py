"""Progress of parallel branches: rich bars on a terminal and one Prefect progress artifact."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from typing import Any

from prefect.context import FlowRunContext

from tasks.report import artifacts as report_artifacts

__all__ = ["PROGRESS_INTERVAL_SECONDS", "ProgressBoard"]

#: Progress artifacts and bars are refreshed at most this often.
PROGRESS_INTERVAL_SECONDS = 0.5


class ProgressBoard:
    """Progress of parallel branches: rich bars on a terminal and one Prefect progress
    artifact; branches report from their threads, the flow thread refreshes the display."""

    def __init__(
        self, key: str | None, description: str, names: list[str], *, bars: bool = True
    ) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, str]] = {n: (0.0, "waiting") for n in names}
        self._artifact = (
            report_artifacts.ProgressArtifact(key, description)
            if key and FlowRunContext.get() is not None
            else None
        )
        self._last_pct = -1.0
        self._rich: Any = None
        self._bars: dict[str, Any] = {}
        if bars and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn("{task.fields[name]:<16}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                transient=False,
            )
            self._rich.start()
            for n in names:
                self._bars[n] = self._rich.add_task("waiting", total=100, name=n)

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (a Dask worker): state only, no display or lock.

        Progress reported in another process stays there; the flow's display shows the
        branches' results when they come back.
        """
        state = self.__dict__.copy()
        state.update(_lock=None, _rich=None, _bars={}, _artifact=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def update(self, name: str, fraction: float, message: str = "") -> None:
        """Record a branch's progress (thread-safe; cheap)."""
        with self._lock:
            self._state[name] = (max(0.0, min(1.0, fraction)), message)

    def callback(self, name: str) -> Callable[[float, str], None]:
        """A ``progress(fraction, message)`` function for one branch."""
        return lambda fraction, message="": self.update(name, fraction, message)

    @property
    def overall(self) -> float:
        with self._lock:
            values = [f for f, _ in self._state.values()]
        return sum(values) / len(values) if values else 1.0

    def latest(self) -> str:
        """A one-line summary: each branch's percentage and message."""
        with self._lock:
            return "; ".join(f"{n} {f * 100:.0f}% {m}" for n, (f, m) in self._state.items())

    def refresh(self) -> None:
        """Push the current state to the bars and the artifact (call from the flow thread)."""
        with self._lock:
            state = dict(self._state)
        if self._rich is not None:
            for name, (fraction, message) in state.items():
                self._rich.update(self._bars[name], completed=fraction * 100, description=message)
        pct = round(self.overall * 100, 1)
        if self._artifact is not None and abs(pct - self._last_pct) >= 1.0:
            with contextlib.suppress(Exception):  # a progress display never fails a backup
                self._artifact.update(self.overall, self.latest()[:200])
                self._last_pct = pct

    def wait(self, futures: list[Any]) -> None:
        """Refresh until every future is done (returns as soon as the last one is)."""
        pending = list(futures)
        while pending:
            pending[0].wait(timeout=PROGRESS_INTERVAL_SECONDS)
            pending = [f for f in pending if not f.state.is_final()]
            self.refresh()

    def close(self) -> None:
        self.refresh()
        if self._rich is not None:
            self._rich.stop()
