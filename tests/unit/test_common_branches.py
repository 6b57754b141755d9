"""Named parallel branches and the shared alert options (no I/O, no Prefect server)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flows.common.branches import Branches
from flows.common.options import AlertOptions


class _Future:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Task:
    def __init__(self) -> None:
        self.run_names: list[str] = []

    def with_options(self, *, name: str) -> _Task:
        self.run_names.append(name)
        return self

    def submit(self, value: Any) -> _Future:
        if isinstance(value, BaseException):
            return _Future(error=value)
        return _Future(value)


def test_branches_collect_values_and_errors_by_name_in_order() -> None:
    task = _Task()
    branches = Branches()
    branches.submit("pg-1", task, 1)
    branches.submit("pg-2", task, RuntimeError("down"))
    branches.submit_with("dns", lambda: (_ for _ in ()).throw(ValueError("no client")))
    branches.wait()
    outcomes = branches.collect()
    assert [o.name for o in outcomes] == ["pg-1", "pg-2", "dns"]
    assert task.run_names == ["pg-1", "pg-2"]
    assert branches.results() == {"pg-1": 1}
    assert outcomes[1].detail == "RuntimeError: down"
    assert set(branches.errors()) == {"pg-2", "dns"}
    with pytest.raises(ValueError, match="twice"):
        branches.submit("pg-1", task, 3)


def test_alert_options_are_shared_and_strict() -> None:
    class Opts(AlertOptions):
        inject: str | None = None

    opts = Opts(auto_approve=True, declared_at="2026-03-01T12:00:00Z", inject="x")
    assert opts.auto_approve and opts.declared_at is not None
    assert all(f.description for f in AlertOptions.model_fields.values())
    with pytest.raises(ValidationError):
        Opts(unknown=1)
