"""Restore a base backup into a new data directory, every byte checked.

:func:`restore_base_backup` reads the repository once, whatever it is: each tar streams
into ``tar -x`` while hashed (``base.tar`` and ``pg_wal.tar`` at once), into a side folder
renamed into place only when the digests match and ``pg_verifybackup`` agrees (presence
and sizes by default: the archive's digest already proved the content; ``full`` re-reads
all). :func:`download_base_backup` + :func:`extract_base_backup` keep the two-step way
(resumable verified downloads, then untar) for callers that want the files on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dr.errors import (
    ChecksumMismatch,
    PostgresError,
    PreconditionError,
    UnsafeTargetError,
    VerificationError,
)
from dr.localexec import (
    chown_for_server,
    run_as_server,
    server_argv,
    server_os_user,
    server_tool,
    tool_failed,
)
from dr.tasking import dr_task
from tasks.pitr.base_backup import (
    BASE_TAR,
    DR_MANIFEST,
    PG_MANIFEST,
    WAL_TAR,
    BaseBackup,
    file_sha256,
)
from tasks.pitr.cluster import control_data

if TYPE_CHECKING:
    from tasks.storage.client import Repository

log = logging.getLogger(__name__)
VerifyMode = Literal["full", "sizes", "off"]


def download_base_backup(
    repo: Repository, backup: BaseBackup, dest_dir: str | Path
) -> dict[str, str]:
    """Download every file of a base backup, each verified against its manifest's SHA-256.

    Idempotent and resumable: a file already in ``dest_dir`` with the right checksum is
    kept; a large file interrupted by a transient failure keeps its ``.part`` and the next
    call (the task's retry) resumes from it. Mid-stream failures are first resumed inside
    the repository with ranged reads.

    Args:
        repo: the backup repository.
        backup: from :func:`list_base_backups`.
        dest_dir: local folder.

    Returns:
        File name → SHA-256 of every file.

    Raises:
        ChecksumMismatch: a file does not match its manifest (nothing corrupt is kept).
        StorageError: the repository failed (``transient`` tells whether to retry).
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    t0 = time.perf_counter()
    fetched = 0
    for name, sha in sorted(backup.files.items()):
        if name == DR_MANIFEST:
            continue
        local = dest / name
        if local.is_file() and backup.sizes.get(name) in (None, local.stat().st_size):
            if file_sha256(local) == sha:
                out[name] = sha
                continue
            local.unlink()
        out[name] = repo.get_to_file(backup.prefix + name, local, expected_sha256=sha)
        fetched += 1
    log.info(
        "base backup %s: %d file(s) fetched, %d already here, in %.1f s",
        backup.backup_id,
        fetched,
        len(out) - fetched,
        time.perf_counter() - t0,
    )
    return out


def prepare_dir(path: Path) -> None:
    """Create a folder the server user may use, with traversable parents."""
    path.mkdir(parents=True, exist_ok=True)
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001 and server_os_user() is not None and parent.stat().st_uid == 0:
            # The server user must traverse every parent (a root-owned 0700 home would stop it).
            raise PreconditionError(
                f"{parent} is not traversable by the server user; choose another recovery folder"
            )


def extract_base_backup(
    download_dir: str | Path,
    data_dir: str | Path,
    *,
    bin_dir: str | Path | None = None,
    verify: VerifyMode = "full",
) -> dict[str, Any]:
    """Untar a downloaded base backup into a new data directory and verify it.

    ``base.tar`` goes to the data directory, ``pg_wal.tar`` (``-X stream``) into its
    ``pg_wal``. Then ``pg_verifybackup`` checks every file against PostgreSQL's own
    ``backup_manifest`` (sizes and checksums), before any setting is written.

    Args:
        download_dir: where :func:`download_base_backup` put the files.
        data_dir: the new data directory; must not exist or be empty.
        bin_dir: PostgreSQL binaries.
        verify: ``full`` (every file's checksum), ``sizes`` (every file present with its
            size) or ``off``.

    Returns:
        ``{"seconds": ..., "verified": mode used or None, "control": pg_controldata fields}``.

    Raises:
        UnsafeTargetError: ``data_dir`` is not empty.
        PreconditionError: the backup has tablespaces (other tar files) or is incomplete.
        VerificationError: ``pg_verifybackup`` found a difference.
    """
    src = Path(download_dir)
    data = Path(data_dir)
    if data.exists() and any(data.iterdir()):
        raise UnsafeTargetError(f"data directory {data} is not empty; refusing to restore into it")
    tars = sorted(p.name for p in src.glob("*.tar"))
    others = [t for t in tars if t not in (BASE_TAR, WAL_TAR)]
    if others:
        raise PreconditionError(
            f"base backup in {src} has tablespace archives {others}: restoring tablespaces "
            "needs their locations mapped, which this recovery does not do"
        )
    if BASE_TAR not in tars:
        raise PreconditionError(f"no {BASE_TAR} in {src}")
    t0 = time.perf_counter()
    prepare_dir(data.parent)
    data.mkdir(mode=0o700, exist_ok=True)
    chown_for_server(data)
    chown_for_server(src)
    tar = shutil.which("tar") or "tar"
    proc = run_as_server([tar, "--no-same-owner", "-xf", src / BASE_TAR, "-C", data])
    if proc.returncode != 0:
        raise tool_failed("tar", proc)
    if (src / WAL_TAR).exists():
        proc = run_as_server([tar, "--no-same-owner", "-xf", src / WAL_TAR, "-C", data / "pg_wal"])
        if proc.returncode != 0:
            raise tool_failed("tar", proc)
    os.chmod(data, 0o700)
    verified = _verify_backup(data, src / PG_MANIFEST, verify, bin_dir)
    control = control_data(data, bin_dir=bin_dir)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("extracted base backup into %s in %.1f s (verified=%s)", data, seconds, verified)
    return {"seconds": seconds, "verified": verified, "control": control}


def _verify_backup(
    data: Path, manifest: Path, mode: VerifyMode, bin_dir: str | Path | None
) -> str | None:
    """``pg_verifybackup`` against PostgreSQL's ``backup_manifest``; the mode used, or None."""
    if mode == "off" or not manifest.exists():
        return None
    argv: list[str | Path] = [
        server_tool("pg_verifybackup", bin_dir),
        "--no-parse-wal",
        "--quiet",
        f"--manifest-path={manifest}",
    ]
    if mode == "sizes":
        argv.append("--skip-checksums")
    proc = run_as_server([*argv, data])
    if proc.returncode != 0:
        raise VerificationError(
            f"pg_verifybackup found the restored files differ from the backup's manifest: "
            f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
        )
    return mode


def restore_base_backup(
    repo: Repository,
    backup: BaseBackup,
    data_dir: str | Path,
    *,
    work_dir: str | Path,
    bin_dir: str | Path | None = None,
    verify: VerifyMode = "sizes",
    cancel: threading.Event | None = None,
    before_place: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Put a base backup into a new data directory, every byte checked against its manifest.

    Every repository is read once: each tar streams into ``tar -x`` while hashed (ranged
    reads resume a remote stream after a hiccup), ``base.tar`` and ``pg_wal.tar`` at the
    same time, into ``<data_dir>.restoring``. Only when both digests match and
    ``pg_verifybackup`` (``verify``) agrees is that folder renamed to ``data_dir``: a
    refused backup leaves nothing at ``data_dir``.

    Args:
        repo: the backup repository.
        backup: from :func:`list_base_backups`.
        data_dir: the new data directory (must not exist or be empty).
        work_dir: scratch folder (the manifest).
        bin_dir: PostgreSQL binaries.
        verify: ``sizes``, ``full`` or ``off``.
        cancel: set by another thread (a WAL gap found meanwhile) to stop and clean up.
        before_place: called once everything is verified, before the rename; what it
            raises refuses the restore like a wrong digest (the WAL proof of the same
            recovery waits here).

    Returns:
        ``{"seconds", "download_seconds", "extract_seconds", "verified", "control",
        "sha256": {file: digest}, "streamed": True}``.

    Raises:
        ChecksumMismatch: an archive did not match its manifest (nothing is left behind).
        UnsafeTargetError: ``data_dir`` holds something.
        VerificationError: pg_verifybackup found a difference.
        StorageError: the repository failed (transient: the task retries).
        RestoreCancelled: ``cancel`` was set.
    """
    data = Path(data_dir)
    staging = data.parent / f"{data.name}.restoring"
    _remove_path(staging)  # left by an attempt that was killed
    _check_restorable_here(backup, data)
    t0 = time.perf_counter()
    sha = _fetch_pg_manifest(repo, backup, Path(work_dir))
    prepare_dir(data.parent)
    try:
        sha.update(_stream_tars(repo, backup, staging, cancel))
        t1 = time.perf_counter()
        verified = _verify_backup(staging, Path(work_dir) / PG_MANIFEST, verify, bin_dir)
        control = control_data(staging, bin_dir=bin_dir)
        _raise_if_cancelled(cancel)
        if before_place is not None:
            before_place()
        _place(staging, data)
    except BaseException:
        _remove_path(staging)
        raise
    seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "restored base backup %s into %s in %.1f s (streamed, sha256 verified, pg_verifybackup %s)",
        backup.backup_id,
        data,
        seconds,
        verified or "off",
    )
    return {
        "seconds": seconds,
        "download_seconds": 0.0,
        "extract_seconds": round(t1 - t0, 3),
        "verified": verified,
        "control": control,
        "sha256": sha,
        "streamed": True,
    }


class RestoreCancelled(PreconditionError):
    """Another step of the same recovery refused (a WAL gap): the restore stopped."""


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise RestoreCancelled("restore stopped: another step of this recovery refused")


def _place(staging: Path, data: Path) -> None:
    """Rename the verified folder to ``data``; an empty ``data`` that cannot be replaced
    (a mount point) receives its entries instead."""
    try:
        os.replace(staging, data)
    except OSError:
        if not data.is_dir() or any(data.iterdir()):
            raise
        for entry in staging.iterdir():
            shutil.move(entry, data / entry.name)
        chown_for_server(data)
        os.chmod(data, 0o700)
        staging.rmdir()


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _stream_tars(
    repo: Repository, backup: BaseBackup, staging: Path, cancel: threading.Event | None
) -> dict[str, str]:
    """Both tars of the backup into ``staging`` at once; the first failure stops the other."""
    staging.mkdir(mode=0o700)
    chown_for_server(staging)
    jobs = {BASE_TAR: staging}
    if WAL_TAR in backup.files:
        (staging / "pg_wal").mkdir(mode=0o700)
        chown_for_server(staging / "pg_wal")
        jobs[WAL_TAR] = staging / "pg_wal"
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="untar") as pool:
        futures = {
            name: pool.submit(_stream_untar, repo, backup, name, dest, stop, cancel)
            for name, dest in jobs.items()
        }
        try:
            return {name: future.result() for name, future in futures.items()}
        finally:
            stop.set()  # after a failure the other stream stops at its next chunk
            os.chmod(staging, 0o700)


def _check_restorable_here(backup: BaseBackup, data: Path) -> None:
    """Refuse a non-empty data directory, and tablespace archives (locations not mapped)."""
    if data.exists() and any(data.iterdir()):
        raise UnsafeTargetError(f"data directory {data} is not empty; refusing to restore into it")
    others = [n for n in backup.files if n.endswith(".tar") and n not in (BASE_TAR, WAL_TAR)]
    if others:
        raise PreconditionError(
            f"base backup {backup.backup_id} has tablespace archives {others}: restoring "
            "tablespaces needs their locations mapped, which this recovery does not do"
        )


def _fetch_pg_manifest(repo: Repository, backup: BaseBackup, work: Path) -> dict[str, str]:
    """PostgreSQL's ``backup_manifest`` into ``work`` (for pg_verifybackup), when it has one."""
    work.mkdir(parents=True, exist_ok=True)
    sha: dict[str, str] = {}
    if PG_MANIFEST in backup.files:
        sha[PG_MANIFEST] = repo.get_to_file(
            backup.prefix + PG_MANIFEST,
            work / PG_MANIFEST,
            expected_sha256=backup.files[PG_MANIFEST],
        )
        chown_for_server(work)
    return sha


def _stream_untar(
    repo: Repository,
    backup: BaseBackup,
    name: str,
    dest: Path,
    stop: threading.Event,
    cancel: threading.Event | None,
) -> str:
    """Stream one tar file of the backup into ``tar -x``, hashing it; verify at the end."""
    expected = backup.files[name]
    tar = shutil.which("tar") or "tar"
    args, env = server_argv([tar, "--no-same-owner", "-xf", "-", "-C", dest])
    digest = hashlib.sha256()
    proc = subprocess.Popen(args, cwd="/", env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with closing(repo.iter_chunks_resuming(backup.prefix + name)) as chunks:
            for chunk in chunks:
                if stop.is_set():
                    raise RestoreCancelled(f"extraction of {name} stopped: the other one failed")
                _raise_if_cancelled(cancel)
                digest.update(chunk)
                proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # tar stopped reading: the digest below tells why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace")
    code = proc.wait()
    actual = digest.hexdigest()
    if actual != expected:
        raise ChecksumMismatch(
            f"{repo.url_for(backup.prefix + name)}: sha256 {actual[:12]} does not match the "
            f"manifest's {expected[:12]}; the restored files were removed"
        )
    if code != 0:
        raise PostgresError(f"tar failed ({code}) extracting {name}: {err.strip()[-800:]}")
    return actual


download_base_backup_task = dr_task(download_base_backup, name="pitr-download-base-backup")
extract_base_backup_task = dr_task(
    extract_base_backup, name="pitr-extract-base-backup", retries=0, timeout_seconds=3600
)
restore_base_backup_task = dr_task(restore_base_backup, name="pitr-restore-base-backup")
