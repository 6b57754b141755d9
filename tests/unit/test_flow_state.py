"""Prefect shows the verdict: a run whose outcome is not passed ends its flow run Failed.

``refused`` (impossible for a reason found at run time, nothing changed) ends Failed too,
like ``failed`` and ``aborted``: one rule for the UI's badge, notifications and automations;
the state message carries the outcome and the reason. Runs on Prefect's ephemeral API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect import flow

from cli.runs import _result_from_state
from dr.config import Mode, Scenario, parse_config
from dr.errors import RecoveryRefused, VerificationError
from flows.lifecycle import RunContext, run_scenario

CONFIG = {
    "targets": {
        "lab": {
            "production": False,
            "drills_allowed": True,
            "postgres": {
                "primary": {"name": "pg1", "host": "127.0.0.1", "port": 1},
                "databases": ["app"],
            },
            "backup": {"repository": "file:///var/backups/lab"},
        }
    }
}

BODIES = {
    "passed": lambda ctx: None,
    "failed": lambda ctx: (_ for _ in ()).throw(VerificationError("the application cannot write")),
    "refused": lambda ctx: (_ for _ in ()).throw(
        RecoveryRefused("the WAL archive has a gap: segment 0000000100000000000000AB is missing")
    ),
}


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    """One temporary Prefect server for the module (a shared machine starts it slowly)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@flow(name="flow-state-test")
def _state_flow(kind: str, fail_flow: bool = True) -> dict[str, Any]:
    def body(ctx: RunContext) -> None:
        BODIES[kind](ctx)

    result = run_scenario(
        Scenario.data_corruption,
        "lab",
        Mode.dry_run,
        body,
        config=parse_config(CONFIG),
        severity="SEV3",
        fail_flow=fail_flow,
    )
    return result.model_dump(mode="json")


def _stored_state(state: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(state.state_details.flow_run_id))).state


@pytest.mark.parametrize(
    ("kind", "state_type", "words"),
    [
        ("passed", "COMPLETED", None),
        ("failed", "FAILED", "failed (VerificationError: the application cannot write)"),
        ("refused", "FAILED", "refused (the WAL archive has a gap"),
    ],
)
def test_the_flow_run_state_is_the_verdict(kind: str, state_type: str, words: str | None) -> None:
    state = _state_flow(kind, return_state=True)
    stored = _stored_state(state)
    assert stored.type.value == state_type, stored
    if words:
        assert words in (stored.message or ""), stored.message
    if kind == "refused":
        assert "nothing was changed" in (stored.message or "")
    result, problem = _result_from_state(state)
    assert problem is None and result.outcome == kind
