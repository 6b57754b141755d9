"""Make the drill go red on purpose: a corrupted COPY of the newest backup (never the real one)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from dr.changes import Change
from dr.config import ForeignBackups
from dr.errors import VerificationError
from dr.tasking import dr_task
from flows.backup_verification.models import SCRATCH_FOLDER, Injection, NewestBackup
from flows.common.backups import open_target_repository
from flows.lifecycle import RunContext
from tasks.backups import inject as backups_inject
from tasks.backups import manifest as backups_manifest
from tasks.backups import restore as backups_restore
from tasks.backups import retention as backups_retention
from tasks.storage import client as storage_client
from tasks.storage import operations as storage_operations

__all__ = [
    "PlainDumpCopy",
    "choose_injection",
    "cut_plain_copy",
    "cut_plain_copy_task",
    "inject_failure",
    "inject_into_copy",
    "inject_into_copy_task",
    "inject_truncated_plain_dump",
]


def inject_into_copy(
    repo: storage_client.Repository,
    newest: NewestBackup,
    injection: Injection,
    *,
    scratch_prefix: str,
    work_dir: str | None = None,
) -> tuple[NewestBackup, backups_inject.InjectionInfo]:
    """Copy the newest backup to ``scratch_prefix`` in the repository, corrupted.

    The real backup is only read (and its checksums verified on the way down).

    Returns:
        The corrupted copy as a :class:`NewestBackup`, and where it was damaged.
    """
    with tempfile.TemporaryDirectory(prefix="dr-inject-", dir=work_dir) as tmp:
        real = Path(tmp) / "real"
        bad = Path(tmp) / "bad"
        real_prefix = f"{newest.folder}/{newest.backup_id}"
        for entry in newest.manifest.files:
            repo.get_to_file(
                f"{real_prefix}/{entry.path}", real / entry.path, expected_sha256=entry.sha256
            )
        backups_manifest.write_manifest(newest.manifest, real / backups_manifest.MANIFEST_NAME)
        kind = "flip" if injection is Injection.bad_backup else "truncate"
        info = backups_inject.inject_bad_backup(
            real, bad, kind, reseal_manifest=injection is Injection.bad_backup_truncate
        )
        manifest = backups_manifest.read_manifest(bad / backups_manifest.MANIFEST_NAME)
        for entry in manifest.files:
            with open(bad / entry.path, "rb") as fh:
                # The copy's bytes are what they are: no expected checksum on the way up.
                repo.put_stream(f"{scratch_prefix}/{entry.path}", fh)
        repo.put_bytes(
            f"{scratch_prefix}/{backups_manifest.MANIFEST_NAME}",
            (bad / backups_manifest.MANIFEST_NAME).read_bytes(),
        )
    folder, _, backup_id = scratch_prefix.rpartition("/")
    copy = NewestBackup(
        database=newest.database,
        folder=folder,
        backup_id=backup_id,
        manifest=manifest,
        location=repo.url_for(scratch_prefix),
    )
    return copy, info


inject_into_copy_task = dr_task(inject_into_copy, name="inject-into-copy", retries=0)


def choose_injection(
    ctx: RunContext, newest: dict[str, NewestBackup], short_id: str
) -> tuple[str, str]:
    """The database whose backup gets a corrupted copy, and the copy's scratch prefix.

    Raises:
        VerificationError: no complete backup to copy.
    """
    if not newest:
        raise VerificationError("nothing to corrupt: no complete backup found")
    databases = list(ctx.target.postgres.databases)
    injected_db = databases[0] if databases[0] in newest else next(iter(newest))
    chosen = newest[injected_db]
    prefix = f"{SCRATCH_FOLDER}/{short_id}/{ctx.target_name}/{injected_db}/{chosen.backup_id}"
    return injected_db, prefix


def inject_failure(
    ctx: RunContext,
    repo: storage_client.Repository,
    newest: dict[str, NewestBackup],
    injected_db: str,
    injection: Injection,
    scratch_prefix: str,
) -> None:
    """Put a corrupted copy in place of ``newest[injected_db]``; record it as an undoable change."""
    chosen = newest[injected_db]
    if not ctx.plan("corrupt a copy of", chosen.location):
        return
    copy, info = inject_into_copy_task(repo, chosen, injection, scratch_prefix=scratch_prefix)
    newest[injected_db] = copy
    prefix = scratch_prefix
    ctx.record_change(
        Change(
            system="storage",
            action="put-corrupted-copy",
            object=copy.location,
            outcome="created",
            undo=f"delete {copy.location}",
        ),
        undo=lambda: storage_operations.delete_prefix_task(repo, prefix + "/"),
    )
    ctx.details["injection"] = {
        "injection": injection.value,
        "database": injected_db,
        "real_backup": chosen.location,
        "corrupted_copy": copy.location,
        "damage": info.kind,
        "file": info.file,
        "offset": info.offset,
        "original_size": info.original_size,
        "new_size": info.new_size,
        "manifest_resealed": info.resealed,
    }
    ctx.note(
        f"injected {injection.value}: {info.kind} in {info.file} of a copy "
        f"of {chosen.backup_id} at {copy.location}; the real backup is untouched"
    )


@dataclass(frozen=True)
class PlainDumpCopy:
    """A cut copy of a foreign plain dump that replaces the real one in the drill."""

    index: int
    key: str


def cut_plain_copy(
    repo: storage_client.Repository, key: str, gzipped: bool, copy_key: str
) -> backups_inject.PlainCutInfo:
    """Put at ``copy_key`` a copy of the plain dump ``key`` cut after one table's data."""
    with tempfile.TemporaryFile() as tmp:
        with repo.open_read(key) as src:
            info = backups_inject.cut_plain_dump(src, tmp, gzipped=gzipped)
        tmp.seek(0)
        repo.put_stream(copy_key, tmp)  # type: ignore[arg-type]
    return info


cut_plain_copy_task = dr_task(cut_plain_copy, name="cut-plain-copy", retries=0)


def _newest_plain_dump(
    ctx: RunContext, foreign: list[ForeignBackups]
) -> tuple[int, storage_client.Repository, storage_client.ObjectInfo, bool]:
    """The first foreign entry whose newest dump is plain SQL: (index, repo, dump, gzipped)."""
    for i, entry in enumerate(foreign):
        repo = open_target_repository(ctx.config, entry.location)
        found = storage_operations.glob_objects_task(repo, entry.pattern)
        newest = backups_retention.pick_newest_by_name(found)
        if newest is None:
            continue
        head = storage_operations.read_object_task(repo, newest.key, 512)
        fmt = backups_restore.detect_dump_format(head)
        if fmt in ("plain", "plain-gzip"):
            return i, repo, newest, fmt == "plain-gzip"
    raise VerificationError(
        "nothing to cut: no backup.foreign entry whose newest dump is plain SQL "
        "(truncated-plain-dump needs a `pg_dump | gzip` dump)"
    )


def inject_truncated_plain_dump(
    ctx: RunContext,
    foreign: list[ForeignBackups],
    short_id: str,
    scratch: list[tuple[storage_client.Repository, str]],
) -> PlainDumpCopy | None:
    """Cut a copy of the newest foreign plain dump after one table's data, re-gzipped.

    The copy goes to a scratch prefix of the dump's own repository (a name its pattern
    does not match), added to ``scratch`` before anything is written; the real dump is
    only read. Recorded as an undoable change.
    """
    index, repo, real, gzipped = _newest_plain_dump(ctx, foreign)
    scratch_prefix = f"{SCRATCH_FOLDER}/{short_id}"
    copy_key = f"{scratch_prefix}/{real.key.rsplit('/', 1)[-1]}.truncated"
    if not ctx.plan("cut a copy of", repo.url_for(real.key)):
        return None
    scratch.append((repo, scratch_prefix))
    info = cut_plain_copy_task(repo, real.key, gzipped, copy_key)
    ctx.record_change(
        Change(
            system="storage",
            action="put-truncated-copy",
            object=repo.url_for(copy_key),
            outcome="created",
            undo=f"delete {repo.url_for(copy_key)}",
        ),
        undo=lambda: storage_operations.delete_prefix_task(repo, scratch_prefix + "/"),
    )
    ctx.details["injection"] = {
        "injection": Injection.truncated_plain_dump.value,
        "real_backup": repo.url_for(real.key),
        "corrupted_copy": repo.url_for(copy_key),
        "damage": f"cut after the data of {info.table}",
        "kept_bytes": info.kept_bytes,
        "original_bytes": info.original_bytes,
        "tables_without_data": info.tables_without_data,
    }
    ctx.note(
        f"injected truncated-plain-dump: a copy of {real.key} cut after the data of "
        f"{info.table} ({info.kept_bytes} of {info.original_bytes} bytes"
        f"{', re-gzipped' if gzipped else ''}) at {repo.url_for(copy_key)}; the real dump "
        "is untouched"
    )
    return PlainDumpCopy(index=index, key=copy_key)
