"""The WAL archive: prove it continuous up to a recovery point, stage it, watch its age.

:func:`plan_wal` names every segment replay will read from the base backup's stop position
to the one holding the recovery point; a gap is reported with the first missing segment's
name *before* anything is downloaded or started. The expected names come from the segment
size (read from the archived segments' size unless given, and checked against the restored
``pg_control`` later), the target timeline (the newest ``*.history`` in the archive, as
``recovery_target_timeline = latest`` would pick, unless the target names one) and its
history. For a time target the end is the first segment archived at or after the target time
(a segment is archived once it is complete, so it holds WAL up to at least its archive time).
That estimate can end a segment early when archiving lagged; replay would then fail at the
missing segment and :func:`~tasks.pitr.recovery.start_recovery` reports it from the server log.

``restore_command``: for a ``file://`` archive it is a plain ``cp`` from the archive folder.
For any other archive (``s3://``) the planned segments (plus a few after them, for a time
target whose end segment is estimated) are downloaded and verified into a local folder first
(:func:`stage_wal`): the server never holds cloud credentials, every segment is checksummed
on the way, and a missing one is known before the server starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import ConfigError, RecoveryRefused
from dr.localexec import chown_for_server
from dr.tasking import dr_task
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

if TYPE_CHECKING:
    from tasks.storage.client import Repository

log = logging.getLogger(__name__)


#: For a time target the end segment is estimated from archive times; when the WAL must be
#: staged locally (``s3://``), this many segments after it are staged too, when present.
EXTRA_STAGED_SEGMENTS = 8


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        raise RecoveryRefused(
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

    Names come from the segment size and the target timeline's history (see the module
    docstring); the end is the segment holding the target LSN, or the first one archived
    at or after the target time.

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
        raise RecoveryRefused(f"the WAL archive {repo.url} holds no segment: nothing to replay")
    size = _segment_size_of(segments, segment_size)
    tli = _target_timeline(backup, target, histories)
    spans, history_needed = _timeline_spans(repo, backup, tli, histories)
    ancestry = {s.timeline for s in spans}
    _check_backup_leads_to(backup, spans, tli)
    first, stop_seg, target_seg = _segment_bounds(backup, target, size)
    walk = _Walk(repo.url, backup, target, segments, spans, size)
    in_backup = [walk.expected(s) for s in range(first, stop_seg)]
    newest_segno = walk.newest_on_path(ancestry)
    needed, segno, end_reason, unarchived = walk.to_end(
        stop_seg, target_seg, newest_segno, allow_unarchived_end
    )
    extra, later_gap = walk.after_end(segno, newest_segno)
    if later_gap and target.time is not None:
        _warn_later_gap(later_gap, needed[-1])
    plan = WalPlan(
        archive=repo.url,
        segment_size=size,
        target_timeline=tli,
        timelines=[s.timeline for s in spans],
        history_files=history_needed,
        in_backup=in_backup,
        needed=needed,
        end_segment=needed[-1] if needed else (later_gap or walk.expected(segno)),
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


def _warn_later_gap(later_gap: str, end: str) -> None:
    log.warning(
        "segment %s is missing after the estimated end %s: if no transaction commits "
        "between the recovery time and it, replay stops early (reported at start)",
        later_gap,
        end,
    )


def _segment_bounds(
    backup: BaseBackup, target: RecoveryTarget, size: int
) -> tuple[int, int, int | None]:
    """The backup's first and stop segments and the target LSN's (refused before the stop)."""
    first = segment_number(parse_lsn(backup.start_lsn), size)
    stop_seg = segment_number(parse_lsn(backup.stop_lsn), size)
    target_seg = segment_number(parse_lsn(target.lsn), size) if target.lsn else None
    if target_seg is not None and target_seg < stop_seg:
        raise RecoveryRefused(
            f"recovery LSN {target.lsn} is before the end of base backup {backup.backup_id} "
            f"({backup.stop_lsn}): the copy is not consistent before that point"
        )
    return first, stop_seg, target_seg


def _target_timeline(backup: BaseBackup, target: RecoveryTarget, histories: set[str]) -> int:
    """The timeline to recover onto: the target's, else the newest (``latest``)."""
    newest_tli = max(
        [backup.timeline] + [int(HISTORY_RE.match(h)[1], 16) for h in histories]  # type: ignore[index]
    )
    tli = target.timeline or newest_tli
    if tli < backup.timeline:
        raise RecoveryRefused(
            f"target timeline {tli} is older than the base backup's timeline {backup.timeline}"
        )
    return tli


def _timeline_spans(
    repo: Repository, backup: BaseBackup, tli: int, histories: set[str]
) -> tuple[list[TimelineSpan], list[str]]:
    """The spans from the first timeline to ``tli``, and the history files replay reads."""
    if tli <= 1:
        return [TimelineSpan(tli, 0, None)], []
    name = history_file_name(tli)
    if name not in histories:
        if tli != backup.timeline:
            raise RecoveryRefused(
                f"the archive lacks {name}, the history of timeline {tli}: recovery "
                f"cannot follow it from the base backup's timeline {backup.timeline}"
            )
        return [TimelineSpan(tli, 0, None)], []
    spans = parse_history(read_small(repo, name).decode(), tli)
    history_needed = [
        history_file_name(s.timeline)
        for s in spans
        if s.timeline > 1 and history_file_name(s.timeline) in histories
    ]
    return spans, history_needed


def _check_backup_leads_to(backup: BaseBackup, spans: Sequence[TimelineSpan], tli: int) -> None:
    """Refuse a base backup whose timeline (or branch of it) does not lead to ``tli``."""
    own = {s.timeline: s for s in spans}.get(backup.timeline)
    if own is None:
        raise RecoveryRefused(
            f"base backup {backup.backup_id} is on timeline {backup.timeline}, which is not an "
            f"ancestor of timeline {tli} (history: {[s.timeline for s in spans]})"
        )
    if own.end_lsn is not None and parse_lsn(backup.stop_lsn) > own.end_lsn:
        raise RecoveryRefused(
            f"base backup {backup.backup_id} ended at {backup.stop_lsn} on timeline "
            f"{backup.timeline}, after that timeline was left at {format_lsn(own.end_lsn)}: it "
            f"belongs to a branch that does not lead to timeline {tli}"
        )


@dataclass(frozen=True)
class _Walk:
    """The archive seen along one timeline path: which file replay reads for each segment."""

    archive: str
    backup: BaseBackup
    target: RecoveryTarget
    segments: Mapping[str, ArchivedFile]
    spans: Sequence[TimelineSpan]
    size: int

    def newest_on_path(self, timelines: set[int]) -> int:
        """The newest archived segment number on the given timelines (-1: none)."""
        numbers = [parse_segment_name(n, self.size) for n in self.segments]
        return max((segno for tli, segno in numbers if tli in timelines), default=-1)

    def expected(self, segno: int) -> str:
        return segment_name(_timeline_for_segment(self.spans, segno, self.size), segno, self.size)

    def to_end(
        self, segno: int, target_seg: int | None, newest_segno: int, allow_unarchived_end: bool
    ) -> tuple[list[str], int, str, str | None]:
        """Segments from the backup's end to the one holding the point: ``(needed, last
        segno, end reason, first unarchived)``; a gap or a missing end is refused."""
        when = self.target.time.astimezone(UTC) if self.target.time else None
        needed: list[str] = []
        while True:
            name = self.expected(segno)
            found = self.segments.get(name)
            if found is None:
                self._refuse_gap(name, segno)
                newest = self.expected(newest_segno) if newest_segno >= 0 else "none"
                if allow_unarchived_end:
                    reason = f"not archived yet from {name} on (newest archived: {newest})"
                    return needed, segno, reason, name
                raise RecoveryRefused(
                    f"recovery point ({self.target.describe()}) is beyond the archived WAL: "
                    f"segment {name} is not in {self.archive} yet (newest on this timeline: "
                    f"{newest}); wait for archiving (pg_switch_wal()) or choose an earlier point"
                )
            needed.append(name)
            if target_seg is not None and segno >= target_seg:
                return needed, segno, f"holds recovery LSN {self.target.lsn}", None
            if when is not None and found.mtime >= when:
                reason = (
                    f"first segment archived after the recovery time ({found.mtime.isoformat()})"
                )
                return needed, segno, reason, None
            segno += 1

    def _refuse_gap(self, name: str, segno: int) -> None:
        """A missing segment with later ones on the path is a gap: refuse, naming it."""
        later = [
            n
            for n in self.segments
            if parse_segment_name(n, self.size)[1] > segno
            and n == self.expected(parse_segment_name(n, self.size)[1])
        ]
        if later:
            raise RecoveryRefused(
                f"the WAL archive {self.archive} has a gap: segment {name} is missing (needed "
                f"to replay from base backup {self.backup.backup_id} to the recovery point; "
                f"{len(later)} later segment(s) exist, first {min(later)}); nothing was "
                "restored"
            )

    def after_end(self, segno: int, newest_segno: int) -> tuple[list[str], str | None]:
        """Present segments after the end worth staging, and the first missing one."""
        extra: list[str] = []
        nxt = segno + 1
        while nxt <= newest_segno:
            name = self.expected(nxt)
            if name not in self.segments:
                return extra, name
            if len(extra) < EXTRA_STAGED_SEGMENTS:
                extra.append(name)
            nxt += 1
        return extra, None


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


plan_wal_task = dr_task(plan_wal, name="pitr-plan-wal")
stage_wal_task = dr_task(stage_wal, name="pitr-stage-wal")
