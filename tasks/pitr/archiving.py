"""The live server's WAL archiving: its position, switching a segment out, the archive's age.

Point-in-time recovery reaches no further than the newest archived segment: these say how
far that is, and make everything up to now archivable before a recovery or a drill.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dr.clock import utcnow
from dr.errors import PostgresError
from dr.tasking import dr_task
from tasks.postgres.client import session

if TYPE_CHECKING:
    pass

from tasks.pitr.lsn import SEGMENT_RE

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
DEFAULT_SWITCH_WAIT_SECONDS = 60.0


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


server_position_task = dr_task(server_position, name="pitr-server-position", timeout_seconds=60)
switch_wal_and_wait_task = dr_task(switch_wal_and_wait, name="pitr-switch-wal-and-wait")
wal_archive_age_task = dr_task(wal_archive_age, name="pitr-wal-archive-age", timeout_seconds=120)
