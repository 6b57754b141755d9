"""Which backups to keep (grandfather-father-son), and picking the newest of a listing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from dr.config import Retention


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


#: A timestamp in a dump's name: ``20250101_000000``, ``20250101T0000``, ``2025-01-01_00-00-00``,
#: or a bare date ``20250101`` / ``2025-01-01``.
_NAME_TIME_RE = re.compile(
    r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_ -]?(\d{2})[:-]?(\d{2})(?:[:-]?(\d{2}))?)?(?!\d)"
)


def name_timestamp(name: str) -> datetime | None:
    """The timestamp in a dump's file name (read as UTC), or None."""
    stem = name.rsplit("/", 1)[-1]
    for match in _NAME_TIME_RE.finditer(stem):
        parts = [int(p) if p else 0 for p in match.groups()]
        try:
            return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]
        except ValueError:
            continue
    return None


def pick_newest_by_name(objects: Iterable[Any]) -> Any | None:
    """The newest dump by the timestamp in its name (modification time breaks ties).

    Names without a timestamp count only when no name has one; then the newest by
    modification time wins (:func:`pick_newest`).
    """
    items = list(objects)
    dated = [(name_timestamp(str(_attr(o, "key", "name", "path"))), o) for o in items]
    stamped = [(ts, o) for ts, o in dated if ts is not None]
    if not stamped:
        return pick_newest(items)
    newest_time = max(ts for ts, _ in stamped)
    return pick_newest(o for ts, o in stamped if ts == newest_time)


def foreign_database_hint(name: str) -> str | None:
    """Guess a database name from a foreign dump's file name (``app_backup_2025...``)."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    match = re.match(r"^([A-Za-z][A-Za-z0-9]*?)(?:_(?:db_)?backup)?_\d", stem)
    return match[1] if match else None
