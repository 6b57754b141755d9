"""Point-in-time recovery: base backup + archived WAL into a new cluster, and what goes around it.

The runbooks this replaces (seeds 000 and 003, "Point-in-Time Recovery"): find the base
backup before the target time, restore it, write ``restore_command`` and
``recovery_target_time``, start PostgreSQL and "wait for recovery to complete (check logs)".
Here each step is a plain function that refuses before it acts:

1. :func:`list_base_backups` reads the manifests of ``<target>/base/<id>/``;
   :func:`choose_base_backup` picks the newest one that ended before the recovery point, and
   refuses (:class:`~dr.errors.PreconditionError`, with the reason) a point in the future, a
   point after the damage, a point before the oldest base backup, or no base backup at all.
2. :func:`plan_wal` lists the WAL archive and computes, for the timeline history and the
   segment size, the name of every segment replay will read from the base backup's stop
   position to the one holding the recovery point; a gap is reported with the first missing
   segment's name *before* anything is downloaded or started.
3. :func:`restore_base_backup` puts the backup into a new data directory, every byte
   checked against the manifest's SHA-256. A ``file://`` repository is read once: the tar
   is streamed into ``tar -x`` while hashed (a mismatch removes what was extracted). Any
   other repository goes through :func:`download_base_backup` first: the repository's
   checksummed, resumable downloads (a transient failure mid-stream is resumed with a
   ranged read; a file already downloaded and verified is not fetched again, so a retried
   task resumes where it stopped), then :func:`extract_base_backup`. ``pg_verifybackup``
   then checks the files against PostgreSQL's own ``backup_manifest`` (presence and sizes by
   default, since the archive's checksum already proved the content; ``full`` re-reads all).
4. :func:`start_recovery` writes the recovery settings (``restore_command``, the target,
   ``recovery_target_inclusive = off``, ``recovery_target_action = promote``, the timeline,
   a free port, ``archive_mode = off``), creates ``recovery.signal``, starts the server and
   polls until it has left recovery. ``pg_ctl start -w`` returns once the copy is
   consistent, *before* the target is reached, hence the polling; a target beyond the
   archived WAL ends with ``FATAL: recovery ended before configured recovery target was
   reached``, which is read from the server log and raised as a PreconditionError.

``restore_command``: for a ``file://`` archive it is a plain ``cp`` from the archive folder.
For any other archive (``s3://``) the segments :func:`plan_wal` named (plus a few after
them, for a time target whose end segment is estimated) are downloaded and verified into a
local folder first (:func:`stage_wal`) and the server copies from there: the server never
holds cloud credentials, every segment is checksummed on the way, and a missing one is
known before the server starts.

Why ``archive_mode = off`` on the recovered cluster: it promotes onto a new timeline, and
archiving that timeline into the live system's archive would collide with the live
system's own next failover (one archive folder per initdb, shared/lab/postgres.md).

Also here: the checks around the recovery (``pg_checksums --check`` on a stopped copy,
:func:`make_stopped_copy`; per-relation digests of ordered rows, :func:`relation_digests`),
the evidence (:func:`dump_relations`, :func:`preserve_database_copy`), the switch back of
selected relations into the live database in ONE transaction (:func:`restore_relations`),
and :func:`find_damage`, a heuristic over ``pg_waldump`` output that finds the first large
UPDATE/DELETE (or table rewrite) after a position, with its commit time and LSN.

This module runs the server tools (``pg_ctl``, ``pg_controldata``, ``pg_verifybackup``,
``pg_checksums``, ``pg_waldump``, ``pg_basebackup``) as the server's OS user, and talks SQL
through psycopg (:func:`connect` is its one factory), like ``tasks/measure.py``. It imports
no other module of ``tasks/``: the repository (``tasks/storage.py``) is passed in as an
object with ``list``/``head``/``get_to_file``/``open_read``/``url_for``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field

from dr.changes import Change
from dr.errors import (
    ChecksumMismatch,
    ConfigError,
    PostgresError,
    PreconditionError,
    StorageError,
    UnsafeTargetError,
    VerificationError,
    redact,
)
from dr.tasking import dr_task

__all__ = [
    "BLOCK_SIZE",
    "ArchivedFile",
    "BadBlock",
    "BaseBackup",
    "ChecksumReport",
    "DamageCandidate",
    "DrillCandidate",
    "RecoveredCluster",
    "RecoveryTarget",
    "RelationDigest",
    "RelationRestoreResult",
    "WalPlan",
    "archive_window_start",
    "check_checksums",
    "check_checksums_task",
    "choose_base_backup",
    "cluster_is_running",
    "connect",
    "control_data",
    "damage_heap_page",
    "database_oid",
    "download_base_backup",
    "download_base_backup_task",
    "drill_candidates",
    "drill_statement",
    "dump_relations",
    "dump_relations_task",
    "ensure_schemas",
    "extension_installed",
    "extract_base_backup",
    "find_damage",
    "find_damage_task",
    "first_heartbeat_after",
    "format_lsn",
    "heartbeat_rows_after",
    "heartbeat_state",
    "history_file_name",
    "list_base_backups",
    "list_base_backups_task",
    "make_stopped_copy",
    "make_stopped_copy_task",
    "parse_checksums_output",
    "parse_history",
    "parse_lsn",
    "parse_segment_name",
    "parse_waldump_line",
    "plan_wal",
    "plan_wal_task",
    "preserve_database_copy",
    "relation_digests",
    "relation_digests_task",
    "relation_filepaths",
    "remove_cluster",
    "render_recovery_settings",
    "resolve_filenodes",
    "restore_base_backup",
    "restore_base_backup_task",
    "restore_command_for",
    "restore_relations",
    "restore_relations_task",
    "run_drill_statement",
    "segment_name",
    "segment_number",
    "server_position",
    "stage_wal",
    "stage_wal_task",
    "start_cluster",
    "start_recovery",
    "start_recovery_task",
    "stop_cluster",
    "switch_wal_and_wait",
    "switch_wal_and_wait_task",
    "system_identifier",
]

log = logging.getLogger(__name__)

SYSTEM = "postgres"
#: PostgreSQL's page size (``BLCKSZ``); every build this project meets uses the default.
BLOCK_SIZE = 8192
#: Full WAL segment file names: timeline (8 hex) + log (8 hex) + segment (8 hex).
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
#: WAL segment sizes PostgreSQL allows (initdb --wal-segsize: powers of two, 1 MiB..1 GiB).
VALID_SEGMENT_SIZES = frozenset(2**n for n in range(20, 31))
#: Names of base backup files (``pg_basebackup -Ft``) this module restores.
BASE_TAR = "base.tar"
WAL_TAR = "pg_wal.tar"
PG_MANIFEST = "backup_manifest"
DR_MANIFEST = "manifest.json"
#: For a time target the end segment is estimated from archive times; when the WAL must be
#: staged locally (``s3://``), this many segments after it are staged too, when present.
EXTRA_STAGED_SEGMENTS = 8
DEFAULT_RECOVERY_TIMEOUT_SECONDS = 900.0
#: Read size when streaming a tar file from a local repository into ``tar -x``.
STREAM_CHUNK_BYTES = 1024 * 1024
#: How much archived WAL the damage finder reads when no base backup says where to start.
DEFAULT_SCAN_WINDOW_BYTES = 1024 * 1024 * 1024
DEFAULT_SWITCH_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.1
#: Failures of the recovered server that mean "this recovery can never reach its target".
_FATAL_MARKERS = (
    "recovery ended before configured recovery target was reached",
    "requested recovery stop point is before consistent recovery point",
    "could not locate required checkpoint record",
    "is not a valid data directory",
    "WAL file is from different database system",
    "requested timeline",
)
#: Settings a recovered copy must not inherit from the source (replication, archiving,
#: collector): it is a new, independent server until someone repoints an application to it.
_OVERRIDES: dict[str, str] = {
    "archive_mode": "off",
    "archive_command": "''",
    "hot_standby": "on",
    "primary_conninfo": "''",
    "primary_slot_name": "''",
    "synchronous_standby_names": "''",
    "logging_collector": "off",
    "listen_addresses": "'127.0.0.1'",
}
#: Session settings under which row digests are computed, so two servers print alike.
_DIGEST_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "extra_float_digits": "1"}
#: Heap records that change rows (pg_waldump ``desc:`` verbs), counted by :func:`find_damage`.
_ROW_CHANGES = frozenset({"UPDATE", "HOT_UPDATE", "DELETE"})


def _utcnow() -> datetime:
    return datetime.now(UTC)


VerifyMode = Literal["full", "sizes", "off"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Repository(Protocol):
    """What this module needs of a backup repository (``tasks.storage.Repository``)."""

    url: str

    def list(self, prefix: str = "") -> list[Any]: ...

    def head(self, key: str) -> Any: ...

    def get_to_file(
        self, key: str, local_path: str | Path, *, expected_sha256: str | None = None
    ) -> str: ...

    def open_read(self, key: str) -> IO[bytes]: ...

    def url_for(self, key: str) -> str: ...


# --------------------------------------------------------------------------- LSN & segments


def parse_lsn(text: str) -> int:
    """``0/3000148`` → integer position.

    Raises:
        ConfigError: not an LSN.
    """
    match = LSN_RE.match(text.strip())
    if not match:
        raise ConfigError(f"not a WAL position (LSN): {text!r}", [("lsn", text)])
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(value: int) -> str:
    """Integer position → PostgreSQL's text form (``0/3000148``)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_number(lsn: int | str, segment_size: int) -> int:
    """The segment number holding a position (``XLByteToSeg``)."""
    value = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return value // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """The file name of segment ``segno`` on ``timeline`` (``XLogFileName``)."""
    per = _segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, segment_size: int) -> tuple[int, int]:
    """``000000010000000000000003`` → ``(timeline, segno)``.

    Raises:
        ConfigError: not a full segment file name.
    """
    match = SEGMENT_RE.match(name)
    if not match:
        raise ConfigError(f"not a WAL segment file name: {name!r}", [("segment", name)])
    per = _segments_per_id(segment_size)
    return int(match[1], 16), int(match[2], 16) * per + int(match[3], 16)


def history_file_name(timeline: int) -> str:
    """``00000002.history``."""
    return f"{timeline:08X}.history"


@dataclass(frozen=True)
class TimelineSpan:
    """One timeline of a history: where it begins, and where it ended (None: it goes on)."""

    timeline: int
    begin_lsn: int
    end_lsn: int | None


def parse_history(text: str, timeline: int) -> list[TimelineSpan]:
    """Parse ``<timeline>.history`` into the spans from timeline 1 (or the first) to it.

    Each line of a history file is ``parent_tli <TAB> switch_lsn <TAB> reason``: the parent
    timeline ended at ``switch_lsn`` and the next one began there.

    Args:
        text: the history file's content.
        timeline: the timeline the file belongs to (the last span, still going on).

    Returns:
        The spans in order, the last one being ``timeline`` with ``end_lsn=None``.

    Raises:
        VerificationError: a line is malformed or timelines do not increase.
    """
    spans: list[TimelineSpan] = []
    begin = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            tli = int(parts[0])
            switch = parse_lsn(parts[1])
        except (IndexError, ValueError, ConfigError) as exc:
            raise VerificationError(f"malformed timeline history line: {line!r}") from exc
        if spans and tli <= spans[-1].timeline:
            raise VerificationError(f"timeline history is not increasing at {line!r}")
        spans.append(TimelineSpan(tli, begin, switch))
        begin = switch
    if spans and timeline <= spans[-1].timeline:
        raise VerificationError(
            f"history of timeline {timeline} ends with timeline {spans[-1].timeline}"
        )
    spans.append(TimelineSpan(timeline, begin, None))
    return spans


def _timeline_for_segment(spans: Sequence[TimelineSpan], segno: int, segment_size: int) -> int:
    """Which timeline's file replay reads for ``segno`` (the newest that began at or before it).

    Why: at a switch, the segment holding the switch point exists on both timelines; the
    new timeline's copy holds the old WAL up to the switch and the new WAL after it, and
    recovery reads that one (``XLogFileReadAnyTLI``).
    """
    chosen = spans[0].timeline
    for span in spans:
        if segment_number(span.begin_lsn, segment_size) <= segno:
            chosen = span.timeline
    return chosen


# --------------------------------------------------------------------------- base backups


class BaseBackup(_Model):
    """One complete base backup in the repository, as its ``manifest.json`` describes it."""

    backup_id: str
    prefix: str = Field(description="Repository key prefix, ending with '/'.")
    location: str
    target: str
    started_at: datetime
    ended_at: datetime
    start_lsn: str
    stop_lsn: str
    timeline: int
    server_version: str = ""
    files: dict[str, str] = Field(description="file name -> SHA-256")
    sizes: dict[str, int] = Field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _read_small(repo: Repository, key: str) -> bytes:
    with repo.open_read(key) as stream:
        return stream.read()


def list_base_backups(repo: Repository, target_name: str, folder: str = "base") -> list[BaseBackup]:
    """Every complete base backup of a target, newest first.

    A backup is complete when its ``manifest.json`` is there (it is written last); one of
    another target or kind, or without start/stop positions, is skipped with a warning.

    Args:
        repo: the target's backup repository.
        target_name: the target (backups live under ``<target>/<folder>/<id>/``).
        folder: the base-backup folder name.

    Returns:
        The backups, newest ``ended_at`` first.

    Raises:
        StorageError: the repository failed.
    """
    root = f"{target_name}/{folder}/"
    manifests = [o.key for o in repo.list(root) if o.key.endswith("/" + DR_MANIFEST)]
    out: list[BaseBackup] = []
    for key in manifests:
        prefix = key[: -len(DR_MANIFEST)]
        try:
            data = json.loads(_read_small(repo, key))
        except (ValueError, StorageError) as exc:
            log.warning("skipping %s: unreadable manifest (%s)", repo.url_for(key), exc)
            continue
        if data.get("kind") != "basebackup" or data.get("target") != target_name:
            log.warning("skipping %s: not a base backup of %s", repo.url_for(key), target_name)
            continue
        if not data.get("wal_lsn") or not data.get("wal_stop_lsn") or not data.get("timeline"):
            log.warning("skipping %s: no start/stop WAL position recorded", repo.url_for(key))
            continue
        files = {f["path"]: f["sha256"] for f in data.get("files", [])}
        if BASE_TAR not in files:
            log.warning("skipping %s: no %s", repo.url_for(key), BASE_TAR)
            continue
        out.append(
            BaseBackup(
                backup_id=str(data["backup_id"]),
                prefix=prefix,
                location=repo.url_for(prefix.rstrip("/")),
                target=target_name,
                started_at=datetime.fromisoformat(str(data["started_at"])),
                ended_at=datetime.fromisoformat(str(data["ended_at"])),
                start_lsn=str(data["wal_lsn"]),
                stop_lsn=str(data["wal_stop_lsn"]),
                timeline=int(data["timeline"]),
                server_version=str(data.get("server_version") or ""),
                files=files,
                sizes={f["path"]: int(f["size"]) for f in data.get("files", [])},
            )
        )
    out.sort(key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)), reverse=True)
    log.info("base backups of %s in %s: %d complete", target_name, repo.url, len(out))
    return out


class RecoveryTarget(_Model):
    """Where recovery stops: a time or a WAL position, never both.

    ``inclusive=False`` (the default here) stops *just before* the target: with a damage
    commit's LSN as target, everything committed before the damage comes back, the damage
    does not.
    """

    time: datetime | None = None
    lsn: str | None = None
    inclusive: bool = False
    timeline: int | None = Field(None, description="recovery_target_timeline; None: latest")

    def model_post_init(self, _context: Any) -> None:
        if (self.time is None) == (self.lsn is None):
            raise ConfigError(
                "give exactly one of a recovery time or a recovery LSN",
                [("recovery_target", "time and lsn")],
            )
        if self.time is not None and self.time.tzinfo is None:
            raise ConfigError(
                "the recovery time needs a time zone (e.g. 2025-01-01T12:00:00+00:00)",
                [("recovery_time", self.time.isoformat())],
            )
        if self.lsn is not None:
            parse_lsn(self.lsn)

    def describe(self) -> str:
        where = f"time {self.time.astimezone(UTC).isoformat()}" if self.time else f"LSN {self.lsn}"
        return f"{'up to and including' if self.inclusive else 'just before'} {where}"


def choose_base_backup(
    backups: Sequence[BaseBackup],
    target: RecoveryTarget,
    *,
    damage_at: datetime | None = None,
    damage_lsn: str | None = None,
    now: datetime | None = None,
    current_lsn: str | None = None,
) -> BaseBackup:
    """The newest base backup that ended before the recovery point; refuse unsafe points.

    Args:
        backups: from :func:`list_base_backups`.
        target: the recovery point.
        damage_at: when the damage began (commit time of the damaging transaction), if known.
        damage_lsn: its commit LSN, if known.
        now: the present (default: the clock); a time target after it is refused.
        current_lsn: the live server's WAL position; an LSN target after it is refused.

    Returns:
        The chosen backup.

    Raises:
        PreconditionError: the point is in the future, after the damage, before the oldest
            base backup, or there is no base backup; the message says which and why.
    """
    moment = (now or _utcnow()).astimezone(UTC)
    if target.time is not None:
        when = target.time.astimezone(UTC)
        if when > moment:
            raise PreconditionError(
                f"recovery point {when.isoformat()} is in the future (now {moment.isoformat()}):"
                " nothing can be recovered to a moment that has not happened"
            )
        if damage_at is not None and when > damage_at.astimezone(UTC):
            raise PreconditionError(
                f"recovery point {when.isoformat()} is after the damage began "
                f"({damage_at.astimezone(UTC).isoformat()}): recovering there would bring the "
                "damage back; choose a point before it"
            )
    else:
        assert target.lsn is not None
        lsn = parse_lsn(target.lsn)
        if current_lsn is not None and lsn > parse_lsn(current_lsn):
            raise PreconditionError(
                f"recovery LSN {target.lsn} is in the future: the server is at {current_lsn}"
            )
        if damage_lsn is not None and lsn > parse_lsn(damage_lsn):
            raise PreconditionError(
                f"recovery LSN {target.lsn} is after the damage (commit at {damage_lsn}): "
                "recovering there would bring the damage back; choose a position before it"
            )
    if not backups:
        raise PreconditionError(
            "no base backup in the repository: point-in-time recovery needs one taken before "
            "the recovery point (take one: dr backup --kind base)"
        )

    def usable(b: BaseBackup) -> bool:
        if target.time is not None:
            return b.ended_at.astimezone(UTC) <= target.time.astimezone(UTC)
        return parse_lsn(b.stop_lsn) <= parse_lsn(target.lsn or "0/0")

    candidates = [b for b in backups if usable(b)]
    if not candidates:
        oldest = min(backups, key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)))
        raise PreconditionError(
            f"no base backup before the recovery point ({target.describe()}): the oldest, "
            f"{oldest.backup_id}, ended at {oldest.ended_at.astimezone(UTC).isoformat()} "
            f"(WAL {oldest.stop_lsn}); the point is before the oldest base backup"
        )
    chosen = max(candidates, key=lambda b: (b.ended_at, parse_lsn(b.stop_lsn)))
    log.info(
        "base backup for recovery %s: %s (ended %s, WAL %s..%s, timeline %s)",
        target.describe(),
        chosen.backup_id,
        chosen.ended_at.isoformat(),
        chosen.start_lsn,
        chosen.stop_lsn,
        chosen.timeline,
    )
    return chosen


# --------------------------------------------------------------------------- WAL archive


@dataclass(frozen=True)
class ArchivedFile:
    """A segment file in the archive."""

    name: str
    size: int
    mtime: datetime


class WalPlan(_Model):
    """Which archived WAL a recovery will replay, proven present before it starts."""

    archive: str
    segment_size: int
    target_timeline: int
    timelines: list[int]
    history_files: list[str]
    in_backup: list[str] = Field(description="Segments the base backup carries itself.")
    needed: list[str] = Field(description="Segments replay reads from the archive, in order.")
    end_segment: str
    end_reason: str
    staged_extra: list[str] = Field(
        default_factory=list, description="Present segments after the end, worth staging."
    )
    unarchived_from: str | None = Field(
        None, description="Dry-run plans only: the first segment of the point not archived yet."
    )
    later_gap: str | None = Field(
        None,
        description="First missing segment after the end, if any: harmless for an LSN target; "
        "for a time target it matters only if no commit follows the target before it.",
    )


def _archive_files(repo: Repository) -> tuple[dict[str, ArchivedFile], set[str]]:
    segments: dict[str, ArchivedFile] = {}
    histories: set[str] = set()
    for obj in repo.list(""):
        name = obj.key.rsplit("/", 1)[-1]
        if SEGMENT_RE.match(name):
            segments[name] = ArchivedFile(name, int(obj.size), obj.mtime.astimezone(UTC))
        elif HISTORY_RE.match(name):
            histories.add(name)
    return segments, histories


def _segment_size_of(segments: Mapping[str, ArchivedFile], given: int | None) -> int:
    if given is not None:
        if given not in VALID_SEGMENT_SIZES:
            raise ConfigError(f"invalid WAL segment size {given}", [("segment_size", str(given))])
        return given
    sizes: dict[int, int] = {}
    for f in segments.values():
        sizes[f.size] = sizes.get(f.size, 0) + 1
    valid = {s: n for s, n in sizes.items() if s in VALID_SEGMENT_SIZES}
    if not valid:
        raise PreconditionError(
            "cannot tell the WAL segment size: the archive holds no complete segment"
        )
    return max(valid, key=lambda s: valid[s])


def plan_wal(
    repo: Repository,
    backup: BaseBackup,
    target: RecoveryTarget,
    *,
    segment_size: int | None = None,
    allow_unarchived_end: bool = False,
) -> WalPlan:
    """Prove that the archive holds every segment from the base backup to the recovery point.

    The expected names come from the segment size (read from the archived segments' size
    unless given, and checked against the restored ``pg_control`` later), the target
    timeline (the newest ``*.history`` in the archive, as ``recovery_target_timeline =
    latest`` would pick, unless the target names one) and its history. The end is the
    segment holding the target LSN; for a time target, the first segment archived at or
    after the target time (a segment is archived once it is complete, so it holds WAL up
    to at least its archive time). That estimate can end a segment early when archiving
    lagged; replay would then fail at the missing segment and :func:`start_recovery` reports
    it from the server log.

    Args:
        repo: the WAL archive.
        backup: the chosen base backup.
        target: the recovery point.
        segment_size: the WAL segment size in bytes, if known.
        allow_unarchived_end: a plan for a dry run: when the WAL holding the point is not
            archived yet (a gap is still refused), return the plan with ``unarchived_from``
            set instead of raising.

    Returns:
        The :class:`WalPlan`.

    Raises:
        PreconditionError: a segment is missing (the first missing one is named); the target
            is beyond the archived WAL; the backup's timeline does not lead to the target
            timeline; the archive is empty.
        StorageError: the archive cannot be listed.
    """
    segments, histories = _archive_files(repo)
    if not segments:
        raise PreconditionError(f"the WAL archive {repo.url} holds no segment: nothing to replay")
    size = _segment_size_of(segments, segment_size)
    newest_tli = max(
        [backup.timeline] + [int(HISTORY_RE.match(h)[1], 16) for h in histories]  # type: ignore[index]
    )
    tli = target.timeline or newest_tli
    if tli < backup.timeline:
        raise PreconditionError(
            f"target timeline {tli} is older than the base backup's timeline {backup.timeline}"
        )
    spans = [TimelineSpan(tli, 0, None)]
    history_needed: list[str] = []
    if tli > 1:
        name = history_file_name(tli)
        if name not in histories:
            if tli != backup.timeline:
                raise PreconditionError(
                    f"the archive lacks {name}, the history of timeline {tli}: recovery "
                    f"cannot follow it from the base backup's timeline {backup.timeline}"
                )
        else:
            spans = parse_history(_read_small(repo, name).decode(), tli)
            history_needed = [
                history_file_name(s.timeline)
                for s in spans
                if s.timeline > 1 and history_file_name(s.timeline) in histories
            ]
    ancestry = {s.timeline: s for s in spans}
    start = parse_lsn(backup.start_lsn)
    stop = parse_lsn(backup.stop_lsn)
    own = ancestry.get(backup.timeline)
    if own is None:
        raise PreconditionError(
            f"base backup {backup.backup_id} is on timeline {backup.timeline}, which is not an "
            f"ancestor of timeline {tli} (history: {[s.timeline for s in spans]})"
        )
    if own.end_lsn is not None and stop > own.end_lsn:
        raise PreconditionError(
            f"base backup {backup.backup_id} ended at {backup.stop_lsn} on timeline "
            f"{backup.timeline}, after that timeline was left at {format_lsn(own.end_lsn)}: it "
            f"belongs to a branch that does not lead to timeline {tli}"
        )
    first = segment_number(start, size)
    stop_seg = segment_number(stop, size)
    target_seg = segment_number(parse_lsn(target.lsn), size) if target.lsn else None
    if target_seg is not None and target_seg < stop_seg:
        raise PreconditionError(
            f"recovery LSN {target.lsn} is before the end of base backup {backup.backup_id} "
            f"({backup.stop_lsn}): the copy is not consistent before that point"
        )
    when = target.time.astimezone(UTC) if target.time else None
    unarchived: str | None = None

    def expected(segno: int) -> str:
        return segment_name(_timeline_for_segment(spans, segno, size), segno, size)

    in_backup = [expected(s) for s in range(first, stop_seg)]
    needed: list[str] = []
    segno = stop_seg
    end_reason = ""
    newest_segno = max(
        (
            parse_segment_name(n, size)[1]
            for n in segments
            if parse_segment_name(n, size)[0] in ancestry
        ),
        default=-1,
    )
    while True:
        name = expected(segno)
        found = segments.get(name)
        if found is None:
            later = [
                n
                for n in segments
                if parse_segment_name(n, size)[1] > segno
                and n == expected(parse_segment_name(n, size)[1])
            ]
            if later:
                raise PreconditionError(
                    f"the WAL archive {repo.url} has a gap: segment {name} is missing (needed "
                    f"to replay from base backup {backup.backup_id} to the recovery point; "
                    f"{len(later)} later segment(s) exist, first {min(later)}); nothing was "
                    "restored"
                )
            newest = expected(newest_segno) if newest_segno >= 0 else "none"
            if allow_unarchived_end:
                end_reason = f"not archived yet from {name} on (newest archived: {newest})"
                unarchived = name
                break
            raise PreconditionError(
                f"recovery point ({target.describe()}) is beyond the archived WAL: segment "
                f"{name} is not in {repo.url} yet (newest on this timeline: {newest}); wait for "
                "archiving (pg_switch_wal()) or choose an earlier point"
            )
        needed.append(name)
        if target_seg is not None and segno >= target_seg:
            end_reason = f"holds recovery LSN {target.lsn}"
            break
        if when is not None and found.mtime >= when:
            end_reason = (
                f"first segment archived after the recovery time ({found.mtime.isoformat()})"
            )
            break
        segno += 1
    extra: list[str] = []
    later_gap: str | None = None
    nxt = segno + 1
    while nxt <= newest_segno:
        name = expected(nxt)
        if name not in segments:
            later_gap = name
            break
        if len(extra) < EXTRA_STAGED_SEGMENTS:
            extra.append(name)
        nxt += 1
    if later_gap and when is not None:
        log.warning(
            "segment %s is missing after the estimated end %s: if no transaction commits "
            "between the recovery time and it, replay stops early (reported at start)",
            later_gap,
            needed[-1],
        )
    plan = WalPlan(
        archive=repo.url,
        segment_size=size,
        target_timeline=tli,
        timelines=[s.timeline for s in spans],
        history_files=history_needed,
        in_backup=in_backup,
        needed=needed,
        end_segment=needed[-1] if needed else name,
        end_reason=end_reason,
        staged_extra=extra,
        later_gap=later_gap,
        unarchived_from=unarchived,
    )
    log.info(
        "WAL plan: %d archived segment(s) up to %s on timeline(s) %s (%s)",
        len(needed),
        plan.end_segment,
        plan.timelines,
        end_reason,
    )
    return plan


def stage_wal(repo: Repository, plan: WalPlan, dest_dir: str | Path) -> dict[str, str]:
    """Download (verified) every segment and history file a recovery needs into a folder.

    Used when the archive is not a local folder: the server then restores with ``cp`` from
    here and never needs the archive's credentials. Idempotent: files already here with
    the right checksum are not downloaded again.

    Returns:
        File name → SHA-256.

    Raises:
        StorageError: the archive failed (transient errors are retried by the task).
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name in [*plan.history_files, *plan.needed, *plan.staged_extra]:
        out[name] = repo.get_to_file(name, dest / name)
    _chown_for_server(dest)
    log.info("staged %d WAL file(s) from %s into %s", len(out), repo.url, dest)
    return out


def restore_command_for(archive_url: str | None, staged_dir: str | Path | None = None) -> str:
    """The ``restore_command`` for a ``file://`` archive, or for a staged local folder.

    Raises:
        ConfigError: neither a file:// archive nor a staged folder.
    """
    if staged_dir is not None:
        folder = str(Path(staged_dir))
    elif archive_url and archive_url.startswith("file://"):
        folder = archive_url[len("file://") :].rstrip("/") or "/"
    else:
        raise ConfigError(
            f"the WAL archive {archive_url!r} is not a local folder: stage the segments first",
            [("wal_archive", str(archive_url))],
        )
    quoted = folder.replace("'", "''")
    return f"cp '{quoted}/%f' '%p'"


# --------------------------------------------------------------------------- running tools


def _server_user() -> str | None:
    """The OS user to run server tools as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def _chown_for_server(path: Path) -> None:
    """Give ``path`` (recursively) to the server user, so the server can read and write it."""
    user = _server_user()
    if user is None:
        return
    pw = pwd.getpwnam(user)
    if not path.is_dir():
        os.lchown(path, pw.pw_uid, pw.pw_gid)
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _tool(name: str, bin_dir: str | Path | None) -> str:
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if path.exists():
            return str(path)
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    raise PreconditionError(f"PostgreSQL tool {name} not found (bin_dir={bin_dir})")


def _server_argv(
    argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str] | None]:
    """The command line (and environment) that runs ``argv`` as the server's OS user.

    ``env`` goes through the process environment (``runuser`` keeps it), never the command
    line, so a password in it is not visible in ``ps``.
    """
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    args = [str(a) for a in argv]
    user = _server_user()
    run_env = {**os.environ, **base, **(env or {})}
    if user is not None:
        home = pwd.getpwnam(user).pw_dir
        args = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in base.items()]]
        args += [f"HOME={home}", *[str(a) for a in argv]]
    return args, run_env


def _run_as_server(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the server's OS user (PostgreSQL refuses root) from ``/``."""
    args, run_env = _server_argv(argv, env)
    try:
        return subprocess.run(
            args,
            cwd="/",
            env=run_env,
            text=True,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(
            f"{Path(str(argv[0])).name} timed out after {timeout} s", transient=True
        ) from exc


def _tool_failed(tool: str, proc: subprocess.CompletedProcess[str]) -> PostgresError:
    text = (proc.stderr or proc.stdout or "").strip()
    return PostgresError(f"{tool} failed ({proc.returncode}): {redact(text[-1500:])}")


def _free_port() -> int:
    """A free TCP port on 127.0.0.1, never 5432 (the machine's own PostgreSQL)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 5432:
            return port


# --------------------------------------------------------------------------- restore


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
            if _sha256_file(local) == sha:
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare_dir(path: Path) -> None:
    """Create a folder the server user may use, with traversable parents."""
    path.mkdir(parents=True, exist_ok=True)
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001 and _server_user() is not None and parent.stat().st_uid == 0:
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
    _prepare_dir(data.parent)
    data.mkdir(mode=0o700, exist_ok=True)
    _chown_for_server(data)
    _chown_for_server(src)
    tar = shutil.which("tar") or "tar"
    proc = _run_as_server([tar, "--no-same-owner", "-xf", src / BASE_TAR, "-C", data])
    if proc.returncode != 0:
        raise _tool_failed("tar", proc)
    if (src / WAL_TAR).exists():
        proc = _run_as_server([tar, "--no-same-owner", "-xf", src / WAL_TAR, "-C", data / "pg_wal"])
        if proc.returncode != 0:
            raise _tool_failed("tar", proc)
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
        _tool("pg_verifybackup", bin_dir),
        "--no-parse-wal",
        "--quiet",
        f"--manifest-path={manifest}",
    ]
    if mode == "sizes":
        argv.append("--skip-checksums")
    proc = _run_as_server([*argv, data])
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
) -> dict[str, Any]:
    """Put a base backup into a new data directory, every byte checked against its manifest.

    Two ways, chosen by where the repository is:

    - a ``file://`` repository is read once: each tar file is streamed into ``tar -x`` while
      its SHA-256 is computed, and a mismatch at the end removes the data directory (one
      read instead of copy + read; a transient read error restarts the extraction);
    - any other repository (``s3://``) is downloaded first with the repository's resumable,
      verified downloads (:func:`download_base_backup`), then untarred.

    Then ``pg_verifybackup`` checks the files against ``backup_manifest``: by default that
    every file is there with its size (``sizes``), since the archives' SHA-256 already
    proved their content; ``full`` also re-reads every file for its checksum.

    Args:
        repo: the backup repository.
        backup: from :func:`list_base_backups`.
        data_dir: the new data directory (must not exist or be empty; a half-restored one
            left by a failed attempt of this function is cleaned first).
        work_dir: scratch folder (downloads, the manifest).
        bin_dir: PostgreSQL binaries.
        verify: ``sizes``, ``full`` or ``off``.

    Returns:
        ``{"seconds", "download_seconds", "extract_seconds", "verified", "control",
        "sha256": {file: digest}, "streamed": bool}``.

    Raises:
        ChecksumMismatch: an archive did not match its manifest (nothing is left behind).
        UnsafeTargetError: ``data_dir`` holds something this function did not put there.
        VerificationError: pg_verifybackup found a difference.
        StorageError: the repository failed (transient: the task retries).
    """
    data = Path(data_dir)
    work = Path(work_dir)
    marker = data.parent / f"{data.name}.restoring"
    if marker.exists():
        shutil.rmtree(data, ignore_errors=True)
    if not str(getattr(repo, "url", "")).startswith("file://"):
        t0 = time.perf_counter()
        sha = download_base_backup(repo, backup, work / "download")
        t1 = time.perf_counter()
        extracted = extract_base_backup(work / "download", data, bin_dir=bin_dir, verify=verify)
        shutil.rmtree(work / "download", ignore_errors=True)
        return {
            **extracted,
            "seconds": round(time.perf_counter() - t0, 3),
            "download_seconds": round(t1 - t0, 3),
            "extract_seconds": extracted["seconds"],
            "sha256": sha,
            "streamed": False,
        }
    if data.exists() and any(data.iterdir()):
        raise UnsafeTargetError(f"data directory {data} is not empty; refusing to restore into it")
    others = [n for n in backup.files if n.endswith(".tar") and n not in (BASE_TAR, WAL_TAR)]
    if others:
        raise PreconditionError(
            f"base backup {backup.backup_id} has tablespace archives {others}: restoring "
            "tablespaces needs their locations mapped, which this recovery does not do"
        )
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / PG_MANIFEST
    sha: dict[str, str] = {}
    if PG_MANIFEST in backup.files:
        sha[PG_MANIFEST] = repo.get_to_file(
            backup.prefix + PG_MANIFEST, manifest, expected_sha256=backup.files[PG_MANIFEST]
        )
        _chown_for_server(work)
    _prepare_dir(data.parent)
    marker.touch()
    data.mkdir(mode=0o700, exist_ok=True)
    _chown_for_server(data)
    try:
        sha[BASE_TAR] = _stream_untar(repo, backup, BASE_TAR, data)
        if WAL_TAR in backup.files:
            sha[WAL_TAR] = _stream_untar(repo, backup, WAL_TAR, data / "pg_wal")
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        marker.unlink(missing_ok=True)
        raise
    os.chmod(data, 0o700)
    t1 = time.perf_counter()
    verified = _verify_backup(data, manifest, verify, bin_dir)
    marker.unlink(missing_ok=True)
    control = control_data(data, bin_dir=bin_dir)
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


def _stream_untar(repo: Repository, backup: BaseBackup, name: str, dest: Path) -> str:
    """Stream one tar file of the backup into ``tar -x``, hashing it; verify at the end."""
    expected = backup.files[name]
    tar = shutil.which("tar") or "tar"
    args, env = _server_argv([tar, "--no-same-owner", "-xf", "-", "-C", dest])
    digest = hashlib.sha256()
    proc = subprocess.Popen(args, cwd="/", env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with repo.open_read(backup.prefix + name) as src:
            while chunk := src.read(STREAM_CHUNK_BYTES):
                digest.update(chunk)
                proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass
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


def control_data(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> dict[str, str]:
    """``pg_controldata`` of a data directory, as a dict of its lines.

    Raises:
        PostgresError: the tool failed (not a data directory).
    """
    proc = _run_as_server([_tool("pg_controldata", bin_dir), "-D", data_dir], timeout=60)
    if proc.returncode != 0:
        raise _tool_failed("pg_controldata", proc)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def system_identifier(control: Mapping[str, str]) -> str | None:
    """The database system identifier from :func:`control_data` output."""
    return control.get("Database system identifier")


# --------------------------------------------------------------------------- recovery


class RecoveredCluster(_Model):
    """A server started from a base backup and the archive, now out of recovery."""

    data_dir: str
    port: int
    host: str = "127.0.0.1"
    socket_dir: str
    bin_dir: str | None = None
    log_file: str
    base_backup_id: str = ""
    target: RecoveryTarget
    timeline_before: int | None = None
    timeline_after: int | None = None
    started_at: datetime
    consistent_at: datetime | None = None
    promoted_at: datetime | None = None
    replay_seconds: float | None = None
    last_replayed_at: datetime | None = Field(
        None, description="Commit time of the last transaction replayed: the real recovery point."
    )
    stop_message: str = ""


def render_recovery_settings(
    target: RecoveryTarget,
    *,
    restore_command: str,
    port: int,
    socket_dir: str | Path,
    cluster_name: str = "dr-recovered",
    extra_settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings a recovery needs, as ``name -> value`` (values already quoted).

    ``extra_settings`` (already quoted values) come last, e.g. ``listen_addresses = '*'``
    when applications on other hosts will use the recovered server.

    Raises:
        ConfigError: bad target.
    """

    def q(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    settings = dict(_OVERRIDES)
    settings.update(
        {
            "port": str(int(port)),
            "unix_socket_directories": q(str(socket_dir)),
            "cluster_name": q(cluster_name),
            "restore_command": q(restore_command),
            "recovery_target_inclusive": "on" if target.inclusive else "off",
            "recovery_target_action": "'promote'",
            "recovery_target_timeline": q(str(target.timeline) if target.timeline else "latest"),
        }
    )
    if target.time is not None:
        settings["recovery_target_time"] = q(target.time.astimezone(UTC).isoformat(sep=" "))
    else:
        settings["recovery_target_lsn"] = q(str(target.lsn))
    settings.update(extra_settings or {})
    return settings


def _write_recovery_config(data_dir: Path, settings: Mapping[str, str]) -> None:
    """Append the settings to ``postgresql.auto.conf`` (read last, so they win) + signal."""
    auto = data_dir / "postgresql.auto.conf"
    previous = auto.read_text() if auto.exists() else ""
    block = "".join(f"{k} = {v}\n" for k, v in settings.items())
    auto.write_text(previous + "\n# point-in-time recovery by DR pipelines\n" + block)
    (data_dir / "standby.signal").unlink(missing_ok=True)
    (data_dir / "recovery.signal").write_text("")
    _chown_for_server(data_dir)
    os.chmod(data_dir, 0o700)


def _pg_ctl(
    action: str,
    data_dir: Path,
    *,
    bin_dir: str | Path | None,
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return _run_as_server(
        [_tool("pg_ctl", bin_dir), action, "-D", data_dir, *extra], timeout=timeout + 10
    )


def _server_log_file(data_dir: Path, *, fresh: bool = False) -> Path:
    """``<data_dir>.log`` next to the data directory, writable by the server user."""
    log_file = data_dir.parent / f"{data_dir.name}.log"
    if fresh:
        log_file.unlink(missing_ok=True)
    log_file.touch()
    _chown_for_server(log_file)
    return log_file


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def cluster_is_running(data_dir: str | Path) -> bool:
    """Tell whether a postmaster runs on ``data_dir``."""
    return _postmaster_pid(Path(data_dir)) is not None


def _fatal_in_log(log_file: Path) -> str | None:
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if any(marker in line for marker in _FATAL_MARKERS) and (
            "FATAL" in line or "PANIC" in line
        ):
            return line.strip()
    return None


def _stop_message(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    found = [
        ln.split("LOG:", 1)[-1].strip()
        for ln in lines
        if "recovery stopping" in ln or "last completed transaction" in ln
    ]
    return "; ".join(found)


def connect(conninfo: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """Open a connection; translate failures (transient when the server may come back).

    Raises:
        PostgresError: cannot connect.
    """
    try:
        return psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        transient = not re.search(r"authentication|does not exist|no pg_hba", text, re.I)
        raise PostgresError(redact(f"cannot connect: {text}"), transient=transient) from exc


def _local_conninfo(
    port: int, dbname: str = "postgres", user: str = "postgres", password: str | None = None
) -> str:
    params: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "dbname": dbname,
        "user": user,
        "connect_timeout": 2,
        "application_name": "dr-pipelines-recovery",
    }
    if password:
        params["password"] = password
    return make_conninfo(**params)


def start_recovery(
    data_dir: str | Path,
    target: RecoveryTarget,
    *,
    restore_command: str,
    bin_dir: str | Path | None = None,
    port: int | None = None,
    user: str = "postgres",
    password: str | None = None,
    timeout_seconds: float = DEFAULT_RECOVERY_TIMEOUT_SECONDS,
    base_backup_id: str = "",
    cluster_name: str = "dr-recovered",
    extra_settings: Mapping[str, str] | None = None,
) -> RecoveredCluster:
    """Configure recovery on a restored data directory, start it, wait until promoted.

    Args:
        data_dir: from :func:`extract_base_backup` (not running).
        target: where to stop.
        restore_command: from :func:`restore_command_for`.
        bin_dir: PostgreSQL binaries.
        port: TCP port on 127.0.0.1 (default: a free one).
        user / password: to poll ``pg_is_in_recovery()`` (the source's roles are copied).
        timeout_seconds: longest replay allowed.
        base_backup_id: recorded in the result.
        cluster_name: shown in process titles.
        extra_settings: more settings (quoted values), e.g. ``listen_addresses``.

    Returns:
        The :class:`RecoveredCluster`, running and writable.

    Raises:
        PreconditionError: the server stopped because the target cannot be reached (beyond
            the archived WAL, before the consistency point, a missing segment); the server
            log line is quoted.
        PostgresError: it did not start, or did not finish within the timeout (the server
            is then stopped).
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        raise UnsafeTargetError(f"{data} is already running; refusing to reconfigure it")
    port = port or _free_port()
    socket_dir = data.parent / f"{data.name}.sock"
    socket_dir.mkdir(exist_ok=True)
    _chown_for_server(socket_dir)
    log_file = _server_log_file(data, fresh=True)
    settings = render_recovery_settings(
        target,
        restore_command=restore_command,
        port=port,
        socket_dir=socket_dir,
        cluster_name=cluster_name,
        extra_settings=extra_settings,
    )
    _write_recovery_config(data, settings)
    before = control_data(data, bin_dir=bin_dir)
    started = _utcnow()
    t0 = time.perf_counter()
    proc = _pg_ctl(
        "start",
        data,
        bin_dir=bin_dir,
        extra=["-w", "-t", str(int(timeout_seconds)), "-l", str(log_file)],
        timeout=timeout_seconds,
    )
    if proc.returncode != 0:
        fatal = _fatal_in_log(log_file)
        if fatal:
            raise PreconditionError(f"recovery stopped: {fatal} (log {log_file})")
        raise PostgresError(
            f"the recovered server did not start: {(proc.stderr or proc.stdout).strip()[-500:]}"
            f" (log {log_file})"
        )
    consistent_at = _utcnow()
    conninfo = _local_conninfo(port, user=user, password=password)
    deadline = time.monotonic() + timeout_seconds
    promoted_at: datetime | None = None
    last_error = ""
    while time.monotonic() < deadline:
        if not cluster_is_running(data):
            fatal = _fatal_in_log(log_file)
            raise PreconditionError(
                f"recovery stopped: {fatal or 'the server exited during recovery'} (log {log_file})"
            )
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                in_recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
                if in_recovery:
                    state = conn.execute(
                        "SELECT pg_catalog.pg_get_wal_replay_pause_state()"
                    ).fetchone()[0]  # type: ignore[index]
                    if state == "paused":
                        raise PreconditionError(
                            "recovery paused at its target instead of promoting "
                            "(recovery_target_action was overridden?)"
                        )
                else:
                    promoted_at = _utcnow()
                    break
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        time.sleep(POLL_SECONDS)
    if promoted_at is None:
        _pg_ctl("stop", data, bin_dir=bin_dir, extra=["-m", "fast", "-w"])
        raise PostgresError(
            f"recovery did not finish within {timeout_seconds:.0f} s ({last_error}); "
            f"the server was stopped (log {log_file})",
            transient=False,
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_last_xact_replay_timestamp(), "
            "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())"
        ).fetchone()
    assert row is not None
    result = RecoveredCluster(
        data_dir=str(data),
        port=port,
        socket_dir=str(socket_dir),
        bin_dir=str(bin_dir) if bin_dir else None,
        log_file=str(log_file),
        base_backup_id=base_backup_id,
        target=target,
        timeline_before=_int_or_none(before.get("Latest checkpoint's TimeLineID")),
        timeline_after=_int_or_none(row[1]),
        started_at=started,
        consistent_at=consistent_at,
        promoted_at=promoted_at,
        replay_seconds=round(time.perf_counter() - t0, 3),
        last_replayed_at=row[0],
        stop_message=_stop_message(log_file),
    )
    log.info(
        "recovered %s on port %s in %.1f s (%s); last replayed commit %s",
        data,
        port,
        result.replay_seconds,
        target.describe(),
        result.last_replayed_at,
    )
    return result


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def stop_cluster(
    data_dir: str | Path, *, bin_dir: str | Path | None = None, mode: str = "fast"
) -> bool:
    """Stop a server started by this module (no-op when it is not running).

    Returns:
        True when a running server was stopped.
    """
    data = Path(data_dir)
    if not cluster_is_running(data):
        return False
    proc = _pg_ctl("stop", data, bin_dir=bin_dir, extra=["-m", mode, "-w", "-t", "60"])
    if proc.returncode != 0 and cluster_is_running(data):
        raise _tool_failed("pg_ctl stop", proc)
    log.info("stopped the server on %s (%s)", data, mode)
    return True


def start_cluster(
    data_dir: str | Path, *, bin_dir: str | Path | None = None, timeout_seconds: float = 120
) -> bool:
    """Start a stopped server on ``data_dir`` (its settings unchanged); no-op when running.

    Returns:
        True when it was started.
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        return False
    log_file = _server_log_file(data)
    proc = _pg_ctl(
        "start",
        data,
        bin_dir=bin_dir,
        extra=["-w", "-t", str(int(timeout_seconds)), "-l", str(log_file)],
        timeout=timeout_seconds,
    )
    if proc.returncode != 0:
        raise _tool_failed("pg_ctl start", proc)
    return True


def remove_cluster(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> bool:
    """Stop (immediately) and delete a server folder this module created.

    Refuses a folder without the ``recovery.signal``-era marker written by
    :func:`start_recovery` or :func:`make_stopped_copy`, so it can never remove a server it
    did not make.

    Returns:
        True when something was removed.

    Raises:
        UnsafeTargetError: the folder was not made here.
    """
    data = Path(data_dir)
    if not data.exists():
        return False
    auto = data / "postgresql.auto.conf"
    marker = auto.exists() and "by DR pipelines" in auto.read_text(errors="replace")
    if not marker:
        raise UnsafeTargetError(f"refusing to remove {data}: not a copy made by DR pipelines")
    with contextlib.suppress(PostgresError):
        stop_cluster(data, bin_dir=bin_dir, mode="immediate")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(data.parent / f"{data.name}.sock", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (data.parent / f"{data.name}.log").unlink()
    log.info("removed server folder %s", data)
    return True


# --------------------------------------------------------------------------- checksums, copies


class BadBlock(_Model):
    """One page whose checksum does not match (as ``pg_checksums --check`` reports it)."""

    path: str
    relpath: str = Field(description="Relative to the data directory, e.g. base/16384/16397.")
    block: int
    detail: str = ""


class ChecksumReport(_Model):
    """The answer of ``pg_checksums --check`` on a stopped data directory."""

    data_dir: str
    ok: bool
    files_scanned: int | None = None
    blocks_scanned: int | None = None
    bad_checksums: int = 0
    bad_blocks: list[BadBlock] = Field(default_factory=list)
    seconds: float = 0.0

    def locators(self) -> list[str]:
        """Relation file locators (``base/<db oid>/<relfilenode>``) holding bad pages."""
        out = []
        for b in self.bad_blocks:
            loc = re.sub(r"\.\d+$", "", b.relpath)
            if loc not in out:
                out.append(loc)
        return out


_BAD_BLOCK_RE = re.compile(r'checksum verification failed in file "([^"]+)", block (\d+):?\s*(.*)$')


def parse_checksums_output(data_dir: str, stdout: str, stderr: str) -> ChecksumReport:
    """Parse ``pg_checksums --check`` output (summary on stdout, failures on stderr)."""

    def number(label: str) -> int | None:
        match = re.search(rf"^{label}:\s*(\d+)", stdout, re.M)
        return int(match[1]) if match else None

    prefix = str(Path(data_dir)).rstrip("/") + "/"
    bad = []
    for line in stderr.splitlines():
        match = _BAD_BLOCK_RE.search(line)
        if match:
            path = match[1]
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            bad.append(BadBlock(path=path, relpath=rel, block=int(match[2]), detail=match[3]))
    count = number("Bad checksums") or len(bad)
    return ChecksumReport(
        data_dir=data_dir,
        ok=count == 0 and not bad,
        files_scanned=number("Files scanned"),
        blocks_scanned=number("Blocks scanned"),
        bad_checksums=count,
        bad_blocks=bad,
    )


def check_checksums(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> ChecksumReport:
    """Verify every data page's checksum with ``pg_checksums --check`` (server stopped).

    Why a stopped copy: pg_checksums refuses a running cluster, and reading pages through a
    live server (``ignore_checksum_failure``) is unsafe (shared/lab/postgres.md).

    Raises:
        UnsafeTargetError: the server on ``data_dir`` is running.
        PostgresError: the tool could not check (checksums disabled, not shut down cleanly).
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        raise UnsafeTargetError(f"{data} is running: pg_checksums needs a stopped cluster")
    t0 = time.perf_counter()
    proc = _run_as_server([_tool("pg_checksums", bin_dir), "--check", "-D", data])
    report = parse_checksums_output(str(data), proc.stdout or "", proc.stderr or "")
    report.seconds = round(time.perf_counter() - t0, 3)
    if proc.returncode != 0 and report.ok:
        raise _tool_failed("pg_checksums", proc)
    log.info(
        "pg_checksums %s: %s (%s blocks, %d bad)",
        data,
        "ok" if report.ok else "FAILED",
        report.blocks_scanned,
        report.bad_checksums,
    )
    return report


def make_stopped_copy(
    conninfo: str,
    dest_dir: str | Path,
    *,
    bin_dir: str | Path | None = None,
    password: str | None = None,
    timeout_seconds: float = 600,
) -> dict[str, Any]:
    """A cleanly stopped physical copy of a running server, to check or to damage in a drill.

    ``pg_basebackup -Fp -X stream`` (without its own checksum verification: finding bad
    pages is the next step's job), then the copy is started once on a free port with
    archiving off (crash recovery to its consistent point) and stopped cleanly, so
    ``pg_checksums`` accepts it. Nothing is written to the source.

    Returns:
        ``{"data_dir", "seconds", "system_identifier"}``.

    Raises:
        UnsafeTargetError: ``dest_dir`` is not empty.
        PostgresError: the copy or its start failed.
    """
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise UnsafeTargetError(f"{dest} is not empty; refusing to copy into it")
    _prepare_dir(dest.parent)
    dest.mkdir(mode=0o700, exist_ok=True)
    _chown_for_server(dest)
    t0 = time.perf_counter()
    env = {"PGPASSWORD": password} if password else None
    proc = _run_as_server(
        [
            _tool("pg_basebackup", bin_dir),
            "-D",
            dest,
            "-Fp",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-verify-checksums",
            "--no-password",
            f"--dbname={conninfo}",
        ],
        timeout=timeout_seconds,
        env=env,
    )
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise _tool_failed("pg_basebackup", proc)
    port = _free_port()
    socket_dir = dest.parent / f"{dest.name}.sock"
    socket_dir.mkdir(exist_ok=True)
    _chown_for_server(socket_dir)
    settings = dict(_OVERRIDES)
    settings.update(
        {
            "port": str(port),
            "unix_socket_directories": f"'{socket_dir}'",
            "cluster_name": "'dr-copy'",
            "restore_command": "''",
        }
    )
    auto = dest / "postgresql.auto.conf"
    previous = auto.read_text() if auto.exists() else ""
    auto.write_text(
        previous
        + "\n# stopped copy by DR pipelines\n"
        + "".join(f"{k} = {v}\n" for k, v in settings.items())
    )
    (dest / "standby.signal").unlink(missing_ok=True)
    _chown_for_server(dest)
    log_file = _server_log_file(dest, fresh=True)
    started = _pg_ctl(
        "start", dest, bin_dir=bin_dir, extra=["-w", "-t", "120", "-l", str(log_file)]
    )
    if started.returncode != 0:
        raise _tool_failed("pg_ctl start (copy)", started)
    stopped = _pg_ctl("stop", dest, bin_dir=bin_dir, extra=["-m", "fast", "-w", "-t", "120"])
    if stopped.returncode != 0:
        raise _tool_failed("pg_ctl stop (copy)", stopped)
    control = control_data(dest, bin_dir=bin_dir)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("stopped copy of %s in %s (%.1f s)", redact(conninfo), dest, seconds)
    return {
        "data_dir": str(dest),
        "seconds": seconds,
        "system_identifier": system_identifier(control),
    }


def damage_heap_page(
    data_dir: str | Path, relpath: str, *, block: int | None = None, count: int = 16
) -> dict[str, Any]:
    """Drill only: flip bytes in one heap page of a STOPPED COPY, as bit rot would.

    Refuses a running server, and a folder that is not a copy made by
    :func:`make_stopped_copy`: the live cluster's files are never touched.

    Args:
        data_dir: the stopped copy.
        relpath: relation file relative to it (``base/16384/16397``).
        block: page number in that file (default: the middle page).
        count: bytes to invert, from the middle of the page.

    Returns:
        ``{"path", "block", "offset", "count", "sha256_before", "sha256_after"}``.

    Raises:
        UnsafeTargetError: the server runs, or the folder is not a stopped copy.
        PreconditionError: the relation file is empty or the block is beyond it.
    """
    data = Path(data_dir)
    auto = data / "postgresql.auto.conf"
    if not auto.exists() or "stopped copy by DR pipelines" not in auto.read_text(errors="replace"):
        raise UnsafeTargetError(f"refusing to damage {data}: not a stopped copy made for a drill")
    if cluster_is_running(data):
        raise UnsafeTargetError(f"refusing to damage {data}: its server is running")
    path = data / relpath
    size = path.stat().st_size
    pages = size // BLOCK_SIZE
    if pages == 0:
        raise PreconditionError(f"{path} holds no page to damage")
    page = pages // 2 if block is None else block
    if not 0 <= page < pages:
        raise PreconditionError(f"block {page} is beyond {path} ({pages} pages)")
    offset = page * BLOCK_SIZE + BLOCK_SIZE // 2
    before = _sha256_file(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in original))
        fh.flush()
        os.fsync(fh.fileno())
    after = _sha256_file(path)
    log.warning("drill: inverted %d byte(s) of %s at block %d (a stopped copy)", count, path, page)
    return {
        "path": str(path),
        "block": page,
        "offset": offset,
        "count": count,
        "sha256_before": before,
        "sha256_after": after,
    }


# --------------------------------------------------------------------------- SQL helpers


@contextlib.contextmanager
def _session(conninfo: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(conninfo, autocommit=autocommit)
    try:
        yield conn
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sqlstate = getattr(exc, "sqlstate", None) or ""
        transient = sqlstate.startswith(("08", "40", "57P", "53300"))
        raise PostgresError(redact(text), transient=transient) from exc
    finally:
        conn.close()


def server_position(conninfo: str) -> dict[str, Any]:
    """The server's clock, WAL position, timeline and system identifier, in one snapshot.

    Returns:
        ``{"at": datetime, "lsn": str, "timeline": int, "system_identifier": str,
        "in_recovery": bool}``.

    Raises:
        PostgresError: unreachable.
    """
    with _session(conninfo) as conn:
        row = conn.execute(
            "SELECT pg_catalog.clock_timestamp(), "
            "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
            "ELSE pg_catalog.pg_current_wal_lsn() END, "
            "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()), "
            "(SELECT system_identifier FROM pg_catalog.pg_control_system()), "
            "pg_catalog.pg_is_in_recovery()"
        ).fetchone()
    assert row is not None
    return {
        "at": row[0],
        "lsn": str(row[1]),
        "timeline": int(row[2]),
        "system_identifier": str(row[3]),
        "in_recovery": bool(row[4]),
    }


def switch_wal_and_wait(
    conninfo: str, *, timeout_seconds: float = DEFAULT_SWITCH_WAIT_SECONDS
) -> dict[str, Any]:
    """Close the current WAL segment and wait until the archiver has archived it.

    Why: a recovery point in the last minute sits in a segment that is not archived yet
    (``archive_timeout``); switching makes everything up to now replayable from the archive.

    Returns:
        ``{"lsn": switch position, "segment": name, "seconds": waited}``.

    Raises:
        PostgresError: the server is unreachable, or the archiver did not archive the
            segment in time (``pg_stat_archiver`` shows its last failure).
    """
    t0 = time.perf_counter()
    with _session(conninfo) as conn:
        row = conn.execute(
            "SELECT lsn, pg_catalog.pg_walfile_name(lsn) FROM "
            "(SELECT pg_catalog.pg_switch_wal() AS lsn) s"
        ).fetchone()
        assert row is not None
        lsn, segment = str(row[0]), str(row[1])
        deadline = time.monotonic() + timeout_seconds
        while True:
            arch = conn.execute(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time "
                "FROM pg_catalog.pg_stat_archiver"
            ).fetchone()
            assert arch is not None
            last = arch[0] or ""
            if last and SEGMENT_RE.match(last) and last[8:] >= segment[8:]:
                break
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"the archiver did not archive {segment} within {timeout_seconds:.0f} s "
                    f"(last archived {last or 'none'}, last failed {arch[1]} at {arch[2]})",
                    transient=True,
                )
            time.sleep(POLL_SECONDS)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("switched WAL at %s; %s archived after %.2f s", lsn, segment, seconds)
    return {"lsn": lsn, "segment": segment, "seconds": seconds}


def _split_relation(name: str) -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table:
        raise ConfigError(
            f"relation {name!r} must be schema-qualified (schema.table)", [("relations", name)]
        )
    return schema, table


class RelationDigest(_Model):
    """A table's content as a number and a hash: rows and the MD5 of its sorted row hashes."""

    relation: str
    rows: int
    digest: str


def _digest_query(schema: str, table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT count(*), coalesce(pg_catalog.md5(pg_catalog.string_agg(h, '' ORDER BY h)), '') "
        "FROM (SELECT pg_catalog.md5(t::text) AS h FROM {} AS t) AS s"
    ).format(sql.Identifier(schema, table))


def _apply_digest_settings(conn: psycopg.Connection[Any]) -> None:
    for name, value in _DIGEST_SETTINGS.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", [name, value])


def relation_digests(conninfo: str, relations: Sequence[str]) -> dict[str, RelationDigest]:
    """Rows and an order-independent digest of every row, per table, in one snapshot.

    Why this and not row counts: a bad ``UPDATE`` keeps the count; only the content shows
    it. Rows are rendered as text under fixed settings (UTC, ISO dates), hashed, sorted
    and hashed again, so the same rows give the same digest on any server.

    Raises:
        ConfigError: a relation is not schema-qualified.
        PostgresError: unreachable, or a table is missing.
    """
    out: dict[str, RelationDigest] = {}
    with _session(conninfo, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        _apply_digest_settings(conn)
        for rel in relations:
            schema, table = _split_relation(rel)
            row = conn.execute(_digest_query(schema, table)).fetchone()
            assert row is not None
            out[rel] = RelationDigest(relation=rel, rows=int(row[0]), digest=str(row[1]))
        conn.rollback()
    return out


def relation_filepaths(conninfo: str, relations: Sequence[str]) -> dict[str, str]:
    """``pg_relation_filepath`` of each table (``base/<db oid>/<relfilenode>``).

    Raises:
        PostgresError: unreachable or unknown table.
    """
    out: dict[str, str] = {}
    with _session(conninfo) as conn:
        for rel in relations:
            schema, table = _split_relation(rel)
            row = conn.execute(
                "SELECT pg_catalog.pg_relation_filepath(c.oid) FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                [schema, table],
            ).fetchone()
            if row is None or row[0] is None:
                raise PostgresError(f"table {rel} not found")
            out[rel] = str(row[0])
    return out


def resolve_filenodes(
    conninfo_for: Callable[[str], str], maintenance_conninfo: str, locators: Iterable[str]
) -> dict[str, str | None]:
    """Name the relations behind file locators (``base/<db oid>/<relfilenode>``).

    Args:
        conninfo_for: database name → conninfo (to ask each database in turn).
        maintenance_conninfo: any database on the server (to map database OIDs to names).
        locators: from :class:`ChecksumReport` or :func:`find_damage`.

    Returns:
        Locator → ``database:schema.table`` (None when no current relation has that file:
        dropped, or rewritten since).

    Raises:
        PostgresError: unreachable.
    """
    wanted = [loc for loc in locators if re.match(r"^base/\d+/\d+$", loc)]
    out: dict[str, str | None] = {loc: None for loc in locators}
    if not wanted:
        return out
    with _session(maintenance_conninfo) as conn:
        names = dict(
            conn.execute("SELECT oid::text, datname FROM pg_catalog.pg_database").fetchall()
        )
    by_db: dict[str, list[str]] = {}
    for loc in wanted:
        by_db.setdefault(loc.split("/")[1], []).append(loc)
    for db_oid, locs in by_db.items():
        dbname = names.get(db_oid)
        if dbname is None:
            continue
        with _session(conninfo_for(dbname)) as conn:
            for loc in locs:
                # Unquoted schema.table, as the row counts name relations: regclass::text
                # would quote mixed-case names (public."Trade") and never match.
                row = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = pg_catalog.pg_filenode_relation(0, %s::oid)",
                    [loc.split("/")[2]],
                ).fetchone()
                if row:
                    out[loc] = f"{dbname}:{row[0]}.{row[1]}"
    return out


def extension_installed(conninfo: str, name: str) -> bool:
    """Tell whether an extension is installed in the connected database."""
    with _session(conninfo) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s)", [name]
        ).fetchone()
    return bool(row and row[0])


def heartbeat_state(conninfo: str, table: str = "public.dr_heartbeat") -> dict[str, dict[str, Any]]:
    """Per writer of the heartbeat table: newest ``seq`` and ``ts``, and row count.

    Returns:
        ``{writer: {"max_seq", "max_ts", "rows"}}``; empty when the table does not exist.

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with _session(conninfo) as conn:
        exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", [table]).fetchone()
        if not exists or exists[0] is None:
            return {}
        rows = conn.execute(
            sql.SQL("SELECT writer, max(seq), max(ts), count(*) FROM {} GROUP BY writer").format(
                sql.Identifier(schema, name)
            )
        ).fetchall()
    return {str(r[0]): {"max_seq": int(r[1]), "max_ts": r[2], "rows": int(r[3])} for r in rows}


def database_oid(conninfo: str) -> int:
    """The OID of the connected database (WAL names relation files by it)."""
    with _session(conninfo) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def ensure_schemas(conninfo: str, schemas: Iterable[str]) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` for each name (a scratch database's layout)."""
    with _session(conninfo) as conn:
        for schema in sorted(set(schemas)):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def run_drill_statement(conninfo: str, statement: str) -> dict[str, Any]:
    """Drill only: run one damaging statement (autocommit) and say when it committed.

    Returns:
        ``{"rows": rows affected, "committed_at": server clock right after the commit}``.

    Raises:
        PostgresError: the statement failed.
    """
    with _session(conninfo) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type] - fixed drill statements
        rows = cur.rowcount
        row = conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()
    assert row is not None
    log.warning("drill: %s -> %d rows", statement, rows)
    return {"rows": rows, "committed_at": row[0]}


class DrillCandidate(_Model):
    """A table a drill could damage: its rows, whether another table's foreign key points
    at it, and its numeric columns outside every key and constraint (safe to set to 0)."""

    relation: str
    rows: int
    referenced: bool
    numeric_columns: list[str] = Field(default_factory=list)


_DRILL_CANDIDATES_SQL = """
SELECT n.nspname, c.relname,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f
               WHERE f.contype = 'f' AND f.confrelid = c.oid AND f.conrelid <> c.oid),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                  'numeric'::regtype, 'float4'::regtype, 'float8'::regtype)
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                               WHERE k.conrelid = c.oid AND a.attnum = ANY (k.conkey))
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                               WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey))
             ORDER BY a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""


def drill_candidates(conninfo: str) -> list[DrillCandidate]:
    """Drill only: the database's tables with what a drill needs to pick one to damage.

    Columns in any constraint (primary key, foreign key, unique, check, exclusion) or
    index are left out of ``numeric_columns``: setting them to 0 could fail or change
    what the constraint protects. Rows are counted exactly, in one snapshot.

    Args:
        conninfo: the damaged database.

    Returns:
        One :class:`DrillCandidate` per ordinary table (``schema.table`` unquoted).

    Raises:
        PostgresError: unreachable, or the catalog query failed.
    """
    out: list[DrillCandidate] = []
    with _session(conninfo) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for schema, table, referenced, columns in conn.execute(_DRILL_CANDIDATES_SQL):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            out.append(
                DrillCandidate(
                    relation=f"{schema}.{table}",
                    rows=int(row[0]) if row else 0,
                    referenced=bool(referenced),
                    numeric_columns=list(columns or []),
                )
            )
    return out


def drill_statement(relation: str, column: str | None = None) -> str:
    """Drill only: the damaging statement, identifiers quoted (mixed case, like Prisma's).

    Args:
        relation: ``schema.table`` (unquoted).
        column: set to 0 on every row (a bad UPDATE); None deletes every row.

    Returns:
        ``UPDATE "s"."t" SET "c" = 0`` or ``DELETE FROM "s"."t"``.

    Raises:
        ConfigError: the relation is not schema-qualified.
    """
    schema, table = _split_relation(relation)
    rel = sql.Identifier(schema, table)
    if column is None:
        return sql.SQL("DELETE FROM {}").format(rel).as_string(None)
    return sql.SQL("UPDATE {} SET {} = 0").format(rel, sql.Identifier(column)).as_string(None)


def first_heartbeat_after(
    conninfo: str,
    since: datetime,
    *,
    table: str = "public.dr_heartbeat",
    exclude_prefix: str = "dr-probe-",
) -> datetime | None:
    """The first heartbeat row an application wrote after ``since`` (None: none yet).

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with _session(conninfo) as conn:
        exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", [table]).fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(
            sql.SQL("SELECT min(ts) FROM {} WHERE ts > %s AND writer NOT LIKE %s").format(
                sql.Identifier(schema, name)
            ),
            [since, exclude_prefix.replace("%", r"\%").replace("_", r"\_") + "%"],
        ).fetchone()
    return row[0] if row else None


def heartbeat_rows_after(
    conninfo: str, writer: str, after: datetime, *, table: str = "public.dr_heartbeat"
) -> int:
    """How many heartbeat rows of ``writer`` are newer than ``after``.

    Raises:
        PostgresError: unreachable.
    """
    schema, name = _split_relation(table)
    with _session(conninfo) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE writer = %s AND ts > %s").format(
                sql.Identifier(schema, name)
            ),
            [writer, after],
        ).fetchone()
    return int(row[0]) if row else 0


def preserve_database_copy(conninfo_maintenance: str, source_db: str, new_name: str) -> Change:
    """Keep a damaged database under a new name: ``CREATE DATABASE new TEMPLATE source``.

    ``STRATEGY FILE_COPY`` copies the files as they are, damaged pages included (the
    default WAL_LOG strategy reads every page through the buffer cache and would stop at
    the first bad checksum). Needs no other session on the source. Never dropped here.

    Returns:
        A Change (``created``; ``unchanged`` if the name exists already); not compensable:
        evidence is kept on purpose.

    Raises:
        PostgresError: sessions still use the source, or the server refused.
    """
    with _session(conninfo_maintenance) as conn:
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [new_name]
        ).fetchone()
        created = not (exists and exists[0])
        if created:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(new_name), sql.Identifier(source_db)
                )
            )
    change = Change(
        system=SYSTEM,
        action="preserve-database",
        object=f"database {new_name} (copy of {source_db})",
        outcome="created" if created else "unchanged",
        before={"exists": not created},
        after={"exists": True, "template": source_db},
        undo=f"DROP DATABASE {new_name} once the incident is closed (evidence: kept on purpose)",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def dump_relations(
    conninfo: str,
    relations: Sequence[str],
    out_file: str | Path,
    *,
    bin_dir: str | Path | None = None,
    password: str | None = None,
    sections: Sequence[str] = (),
    timeout_seconds: float = 1800,
) -> dict[str, Any]:
    """Evidence: ``pg_dump -Fc`` of the damaged tables, as they are now.

    ``sections`` limits the dump (``pre-data`` + ``data``: the tables and their rows
    without indexes and constraints, a source of rows to load elsewhere).

    Returns:
        ``{"path", "bytes", "sha256", "relations"}``.

    Raises:
        PostgresError: pg_dump failed (a page with a bad checksum makes it fail: then keep
            the database with :func:`preserve_database_copy` instead).
    """
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [_tool("pg_dump", bin_dir), "-Fc", f"--file={out}", "--no-password"]
    for rel in relations:
        schema, table = _split_relation(rel)
        argv.append(f"--table={_quote_ident(schema)}.{_quote_ident(table)}")
    argv += [f"--section={section}" for section in sections]
    argv.append(f"--dbname={conninfo}")
    env = {**os.environ, "PGPASSWORD": password} if password else None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout_seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"pg_dump timed out after {timeout_seconds} s") from exc
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise _tool_failed("pg_dump", proc)
    sha = _sha256_file(out)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha,
        "relations": list(relations),
    }


def _quote_ident(name: str) -> str:
    """Quote an identifier for pg_dump's ``--table`` pattern (exact match)."""
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- relation restore


class RelationRestoreResult(_Model):
    """What :func:`restore_relations` did, committed as one transaction."""

    relations: dict[str, RelationDigest]
    constraints_recreated: list[str] = Field(default_factory=list)
    triggers_suppressed: bool = False
    seconds: float
    committed_at: datetime


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        [schema, table],
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def restore_relations(
    source_conninfo: str,
    dest_conninfo: str,
    relations: Sequence[str],
    *,
    lock_timeout_seconds: float = 30,
) -> RelationRestoreResult:
    """Replace the rows of selected tables in the live database with the recovered ones.

    All in ONE transaction on the live side: the foreign keys that touch the tables are
    dropped, the tables truncated (a new file: a damaged page is left behind), the rows
    streamed in with ``COPY`` (binary) straight from the recovered server, the foreign keys
    re-added (which validates them against the rows now there) and the digests of the
    result compared with the source's. Any failure rolls everything back: the live tables
    are as they were. With a superuser, triggers are suppressed
    (``session_replication_role = replica``) so the rows come back exactly as they were.

    Args:
        source_conninfo: the recovered database.
        dest_conninfo: the live database.
        relations: ``schema.table`` names.
        lock_timeout_seconds: give up if another session holds the tables.

    Returns:
        A :class:`RelationRestoreResult`.

    Raises:
        PreconditionError: a table is missing on one side or its columns differ (schema
            changed since the recovery point); nothing was changed.
        VerificationError: the copied rows do not match the source (rolled back).
        PostgresError: the copy failed (rolled back).
    """
    rels = list(dict.fromkeys(relations))
    if not rels:
        raise ConfigError("no relation to restore", [("relations", "empty")])
    parts = [_split_relation(r) for r in rels]
    t0 = time.perf_counter()
    with (
        _session(source_conninfo, autocommit=False) as src,
        _session(dest_conninfo, autocommit=False) as dst,
    ):
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        _apply_digest_settings(src)
        columns: dict[str, list[str]] = {}
        for rel, (schema, table) in zip(rels, parts, strict=True):
            s_cols, d_cols = _columns(src, schema, table), _columns(dst, schema, table)
            if not s_cols:
                raise PreconditionError(f"table {rel} does not exist in the recovered database")
            if not d_cols:
                raise PreconditionError(f"table {rel} does not exist in the live database")
            if s_cols != d_cols:
                raise PreconditionError(
                    f"table {rel} has other columns in the live database than at the recovery "
                    f"point ({d_cols} vs {s_cols}); restore it by hand"
                )
            columns[rel] = [c for c, _ in s_cols]
        expected = {}
        for rel, (schema, table) in zip(rels, parts, strict=True):
            row = src.execute(_digest_query(schema, table)).fetchone()
            assert row is not None
            expected[rel] = RelationDigest(relation=rel, rows=int(row[0]), digest=str(row[1]))
        dst.execute(
            "SELECT pg_catalog.set_config('lock_timeout', %s, true)",
            [f"{int(lock_timeout_seconds * 1000)}ms"],
        )
        suppressed = False
        is_super = dst.execute(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
        ).fetchone()
        if is_super and is_super[0]:
            dst.execute("SET LOCAL session_replication_role = replica")
            suppressed = True
        oids = [
            dst.execute(
                "SELECT %s::regclass::oid", [f"{_quote_ident(s)}.{_quote_ident(t)}"]
            ).fetchone()[0]  # type: ignore[index]
            for s, t in parts
        ]
        fks = dst.execute(
            "SELECT c.conname, c.conrelid::regclass::text, "
            "pg_catalog.pg_get_constraintdef(c.oid), n.nspname, r.relname "
            "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
            "WHERE c.contype = 'f' AND (c.conrelid = ANY(%s) OR c.confrelid = ANY(%s)) "
            "ORDER BY 2, 1",
            [oids, oids],
        ).fetchall()
        tables_to_lock = {f"{_quote_ident(s)}.{_quote_ident(t)}" for s, t in parts}
        tables_to_lock |= {f"{_quote_ident(fk[3])}.{_quote_ident(fk[4])}" for fk in fks}
        dst.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.SQL(t) for t in sorted(tables_to_lock))
            )
        )
        for name, _rel, _def, schema, table in fks:
            dst.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(schema, table), sql.Identifier(name)
                )
            )
        dst.execute(
            sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(sql.Identifier(s, t) for s, t in parts)
            )
        )
        for rel, (schema, table) in zip(rels, parts, strict=True):
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns[rel])
            q_out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(
                sql.Identifier(schema, table), cols
            )
            q_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                sql.Identifier(schema, table), cols
            )
            with src.cursor().copy(q_out) as out, dst.cursor().copy(q_in) as inp:
                for block in out:
                    inp.write(block)
        recreated = []
        for name, _rel, definition, schema, table in fks:
            try:
                dst.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                        sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
                    )
                )
            except psycopg.errors.IntegrityError as exc:
                dst.rollback()
                first = str(exc).strip().splitlines()[0]
                raise VerificationError(
                    f"the recovered rows break foreign key {schema}.{table}.{name} against the "
                    f"live data ({first}); rolled back, nothing changed: restore the related "
                    "tables together (relations=...) or switch the whole database"
                ) from exc
            recreated.append(f"{schema}.{table}.{name}")
        _apply_digest_settings(dst)
        got: dict[str, RelationDigest] = {}
        for rel, (schema, table) in zip(rels, parts, strict=True):
            row = dst.execute(_digest_query(schema, table)).fetchone()
            assert row is not None
            got[rel] = RelationDigest(relation=rel, rows=int(row[0]), digest=str(row[1]))
        wrong = [r for r in rels if got[r] != expected[r]]
        if wrong:
            dst.rollback()
            raise VerificationError(
                "restored rows differ from the recovered ones for "
                + ", ".join(f"{r} ({got[r].rows} vs {expected[r].rows} rows)" for r in wrong)
                + "; rolled back, nothing changed"
            )
        dst.commit()
        committed_at = _utcnow()
        src.rollback()
    seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "restored %s in one transaction (%d rows) in %.2f s; foreign keys re-validated: %s",
        ", ".join(rels),
        sum(d.rows for d in got.values()),
        seconds,
        ", ".join(recreated) or "none",
    )
    return RelationRestoreResult(
        relations=got,
        constraints_recreated=recreated,
        triggers_suppressed=suppressed,
        seconds=seconds,
        committed_at=committed_at,
    )


# --------------------------------------------------------------------------- damage finder


class DamageCandidate(_Model):
    """A committed transaction that changed many rows of one relation (or rewrote it)."""

    xid: int
    locator: str = Field(description="base/<db oid>/<relfilenode> as in the WAL.")
    relation: str | None = Field(None, description="database:schema.table when resolved.")
    operations: dict[str, int]
    rows_changed: int
    first_lsn: str
    commit_lsn: str | None = None
    commit_time: datetime | None = None
    kind: Literal["rows", "rewrite"] = "rows"


_WALDUMP_RE = re.compile(
    r"rmgr:\s*(\w+)\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+),"
    r" prev [0-9A-F]+/[0-9A-F]+, desc: (\w+)(.*)$"
)
_BLKREF_RE = re.compile(r"blkref #0: rel (\d+)/(\d+)/(\d+)")
_COMMIT_TIME_RE = re.compile(r"^\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+)")


def parse_waldump_line(line: str) -> dict[str, Any] | None:
    """One ``pg_waldump`` record line → ``{rmgr, xid, lsn, verb, rest, locator}``; None else."""
    match = _WALDUMP_RE.search(line)
    if not match:
        return None
    rest = match[5]
    blk = _BLKREF_RE.search(rest)
    locator = None
    if blk:
        spc = int(blk[1])
        locator = f"base/{blk[2]}/{blk[3]}" if spc == 1663 else f"{spc}/{blk[2]}/{blk[3]}"
    return {
        "rmgr": match[1],
        "xid": int(match[2]),
        "lsn": match[3],
        "verb": match[4],
        "rest": rest,
        "locator": locator,
    }


def _commit_time(rest: str) -> datetime | None:
    match = _COMMIT_TIME_RE.match(rest)
    if not match:
        return None
    stamp, zone = match[1], match[2].rstrip(";")
    if zone not in ("UTC", "GMT"):
        return None
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)


def _waldump_lines(
    wal_dir: Path, timeline: int, start_lsn: str, end_lsn: str | None, rmgr: str, bin_dir: Any
) -> Iterator[str]:
    argv = [
        _tool("pg_waldump", bin_dir),
        "-p",
        str(wal_dir),
        "-t",
        str(timeline),
        "-s",
        start_lsn,
        "-r",
        rmgr,
    ]
    if end_lsn:
        argv += ["-e", end_lsn]
    args, run_env = _server_argv(argv)
    proc = subprocess.Popen(
        args, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield from proc.stdout
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        code = proc.wait()
    # The end of the available WAL is reported as an error; anything else is real.
    if code != 0 and "could not find file" not in err and "invalid record length" not in err:
        if "error" in err:
            raise PostgresError(f"pg_waldump failed ({code}): {err.strip()[-800:]}")


def _collect(
    folder: Path, timeline: int, start: str, end: str, rmgr: str, bin_dir: Any
) -> list[dict[str, Any]]:
    """The records of one resource manager that matter to :func:`find_damage`, parsed."""
    keep = {"Heap": _ROW_CHANGES, "Storage": {"CREATE"}, "Transaction": {"COMMIT", "ABORT"}}[rmgr]
    out = []
    for line in _waldump_lines(folder, timeline, start, end, rmgr, bin_dir):
        rec = parse_waldump_line(line)
        if rec is None or not rec["xid"] or rec["verb"] not in keep:
            continue
        if rmgr == "Heap" and not rec["locator"]:
            continue
        out.append(rec)
    return out


def _archive_end(folder: Path, timeline: int, start_lsn: str) -> str | None:
    """End of the contiguous run of archived segments of ``timeline`` from ``start_lsn``.

    Why: without an end position pg_waldump waits 10 x 500 ms for the next segment to
    appear before giving up.
    """
    sizes: dict[int, int] = {}
    names = {}
    for path in folder.iterdir():
        match = SEGMENT_RE.match(path.name)
        if match and int(match[1], 16) == timeline:
            size = path.stat().st_size
            sizes[size] = sizes.get(size, 0) + 1
            names[path.name] = size
    valid = {sz: n for sz, n in sizes.items() if sz in VALID_SEGMENT_SIZES}
    if not valid:
        return None
    seg_size = max(valid, key=lambda sz: valid[sz])
    segno = segment_number(start_lsn, seg_size)
    if segment_name(timeline, segno, seg_size) not in names:
        return None
    while segment_name(timeline, segno + 1, seg_size) in names:
        segno += 1
    return format_lsn((segno + 1) * seg_size)


def archive_window_start(
    wal_dir: str | Path, timeline: int, *, max_bytes: int = DEFAULT_SCAN_WINDOW_BYTES
) -> str | None:
    """Where to start reading an archive folder when nothing better is known.

    The start of the newest contiguous run of ``timeline``'s segments, at most ``max_bytes``
    back from its end (so a scan stays bounded on a large archive).

    Returns:
        An LSN, or None when the folder holds no segment of that timeline.
    """
    folder = Path(wal_dir)
    segnos: dict[int, int] = {}
    for path in folder.iterdir():
        match = SEGMENT_RE.match(path.name)
        if match and int(match[1], 16) == timeline:
            segnos[path.stat().st_size] = segnos.get(path.stat().st_size, 0) + 1
    valid = {sz: n for sz, n in segnos.items() if sz in VALID_SEGMENT_SIZES}
    if not valid:
        return None
    seg_size = max(valid, key=lambda sz: valid[sz])
    present = sorted(
        parse_segment_name(p.name, seg_size)[1]
        for p in folder.iterdir()
        if SEGMENT_RE.match(p.name) and int(p.name[:8], 16) == timeline
    )
    first = present[-1]
    while first - 1 in present and (present[-1] - first + 2) * seg_size <= max_bytes:
        first -= 1
    return format_lsn(first * seg_size)


def find_damage(
    wal_dir: str | Path,
    *,
    timeline: int,
    start_lsn: str,
    end_lsn: str | None = None,
    min_rows: int = 100,
    database_oids: Iterable[int] | None = None,
    bin_dir: str | Path | None = None,
) -> list[DamageCandidate]:
    """Find committed transactions that changed many rows of one table, from the WAL.

    A heuristic, and honest about it: it reads the archived WAL from ``start_lsn`` with
    ``pg_waldump`` and counts, per transaction and relation file, the heap records that
    change rows (UPDATE, HOT_UPDATE, DELETE); a transaction with at least ``min_rows`` of
    them on one relation is a candidate. TRUNCATE (with ``wal_level = replica``) leaves no
    heap record: it shows as a committed transaction that created a new file for a table
    and dropped the old one, reported as kind ``rewrite`` (VACUUM FULL, CLUSTER and some
    ALTER TABLE look the same). What it cannot see: damage by many small transactions,
    damage inside a relation's pages (bit rot: use checksums), changes below ``min_rows``.
    Timeline switches inside the window are not followed.

    Args:
        wal_dir: a folder of WAL segments (the file:// archive, or a staged copy).
        timeline: the timeline to read.
        start_lsn: where to start (e.g. a drill's stamp, or the newest base backup's start).
        end_lsn: where to stop (default: the end of the contiguous archived WAL).
        min_rows: rows one transaction must change on one relation to be a candidate.
        database_oids: only relations of these databases.
        bin_dir: PostgreSQL binaries.

    Returns:
        Candidates in commit order (earliest first), committed ones only.

    Raises:
        PostgresError: pg_waldump failed before the end of the available WAL.
    """
    folder = Path(wal_dir)
    only = {int(o) for o in database_oids} if database_oids is not None else None
    end = end_lsn or _archive_end(folder, timeline, start_lsn)
    if end is None or parse_lsn(end) <= parse_lsn(start_lsn):
        log.info("damage finder: no archived WAL after %s on timeline %s", start_lsn, timeline)
        return []
    with ThreadPoolExecutor(max_workers=3) as pool:
        heap = pool.submit(_collect, folder, timeline, start_lsn, end, "Heap", bin_dir)
        storage = pool.submit(_collect, folder, timeline, start_lsn, end, "Storage", bin_dir)
        xact = pool.submit(_collect, folder, timeline, start_lsn, end, "Transaction", bin_dir)
        heap_records, storage_records, xact_records = heap.result(), storage.result(), xact.result()
    counts: dict[tuple[int, str], dict[str, int]] = {}
    first: dict[tuple[int, str], str] = {}
    for rec in heap_records:
        loc = rec["locator"]
        if only is not None and int(loc.split("/")[1]) not in only:
            continue
        key = (rec["xid"], loc)
        ops = counts.setdefault(key, {})
        ops[rec["verb"]] = ops.get(rec["verb"], 0) + 1
        first.setdefault(key, rec["lsn"])
    created: dict[int, list[tuple[str, str]]] = {}
    for rec in storage_records:
        match = re.search(r"(base/\d+/\d+)", rec["rest"])
        if match and (only is None or int(match[1].split("/")[1]) in only):
            created.setdefault(rec["xid"], []).append((match[1], rec["lsn"]))
    commits: dict[int, tuple[str, datetime | None, bool]] = {}
    for rec in xact_records:
        if rec["verb"] in ("COMMIT", "ABORT"):
            dropped = "rels:" in rec["rest"]
            commits[rec["xid"]] = (rec["lsn"], _commit_time(rec["rest"]), rec["verb"] == "COMMIT")
            if rec["verb"] == "COMMIT" and not dropped:
                created.pop(rec["xid"], None)
    out: list[DamageCandidate] = []
    for (xid, loc), ops in counts.items():
        total = sum(ops.values())
        commit = commits.get(xid)
        if total < min_rows or commit is None or not commit[2]:
            continue
        out.append(
            DamageCandidate(
                xid=xid,
                locator=loc,
                operations=ops,
                rows_changed=total,
                first_lsn=first[(xid, loc)],
                commit_lsn=commit[0],
                commit_time=commit[1],
            )
        )
    for xid, files in created.items():
        commit = commits.get(xid)
        if commit is None or not commit[2]:
            continue
        for loc, lsn in files:
            out.append(
                DamageCandidate(
                    xid=xid,
                    locator=loc,
                    operations={"REWRITE": 1},
                    rows_changed=0,
                    first_lsn=lsn,
                    commit_lsn=commit[0],
                    commit_time=commit[1],
                    kind="rewrite",
                )
            )
    out.sort(key=lambda c: parse_lsn(c.commit_lsn or c.first_lsn))
    log.info(
        "damage finder from %s on timeline %s: %d candidate(s)%s",
        start_lsn,
        timeline,
        len(out),
        f", first xid {out[0].xid} on {out[0].locator} committed {out[0].commit_time}"
        if out
        else "",
    )
    return out


# --------------------------------------------------------------------------- Prefect tasks

list_base_backups_task = dr_task(list_base_backups, name="recovery-list-base-backups")
plan_wal_task = dr_task(plan_wal, name="recovery-plan-wal")
download_base_backup_task = dr_task(download_base_backup, name="recovery-download-base-backup")
stage_wal_task = dr_task(stage_wal, name="recovery-stage-wal")
restore_base_backup_task = dr_task(restore_base_backup, name="recovery-restore-base-backup")
# A recovery attempt is not retried blindly: its folder is half-configured after a failure.
start_recovery_task = dr_task(start_recovery, name="recovery-start", retries=0)
check_checksums_task = dr_task(check_checksums, name="recovery-pg-checksums", retries=0)
make_stopped_copy_task = dr_task(make_stopped_copy, name="recovery-stopped-copy", retries=0)
relation_digests_task = dr_task(relation_digests, name="recovery-relation-digests")
restore_relations_task = dr_task(restore_relations, name="recovery-restore-relations", retries=0)
find_damage_task = dr_task(find_damage, name="recovery-find-damage")
switch_wal_and_wait_task = dr_task(switch_wal_and_wait, name="recovery-switch-wal")
dump_relations_task = dr_task(dump_relations, name="recovery-dump-relations")


# --- wrappers added for flows (lead: move on merge)
server_position_task = dr_task(server_position, name="recovery-server-position")
extract_base_backup_task = dr_task(extract_base_backup, name="recovery-extract-base-backup")
remove_cluster_task = dr_task(remove_cluster, name="recovery-remove-cluster")
