"""Storage steps as plain functions of a repository, each with its Prefect task for flows."""

from __future__ import annotations

from pathlib import Path

from dr.tasking import dr_task
from tasks.storage.client import LockMode, ObjectInfo, PutResult, Repository


def put_file(
    repo: Repository,
    key: str,
    local_path: str | Path,
    *,
    overwrite: bool = False,
    write_once: bool = False,
    retain_days: int | None = None,
    lock_mode: LockMode = "GOVERNANCE",
) -> PutResult:
    """Upload a local file (see :meth:`Repository.put_file`)."""
    return repo.put_file(
        key,
        local_path,
        overwrite=overwrite,
        write_once=write_once,
        retain_days=retain_days,
        lock_mode=lock_mode,
    )


def put_bytes(
    repo: Repository,
    key: str,
    data: bytes,
    *,
    overwrite: bool = False,
    write_once: bool = False,
    retain_days: int | None = None,
    lock_mode: LockMode = "GOVERNANCE",
) -> PutResult:
    """Store small content such as a manifest (see :meth:`Repository.put_bytes`)."""
    return repo.put_bytes(
        key,
        data,
        overwrite=overwrite,
        write_once=write_once,
        retain_days=retain_days,
        lock_mode=lock_mode,
    )


def get_to_file(
    repo: Repository,
    key: str,
    local_path: str | Path,
    *,
    expected_sha256: str | None = None,
) -> str:
    """Download and verify one object (see :meth:`Repository.get_to_file`); retries resume."""
    return repo.get_to_file(key, local_path, expected_sha256=expected_sha256)


def copy_to_local_dir(
    repo: Repository,
    prefix: str,
    dest_dir: str | Path,
    *,
    expected: dict[str, str] | None = None,
) -> dict[str, str]:
    """Download a whole prefix, verified (see :meth:`Repository.copy_to_local_dir`)."""
    return repo.copy_to_local_dir(prefix, dest_dir, expected=expected)


def list_objects(repo: Repository, prefix: str = "") -> list[ObjectInfo]:
    """List objects under a prefix, sorted by key (see :meth:`Repository.list`)."""
    return repo.list(prefix)


def delete_object(repo: Repository, key: str) -> bool:
    """Delete one object; a missing one is success (see :meth:`Repository.delete`)."""
    return repo.delete(key)


def delete_prefix(repo: Repository, prefix: str) -> int:
    """Delete every object under a non-empty prefix (see :meth:`Repository.delete_prefix`)."""
    return repo.delete_prefix(prefix)


def read_object(repo: Repository, key: str, max_bytes: int = -1) -> bytes:
    """The bytes of one small object (a manifest), or its first ``max_bytes``."""
    with repo.open_read(key) as fh:
        return fh.read(max_bytes)


def glob_objects(repo: Repository, pattern: str) -> list[ObjectInfo]:
    """Objects whose key matches a glob pattern (see :meth:`Repository.glob`)."""
    return repo.glob(pattern)


put_file_task = dr_task(put_file, name="storage-put-file")
put_bytes_task = dr_task(put_bytes, name="storage-put-bytes")
get_to_file_task = dr_task(get_to_file, name="storage-get-to-file")
copy_to_local_dir_task = dr_task(copy_to_local_dir, name="storage-copy-to-local-dir")
list_objects_task = dr_task(list_objects, name="storage-list-objects")
delete_object_task = dr_task(delete_object, name="storage-delete-object")
delete_prefix_task = dr_task(delete_prefix, name="storage-delete-prefix")
read_object_task = dr_task(read_object, name="storage-read-object")
glob_objects_task = dr_task(glob_objects, name="storage-glob-objects")
