"""Compatibility facade (removed when the layout lands): the old tasks/backups.py names,
now in tasks.backups.* (base backups and WAL archive age in tasks.pitr.*, tools in dr.localexec).
"""

# ruff: noqa: F401

from dr.localexec import find_tool, tool_version
from tasks.backups.dump import (
    DumpInfo,
    SnapshotSession,
    conninfo_with,
    dump_database,
    dump_database_task,
)
from tasks.backups.inject import InjectionInfo, inject_bad_backup
from tasks.backups.manifest import (
    BASE_KIND,
    DUMP_KIND,
    MANIFEST_NAME,
    VERIFIED_NAME,
    Manifest,
    ManifestFile,
    build_manifest,
    diagnose_dump_dir,
    new_backup_id,
    read_manifest,
    scratch_database_name,
    sha256_file,
    verify_local_files,
    write_manifest,
)
from tasks.backups.plain import restore_plain
from tasks.backups.restore import (
    RestoreInfo,
    detect_dump_format,
    restore_custom,
    restore_dump,
    restore_dump_task,
)
from tasks.backups.retention import (
    BackupEntry,
    foreign_database_hint,
    pick_newest,
    plan_retention,
    retention_reasons,
)
from tasks.backups.toc import TocEntry, choose_restore_jobs, parse_toc_listing, table_data_sizes
from tasks.backups.verify import (
    AmcheckFailure,
    AmcheckResult,
    amcheck,
    amcheck_task,
    parse_amcheck_output,
)
from tasks.pitr.archiving import newest_wal_segment, wal_archive_age
from tasks.pitr.base_backup import BaseBackupInfo, base_backup, base_backup_task
