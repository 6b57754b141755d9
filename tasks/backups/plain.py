"""Restore a foreign plain SQL dump through ``psql``, refusing what could leave the database."""

from __future__ import annotations

import contextlib
import gzip
import os
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from typing import IO

from dr.clock import utcnow
from dr.errors import PostgresError, UnsafeTargetError, VerificationError
from dr.localexec import find_tool, tool_env, tool_error
from dr.tasking import dr_task
from tasks.backups.restore import RESTORE_SESSION_SETTINGS, ProgressCallback, RestoreInfo

#: psql meta-commands that pg_dump itself writes into plain dumps (``\restrict`` since the
#: 2025 security releases); any other meta-command in a foreign dump is refused, because
#: ``\connect`` would leave the scratch database and ``\!`` runs a shell command.
_ALLOWED_META_COMMANDS = (b"\\restrict", b"\\unrestrict")

#: The comment pg_dump (or pg_dumpall) writes last: a dump without it was cut short, even
#: when every statement before the cut is valid SQL (pg_dump died, gzip closed the file).
COMPLETION_TRAILERS = (
    b"-- PostgreSQL database dump complete",
    b"-- PostgreSQL database cluster dump complete",
)


class _PlainGuard:
    """Checks a plain SQL dump line by line before psql sees it.

    Outside ``COPY ... FROM stdin`` data, a psql meta-command other than the ones pg_dump
    writes is refused: ``\\connect`` would leave the scratch database (and write into the
    source) and ``\\!`` would run a shell command. ``CREATE``/``DROP DATABASE`` are refused
    for the same reason. Inside COPY data backslashes are escaped, so no data line can look
    like a meta-command.
    """

    def __init__(self) -> None:
        self.in_copy = False
        self.line_no = 0
        self.trailer = False

    def check(self, line: bytes) -> None:
        self.line_no += 1
        if self.in_copy:
            if line.rstrip(b"\r\n") == b"\\.":
                self.in_copy = False
            return
        stripped = line.lstrip()
        self._track_trailer(stripped.rstrip())
        if stripped.startswith(b"\\"):
            if not stripped.startswith(_ALLOWED_META_COMMANDS):
                word = stripped.split(maxsplit=1)[0][:20].decode("utf-8", "replace")
                raise UnsafeTargetError(
                    f"plain dump line {self.line_no}: psql meta-command {word} refused "
                    "(it could act outside the scratch database)"
                )
            return
        upper = stripped[:40].upper()
        if upper.startswith((b"CREATE DATABASE", b"DROP DATABASE", b"ALTER DATABASE")):
            raise UnsafeTargetError(
                f"plain dump line {self.line_no}: database-level statement refused "
                "(dump made with --create? restore it by hand into a new database)"
            )
        if upper.startswith(b"COPY ") and line.rstrip().upper().endswith(b"FROM STDIN;"):
            self.in_copy = True

    def _track_trailer(self, text: bytes) -> None:
        """The trailer counts only when nothing but comments and ``\\unrestrict`` follow it."""
        if text in COMPLETION_TRAILERS:
            self.trailer = True
        elif text and not text.startswith((b"--", b"\\unrestrict")):
            self.trailer = False


def restore_plain(
    stream: IO[bytes],
    conninfo_scratch: str,
    *,
    gzipped: bool,
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    progress_cb: ProgressCallback | None = None,
    total_bytes: int | None = None,
    timeout_seconds: float | None = None,
) -> RestoreInfo:
    """Restore a plain SQL dump by streaming it through psql (gunzip on the fly).

    psql runs with ``ON_ERROR_STOP`` in a single transaction, so a failing dump leaves the
    scratch database empty, and every line is checked by a guard first (no meta-commands,
    no database-level statements: see :class:`_PlainGuard`).

    Args:
        stream: the dump's bytes (a local file or an object opened for reading).
        conninfo_scratch: key/value conninfo of the database to restore into.
        gzipped: the stream is gzip-compressed (``*.sql.gz``).
        total_bytes: the stream's size, for progress.

    Returns:
        The :class:`RestoreInfo`; ``trailer`` says whether pg_dump's completion trailer
        ended the dump (the caller decides: a cut dump restores without error).

    Raises:
        UnsafeTargetError: the dump holds a refused statement (nothing was committed).
        VerificationError: the stream is corrupt or truncated.
        PostgresError: psql stopped on an SQL error.
    """
    tool = find_tool("psql", bin_dir)
    argv = [str(tool), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
            f"--dbname={conninfo_scratch}", "-f", "-"]  # fmt: skip
    counter = _CountingReader(stream)
    source: IO[bytes] = gzip.GzipFile(fileobj=counter) if gzipped else counter  # type: ignore[arg-type]
    guard = _PlainGuard()
    pgoptions = " ".join(f"-c {k}={v}" for k, v in RESTORE_SESSION_SETTINGS.items())
    started = utcnow()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=tool_env(password, {"PGOPTIONS": pgoptions} if pgoptions else None),
        )
        assert proc.stdin is not None
        _feed(proc, source, guard, counter, progress_cb, total_bytes)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            returncode = proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise PostgresError(
                f"psql timed out after {timeout_seconds} s", transient=True
            ) from exc
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if returncode != 0:
        raise tool_error("psql", returncode, stderr)
    if guard.in_copy:
        raise VerificationError("plain dump ends inside COPY data: truncated")
    duration = time.perf_counter() - t0
    return RestoreInfo(
        format="plain-gzip" if gzipped else "plain",
        jobs=1,
        started_at=started,
        ended_at=utcnow(),
        duration_seconds=round(duration, 3),
        trailer=guard.trailer,
    )


def _feed(
    proc: subprocess.Popen[bytes],
    source: IO[bytes],
    guard: _PlainGuard,
    counter: _CountingReader,
    progress_cb: ProgressCallback | None,
    total_bytes: int | None,
) -> None:
    """Write the dump into psql line by line, each line checked first.

    Raises:
        UnsafeTargetError: a refused statement (psql is killed: nothing is committed).
        VerificationError: the stream is corrupt or truncated (psql is killed).
    """
    assert proc.stdin is not None
    failure: BaseException | None = None
    last_report = 0.0
    try:
        for line in source:
            guard.check(line)
            proc.stdin.write(line)
            if progress_cb is not None and total_bytes and time.monotonic() - last_report > 0.5:
                last_report = time.monotonic()
                with contextlib.suppress(Exception):
                    progress_cb(min(counter.count / total_bytes, 0.99), "restoring plain SQL")
    except BrokenPipeError:
        pass  # psql stopped on an error; the caller reads its message
    except UnsafeTargetError as exc:
        failure = exc
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        failure = VerificationError(f"plain dump is corrupt or truncated: {exc}")
    if failure is not None:
        # Kill before closing stdin: a closed stdin would let psql COMMIT what it read.
        proc.kill()
        proc.wait()
        raise failure


class _CountingReader:
    """A read-only wrapper counting the bytes read (progress of a streamed restore)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.raw.readline(size)
        self.count += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True


restore_plain_task = dr_task(restore_plain, name="backups-restore-plain", retries=0)
