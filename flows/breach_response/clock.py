"""The regulatory clock (detection, deadlines, reminder) and the run's measurements."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from dr.clock import utcnow
from dr.errors import DRError
from flows.breach_response.assess import deadlines_from
from flows.breach_response.state import BreachRun, iso
from tasks.postgres import heartbeat as postgres_heartbeat
from tasks.postgres import security as postgres_security

OBSERVE_TIMEOUT_SECONDS = 30.0
OBSERVE_POLL_SECONDS = 0.05


def observe_intrusion(run: BreachRun) -> datetime | None:
    """Drills: when the assessment sees the planted intruder (a session of a compromised role).

    Polls the primary's sessions; the detection is the moment the answer that shows the
    rogue session came back, so detection time is measured, not stamped.
    """
    roles = set(run.compromised)
    deadline = time.monotonic() + OBSERVE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            sessions = postgres_security.session_snapshot_task.with_options(retries=0)(
                run.ci(run.pgc.primary)
            )
        except DRError:
            sessions = []
        seen = [s for s in sessions if s.get("user") in roles]
        if seen:
            at = utcnow()
            run.info["detection"] = {
                "observed_at": iso(at),
                "how": "session of a compromised role in pg_stat_activity",
                "sessions": [{"pid": s["pid"], "user": s["user"]} for s in seen],
            }
            return at
        time.sleep(OBSERVE_POLL_SECONDS)
    return None


def start_clock(run: BreachRun) -> None:
    """Detect (drills: observe the intrusion), then announce the regulatory deadlines."""
    ctx = run.ctx
    if ctx.is_drill and not ctx.dry_run:
        observed = observe_intrusion(run)
        ctx.record_check(
            "intrusion observed by the assessment",
            observed is not None,
            detail=f"rogue session seen at {iso(observed)}"
            if observed
            else f"no session of {', '.join(run.compromised)} seen in "
            f"{OBSERVE_TIMEOUT_SECONDS:g} s",
        )
        run.detected_at = observed or utcnow()
        ctx.measure(detected_at=run.detected_at, detected_at_basis="assessment saw the intrusion")
        snapshot_writes(run)
    elif ctx.is_drill:
        run.detected_at = utcnow()
    else:
        run.detected_at = (run.opts.detected_at or ctx.declared_at).astimezone(UTC)
        if not ctx.dry_run:
            snapshot_writes(run)
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


def snapshot_writes(run: BreachRun) -> None:
    """Before containment: each heartbeat writer's newest acknowledged row (what must survive)."""
    try:
        run.info["writes_before"] = {
            w: {"max_seq": v["max_seq"], "max_ts": iso(v["max_ts"]), "rows": v["rows"]}
            for w, v in postgres_heartbeat.heartbeat_state_task(
                run.ci(run.pgc.primary, run.pgc.heartbeat_db)
            ).items()
        }
    except DRError as exc:
        run.ctx.note(f"heartbeat rows before containment not read: {exc}")


def measure(run: BreachRun) -> None:
    """Detection, containment and resume times; RTO from the intrusion; RPO from the rows."""
    ctx = run.ctx
    to_contained = (
        (run.contained_at - run.detected_at).total_seconds() if run.contained_at else None
    )
    resumed = ctx.restored_at if run.opts.resume else None
    to_resumed = (resumed - run.detected_at).total_seconds() if resumed else None
    to_detected = (run.detected_at - run.intrusion_at).total_seconds() if run.intrusion_at else None
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
        "intrusion_to_detected_seconds": to_detected,
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
        restored_at_basis="services resumed: first application write with the new "
        "credentials, every end-to-end check passing",
        rto_phases={"detected -> contained": to_contained},
        **rpo(run),
    )


def _lost_heartbeat_rows(run: BreachRun) -> tuple[int, float] | None:
    """Rows acknowledged before containment and missing now, and the span they cover."""
    before = run.info.get("writes_before")
    if before is None:
        return None
    conninfo = run.ci(run.pgc.primary, run.pgc.heartbeat_db)
    lost, span = 0, 0.0
    for writer, state in before.items():
        present = postgres_heartbeat.count_heartbeat_rows_through_task(
            conninfo, writer, state["max_seq"]
        )
        missing = max(0, state["rows"] - present)
        if missing:
            newest = postgres_heartbeat.newest_heartbeat_between_task(
                conninfo, writer, 1, state["max_seq"]
            )
            acked = datetime.fromisoformat(state["max_ts"])
            span = max(span, (acked - newest[1]).total_seconds() if newest else 0.0)
            lost += missing
    return lost, span


def rpo(run: BreachRun) -> dict[str, Any]:
    """Data lost, counted: heartbeat rows acknowledged before containment still present; a
    restore adds the window of changes it rolled back."""
    counted = _lost_heartbeat_rows(run)
    if counted is None:
        return {"rpo_basis": "not measured: the heartbeat rows before containment are unknown"}
    lost, span = counted
    basis = (
        f"{lost} heartbeat row(s) acknowledged before containment missing after the response"
        " (set membership per writer)"
    )
    files = [f["source"] for f in run.files_restored]
    if (run.restored is None and not files) or run.restore_to is None:
        return {
            "rpo_seconds": span,
            "rpo_basis": f"measured: {basis}; nothing restored",
            "lost_rows": lost,
            "lost_rows_basis": basis,
        }
    end = run.contained_at or run.detected_at
    window = max(0.0, (end - run.restore_to).total_seconds())
    rolled_back = [*run.opts.restore_tables] if run.restored is not None else []
    rolled_back += [f"files {name}" for name in files]
    out: dict[str, Any] = {
        "rpo_seconds": max(span, window),
        "rpo_basis": f"restore_to -> contained: changes to {', '.join(rolled_back)}"
        f" in that window were rolled back; {basis}",
        "lost_rows": lost,
        "lost_rows_basis": basis,
    }
    if files and window >= span:
        # Objects written in the window are rolled back (kept as evidence) unless a row names
        # them: how many were good writes nobody knows, so the window bounds the loss.
        out["rpo_bound"] = "upper"
        taken = "objects written in it and named by no row left the live prefix (evidence)"
        out["rpo_basis"] = f"upper bound: {out['rpo_basis']}; {taken}"
    return out
