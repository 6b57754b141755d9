"""Compatibility facade (removed when the layout lands): the old ``tasks.history`` names.

Now in ``tasks.history.client`` (the connection) and ``tasks.history.store`` (the table,
writing and reading runs).
"""

from __future__ import annotations

from tasks.history.client import CONNECT_TIMEOUT_SECONDS, connect  # noqa: F401
from tasks.history.store import (  # noqa: F401
    COLUMNS,
    DEFAULT_LIMIT,
    ensure_table,
    query_runs,
    query_runs_task,
    record_run,
    record_run_task,
)
