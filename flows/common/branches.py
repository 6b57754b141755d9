"""Named parallel branches: submit named tasks, wait for all, collect results and errors.

Scenarios run independent steps at once (assess every node, verify every database,
repoint every writer) and then report each branch by name: a failed branch is a finding,
never a reason to drop the others' results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flows.common.progress import ProgressBoard

__all__ = ["BranchOutcome", "Branches"]

#: Prefect limits a task run's name; longer branch names are cut to this.
TASK_RUN_NAME_MAX = 100


@dataclass
class BranchOutcome:
    """One branch's answer: its value, or the error it ended with."""

    name: str
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the branch returned a value."""
        return self.error is None

    @property
    def detail(self) -> str:
        """``ErrorType: message`` for a failed branch, else empty."""
        return "" if self.error is None else f"{type(self.error).__name__}: {self.error}"


class Branches:
    """Branches submitted by name, collected in submission order.

    Example::

        branches = Branches()
        for node in nodes:
            branches.submit(node.name, assess_node_task, node)
        for outcome in branches.collect():
            ...
    """

    def __init__(self) -> None:
        self._futures: dict[str, Any] = {}
        self._refused: dict[str, BaseException] = {}

    def submit(self, name: str, task: Any, *args: Any, **kwargs: Any) -> None:
        """Submit ``task(*args, **kwargs)`` as the branch ``name`` (also its task run's name).

        Raises:
            ValueError: a branch of that name was already submitted.
        """
        self.submit_with(
            name,
            lambda: task.with_options(name=name[:TASK_RUN_NAME_MAX]).submit(*args, **kwargs),
        )

    def submit_with(self, name: str, submit: Callable[[], Any]) -> None:
        """Add a branch whose future ``submit()`` returns; an error there fails the branch.

        Raises:
            ValueError: a branch of that name was already submitted.
        """
        if name in self._futures or name in self._refused:
            raise ValueError(f"branch {name!r} submitted twice")
        try:
            self._futures[name] = submit()
        except Exception as exc:  # noqa: BLE001 - e.g. a client that cannot be built
            self._refused[name] = exc

    @property
    def names(self) -> list[str]:
        """Every branch's name, in submission order."""
        return [*self._futures, *self._refused]

    def wait(self, board: ProgressBoard | None = None) -> None:
        """Wait until every branch is done, refreshing ``board`` meanwhile if given."""
        futures = list(self._futures.values())
        if board is not None:
            board.wait(futures)
            return
        for future in futures:
            future.wait()

    def collect(self) -> list[BranchOutcome]:
        """Every branch's outcome (waits for each), in submission order."""
        return list(self._outcomes())

    def results(self) -> dict[str, Any]:
        """The values of the branches that succeeded, by name."""
        return {o.name: o.value for o in self.collect() if o.ok}

    def errors(self) -> dict[str, BaseException]:
        """The errors of the branches that failed, by name."""
        return {o.name: o.error for o in self.collect() if o.error is not None}

    def _outcomes(self) -> Iterator[BranchOutcome]:
        for name, future in self._futures.items():
            try:
                yield BranchOutcome(name, value=future.result())
            except Exception as exc:  # noqa: BLE001 - each branch's failure is its own finding
                yield BranchOutcome(name, error=exc)
        for name, exc in self._refused.items():
            yield BranchOutcome(name, error=exc)
