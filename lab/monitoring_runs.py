"""Flow runs on the lab's Prefect server, over its REST API (no ``import prefect``).

What the alert-chain drill and its bench read: the run an alert created, its state, and
runs they start themselves (the failback that puts the lab back).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from dr.errors import PreconditionError

__all__ = [
    "FINAL_STATES",
    "create_run",
    "parse_time",
    "read_run",
    "wait_final",
    "wait_new_run",
]

FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
POLL_SECONDS = 0.1
HTTP_TIMEOUT_SECONDS = 5.0


def parse_time(value: str | None) -> datetime | None:
    """An ISO time from the API (``...Z`` or ``+00:00``), or None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _post(api_url: str, path: str, body: dict[str, Any]) -> Any:
    try:
        resp = httpx.post(f"{api_url}/{path}", json=body, timeout=HTTP_TIMEOUT_SECONDS)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PreconditionError(f"the Prefect API at {api_url} failed ({path}): {exc}") from exc


def runs_of_flow(api_url: str, flow_name: str, *, tags: tuple[str, ...] = ()) -> list[Any]:
    """The newest flow runs of a flow (by name), optionally with all of ``tags``."""
    body: dict[str, Any] = {
        "flows": {"name": {"any_": [flow_name]}},
        "sort": "EXPECTED_START_TIME_DESC",
        "limit": 50,
    }
    if tags:
        body["flow_runs"] = {"tags": {"all_": list(tags)}}
    return list(_post(api_url, "flow_runs/filter", body))


def wait_new_run(
    api_url: str,
    flow_name: str,
    *,
    known: set[str],
    tags: tuple[str, ...],
    timeout_seconds: float,
) -> dict[str, Any]:
    """The first run of ``flow_name`` with ``tags`` whose id is not in ``known``.

    Raises:
        PreconditionError: none within ``timeout_seconds``.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        fresh = [r for r in runs_of_flow(api_url, flow_name, tags=tags) if r["id"] not in known]
        if fresh:
            return min(fresh, key=lambda r: r["created"])
        time.sleep(POLL_SECONDS)
    raise PreconditionError(
        f"no {flow_name} run tagged {', '.join(tags)} was created within {timeout_seconds:.0f} s"
    )


def read_run(api_url: str, run_id: str) -> dict[str, Any]:
    """One flow run as the API returns it."""
    try:
        resp = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=HTTP_TIMEOUT_SECONDS)
        resp.raise_for_status()
        return dict(resp.json())
    except (httpx.HTTPError, ValueError) as exc:
        raise PreconditionError(f"flow run {run_id} could not be read: {exc}") from exc


def wait_final(api_url: str, run_id: str, *, timeout_seconds: float) -> dict[str, Any]:
    """Wait for a flow run to end (completed, failed, crashed, cancelled); the run.

    Raises:
        PreconditionError: still not ended after ``timeout_seconds``.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        run = read_run(api_url, run_id)
        if run.get("state_type") in FINAL_STATES:
            return run
        if time.monotonic() > deadline:
            raise PreconditionError(
                f"flow run {run_id} still {run.get('state_type')} after {timeout_seconds:.0f} s"
            )
        time.sleep(POLL_SECONDS * 3)


def create_run(api_url: str, deployment: str, parameters: dict[str, Any]) -> str:
    """Start a run of a deployment (``flow/deployment``); its id."""
    try:
        resp = httpx.get(f"{api_url}/deployments/name/{deployment}", timeout=HTTP_TIMEOUT_SECONDS)
        resp.raise_for_status()
        deployment_id = resp.json()["id"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise PreconditionError(f"deployment {deployment} not found: {exc}") from exc
    run = _post(
        api_url,
        f"deployments/{deployment_id}/create_flow_run",
        {"parameters": parameters, "tags": ["dr", "lab"]},
    )
    return str(run["id"])
