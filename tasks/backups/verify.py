"""Check a restored database with ``pg_amcheck`` (heap and B-tree indexes)."""

from __future__ import annotations

import os
import re
import subprocess
import time

from pydantic import BaseModel, Field

from dr.errors import PostgresError
from dr.localexec import find_tool, tool_env, tool_error
from dr.tasking import dr_task


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
            env=tool_env(password),
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
    raise tool_error("pg_amcheck", proc.returncode, proc.stderr or proc.stdout)


amcheck_task = dr_task(amcheck, name="backups-amcheck")
