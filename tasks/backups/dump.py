"""Take a logical backup: ``pg_dump -Fd`` with row counts read in the dump's own snapshot."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from dr.clock import utcnow
from dr.errors import ConfigError, PostgresError, UnsafeTargetError
from dr.localexec import find_tool, run_tool, tool_env, tool_error, tool_version
from dr.tasking import dr_task

log = logging.getLogger(__name__)


def conninfo_with(conninfo: str, **params: str | int | None) -> str:
    """Append ``key=value`` pairs to a libpq key/value conninfo (later keys win).

    Values are quoted as libpq wants (single quotes, backslash escapes), so database names
    with spaces or quotes stay one value.
    """
    if "://" in conninfo:
        raise ConfigError(
            "a key=value conninfo is required here, not a URI", [("conninfo", "URI given")]
        )
    parts = [conninfo.strip()] if conninfo.strip() else []
    for key, value in params.items():
        if value is None:
            continue
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


_FIELD_SEP = "\x1f"
_END_MARK = "__dr_backups_end__"
#: Rows of every user table (leaf tables, as tasks.postgres.table_row_counts names them),
#: counted inside the current transaction, so inside the exported snapshot.
_ROW_COUNTS_SQL = (
    "SELECT n.nspname || '.' || c.relname, "
    "(pg_catalog.xpath('/row/c/text()', pg_catalog.query_to_xml(pg_catalog.format("
    "'SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
    "ORDER BY 1"
)


class SnapshotSession:
    """A psql session holding a repeatable-read transaction whose snapshot is exported.

    Why: ``pg_dump --snapshot`` dumps exactly what this transaction sees, so the row counts
    counted here are the dump's own; counts taken a moment apart would differ on a busy
    database (the lab's heartbeat writer inserts every 50 ms) and fail every drill.
    Kept open until the dump has finished; use it as a context manager.

    Args:
        conninfo: key/value conninfo including ``dbname``.
        password: for roles that need one.
        timeout_seconds: bound for each statement's answer.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        password: str | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        timeout_seconds: float = 600,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        argv = [
            str(find_tool("psql", bin_dir)),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            _FIELD_SEP,
            f"--dbname={conninfo}",
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=tool_env(password),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self.snapshot_id = self.query("SELECT pg_catalog.pg_export_snapshot()")[0][0]
            row = self.query(
                "SELECT pg_catalog.current_setting('server_version'), "
                "(CASE WHEN pg_catalog.pg_is_in_recovery() "
                "THEN pg_catalog.pg_last_wal_replay_lsn() "
                "ELSE pg_catalog.pg_current_wal_lsn() END)::text"
            )[0]
        except Exception:
            self.close()
            raise
        self.server_version, self.wal_lsn = row[0], row[1]

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def query(self, sql_text: str) -> list[list[str]]:
        """Run one statement in the open transaction; rows as lists of text fields.

        Raises:
            PostgresError: the statement failed (the session is then closed).
        """
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(f"{sql_text};\n\\echo {_END_MARK}\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._failure() from None
        rows: list[list[str]] = []
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise PostgresError(
                    f"psql snapshot session: no answer in {self.timeout_seconds} s", transient=True
                ) from None
            if line is None:
                raise self._failure()
            if line == _END_MARK:
                return rows
            if line:
                rows.append(line.split(_FIELD_SEP))

    def row_counts(self) -> dict[str, int]:
        """Exact rows of every user table, as of the exported snapshot."""
        return {name: int(count) for name, count in self.query(_ROW_COUNTS_SQL)}

    def _failure(self) -> PostgresError:
        self.close()
        stderr = self._proc.stderr.read() if self._proc.stderr else ""
        return tool_error("psql", self._proc.returncode or 1, stderr)

    def close(self) -> None:
        """End the transaction (it only read) and the session."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self._proc.stdin is not None
                self._proc.stdin.write("ROLLBACK;\n\\q\n")
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> SnapshotSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DumpInfo(BaseModel):
    """What one ``pg_dump -Fd`` run produced."""

    database: str
    dump_dir: str
    jobs: int
    snapshot: str | None
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    tool_version: str
    bytes: int
    files: int


def dump_database(
    conninfo: str,
    dbname: str,
    out_dir: str | os.PathLike[str],
    *,
    jobs: int | None = None,
    snapshot: str | None = None,
    compress_level: int | None = None,
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    timeout_seconds: float | None = None,
) -> DumpInfo:
    """Dump one database in directory format with parallel jobs (``pg_dump -Fd -j N``).

    Args:
        conninfo: key/value conninfo of the server (``dbname`` is set from ``dbname``).
        dbname: the database to dump.
        out_dir: a folder that does not exist yet or is empty.
        jobs: parallel dump workers; default: the CPU count.
        snapshot: an exported snapshot (``pg_export_snapshot()``) to dump, so row counts
            taken in the same transaction match the dump exactly.
        compress_level: gzip level 0-9; default pg_dump's.
        password: for roles that need one (passed in the environment, never argv).
        bin_dir: where pg_dump lives (its major must be >= the server's).

    Returns:
        A :class:`DumpInfo`.

    Raises:
        UnsafeTargetError: ``out_dir`` exists and is not empty.
        PostgresError: pg_dump failed (transient when the server was unreachable).
    """
    out = Path(out_dir)
    _prepare_dump_folder(out)
    n_jobs = max(1, jobs or os.cpu_count() or 1)
    tool = find_tool("pg_dump", bin_dir)
    argv: list[str | os.PathLike[str]] = [
        tool,
        "--format=directory",
        f"--jobs={n_jobs}",
        f"--file={out}",
        f"--dbname={conninfo_with(conninfo, dbname=dbname)}",
    ]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if compress_level is not None:
        argv.append(f"--compress={int(compress_level)}")
    started = utcnow()
    t0 = time.perf_counter()
    try:
        run_tool(argv, password=password, timeout_seconds=timeout_seconds)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)  # a half-written dump is never resumable
        raise
    duration = time.perf_counter() - t0
    files = [p for p in out.rglob("*") if p.is_file()]
    info = DumpInfo(
        database=dbname,
        dump_dir=str(out),
        jobs=n_jobs,
        snapshot=snapshot,
        started_at=started,
        ended_at=utcnow(),
        duration_seconds=round(duration, 3),
        tool_version=tool_version(tool),
        bytes=sum(p.stat().st_size for p in files),
        files=len(files),
    )
    log.info(
        "dumped %s: %s files, %s bytes in %.1f s (-j %s)",
        dbname,
        info.files,
        info.bytes,
        duration,
        n_jobs,
    )
    return info


def _prepare_dump_folder(out: Path) -> None:
    """Refuse a non-empty folder; leave none (``pg_dump -Fd`` creates it itself)."""
    if out.exists() and any(out.iterdir()):
        raise UnsafeTargetError(f"dump folder {out} is not empty; refusing to write into it")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)


dump_database_task = dr_task(dump_database, name="backups-dump-database")
