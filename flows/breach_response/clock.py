"""The regulatory clock (detection, deadlines, reminder) and the run's measurements."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dr.clock import utcnow
from flows.breach_response.assess import deadlines_from
from flows.breach_response.state import BreachRun, iso


def start_clock(run: BreachRun) -> None:
    """Stamp the detection and announce the regulatory deadlines."""
    ctx = run.ctx
    if ctx.is_drill:
        run.detected_at = utcnow()
    else:
        run.detected_at = (run.opts.detected_at or ctx.declared_at).astimezone(UTC)
    deadlines = deadlines_from(run.target, run.detected_at)
    run.info["regulatory"] = {"detected_at": iso(run.detected_at), "deadlines": deadlines}
    lines = "; ".join(f"{d['name']} due by {d['due_at']} ({d['hours']:g} h)" for d in deadlines)
    ctx.note(
        f"Regulatory clock: breach detected at {iso(run.detected_at)}. "
        + (lines or "no regulatory deadline configured")
    )


def remind_clock(run: BreachRun) -> None:
    """A closing reply in the thread: how long is left before each deadline."""
    now = utcnow()
    parts = []
    for d in run.info.get("regulatory", {}).get("deadlines", []):
        left = (datetime.fromisoformat(d["due_at"]) - now).total_seconds() / 3600
        parts.append(f"{d['name']} due by {d['due_at']} ({left:.1f} h left)")
    if parts:
        run.ctx.slack.reply("Reminder, regulatory deadlines: " + "; ".join(parts))


def measure(run: BreachRun) -> None:
    ctx = run.ctx
    to_contained = (
        (run.contained_at - run.detected_at).total_seconds() if run.contained_at else None
    )
    resumed = ctx.restored_at if run.opts.resume else None
    to_resumed = (resumed - run.detected_at).total_seconds() if resumed else None
    timeline = {
        "intrusion_at": iso(run.intrusion_at),
        "detected_at": iso(run.detected_at),
        "contained_at": iso(run.contained_at),
        "evidence_preserved_at": iso(run.evidence_at),
        "rotation_started_at": iso(run.rotation_started_at),
        "resume_started_at": iso(run.resume_started_at),
        "services_resumed_at": iso(resumed),
    }
    run.info["timeline"] = timeline
    run.info["measurements"] = {
        "detected_to_contained_seconds": to_contained,
        "detected_to_resumed_seconds": to_resumed,
    }
    if to_contained is not None:
        ctx.record_check(
            "time from detection to containment measured",
            True,
            critical=False,
            detail=f"{to_contained:.2f} s",
            value=round(to_contained, 3),
        )
    ctx.measure(
        rto_seconds=to_resumed,
        rto_basis="detected_at -> services resumed (first application write with the new "
        "credentials, every end-to-end check passing); detected -> contained: "
        + (f"{to_contained:.2f} s" if to_contained is not None else "not measured"),
        **rpo(run),
    )


def rpo(run: BreachRun) -> dict[str, Any]:
    """Data rolled back: none, or the window from the restore point to containment."""
    if run.restored is None or run.restore_to is None:
        return {
            "rpo_seconds": 0.0,
            "rpo_basis": "nothing restored: the response rolls no data back",
            "lost_rows": 0,
        }
    end = run.contained_at or run.detected_at
    return {
        "rpo_seconds": max(0.0, (end - run.restore_to).total_seconds()),
        "rpo_basis": f"restore_to -> contained: changes to {', '.join(run.opts.restore_tables)}"
        " in that window were rolled back",
    }
