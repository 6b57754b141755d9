"""Find the damage in the archived WAL: the first large UPDATE/DELETE (or table rewrite).

A heuristic over ``pg_waldump`` output after a position, with the commit time and LSN of the
damaging transaction.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import PostgresError
from dr.localexec import server_argv, server_tool
from dr.tasking import dr_task
from tasks.pitr.lsn import (
    SEGMENT_RE,
    VALID_SEGMENT_SIZES,
    format_lsn,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_number,
)

log = logging.getLogger(__name__)


#: How much archived WAL the damage finder reads when no base backup says where to start.
DEFAULT_SCAN_WINDOW_BYTES = 1024 * 1024 * 1024
#: Heap records that change rows (pg_waldump ``desc:`` verbs), counted by :func:`find_damage`.
_ROW_CHANGES = frozenset({"UPDATE", "HOT_UPDATE", "DELETE"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        server_tool("pg_waldump", bin_dir),
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
    args, run_env = server_argv(argv)
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
    counts, first = _row_changes(heap_records, only)
    created = _created_files(storage_records, only)
    commits = _outcomes(xact_records, created)
    out = _row_candidates(counts, first, commits, min_rows) + _rewrite_candidates(created, commits)
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


#: Per (xid, relation file): a transaction's work on one relation.
_Key = tuple[int, str]
#: Per xid: commit (or abort) LSN, commit time, committed.
_Outcome = tuple[str, datetime | None, bool]


def _in_databases(locator: str, only: set[int] | None) -> bool:
    return only is None or int(locator.split("/")[1]) in only


def _row_changes(
    records: Iterable[Mapping[str, Any]], only: set[int] | None
) -> tuple[dict[_Key, dict[str, int]], dict[_Key, str]]:
    """Row-changing heap records counted per transaction and relation, and each one's first LSN."""
    counts: dict[_Key, dict[str, int]] = {}
    first: dict[_Key, str] = {}
    for rec in records:
        loc = rec["locator"]
        if not _in_databases(loc, only):
            continue
        key = (rec["xid"], loc)
        ops = counts.setdefault(key, {})
        ops[rec["verb"]] = ops.get(rec["verb"], 0) + 1
        first.setdefault(key, rec["lsn"])
    return counts, first


def _created_files(
    records: Iterable[Mapping[str, Any]], only: set[int] | None
) -> dict[int, list[tuple[str, str]]]:
    """Relation files each transaction created (locator, LSN)."""
    created: dict[int, list[tuple[str, str]]] = {}
    for rec in records:
        match = re.search(r"(base/\d+/\d+)", rec["rest"])
        if match and _in_databases(match[1], only):
            created.setdefault(rec["xid"], []).append((match[1], rec["lsn"]))
    return created


def _outcomes(
    records: Iterable[Mapping[str, Any]], created: dict[int, list[tuple[str, str]]]
) -> dict[int, _Outcome]:
    """Each transaction's end; a commit that dropped no file is no rewrite (taken out of
    ``created``, in place)."""
    commits: dict[int, _Outcome] = {}
    for rec in records:
        if rec["verb"] in ("COMMIT", "ABORT"):
            dropped = "rels:" in rec["rest"]
            commits[rec["xid"]] = (rec["lsn"], _commit_time(rec["rest"]), rec["verb"] == "COMMIT")
            if rec["verb"] == "COMMIT" and not dropped:
                created.pop(rec["xid"], None)
    return commits


def _row_candidates(
    counts: Mapping[_Key, dict[str, int]],
    first: Mapping[_Key, str],
    commits: Mapping[int, _Outcome],
    min_rows: int,
) -> list[DamageCandidate]:
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
    return out


def _rewrite_candidates(
    created: Mapping[int, list[tuple[str, str]]], commits: Mapping[int, _Outcome]
) -> list[DamageCandidate]:
    out: list[DamageCandidate] = []
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
    return out


archive_window_start_task = dr_task(
    archive_window_start, name="pitr-archive-window-start", timeout_seconds=120
)
find_damage_task = dr_task(find_damage, name="pitr-find-damage")
