"""A dump's table of contents: table data sizes and the restore job count they justify.

Why the job count comes from the dump and not from the CPU count: ``pg_restore`` runs one
table's data in one worker, so a dump whose data sits in one table gains nothing from
``-j 2`` and measurably loses (9.1 s with ``-j 1`` vs 10.2 s with ``-j 2`` on a pgbench
scale-50 database, shared/lab/postgres.md). :func:`choose_restore_jobs` counts the tables big
enough to keep a worker busy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel

from dr.localexec import find_tool, run_tool

#: A table gets its own restore worker when its data is at least this share of the largest.
JOB_SHARE_THRESHOLD = 0.25


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


def read_toc(dump_path: Path, bin_dir: str | os.PathLike[str] | None) -> tuple[list[TocEntry], int]:
    proc = run_tool([find_tool("pg_restore", bin_dir), "--list", dump_path])
    return parse_toc_listing(proc.stdout)


def table_data_sizes(
    dump_dir: str | os.PathLike[str], *, bin_dir: str | os.PathLike[str] | None = None
) -> dict[str, int]:
    """Bytes of each table's data file in a directory-format dump (``{"s.t": bytes}``).

    Compressed sizes are a fair proxy for the work a restore worker will do on them.
    """
    folder = Path(dump_dir)
    entries, _ = read_toc(folder, bin_dir)
    return data_sizes(folder, entries)


def data_sizes(folder: Path, entries: Iterable[TocEntry]) -> dict[str, int]:
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
