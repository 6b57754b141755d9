"""Would the target's own checks have caught the damage? A drill tests detection too.

The target's own checks are its validation queries, the checksum counters and
pg_checksums, and pg_amcheck. The WAL damage finder and the row counts against the
manifest are the tool's forensics, not checks the target runs day to day: a damage only
they name is one the target would not have noticed.
"""

from __future__ import annotations

from typing import Any

from flows.data_corruption.run import CorruptionRun

__all__ = ["NOT_CAUGHT", "own_check_noticed", "report_detection"]

#: The finding's words, in the report and in Slack.
NOT_CAUGHT = "your checks would not have caught this"

_OWN = {"checksum counters": "checksum counters", "pg_checksums": "pg_checksums",
        "amcheck": "pg_amcheck"}  # fmt: skip


def own_check_noticed(name: str, value: Any) -> tuple[str, bool] | None:
    """``(check, noticed)`` for a branch that is one of the target's own checks, else None.

    Args:
        name: the assessment branch (``validation: <name>``, ``amcheck``, ...).
        value: its answer.
    """
    if name.startswith("validation: "):
        return f"validation query {name.removeprefix('validation: ')}", not value.ok
    if name == "checksum counters":
        return _OWN[name], any(bool(n) for n in value.values())
    if name in _OWN:
        return _OWN[name], not value.ok
    return None


def report_detection(
    run: CorruptionRun, noticed: dict[str, bool], named: dict[str, list[str]]
) -> None:
    """Record which own checks noticed the damage; none is a finding in the report and the
    Slack thread (a failed drill when the target sets ``require_detection``).

    Args:
        run: the run (its ``damaged`` relations are known).
        noticed: own check -> whether it failed during the assessment.
        named: finding -> relations it named (the WAL damage finder's among them).
    """
    ctx = run.ctx
    if ctx.dry_run or not run.damaged:
        return  # a dry run damaged nothing; no damage, nothing to detect
    by = sorted(check for check, hit in noticed.items() if hit)
    finder = named.get("wal damage finder", [])
    required = run.target.require_detection
    run.details["detection"] = {
        "damaged_relations": run.damaged,
        "own_checks": noticed,
        "noticed_by": by,
        "wal_damage_finder_named": finder,
        "detected": bool(by),
        "require_detection": required,
    }
    if by:
        detail = f"noticed by {', '.join(by)} (of {len(noticed)} own check(s))"
    else:
        ran = ", ".join(sorted(noticed)) or "none configured"
        detail = (
            f"{NOT_CAUGHT}: damage to {', '.join(run.damaged)} passed every own check "
            f"({ran}); only the WAL damage finder"
            + (f" named it ({', '.join(finder)})" if finder else " could look for it")
            + "; add a validation query that would fail on it"
        )
        ctx.note(f"detection: {detail}")
    ctx.record_check(
        "detection: the target's own checks noticed the damage",
        bool(by),
        critical=required and ctx.is_drill,
        detail=detail,
        value=by,
    )
