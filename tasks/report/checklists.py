"""Post-run checklists, ticked where the run itself is the evidence."""

from __future__ import annotations

from typing import Any

# Distilled from the five runbooks in shared/seeds (000 recovery checklists and comms
# cadence; 001 post-recovery checklist; 002 post-recovery activities and post-mortem
# template; 003 post-incident steps and drill checklist; 004 post-recovery procedures).
# An item with an "evidence" key is ticked when this run proves it.
INCIDENT_CHECKLIST: tuple[dict[str, str], ...] = (
    {
        "item": "Timeline recorded in UTC (detection, response, mitigation, resolution)",
        "evidence": "timeline",
    },
    {"item": "Recovery time and data loss measured against objectives", "evidence": "measured"},
    {
        "item": "End-to-end health verified: services, health endpoints, database integrity",
        "evidence": "checks",
    },
    {"item": "Every change recorded with how to undo it", "evidence": "changes"},
    {"item": "All-clear sent to stakeholders with restored time and data-loss window"},
    {"item": "Recent business data checked by its owners (newest orders, trades, blocks)"},
    {"item": "Backups running again against the recovered primary; next backup verified"},
    {"item": "Monitoring and alerting point at the recovered systems; watch closely 24-48 h"},
    {"item": "Performance back within its normal range"},
    {"item": "Security review done if the cause may be malicious; exposed credentials rotated"},
    {"item": "Temporary changes reverted or made permanent, each with an owner"},
    {"item": "Incident report within 24 h: impact, root cause, resolution"},
    {"item": "Blameless post-mortem within 7 days (SEV1/SEV2): what went well, what to improve"},
    {"item": "Action items filed with an owner and a due date"},
    {"item": "Runbook and dr.yaml updated with what was learned"},
)

DRILL_CHECKLIST: tuple[dict[str, str], ...] = (
    {"item": "Recovery time measured and compared with the objective", "evidence": "rto"},
    {"item": "Data loss measured and compared with the objective", "evidence": "rpo"},
    {"item": "Functionality verified end to end", "evidence": "checks"},
    {"item": "Every change recorded with how to undo it", "evidence": "changes"},
    {"item": "Target back in its normal state (replicas, services, DNS)"},
    {"item": "Issues found filed as action items with an owner and a due date"},
    {"item": "Post-drill review held with the people on call"},
    {"item": "Runbook, dr.yaml and objectives updated if the drill showed a gap"},
    {"item": "Next drill scheduled"},
)

DRY_RUN_CHECKLIST: tuple[dict[str, str], ...] = (
    {"item": "Plan reviewed: every action names its target object", "evidence": "plan"},
    {"item": "Credentials and access needed by each step confirmed"},
    {"item": "Approvers for the irreversible steps named and reachable"},
    {"item": "Drill scheduled to measure the real RTO and RPO"},
)


def checklist_for(mode: str) -> tuple[dict[str, str], ...]:
    """The post-run checklist for a mode (``incident``, ``drill`` or ``dry-run``)."""
    return {"drill": DRILL_CHECKLIST, "dry-run": DRY_RUN_CHECKLIST}.get(mode, INCIDENT_CHECKLIST)


def _evidence(run: dict[str, Any], key: str) -> bool:
    checks = run.get("checks") or []
    if key == "timeline":
        return bool(run.get("phases"))
    if key == "measured":
        return run.get("rto_seconds") is not None and run.get("rpo_seconds") is not None
    if key == "rto":
        return run.get("rto_seconds") is not None
    if key == "rpo":
        return run.get("rpo_seconds") is not None
    if key == "checks":
        return bool(checks) and all(c.get("ok") for c in checks if c.get("critical", True))
    if key == "changes":
        return all(c.get("undo") or c.get("outcome") == "unchanged" for c in run.get("changes", []))
    if key == "plan":
        return bool(run.get("plan"))
    return False
