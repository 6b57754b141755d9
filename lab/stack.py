"""The lab application as a small stack: ``api`` (HTTP health) then ``worker``, over a cache.

Start order, as the lab's ``dr.yaml`` declares it for the flows (``start_order``, ``health_url``
on each service): Redis and S3 are servers the lab starts first; the ``uploads`` table;
the ``api`` (healthy when it reads the database and the cache); the ``worker`` (the
heartbeat writer of :mod:`lab.heartbeat_app`, uploading objects with their rows). Stops
go the other way.
"""

from __future__ import annotations

import sys
import time

import httpx

from dr.errors import PreconditionError
from lab.app import container_serves_port, ensure_service, stack_env
from lab.db import APP_DB, APP_ROLE, connect
from lab.state import APP_SCRIPT, PRIMARY, PROCESS_WAIT_SECONDS, LabState, clusters, log_path

__all__ = [
    "API_CONTAINER",
    "API_MODULE",
    "api_url",
    "ensure_api",
    "ensure_uploads_table",
    "wait_api_health",
]

API_CONTAINER = "dr-lab-api"
API_MODULE = "lab.api_app"

UPLOADS_DDL = f"""
CREATE TABLE IF NOT EXISTS public.uploads (
    id bigserial PRIMARY KEY,
    object_key text NOT NULL UNIQUE,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.uploads OWNER TO {APP_ROLE};
"""


def ensure_uploads_table(state: LabState) -> str:
    """The worker's ``uploads`` table on the primary (rows naming objects in the bucket)."""
    with connect(clusters(state)[PRIMARY], APP_DB) as conn:
        exists = conn.execute("SELECT to_regclass('public.uploads') IS NOT NULL").fetchone()
        if exists and exists[0]:
            return "unchanged"
        conn.execute(UPLOADS_DDL)
    return "created public.uploads"


def api_url(state: LabState) -> str:
    """The api's base URL (its port is chosen once, like every lab port)."""
    return f"http://127.0.0.1:{state.ports['api']}"


def _api_env(state: LabState) -> dict[str, str]:
    env = {k: v for k, v in stack_env(state).items() if not k.startswith(("UPLOADS_", "AWS_"))}
    env.pop("S3_ENDPOINT", None)
    env["API_PORT"] = str(state.ports["api"])
    env["PYTHONPATH"] = str(APP_SCRIPT.parent.parent)
    return env


def ensure_api(state: LabState) -> str:
    """The api service, then its health: a container on Podman, else a local process."""
    from lab.services import lab_port

    port = state.ports.get("api")
    if port is None or not container_serves_port(state, API_CONTAINER, "API_PORT", port):
        lab_port(state, "api", state.processes.get("api"))
    argv = [sys.executable, "-m", API_MODULE]
    outcome = ensure_service(state, "api", API_CONTAINER, argv, _api_env(state))
    return f"{outcome}; {wait_api_health(state)}"


def wait_api_health(state: LabState, timeout_seconds: float = PROCESS_WAIT_SECONDS) -> str:
    """Wait for ``GET /health`` to answer 200 (the database and the cache both read)."""
    url = f"{api_url(state)}/health"
    deadline = time.monotonic() + timeout_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2.0)
            if resp.status_code == 200:
                return f"healthy ({url})"
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise PreconditionError(
        f"the lab api is not healthy at {url} ({last}); see {log_path(state, 'api')}"
    )
