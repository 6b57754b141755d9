"""Restore a logical backup (``pg_restore``) into a database, with progress."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, Field

from dr.clock import utcnow
from dr.errors import PostgresError, VerificationError
from dr.localexec import find_tool, tool_env, tool_error
from dr.tasking import dr_task
from tasks.backups.manifest import HASH_CHUNK_BYTES
from tasks.backups.toc import choose_restore_jobs, data_sizes, read_toc

log = logging.getLogger(__name__)
#: Server settings for the restore sessions (PGOPTIONS), empty by default. Measured on the
#: lab machine (pgbench scale 50, 2 cores, interleaved runs): neither a bigger
#: ``maintenance_work_mem`` (256MB) nor ``synchronous_commit=off`` restored faster than
#: the defaults, and the bigger sort memory starts more parallel index workers than there
#: are cores. Kept as a parameter for servers where it does help.
RESTORE_SESSION_SETTINGS: dict[str, str] = {}
ProgressCallback = Callable[[float, str], None]


class RestoreInfo(BaseModel):
    """What a restore did and how long it took."""

    format: str
    jobs: int
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    tables: int = 0
    trailer: bool | None = Field(
        None, description="Plain dumps: pg_dump's 'dump complete' trailer ends the file."
    )


def detect_dump_format(head: bytes) -> Literal["custom", "plain", "plain-gzip", "custom-gzip"]:
    """Tell a dump's format from its first bytes.

    Args:
        head: at least the first 512 bytes of the file (decompressed or not).

    Raises:
        VerificationError: the bytes are neither a custom-format archive nor SQL text.
    """
    if head.startswith(b"\x1f\x8b"):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error as exc:
            raise VerificationError(f"gzip data is corrupt: {exc}") from exc
        return "custom-gzip" if inner.startswith(b"PGDMP") else "plain-gzip"
    if head.startswith(b"PGDMP"):
        return "custom"
    try:
        head[:256].decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the boundary is fine; binary junk is not.
        try:
            head[:252].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationError("not a PostgreSQL dump (neither SQL text nor PGDMP)") from exc
    if b"\x00" in head:
        raise VerificationError("not a PostgreSQL dump (binary data)")
    return "plain"


class _RestoreProgress:
    """Turns ``pg_restore -v`` lines into a fraction: data by bytes, then post-data items."""

    DATA_SHARE = 0.85

    def __init__(
        self,
        sizes: Mapping[str, int],
        by_id: Mapping[int, str],
        post_items: int,
        parallel: bool,
        callback: ProgressCallback | None,
    ) -> None:
        self.sizes = sizes
        self.by_id = by_id
        self.total = max(1, sum(sizes.values()))
        self.post_items = max(1, post_items)
        self.parallel = parallel
        self.callback = callback
        self.started: list[str] = []
        self.done: set[str] = set()
        self.post_done = 0
        self.in_post = False

    def _emit(self, message: str) -> None:
        if self.callback is None:
            return
        data = sum(self.sizes.get(t, 0) for t in self.done) / self.total
        frac = self.DATA_SHARE * (1.0 if self.in_post else min(data, 1.0))
        frac += (1 - self.DATA_SHARE) * min(self.post_done / self.post_items, 1.0)
        with contextlib.suppress(Exception):  # a progress display never breaks a restore
            self.callback(min(frac, 0.99), message)

    def feed(self, line: str) -> None:
        text = line.removeprefix("pg_restore: ").strip()
        if text.startswith("processing data for table "):
            table = text.split('"')[1] if '"' in text else text.rsplit(" ", 1)[-1]
            if not self.parallel:
                self.done.update(self.started)
            self.started.append(table)
            self._emit(f"restoring data of {table}")
        elif text.startswith("finished item ") and " TABLE DATA " in text:
            with contextlib.suppress(ValueError, IndexError):
                table = self.by_id.get(int(text.split()[2]))
                if table:
                    self.done.add(table)
                    self._emit(f"restored data of {table}")
        elif text.startswith(("creating INDEX", "creating CONSTRAINT", "creating FK CONSTRAINT")):
            if not self.in_post:
                self.in_post = True
                self.done.update(self.started)
            self.post_done += 1
            self._emit(text.replace('"', ""))


def _stream_stderr(
    proc: subprocess.Popen[str], sink: Callable[[str], None], keep: list[str]
) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        keep.append(line)
        if len(keep) > 400:
            del keep[:200]
        sink(line)


def restore_dump(
    dump_path: str | os.PathLike[str],
    conninfo_scratch: str,
    *,
    jobs: int | None = None,
    progress_cb: ProgressCallback | None = None,
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    no_owner: bool = False,
    session_settings: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
) -> RestoreInfo:
    """Restore a directory- or custom-format dump with ``pg_restore --exit-on-error``.

    The job count comes from the dump's table sizes (:func:`choose_restore_jobs`), not from
    the CPU count; a custom-format file has no per-table sizes, so it restores with one
    job unless ``jobs`` says otherwise.

    Args:
        dump_path: a ``pg_dump -Fd`` folder or a ``-Fc`` file.
        conninfo_scratch: key/value conninfo of the (empty) database to restore into.
        jobs: force a job count instead of choosing one.
        progress_cb: called with (fraction 0..1, message) as the restore advances.
        password: for roles that need one.
        no_owner: skip ownership (when restoring on a server without the dump's roles).
        session_settings: server settings for the restore sessions; default
            :data:`RESTORE_SESSION_SETTINGS`.

    Returns:
        A :class:`RestoreInfo` with the job count and duration.

    Raises:
        VerificationError: the dump is missing.
        PostgresError: pg_restore stopped on an error (its last messages are quoted).
    """
    path = Path(dump_path)
    if not path.exists():
        raise VerificationError(f"dump {path} does not exist")
    tool = find_tool("pg_restore", bin_dir)
    entries, post_items = read_toc(path, bin_dir)
    by_id = {e.dump_id: e.qualified for e in entries}
    if path.is_dir():
        fmt = "directory"
        sizes = data_sizes(path, entries)
    else:
        fmt = "custom"
        sizes = {e.qualified: 1 for e in entries}
    n_jobs = jobs if jobs is not None else (choose_restore_jobs(sizes) if fmt == "directory" else 1)
    n_jobs = max(1, n_jobs)
    settings = RESTORE_SESSION_SETTINGS if session_settings is None else session_settings
    argv = [
        str(tool),
        "--exit-on-error",
        "--verbose",
        f"--jobs={n_jobs}",
        f"--dbname={conninfo_scratch}",
    ]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    argv.append(str(path))
    tracker = _RestoreProgress(sizes, by_id, post_items, n_jobs > 1, progress_cb)
    started = utcnow()
    t0 = time.perf_counter()
    returncode, lines = _run_pg_restore(argv, password, settings, tracker, timeout_seconds)
    duration = time.perf_counter() - t0
    if returncode != 0:
        errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
        raise tool_error("pg_restore", returncode, "".join(errors[-12:] or lines[-12:]))
    if progress_cb is not None:
        with contextlib.suppress(Exception):
            progress_cb(1.0, "restore finished")
    log.info("restored %s (%s, -j %s) in %.1f s", path.name, fmt, n_jobs, duration)
    return RestoreInfo(
        format=fmt,
        jobs=n_jobs,
        started_at=started,
        ended_at=utcnow(),
        duration_seconds=round(duration, 3),
        tables=len(entries),
    )


def _run_pg_restore(
    argv: list[str],
    password: str | None,
    settings: Mapping[str, str],
    tracker: _RestoreProgress,
    timeout_seconds: float | None,
) -> tuple[int, list[str]]:
    """Run pg_restore, its stderr fed to the progress tracker; ``(return code, stderr lines)``.

    Raises:
        PostgresError: it did not finish in time (killed; transient).
    """
    pgoptions = " ".join(f"-c {k}={v}" for k, v in settings.items())
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=tool_env(password, {"PGOPTIONS": pgoptions} if pgoptions else None),
    )
    lines: list[str] = []
    reader = threading.Thread(target=_stream_stderr, args=(proc, tracker.feed, lines), daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise PostgresError(
            f"pg_restore timed out after {timeout_seconds} s", transient=True
        ) from exc
    finally:
        reader.join(timeout=10)
    return returncode, lines


def restore_custom(
    stream: IO[bytes],
    conninfo_scratch: str,
    *,
    gzipped: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    progress_cb: ProgressCallback | None = None,
) -> RestoreInfo:
    """Restore a custom-format dump read from a stream (a foreign ``*.dump``).

    pg_restore needs to seek in a custom archive, so the stream is first written to a
    temporary file (decompressed when ``gzipped``), removed afterwards.
    """
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="dr-custom-") as tmp:
        local = Path(tmp) / "dump.custom"
        source: IO[bytes] = gzip.GzipFile(fileobj=stream) if gzipped else stream
        try:
            with open(local, "wb") as out:
                shutil.copyfileobj(source, out, HASH_CHUNK_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise VerificationError(f"custom dump is unreadable: {exc}") from exc
        return restore_dump(
            local, conninfo_scratch, password=password, bin_dir=bin_dir, progress_cb=progress_cb
        )


restore_dump_task = dr_task(restore_dump, name="backups-restore-dump", retries=0)
restore_custom_task = dr_task(restore_custom, name="backups-restore-custom", retries=0)
