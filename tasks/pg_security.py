"""Compatibility facade (removed when the layout lands): the old ``tasks.pg_security`` names.

Now in ``tasks.postgres.hba`` (pg_hba blocks), ``tasks.postgres.security`` (evidence and
login proofs) and ``tasks.postgres.intruder`` (the drill's intruder).
"""

from __future__ import annotations

from tasks.postgres.hba import (  # noqa: F401
    HBA_MARKER,
    POLL_SECONDS,
    RELOAD_WAIT_SECONDS,
    _first_foreign_rule,
    _first_rule_index,
    _ours,
    block_cidrs_in_hba,
    block_cidrs_in_hba_task,
    hba_rules,
    normalize_cidrs,
    unblock_cidrs_in_hba,
    unblock_cidrs_in_hba_task,
)
from tasks.postgres.intruder import (  # noqa: F401
    HELD_SESSION_POLL_SECONDS,
    TERMINATE_WAIT_MILLISECONDS,
    HeldSession,
    create_login_role,
    delete_rows_bypassing_checks,
    drop_role,
)
from tasks.postgres.models import SYSTEM  # noqa: F401
from tasks.postgres.security import (  # noqa: F401
    DEFAULT_MAX_LOG_BYTES,
    LOG_READ_CHUNK_BYTES,
    collect_server_logs,
    collect_server_logs_task,
    newest_heartbeat,
    role_can_login,
    session_snapshot,
    session_snapshot_task,
    sessions_alive,
    try_login,
)
