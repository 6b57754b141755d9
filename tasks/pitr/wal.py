"""The WAL archive: prove it continuous up to a recovery point, stage it, watch its age.

:func:`plan_wal` names every segment replay will read from the base backup's stop position
to the one holding the recovery point; a gap is reported with the first missing segment's
name *before* anything is downloaded or started.

``restore_command``: for a ``file://`` archive it is a plain ``cp`` from the archive folder.
For any other archive (``s3://``) the planned segments (plus a few after them, for a time
target whose end segment is estimated) are downloaded and verified into a local folder first
(:func:`stage_wal`): the server never holds cloud credentials, every segment is checksummed
on the way, and a missing one is known before the server starts.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow
from dr.errors import (
    ConfigError,
    PostgresError,
    PreconditionError,
)
from dr.localexec import chown_for_server
from dr.tasking import dr_task
from tasks.postgres.client import session

if TYPE_CHECKING:
    from tasks.storage.client import Repository

from tasks.pitr.base_backup import BaseBackup, read_small
from tasks.pitr.lsn import (
    HISTORY_RE,
    SEGMENT_RE,
    VALID_SEGMENT_SIZES,
    TimelineSpan,
    _timeline_for_segment,
    format_lsn,
    history_file_name,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_number,
)
from tasks.pitr.target import RecoveryTarget

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: For a time target the end segment is estimated from archive times; when the WAL must be
#: staged locally (``s3://``), this many segments after it are staged too, when present.
EXTRA_STAGED_SEGMENTS = 8


POLL_SECONDS = 0.1
DEFAULT_SWITCH_WAIT_SECONDS = 60.0


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
            spans = parse_history(read_small(repo, name).decode(), tli)
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
    chown_for_server(dest)
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


def server_position(conninfo: str) -> dict[str, Any]:
    """The server's clock, WAL position, timeline and system identifier, in one snapshot.

    Returns:
        ``{"at": datetime, "lsn": str, "timeline": int, "system_identifier": str,
        "in_recovery": bool}``.

    Raises:
        PostgresError: unreachable.
    """
    with session(conninfo, "server position", statement_timeout_seconds=None) as conn:
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
    with session(conninfo, "switch wal and wait", statement_timeout_seconds=None) as conn:
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


def _attr(obj: Any, *names: str) -> Any:
    """The first of ``names`` an item of a listing has (storage objects or plain dicts)."""
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    raise TypeError(f"listing item {obj!r} has none of {', '.join(names)}")


#: Full WAL segment file names: timeline (8 hex) + log (8 hex) + segment (8 hex).
WAL_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


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
    moment = (now or utcnow()).astimezone(UTC)
    return max(0.0, (moment - newest[1]).total_seconds())


plan_wal_task = dr_task(plan_wal, name="recovery-plan-wal")
stage_wal_task = dr_task(stage_wal, name="recovery-stage-wal")
switch_wal_and_wait_task = dr_task(switch_wal_and_wait, name="recovery-switch-wal")
