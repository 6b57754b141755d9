"""A Prefect server of its own (SQLite, temporary folder) for the crash tests' processes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import prefect_server, procs
from lab.pgcluster import free_port


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[dict[str, str]]:
    """Start ``prefect server start`` on a free port; yield the env its clients need."""
    base = Path(tempfile.mkdtemp(prefix="dr-crash-"))
    port = free_port()
    rec = prefect_server.start(
        base,
        port,
        database_url=f"sqlite+aiosqlite:///{base / 'prefect.db'}",
        home=base / "prefect-home",
        log_file=base / "prefect.log",
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        procs.wait_until(
            "prefect server", lambda: prefect_server.is_up(api), 120, base / "prefect.log"
        )
        yield {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(base / "client-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    finally:
        procs.kill(rec)
