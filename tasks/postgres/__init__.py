"""Compatibility facade (removed when the layout lands): the old ``tasks.postgres`` names.

PostgreSQL work now lives in the package's modules: ``client`` (connections, errors),
``models``, ``assess``, ``fence``, ``local_server``, ``checks``, ``admin``, ``security``,
``hba``, ``intruder``, ``standby``, ``rejoin``, ``datadir``. Import from those; this
re-exports only.
"""

from __future__ import annotations

from tasks.postgres.admin import (  # noqa: F401
    PROTECTED_DATABASES,
    TERMINATE_WAIT_MILLISECONDS,
    create_database,
    create_database_task,
    database_exists,
    database_exists_task,
    drop_database,
    drop_database_task,
    list_roles_and_privileges,
    list_roles_and_privileges_task,
    role_exists,
    set_role_login,
    set_role_login_task,
    set_role_password,
    set_role_password_task,
    terminate_sessions,
    terminate_sessions_task,
)
from tasks.postgres.assess import (  # noqa: F401
    checksum_failures,
    checksum_failures_task,
    current_wal_lsn,
    health,
    health_task,
    replication_status,
    replication_status_task,
    role,
    role_task,
    server_log_files,
    server_log_files_task,
    standby_status,
    standby_status_task,
    wal_lsn_diff,
)
from tasks.postgres.checks import (  # noqa: F401
    run_sql_check,
    run_sql_check_task,
    run_validation_query,
    run_validation_query_task,
    schema_fingerprint,
    schema_fingerprint_task,
    table_row_counts,
    table_row_counts_task,
)

# client first: every other module imports it.
from tasks.postgres.client import (  # noqa: F401
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    connect,
    connection_error_kind,
    conninfo,
    describe_conninfo,
    multi_host_conninfo,
    redact_conninfo,
    session,
)
from tasks.postgres.client import query_error as _query_error  # noqa: F401
from tasks.postgres.fence import (  # noqa: F401
    POLL_SECONDS,
    RELOAD_WAIT_SECONDS,
    ensure_promoted,
    ensure_promoted_task,
    fence_by_connections,
    fence_by_connections_task,
    prove_not_writable,
    prove_not_writable_task,
    unfence_by_connections,
    unfence_by_connections_task,
)
from tasks.postgres.local_server import (  # noqa: F401
    start_local_server,
    start_local_server_task,
    stop_local_server,
    stop_local_server_task,
)
from tasks.postgres.models import (  # noqa: F401
    SYSTEM,
    CheckResult,
    FenceMethod,
    FenceProof,
    NodeHealth,
    ReplicaStatus,
    StandbyStatus,
)
