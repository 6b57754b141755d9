"""Find the newest complete backup of a database, and refuse one of another target."""

from __future__ import annotations

from dr.errors import ObjectNotFound, VerificationError
from dr.tasking import dr_task
from flows.backup_verification.models import NewestBackup
from flows.common.backups import list_backups
from tasks.backups import manifest as backups_manifest
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = ["NoBackupError", "find_newest_backup", "find_newest_backup_task"]


class NoBackupError(VerificationError):
    """No backup of the project's own at all (a target may have only foreign dumps)."""


def find_newest_backup(
    repo: storage_client.Repository, target_name: str, database: str
) -> NewestBackup:
    """The newest complete backup of a database, with its manifest.

    Raises:
        VerificationError: no backup at all (empty repository), only incomplete ones
            (manifest missing), or the manifest is unreadable or describes another target,
            database or kind of backup.
    """
    folder = f"{target_name}/{database}"
    entries = list_backups(repo, folder)
    complete = [e for e in entries if e.complete]
    if not entries:
        raise NoBackupError(
            f"no backup of {database} in {repo.url_for_prefix(folder + '/')} "
            "(empty repository: run `dr backup` first)"
        )
    if not complete:
        raise VerificationError(
            f"{len(entries)} backup(s) of {database} in {repo.url_for_prefix(folder + '/')} "
            f"but none complete (manifest missing), newest {entries[0].backup_id}"
        )
    newest = complete[0]
    prefix = f"{folder}/{newest.backup_id}"
    manifest = _read_remote_manifest(repo, prefix)
    _check_identity(manifest, target_name, database, repo.url_for(prefix))
    return NewestBackup(
        database=database,
        folder=folder,
        backup_id=newest.backup_id,
        manifest=manifest,
        location=repo.url_for(prefix),
    )


def _read_remote_manifest(
    repo: storage_client.Repository, prefix: str
) -> backups_manifest.Manifest:
    try:
        data = storage_operations.read_object_task(
            repo, f"{prefix}/{backups_manifest.MANIFEST_NAME}"
        )
    except ObjectNotFound as exc:
        raise VerificationError(f"{repo.url_for(prefix)}: manifest missing") from exc
    return backups_manifest.read_manifest(data)


def _check_identity(
    manifest: backups_manifest.Manifest, target_name: str, database: str, where: str
) -> None:
    if manifest.target != target_name:
        raise VerificationError(
            f"{where} is a backup of target {manifest.target!r}, not {target_name!r}; "
            "refusing to verify it as this target's"
        )
    if manifest.database != database:
        raise VerificationError(
            f"{where} is a backup of database {manifest.database!r}, not {database!r}"
        )
    if manifest.kind != backups_manifest.DUMP_KIND:
        raise VerificationError(
            f"{where} is a {manifest.kind} backup, not a {backups_manifest.DUMP_KIND}"
        )


find_newest_backup_task = dr_task(find_newest_backup, name="find-newest-backup", retries=2)
