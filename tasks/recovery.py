"""Compatibility facade (removed when the layout lands): now tasks.pitr.*, heartbeat reads
in tasks.postgres.heartbeat.
"""

# ruff: noqa: F401

from tasks.pitr.archiving import server_position, switch_wal_and_wait, switch_wal_and_wait_task
from tasks.pitr.base_backup import (
    BaseBackup,
    choose_base_backup,
    list_base_backups,
    list_base_backups_task,
)
from tasks.pitr.base_restore import (
    download_base_backup,
    download_base_backup_task,
    extract_base_backup,
    restore_base_backup,
    restore_base_backup_task,
)
from tasks.pitr.checksums import (
    BLOCK_SIZE,
    BadBlock,
    ChecksumReport,
    check_checksums,
    check_checksums_task,
    damage_heap_page,
    make_stopped_copy,
    make_stopped_copy_task,
    parse_checksums_output,
)
from tasks.pitr.cluster import (
    cluster_is_running,
    control_data,
    remove_cluster,
    start_cluster,
    stop_cluster,
    system_identifier,
)
from tasks.pitr.damage_finder import (
    DamageCandidate,
    archive_window_start,
    find_damage,
    find_damage_task,
    parse_waldump_line,
)
from tasks.pitr.drill import DrillCandidate, drill_candidates, drill_statement, run_drill_statement
from tasks.pitr.lsn import (
    format_lsn,
    history_file_name,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_number,
)
from tasks.pitr.recovery import (
    RecoveredCluster,
    render_recovery_settings,
    start_recovery,
    start_recovery_task,
)
from tasks.pitr.relation_restore import (
    RelationRestoreResult,
    dump_relations,
    dump_relations_task,
    preserve_database_copy,
    restore_relations,
    restore_relations_task,
)
from tasks.pitr.relations import (
    RelationDigest,
    database_oid,
    ensure_schemas,
    extension_installed,
    relation_digests,
    relation_digests_task,
    relation_filepaths,
    resolve_filenodes,
)
from tasks.pitr.target import RecoveryTarget
from tasks.pitr.wal import (
    ArchivedFile,
    WalPlan,
    plan_wal,
    plan_wal_task,
    restore_command_for,
    stage_wal,
    stage_wal_task,
)
from tasks.postgres.heartbeat import first_heartbeat_after, heartbeat_rows_after, heartbeat_state
