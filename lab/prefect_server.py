"""The lab's Prefect server: started once, on the control cluster, so drills start fast.

``prefect server start`` on PostgreSQL takes 8-15 s to become healthy here
(shared/lab/prefect.md); started by ``dr lab up`` and kept running, it makes every later
drill start at once and gives a person the UI to watch runs and approve gates.

Settings that matter: ``PREFECT_SERVER_API_PORT`` must equal ``--port`` (else the UI
points at 4200), ``PREFECT_HOME`` must be the lab's (else ``~/.prefect`` is used), and
analytics are off (no internet: telemetry only logs errors).

The lab's credentials become Secret blocks through the REST API (:func:`ensure_secret_blocks`)
rather than the Python client: no ``import prefect`` here (slow, and its settings are read
once per process, which would tie the calling process to the lab's server).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from dr.errors import PreconditionError
from lab import procs

__all__ = ["ensure_secret_blocks", "health_url", "is_up", "start"]

log = logging.getLogger(__name__)

BLOCK_TYPES_WAIT_SECONDS = 30.0


def start(
    base_dir: Path, port: int, *, database_url: str, home: Path, log_file: Path
) -> procs.ProcessInfo:
    """Start ``prefect server start`` on 127.0.0.1:``port`` in the background.

    Args:
        base_dir: the lab folder (working directory and owner marker).
        port: a free loopback port.
        database_url: ``postgresql+asyncpg://...`` of the server's database.
        home: its ``PREFECT_HOME``.
        log_file: where its output goes.

    Returns:
        The process record (the server is healthy only later: :func:`is_up`).
    """
    home.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    env = procs.child_env(
        base_dir,
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": f"{base}/api",
        },
    )
    script = Path(sys.executable).with_name("prefect")
    argv = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "prefect"]
    argv += ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return procs.spawn(
        argv,
        cwd=base_dir,
        log_file=log_file,
        marker=f"server start --host 127.0.0.1 --port {port}",
        env=env,
    )


def health_url(api_url: str) -> str:
    """The server's health endpoint."""
    return f"{api_url}/health"


def is_up(api_url: str, *, timeout: float = 1.0) -> bool:
    """True when the server answers its health check."""
    return procs.http_ok(health_url(api_url), timeout=timeout)


def read_secret_block(api_url: str, name: str) -> str | None:
    """The value of Prefect Secret block ``name``, or None if absent or unreachable."""
    try:
        with httpx.Client(base_url=f"{api_url}/", timeout=5.0) as client:
            got = client.get(
                f"block_types/slug/secret/block_documents/name/{name}",
                params={"include_secrets": "true"},
            )
    except httpx.HTTPError:
        return None
    if got.status_code != 200:
        return None
    value = got.json().get("data", {}).get("value")
    return value if isinstance(value, str) else None


def ensure_secret_blocks(api_url: str, values: Mapping[str, str]) -> dict[str, int]:
    """Make Prefect Secret blocks ``name -> value`` exist with exactly these values.

    Args:
        api_url: the server's API (``http://127.0.0.1:PORT/api``).
        values: block name -> secret value (never logged).

    Returns:
        Counts of blocks ``created``, ``updated`` and ``unchanged``.

    Raises:
        PreconditionError: the server refused (its answer is in the message).
    """
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    try:
        with httpx.Client(base_url=f"{api_url}/", timeout=10.0) as client:
            deadline = time.monotonic() + BLOCK_TYPES_WAIT_SECONDS
            while True:  # system block types are registered while the server starts
                resp = client.get("block_types/slug/secret")
                if resp.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            resp.raise_for_status()
            block_type_id = resp.json()["id"]
            schemas = client.post(
                "block_schemas/filter",
                json={"block_schemas": {"block_type_id": {"any_": [block_type_id]}}},
            )
            schemas.raise_for_status()
            schema_id = schemas.json()[0]["id"]
            for name, value in values.items():
                got = client.get(
                    f"block_types/slug/secret/block_documents/name/{name}",
                    params={"include_secrets": "true"},
                )
                if got.status_code == 200:
                    doc = got.json()
                    if doc.get("data", {}).get("value") == value:
                        counts["unchanged"] += 1
                        continue
                    client.patch(
                        f"block_documents/{doc['id']}",
                        json={"data": {"value": value}, "merge_existing_data": False},
                    ).raise_for_status()
                    counts["updated"] += 1
                    log.info("prefect secret block %s: updated", name)
                else:
                    client.post(
                        "block_documents/",
                        json={
                            "name": name,
                            "data": {"value": value},
                            "block_schema_id": schema_id,
                            "block_type_id": block_type_id,
                            "is_anonymous": False,
                        },
                    ).raise_for_status()
                    counts["created"] += 1
                    log.info("prefect secret block %s: created", name)
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise PreconditionError(
            f"the Prefect server at {api_url} did not take the Secret blocks: {exc}"
        ) from exc
    return counts
