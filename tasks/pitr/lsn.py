"""WAL positions (LSN), segment file names, timeline histories: pure arithmetic, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dr.errors import ConfigError, VerificationError

#: Full WAL segment file names: timeline (8 hex) + log (8 hex) + segment (8 hex).
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
#: WAL segment sizes PostgreSQL allows (initdb --wal-segsize: powers of two, 1 MiB..1 GiB).
VALID_SEGMENT_SIZES = frozenset(2**n for n in range(20, 31))


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
