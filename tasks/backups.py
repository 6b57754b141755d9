"""PostgreSQL backups with PostgreSQL's own tools: take, describe, restore, check, retain.

The only module that runs ``pg_dump``, ``pg_restore``, ``pg_basebackup``, ``pg_amcheck``
and ``psql`` (as subprocesses; never through a shell). Everything here is a plain function
with explicit arguments; the repository (``tasks/storage.py``) and the SQL session
(``tasks/postgres.py``) are composed by the flows, not imported here.

What a backup is, on disk and in the repository: a ``pg_dump -Fd`` directory plus a
``manifest.json`` (:class:`Manifest`) that lists every file with its size and SHA-256, the
per-table row counts taken in the dump's own snapshot, the server and tool versions, start
and end times and the WAL position. A backup without its manifest is incomplete.

Why the restore job count comes from the dump and not from the CPU count: ``pg_restore``
runs one table's data in one worker, so a dump whose data sits in one table gains nothing
from ``-j 2`` and measurably loses (9.1 s with ``-j 1`` vs 10.2 s with ``-j 2`` on a
pgbench scale-50 database, shared/lab/postgres.md). :func:`choose_restore_jobs` counts the
tables big enough to keep a worker busy.

Errors: a tool that cannot reach the server raises :class:`~dr.errors.PostgresError` with
``transient=True``; any other tool failure is permanent. Bad backups raise
:class:`~dr.errors.VerificationError` (checksums of downloads are verified by the
repository, ``tasks/storage.py``); unsafe requests raise
:class:`~dr.errors.UnsafeTargetError` before anything is written.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.config import Retention
from dr.errors import (
    ConfigError,
    PostgresError,
    UnsafeTargetError,
    VerificationError,
)
from dr.tasking import dr_task

__all__ = [
    "BASE_KIND",
    "DUMP_KIND",
    "FOREIGN_KIND",
    "MANIFEST_NAME",
    "VERIFIED_NAME",
    "AmcheckFailure",
    "AmcheckResult",
    "BackupEntry",
    "BaseBackupInfo",
    "DumpInfo",
    "InjectionInfo",
    "Manifest",
    "ManifestFile",
    "RestoreInfo",
    "SnapshotSession",
    "TocEntry",
    "amcheck",
    "amcheck_task",
    "base_backup",
    "base_backup_task",
    "build_manifest",
    "choose_restore_jobs",
    "conninfo_with",
    "detect_dump_format",
    "diagnose_dump_dir",
    "dump_database",
    "dump_database_task",
    "find_tool",
    "foreign_database_hint",
    "inject_bad_backup",
    "new_backup_id",
    "newest_wal_segment",
    "parse_amcheck_output",
    "parse_toc_listing",
    "pick_newest",
    "plan_retention",
    "read_manifest",
    "restore_custom",
    "restore_dump",
    "restore_dump_task",
    "restore_plain",
    "retention_reasons",
    "scratch_database_name",
    "sha256_file",
    "table_data_sizes",
    "tool_version",
    "verify_local_files",
    "wal_archive_age",
    "write_manifest",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Written next to a manifest after a green drill (the manifest itself is immutable).
VERIFIED_NAME = "verified.json"
DUMP_KIND = "pg_dump-directory"
BASE_KIND = "basebackup"
FOREIGN_KIND = "foreign"
BackupKindName = Literal["pg_dump-directory", "basebackup", "foreign"]

HASH_CHUNK_BYTES = 1024 * 1024
#: A table gets its own restore worker when its data is at least this share of the largest.
JOB_SHARE_THRESHOLD = 0.25
#: Server settings for the restore sessions (PGOPTIONS), empty by default. Measured on the
#: lab machine (pgbench scale 50, 2 cores, interleaved runs): neither a bigger
#: ``maintenance_work_mem`` (256MB) nor ``synchronous_commit=off`` restored faster than
#: the defaults, and the bigger sort memory starts more parallel index workers than there
#: are cores. Kept as a parameter for servers where it does help.
RESTORE_SESSION_SETTINGS: dict[str, str] = {}
#: PostgreSQL identifiers are at most 63 bytes (NAMEDATALEN - 1).
MAX_IDENTIFIER_BYTES = 63
SCRATCH_PREFIX = "dr_verify_"
#: Full WAL segment file names: timeline (8 hex) + log (8 hex) + segment (8 hex).
WAL_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
#: Server messages that mean "try again later" rather than "this will never work".
_TRANSIENT_MARKERS = (
    "could not connect",
    "connection refused",
    "connection reset",
    "timeout expired",
    "server closed the connection unexpectedly",
    "the database system is starting up",
    "the database system is shutting down",
    "too many clients",
    "remaining connection slots are reserved",
)
#: psql meta-commands that pg_dump itself writes into plain dumps (``\restrict`` since the
#: 2025 security releases); any other meta-command in a foreign dump is refused, because
#: ``\connect`` would leave the scratch database and ``\!`` runs a shell command.
_ALLOWED_META_COMMANDS = (b"\\restrict", b"\\unrestrict")

ProgressCallback = Callable[[float, str], None]


# --------------------------------------------------------------------------- tools


def find_tool(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate a PostgreSQL client tool.

    Args:
        name: ``pg_dump``, ``pg_restore``, ``psql``, ...
        bin_dir: the folder to use (a node's ``bin_dir``); else the newest
            ``/usr/lib/postgresql/*/bin`` holding the tool, else ``$PATH``.

    Returns:
        The tool's path.

    Raises:
        ConfigError: the tool is nowhere to be found.
    """
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if path.exists():
            return path
        raise ConfigError(f"{name} not found in {bin_dir}", [("bin_dir", f"no {name}")])

    def _major(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=_major)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"{name} not found (install PostgreSQL client tools)", [(name, "missing")])


def tool_version(tool: str | os.PathLike[str]) -> str:
    """The ``--version`` line of a tool, e.g. ``pg_dump (PostgreSQL) 15.20``."""
    proc = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip()


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


def _tool_env(password: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PGOPTIONS", None)
    if password is not None:
        env["PGPASSWORD"] = password
    if extra:
        env.update(extra)
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def _is_transient_message(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _TRANSIENT_MARKERS)


def _tool_error(tool: str, returncode: int, stderr: str) -> PostgresError:
    tail = stderr.strip()[-2000:] or "(no output)"
    return PostgresError(
        f"{tool} failed (exit {returncode}): {tail}", transient=_is_transient_message(stderr)
    )


def _run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    password: str | None = None,
    env_extra: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client tool, turning failures into PostgresError (transient when it may pass)."""
    args = [str(a) for a in argv]
    name = Path(args[0]).name
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env=_tool_env(password, env_extra),
            timeout=timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"{name} timed out after {timeout_seconds} s", transient=True) from exc
    if proc.returncode != 0:
        raise _tool_error(name, proc.returncode, proc.stderr or proc.stdout)
    return proc


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- identities


def new_backup_id(at: datetime | None = None) -> str:
    """A backup id that sorts by time: ``20250101T120000Z-1a2b3c``."""
    moment = (at or _utcnow()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


def scratch_database_name(database: str, short_id: str) -> str:
    """The isolated database a drill restores into: ``dr_verify_<db>_<shortid>``.

    The database part is reduced to ``[a-z0-9_]`` and shortened so the whole name fits
    PostgreSQL's 63-byte limit; the id part is kept whole (it is what makes it unique).
    """
    clean_id = re.sub(r"[^a-z0-9]", "", short_id.lower())
    if not clean_id:
        raise ConfigError("scratch id must contain letters or digits", [("short_id", short_id)])
    clean_db = re.sub(r"[^a-z0-9_]+", "_", database.lower()).strip("_") or "db"
    room = MAX_IDENTIFIER_BYTES - len(SCRATCH_PREFIX) - len(clean_id) - 1
    return f"{SCRATCH_PREFIX}{clean_db[: max(room, 1)]}_{clean_id}"


# --------------------------------------------------------------------------- manifest


class ManifestFile(BaseModel):
    """One file of a backup: its path relative to the backup folder, size and SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """What a backup holds and how to check it; written last, so its presence = complete.

    ``row_counts`` are taken in the same snapshot as the dump, so a restore must match
    them exactly. ``wal_lsn`` is the WAL insert position at the snapshot (logical dumps)
    or the base backup's start LSN; ``wal_stop_lsn`` the base backup's stop LSN.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    backup_id: str
    target: str
    database: str
    kind: BackupKindName
    files: list[ManifestFile]
    row_counts: dict[str, int] = Field(default_factory=dict)
    server_version: str = ""
    tool_version: str = ""
    started_at: datetime
    ended_at: datetime
    wal_lsn: str | None = None
    wal_stop_lsn: str | None = None
    timeline: int | None = None
    schema_fingerprint: str | None = None
    verified_at: datetime | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> ManifestFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _backup_files(folder: Path, exclude: Iterable[str]) -> list[Path]:
    skip = set(exclude)
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip
    )


def build_manifest(
    dump_dir: str | os.PathLike[str],
    *,
    target: str,
    database: str,
    server_version: str,
    tool_version: str,
    started_at: datetime,
    ended_at: datetime,
    wal_lsn: str | None,
    row_counts: Mapping[str, int],
    backup_id: str | None = None,
    kind: BackupKindName = DUMP_KIND,
    wal_stop_lsn: str | None = None,
    timeline: int | None = None,
    schema_fingerprint: str | None = None,
) -> Manifest:
    """Describe a finished backup folder: every file's size and SHA-256, plus provenance.

    Args:
        dump_dir: the folder written by pg_dump -Fd or pg_basebackup -Ft.
        target, database: what was backed up (a drill refuses a backup of another target).
        server_version, tool_version: ``server_version`` setting and ``pg_dump --version``.
        started_at, ended_at: when the backup ran (UTC).
        wal_lsn: WAL position at the dump's snapshot, or the base backup's start LSN.
        row_counts: ``{"schema.table": rows}`` counted in the dump's snapshot.
        backup_id: defaults to one made from ``started_at``.
        kind: ``pg_dump-directory``, ``basebackup`` or ``foreign``.

    Returns:
        The manifest (not yet written anywhere).

    Raises:
        VerificationError: the folder is missing or empty.
    """
    folder = Path(dump_dir)
    if not folder.is_dir():
        raise VerificationError(f"backup folder {folder} does not exist")
    files = []
    for path in _backup_files(folder, exclude=(MANIFEST_NAME, VERIFIED_NAME)):
        digest, size = sha256_file(path)
        files.append(
            ManifestFile(path=path.relative_to(folder).as_posix(), size=size, sha256=digest)
        )
    if not files:
        raise VerificationError(f"backup folder {folder} is empty")
    return Manifest(
        backup_id=backup_id or new_backup_id(started_at),
        target=target,
        database=database,
        kind=kind,
        files=files,
        row_counts=dict(row_counts),
        server_version=server_version,
        tool_version=tool_version,
        started_at=started_at.astimezone(UTC),
        ended_at=ended_at.astimezone(UTC),
        wal_lsn=wal_lsn,
        wal_stop_lsn=wal_stop_lsn,
        timeline=timeline,
        schema_fingerprint=schema_fingerprint,
    )


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write a manifest as JSON (atomically: a torn manifest would look complete)."""
    dest = Path(path)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, dest)
    return dest


def read_manifest(data: bytes | str | os.PathLike[str]) -> Manifest:
    """Parse a manifest from its bytes (as downloaded) or from a local path.

    Raises:
        VerificationError: not JSON, or not a manifest this version understands.
    """
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VerificationError(f"manifest is unreadable or of an unknown format: {first}") from exc


def verify_local_files(folder: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Compare a local backup folder with its manifest.

    Returns:
        Problems, one sentence each (empty when every file is present and identical).
    """
    base = Path(folder)
    problems = []
    for entry in manifest.files:
        path = base / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        digest, size = sha256_file(path)
        if size != entry.size:
            problems.append(f"{entry.path}: {size} bytes, manifest says {entry.size}")
        elif digest != entry.sha256:
            problems.append(
                f"{entry.path}: sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}…"
            )
    return problems


def diagnose_dump_dir(folder: str | os.PathLike[str]) -> list[str]:
    """Explain a failed restore: which compressed files of a dump are broken, and how.

    pg_restore reports a truncated gzip file as ``could not close data file ...: Success``;
    decompressing each ``.gz`` file names the culprit. Used after a failure only, so a good
    restore pays nothing for it.

    Returns:
        One sentence per broken file (empty when every ``.gz`` file decompresses).
    """
    problems = []
    for path in sorted(Path(folder).rglob("*.gz")):
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(HASH_CHUNK_BYTES):
                    decomp.decompress(chunk)
                    if decomp.eof:
                        break
        except zlib.error as exc:
            problems.append(f"{path.name}: corrupt gzip data ({exc})")
            continue
        except OSError as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        if not decomp.eof:
            problems.append(f"{path.name}: truncated gzip stream (ends before its end marker)")
    return problems


# --------------------------------------------------------------------------- snapshot

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
            env=_tool_env(password),
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
        return _tool_error("psql", self._proc.returncode or 1, stderr)

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


# --------------------------------------------------------------------------- dump


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
    if out.exists() and any(out.iterdir()):
        raise UnsafeTargetError(f"dump folder {out} is not empty; refusing to write into it")
    if out.exists():
        out.rmdir()  # pg_dump -Fd creates the folder itself
    out.parent.mkdir(parents=True, exist_ok=True)
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
    started = _utcnow()
    t0 = time.perf_counter()
    try:
        _run_tool(argv, password=password, timeout_seconds=timeout_seconds)
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
        ended_at=_utcnow(),
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


# --------------------------------------------------------------------------- restore


class TocEntry(BaseModel):
    """One ``TABLE DATA`` line of ``pg_restore -l``."""

    dump_id: int
    schema_name: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.table}"


_TOC_DATA_RE = re.compile(r"^(\d+); \d+ \d+ TABLE DATA (\S+) (.+) (\S+)$")
_TOC_POST_DATA = (" INDEX ", " CONSTRAINT ", " FK CONSTRAINT ", " TRIGGER ", " POLICY ")


def parse_toc_listing(text: str) -> tuple[list[TocEntry], int]:
    """Parse ``pg_restore -l`` output.

    Returns:
        The ``TABLE DATA`` entries, and how many post-data items (indexes, constraints,
        triggers, policies) follow them (for progress).
    """
    entries = []
    post_data = 0
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        match = _TOC_DATA_RE.match(line)
        if match:
            entries.append(TocEntry(dump_id=int(match[1]), schema_name=match[2], table=match[3]))
        elif any(kind in line for kind in _TOC_POST_DATA):
            post_data += 1
    return entries, post_data


def _toc(dump_path: Path, bin_dir: str | os.PathLike[str] | None) -> tuple[list[TocEntry], int]:
    proc = _run_tool([find_tool("pg_restore", bin_dir), "--list", dump_path])
    return parse_toc_listing(proc.stdout)


def table_data_sizes(
    dump_dir: str | os.PathLike[str], *, bin_dir: str | os.PathLike[str] | None = None
) -> dict[str, int]:
    """Bytes of each table's data file in a directory-format dump (``{"s.t": bytes}``).

    Compressed sizes are a fair proxy for the work a restore worker will do on them.
    """
    folder = Path(dump_dir)
    entries, _ = _toc(folder, bin_dir)
    return _data_sizes(folder, entries)


def _data_sizes(folder: Path, entries: Iterable[TocEntry]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for entry in entries:
        size = sum(p.stat().st_size for p in folder.glob(f"{entry.dump_id}.dat*"))
        sizes[entry.qualified] = sizes.get(entry.qualified, 0) + size
    return sizes


def choose_restore_jobs(
    table_sizes: Mapping[str, int],
    cores: int | None = None,
    *,
    threshold: float = JOB_SHARE_THRESHOLD,
) -> int:
    """How many ``pg_restore`` workers are worth starting for these tables.

    One worker per table whose data is at least ``threshold`` of the largest table's,
    capped by the cores: a worker holds one table at a time, so tables much smaller than
    the largest finish early and their workers only add contention (measured: ``-j 2``
    slower than ``-j 1`` when one table holds the data).

    Args:
        table_sizes: data bytes per table (:func:`table_data_sizes`).
        cores: CPU cores available; default ``os.cpu_count()``.
        threshold: share of the largest table's size that earns a worker.

    Returns:
        A job count >= 1.
    """
    cap = max(1, cores if cores is not None else (os.cpu_count() or 1))
    sizes = [s for s in table_sizes.values() if s > 0]
    if not sizes:
        return 1
    largest = max(sizes)
    big = sum(1 for s in sizes if s >= threshold * largest)
    return max(1, min(cap, big))


class RestoreInfo(BaseModel):
    """What a restore did and how long it took."""

    format: str
    jobs: int
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    tables: int = 0


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
    entries, post_items = _toc(path, bin_dir)
    by_id = {e.dump_id: e.qualified for e in entries}
    if path.is_dir():
        fmt = "directory"
        sizes = _data_sizes(path, entries)
    else:
        fmt = "custom"
        sizes = {e.qualified: 1 for e in entries}
    n_jobs = jobs if jobs is not None else (choose_restore_jobs(sizes) if fmt == "directory" else 1)
    n_jobs = max(1, n_jobs)
    settings = RESTORE_SESSION_SETTINGS if session_settings is None else session_settings
    pgoptions = " ".join(f"-c {k}={v}" for k, v in settings.items())
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
    started = _utcnow()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_tool_env(password, {"PGOPTIONS": pgoptions} if pgoptions else None),
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
    duration = time.perf_counter() - t0
    if returncode != 0:
        errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
        raise _tool_error("pg_restore", returncode, "".join(errors[-12:] or lines[-12:]))
    if progress_cb is not None:
        with contextlib.suppress(Exception):
            progress_cb(1.0, "restore finished")
    log.info("restored %s (%s, -j %s) in %.1f s", path.name, fmt, n_jobs, duration)
    return RestoreInfo(
        format=fmt,
        jobs=n_jobs,
        started_at=started,
        ended_at=_utcnow(),
        duration_seconds=round(duration, 3),
        tables=len(entries),
    )


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

    def check(self, line: bytes) -> None:
        self.line_no += 1
        if self.in_copy:
            if line.rstrip(b"\r\n") == b"\\.":
                self.in_copy = False
            return
        stripped = line.lstrip()
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

    Raises:
        UnsafeTargetError: the dump holds a refused statement (nothing was committed).
        VerificationError: the stream is corrupt or truncated.
        PostgresError: psql stopped on an SQL error.
    """
    tool = find_tool("psql", bin_dir)
    argv = [
        str(tool),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={conninfo_scratch}",
        "-f",
        "-",
    ]
    counter = _CountingReader(stream)
    source: IO[bytes] = gzip.GzipFile(fileobj=counter) if gzipped else counter  # type: ignore[arg-type]
    guard = _PlainGuard()
    pgoptions = " ".join(f"-c {k}={v}" for k, v in RESTORE_SESSION_SETTINGS.items())
    started = _utcnow()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_tool_env(password, {"PGOPTIONS": pgoptions} if pgoptions else None),
        )
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
            pass  # psql stopped on an error; its message is read below
        except UnsafeTargetError as exc:
            failure = exc
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            failure = VerificationError(f"plain dump is corrupt or truncated: {exc}")
        if failure is not None:
            # Kill before closing stdin: a closed stdin would let psql COMMIT what it read.
            proc.kill()
            proc.wait()
            raise failure
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
        raise _tool_error("psql", returncode, stderr)
    if guard.in_copy:
        raise VerificationError("plain dump ends inside COPY data: truncated")
    duration = time.perf_counter() - t0
    return RestoreInfo(
        format="plain-gzip" if gzipped else "plain",
        jobs=1,
        started_at=started,
        ended_at=_utcnow(),
        duration_seconds=round(duration, 3),
    )


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


# --------------------------------------------------------------------------- amcheck


class AmcheckFailure(BaseModel):
    """One corruption report of pg_amcheck."""

    relation_kind: str  # "heap table" or "btree index"
    relation: str  # db.schema.name
    location: str = ""  # "block 3, offset 1" when given
    message: str


class AmcheckResult(BaseModel):
    ok: bool
    failures: list[AmcheckFailure] = Field(default_factory=list)
    duration_seconds: float = 0.0
    heapallindexed: bool = False

    def summary(self, limit: int = 3) -> str:
        if self.ok:
            return "no corruption found"
        parts = [f"{f.relation_kind} {f.relation}: {f.message}" for f in self.failures[:limit]]
        more = len(self.failures) - limit
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_AMCHECK_HEADER_RE = re.compile(
    r'^(heap table|btree index|relation|index) "([^"]+)"(?:, (.+?))?:\s*$'
)


def parse_amcheck_output(text: str) -> list[AmcheckFailure]:
    """Parse pg_amcheck's report: a header per relation, indented messages below it."""
    failures: list[AmcheckFailure] = []
    current: tuple[str, str, str] | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        match = _AMCHECK_HEADER_RE.match(raw.strip()) if not raw.startswith((" ", "\t")) else None
        if match:
            current = (match[1], match[2], match[3] or "")
            continue
        if current is not None and raw.startswith((" ", "\t")):
            kind, rel, where = current
            failures.append(
                AmcheckFailure(
                    relation_kind=kind, relation=rel, location=where, message=raw.strip()
                )
            )
    return failures


def amcheck(
    conninfo: str,
    *,
    heapallindexed: bool = False,
    jobs: int = 1,
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    timeout_seconds: float | None = None,
) -> AmcheckResult:
    """Check heap tables and B-tree indexes of one database with ``pg_amcheck``.

    ``--install-missing`` creates the amcheck extension when absent (so run it on a
    scratch copy, not on a database you do not want changed).

    Args:
        conninfo: key/value conninfo including ``dbname``.
        heapallindexed: also check every heap tuple has its index entries (slower).
        jobs: parallel connections.

    Returns:
        An :class:`AmcheckResult`; ``ok`` is False with the failures parsed when pg_amcheck
        reports corruption (exit 2).

    Raises:
        PostgresError: pg_amcheck could not run at all.
    """
    argv = [
        str(find_tool("pg_amcheck", bin_dir)),
        "--install-missing",
        f"--jobs={max(1, jobs)}",
    ]
    if heapallindexed:
        argv.append("--heapallindexed")
    argv.append(conninfo)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_tool_env(password),
            timeout=timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(
            f"pg_amcheck timed out after {timeout_seconds} s", transient=True
        ) from exc
    duration = round(time.perf_counter() - t0, 3)
    if proc.returncode == 0:
        return AmcheckResult(ok=True, duration_seconds=duration, heapallindexed=heapallindexed)
    failures = parse_amcheck_output(proc.stdout)
    if proc.returncode == 2 or failures:
        if not failures:
            failures = [
                AmcheckFailure(
                    relation_kind="database",
                    relation="?",
                    message=(proc.stdout or proc.stderr).strip()[:500] or "corruption reported",
                )
            ]
        return AmcheckResult(
            ok=False, failures=failures, duration_seconds=duration, heapallindexed=heapallindexed
        )
    raise _tool_error("pg_amcheck", proc.returncode, proc.stderr or proc.stdout)


# --------------------------------------------------------------------------- base backup


class BaseBackupInfo(BaseModel):
    """What one ``pg_basebackup -Ft`` run produced."""

    out_dir: str
    files: list[str]
    wal_method: str
    start_lsn: str | None
    stop_lsn: str | None
    timeline: int | None
    started_at: datetime
    ended_at: datetime
    duration_seconds: float
    tool_version: str
    bytes: int


def base_backup(
    conninfo: str,
    out_dir: str | os.PathLike[str],
    *,
    wal_method: Literal["fetch", "stream"] = "fetch",
    label: str = "dr-pipelines base backup",
    password: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    timeout_seconds: float | None = None,
) -> BaseBackupInfo:
    """Take a physical base backup as tar files with PostgreSQL's ``backup_manifest``.

    ``-X fetch`` puts the WAL needed for consistency inside ``base.tar`` (one file to
    restore from); ``-X stream`` writes it to ``pg_wal.tar`` as it is generated. The
    start and stop LSN are read from ``backup_manifest``'s WAL ranges. With data checksums
    on, pg_basebackup verifies every page and fails on a bad one.

    Raises:
        UnsafeTargetError: ``out_dir`` exists and is not empty.
        PostgresError: pg_basebackup failed (checksum errors included).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UnsafeTargetError(f"base backup folder {out} is not empty; refusing to write")
    out.mkdir(parents=True, exist_ok=True)
    tool = find_tool("pg_basebackup", bin_dir)
    argv = [
        str(tool),
        f"--pgdata={out}",
        "--format=tar",
        f"--wal-method={wal_method}",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        f"--label={label}",
        "--no-password",  # never prompt: a password comes through PGPASSWORD
        f"--dbname={conninfo}",
    ]
    started = _utcnow()
    t0 = time.perf_counter()
    try:
        _run_tool(argv, password=password, timeout_seconds=timeout_seconds)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    duration = time.perf_counter() - t0
    start_lsn = stop_lsn = None
    timeline = None
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        ranges = json.loads((out / "backup_manifest").read_text())["WAL-Ranges"]
        start_lsn = ranges[0]["Start-LSN"]
        stop_lsn = ranges[-1]["End-LSN"]
        timeline = int(ranges[-1]["Timeline"])
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    info = BaseBackupInfo(
        out_dir=str(out),
        files=files,
        wal_method=wal_method,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        timeline=timeline,
        started_at=started,
        ended_at=_utcnow(),
        duration_seconds=round(duration, 3),
        tool_version=tool_version(tool),
        bytes=sum((out / f).stat().st_size for f in files),
    )
    log.info(
        "base backup: %s bytes in %.1f s, WAL %s..%s", info.bytes, duration, start_lsn, stop_lsn
    )
    return info


# --------------------------------------------------------------------------- retention


class BackupEntry(BaseModel):
    """One backup as retention sees it."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    started_at: datetime
    complete: bool = True
    verified: bool = False


#: Incomplete backups younger than this, or newer than the newest complete one, are kept:
#: they may still be uploading or be resumed.
INCOMPLETE_GRACE = timedelta(hours=24)


def _order(entries: Iterable[BackupEntry]) -> list[BackupEntry]:
    return sorted(entries, key=lambda b: (b.started_at, b.backup_id), reverse=True)


def retention_reasons(
    backups: Sequence[BackupEntry],
    policy: Retention,
    now: datetime,
    *,
    incomplete_grace: timedelta = INCOMPLETE_GRACE,
) -> dict[str, list[str]]:
    """Why each backup is kept: ``{backup_id: [reasons]}``; no reasons means delete.

    Grandfather-father-son by buckets that hold backups (as borg and restic count them):
    the newest backup of each of the newest ``hourly`` hours, ``daily`` UTC days and
    ``weekly`` ISO weeks. When backups stop for a while, older ones are therefore not
    aged out by the clock. Always kept, whatever the policy: the newest complete backup
    and the newest verified backup (a drill proved it restores).
    """
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in backups}
    complete = _order(b for b in backups if b.complete)
    if complete:
        reasons[complete[0].backup_id].append("newest complete")
    verified = [b for b in complete if b.verified]
    if verified:
        reasons[verified[0].backup_id].append("newest verified")

    def bucket_rule(label: str, count: int, key: Callable[[datetime], tuple[int, ...]]) -> None:
        seen: set[tuple[int, ...]] = set()
        for b in complete:
            if len(seen) >= count:
                break
            k = key(b.started_at.astimezone(UTC))
            if k not in seen:
                seen.add(k)
                reasons[b.backup_id].append(label)

    bucket_rule("hourly", policy.hourly, lambda t: (t.year, t.month, t.day, t.hour))
    bucket_rule("daily", policy.daily, lambda t: (t.year, t.month, t.day))
    bucket_rule("weekly", policy.weekly, lambda t: tuple(t.isocalendar()[:2]))

    newest_complete = complete[0].started_at if complete else None
    for b in backups:
        if b.started_at > now:
            reasons[b.backup_id].append("dated in the future")
        if b.complete:
            continue
        if newest_complete is None or b.started_at >= newest_complete:
            reasons[b.backup_id].append("incomplete, newer than the newest complete")
        elif now - b.started_at < incomplete_grace:
            reasons[b.backup_id].append("incomplete, within grace period")
    return reasons


def plan_retention(
    backups: Sequence[BackupEntry],
    policy: Retention,
    now: datetime,
    *,
    incomplete_grace: timedelta = INCOMPLETE_GRACE,
) -> tuple[list[BackupEntry], list[BackupEntry]]:
    """Split backups into (keep, delete) by a GFS policy; a pure function.

    Never deletes the newest verified backup nor the newest complete one, whatever the
    policy says; incomplete backups are deleted only when older than the newest complete
    backup and than ``incomplete_grace``.

    Args:
        backups: every backup of one database (complete or not), in any order.
        policy: hourly / daily / weekly bucket counts.
        now: the current time (UTC), for the grace period.

    Returns:
        ``(keep, delete)``, each newest first; together they hold every input once.
    """
    reasons = retention_reasons(backups, policy, now, incomplete_grace=incomplete_grace)
    ordered = _order(backups)
    keep = [b for b in ordered if reasons[b.backup_id]]
    delete = [b for b in ordered if not reasons[b.backup_id]]
    return keep, delete


# --------------------------------------------------------------------------- WAL archive


def newest_wal_segment(source: Any) -> tuple[str, datetime] | None:
    """The newest archived WAL segment: ``(name, modified_at)``, or None for an empty archive.

    Args:
        source: a repository (anything with ``list()``, as ``tasks.storage`` gives) or its
            listing; each item has a ``key`` (or ``name``/``path``) and an ``mtime`` (or
            ``last_modified``). Only full segments count (not ``.partial``, ``.history``
            or ``.backup`` files).
    """
    objects = source.list() if hasattr(source, "list") else source
    newest: tuple[str, datetime] | None = None
    for obj in objects:
        name = str(_attr(obj, "key", "name", "path")).rsplit("/", 1)[-1]
        if not WAL_SEGMENT_RE.match(name):
            continue
        mtime = _attr(obj, "mtime", "last_modified", "modified")
        if isinstance(mtime, (int, float)):
            mtime = datetime.fromtimestamp(mtime, UTC)
        if newest is None or mtime > newest[1]:
            newest = (name, mtime)
    return newest


def wal_archive_age(source: Any, *, now: datetime | None = None) -> float | None:
    """Seconds since the newest WAL segment was archived (None: nothing archived yet).

    Compared with the RPO objective: point-in-time recovery can reach no further than
    the newest archived segment.

    Args:
        source: a WAL archive repository or its listing (see :func:`newest_wal_segment`).
        now: the current time; default now (UTC).
    """
    newest = newest_wal_segment(source)
    if newest is None:
        return None
    moment = (now or _utcnow()).astimezone(UTC)
    return max(0.0, (moment - newest[1]).total_seconds())


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    raise TypeError(f"listing item {obj!r} has none of {', '.join(names)}")


def pick_newest(objects: Iterable[Any]) -> Any | None:
    """The newest item of a listing by modification time (None for an empty listing)."""
    best = None
    best_time: datetime | None = None
    for obj in objects:
        mtime = _attr(obj, "last_modified", "mtime", "modified")
        if isinstance(mtime, (int, float)):
            mtime = datetime.fromtimestamp(mtime, UTC)
        if best_time is None or mtime > best_time:
            best, best_time = obj, mtime
    return best


def foreign_database_hint(name: str) -> str | None:
    """Guess a database name from a foreign dump's file name (``app_backup_2025...``)."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    match = re.match(r"^([A-Za-z][A-Za-z0-9]*?)(?:_(?:db_)?backup)?_\d", stem)
    return match[1] if match else None


# --------------------------------------------------------------------------- injection


class InjectionInfo(BaseModel):
    """Where a drill corrupted its copy of a backup, and how."""

    kind: Literal["flip", "truncate"]
    file: str
    offset: int
    original_size: int
    new_size: int
    resealed: bool


def _victim(folder: Path) -> Path:
    """The file to corrupt: the largest table-data file, else the largest non-manifest file."""
    files = [
        p
        for p in _backup_files(folder, exclude=(MANIFEST_NAME, VERIFIED_NAME))
        if p.stat().st_size > 0
    ]
    data = [p for p in files if re.match(r"^\d+\.dat", p.name)]
    pool = data or [p for p in files if p.name not in ("toc.dat", "backup_manifest")] or files
    if not pool:
        raise VerificationError(f"{folder} holds no file to corrupt")
    return max(pool, key=lambda p: (p.stat().st_size, p.name))


def inject_bad_backup(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    kind: Literal["flip", "truncate"] = "flip",
    *,
    reseal_manifest: bool = False,
) -> InjectionInfo:
    """Make a corrupted COPY of a backup folder for a drill; the source is never written.

    ``flip`` inverts one byte in the middle of the largest data file; ``truncate`` cuts it
    to half its size. With ``reseal_manifest`` the copy's manifest is rewritten to match
    the damaged bytes, as if the dump had been bad when it was written: the checksum gate
    then passes and the restore or the integrity checks must catch it.

    Args:
        src_dir: the real backup folder (read only).
        dst_dir: a folder that does not exist or is empty, outside ``src_dir``.

    Returns:
        An :class:`InjectionInfo` naming the damaged file.

    Raises:
        UnsafeTargetError: ``dst_dir`` is ``src_dir``, inside it, holds it, or is not empty.
    """
    src = Path(src_dir).resolve()
    dst = Path(dst_dir).resolve()
    if not src.is_dir():
        raise VerificationError(f"backup folder {src} does not exist")
    if dst == src or src in dst.parents or dst in src.parents:
        raise UnsafeTargetError(f"corrupted copy {dst} would overlap the real backup {src}")
    if dst.exists() and any(dst.iterdir()):
        raise UnsafeTargetError(f"{dst} is not empty; refusing to corrupt into it")
    if dst.exists():
        dst.rmdir()
    shutil.copytree(src, dst)
    victim = _victim(dst)
    size = victim.stat().st_size
    if kind == "flip":
        offset = size // 2
        with open(victim, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        new_size = size
    elif kind == "truncate":
        offset = new_size = size // 2
        with open(victim, "r+b") as fh:
            fh.truncate(new_size)
    else:
        raise ConfigError(f"unknown injection kind {kind!r}", [("kind", "flip or truncate")])
    rel = victim.relative_to(dst).as_posix()
    manifest_path = dst / MANIFEST_NAME
    if reseal_manifest and manifest_path.exists():
        manifest = read_manifest(manifest_path)
        digest, new_len = sha256_file(victim)
        manifest.files = [
            ManifestFile(path=f.path, size=new_len, sha256=digest) if f.path == rel else f
            for f in manifest.files
        ]
        write_manifest(manifest, manifest_path)
    log.info("injected %s into copy %s at byte %s of %s", kind, dst, offset, rel)
    return InjectionInfo(
        kind=kind,
        file=rel,
        offset=offset,
        original_size=size,
        new_size=new_size,
        resealed=reseal_manifest and manifest_path.exists(),
    )


# --------------------------------------------------------------------------- tasks

dump_database_task = dr_task(dump_database, name="pg-dump")
restore_dump_task = dr_task(restore_dump, name="pg-restore", retries=0)
amcheck_task = dr_task(amcheck, name="pg-amcheck")
base_backup_task = dr_task(base_backup, name="pg-basebackup")
