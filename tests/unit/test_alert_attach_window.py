"""An alert attaches to an active run, never to a future slot of a schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prefect.client.schemas.objects import StateType

from deployments.alerts.runs import ATTACH_WINDOW_SECONDS, _due_later


def _run(state: StateType, start_in: float) -> SimpleNamespace:
    start = datetime.now(UTC) + timedelta(seconds=start_in)
    return SimpleNamespace(state=SimpleNamespace(type=state), expected_start_time=start)


def test_next_months_scheduled_drill_is_not_an_active_run() -> None:
    assert _due_later(_run(StateType.SCHEDULED, 30 * 86400))


def test_a_run_due_now_or_under_way_is_active() -> None:
    assert not _due_later(_run(StateType.SCHEDULED, 0))
    assert not _due_later(_run(StateType.SCHEDULED, ATTACH_WINDOW_SECONDS / 2))
    assert not _due_later(_run(StateType.PENDING, 30 * 86400))
    assert not _due_later(_run(StateType.RUNNING, -10))
