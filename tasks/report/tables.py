"""The run as rows: stable artifact keys, durations, verdicts and the table artifact's rows."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from dr.errors import redact

# Prefect artifact keys: "must only contain lowercase letters, numbers, and dashes".
_KEY_BAD = re.compile(r"[^a-z0-9-]+")

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"

# ---------------------------------------------------------------------- small helpers


def artifact_key(scenario: str, target: str, suffix: str = "") -> str:
    """The stable artifact key of a scenario on a target: ``dr-<scenario>-<target>[-suffix]``.

    Args:
        scenario: e.g. ``backup-verification``.
        target: the target's name in dr.yaml (any characters).
        suffix: e.g. ``report`` or ``progress``.

    Returns:
        A lowercase key of letters, digits and single dashes, as Prefect requires.
    """
    raw = "-".join(p for p in ("dr", scenario, target, suffix) if p)
    key = _KEY_BAD.sub("-", raw.lower())
    return re.sub("-{2,}", "-", key).strip("-")


def rpo_bound_prefix(bound: str | None) -> str:
    """How an RPO figure reads: ``at least`` a lower bound, ``at most`` an upper one."""
    return {"lower": "at least ", "upper": "at most "}.get(bound or "", "")


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return "n/a"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _time(value: Any) -> str:
    moment = _dt(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if moment else ""


def _cell(value: Any) -> str:
    """A markdown table cell: one line, pipes escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _verdict(measured: float | None, objective: float | None) -> str:
    if measured is None:
        return NOT_MEASURED
    if objective is None:
        return PASS
    return PASS if measured <= objective else FAIL


def _objectives(run: dict[str, Any]) -> tuple[float | None, float | None]:
    objectives = run.get("objectives") or {}
    return objectives.get("rto_seconds"), objectives.get("rpo_seconds")


# ---------------------------------------------------------------------- table artifact


def table_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the table artifact: every phase, then RTO and RPO against their objectives.

    Args:
        run: the run's result as JSON-able data.

    Returns:
        Dicts with ``phase``, ``start``, ``end``, ``duration_seconds``, ``objective`` and
        ``result`` (a phase's outcome; ``pass``/``fail``/``not measured`` for RTO and RPO).
    """
    rows: list[dict[str, Any]] = []
    for phase in run.get("phases", []):
        start, end = _dt(phase.get("started_at")), _dt(phase.get("ended_at"))
        duration = (end - start).total_seconds() if start and end else None
        rows.append(
            {
                "phase": phase["name"],
                "start": _time(start),
                "end": _time(end),
                "duration_seconds": None if duration is None else round(duration, 3),
                "objective": "",
                "result": phase.get("outcome", ""),
            }
        )
    rto_obj, rpo_obj = _objectives(run)
    rto_start = run.get("failure_at") if run.get("mode") == "drill" else None
    rto_start = rto_start or run.get("declared_at")
    rto, rpo = run.get("rto_seconds"), run.get("rpo_seconds")
    rows.append(
        {
            "phase": "RTO",
            "start": _time(rto_start),
            "end": _time(run.get("restored_at")),
            "duration_seconds": None if rto is None else round(rto, 3),
            "objective": "" if rto_obj is None else f"<= {format_duration(rto_obj)}",
            "result": _verdict(rto, rto_obj),
        }
    )
    rows.append(
        {
            "phase": "RPO",
            "start": "",
            "end": "",
            "duration_seconds": None if rpo is None else round(rpo, 3),
            "objective": "" if rpo_obj is None else f"<= {format_duration(rpo_obj)}",
            "result": _verdict(rpo, rpo_obj),
        }
    )
    return [{k: redact(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------------- chart
