"""Reports of a run, for people: Prefect artifacts, the trend chart and the HTML report.

What a run leaves behind in the Prefect UI, under stable keys per scenario and target
(``dr-<scenario>-<target>`` for the table, ``...-report`` for the markdown) so that the UI
shows the history of each key:

- a table artifact: each phase (start, end, duration, outcome), then RTO and RPO against
  their objectives, pass or fail;
- a markdown report: measurements against objectives, the timeline, the dry-run plan, the
  approvals, the checks run, every change made and how to undo it, what compensation undid
  and did not, Slack failures, a chart of RTO and RPO over past runs, and the post-incident
  checklist distilled from the teams' runbooks (``shared/seeds``), ticked where this run
  is the evidence;
- a progress artifact while the run lasts (:class:`ProgressArtifact`).

The chart is an SVG embedded as ``![](data:image/svg+xml;base64,...)``: the Prefect UI strips
raw inline ``<svg>`` from markdown but displays data-URI images. ``dr report`` writes the
same chart inline in a standalone HTML file (:func:`write_html_report`).

Everything rendered goes through :func:`dr.errors.redact`. Functions take the run as JSON-able
data (``RunResult.model_dump(mode="json")``) so this module depends on no flow code.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from dr.errors import redact

__all__ = [
    "DRILL_CHECKLIST",
    "DRY_RUN_CHECKLIST",
    "INCIDENT_CHECKLIST",
    "ProgressArtifact",
    "artifact_key",
    "checklist_for",
    "format_duration",
    "publish_run_artifacts",
    "render_html",
    "render_markdown",
    "svg_data_uri",
    "table_rows",
    "trend_svg",
    "write_html_report",
]

log = logging.getLogger(__name__)

# Prefect artifact keys: "must only contain lowercase letters, numbers, and dashes".
_KEY_BAD = re.compile(r"[^a-z0-9-]+")

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"

# Chart geometry (pixels).
CHART_WIDTH = 720
PANEL_HEIGHT = 190
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 70, 24, 30, 34
COLOR_LINE = "#3b6ea5"
COLOR_OK = "#2e8540"
COLOR_BAD = "#c0392b"
COLOR_OBJECTIVE = "#d98c00"


# ---------------------------------------------------------------------- checklists

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


def _measured_runs(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [r for r in rows if r.get("mode") != "dry-run" and _dt(r.get("declared_at"))]
    out.sort(key=lambda r: _dt(r["declared_at"]))  # type: ignore[arg-type,return-value]
    return out


def _nice_max(value: float) -> float:
    """A round axis maximum >= value, in the unit a person reads (seconds, minutes, hours)."""
    if value <= 0:
        return 1.0
    unit = 1.0 if value < 120 else 60.0 if value < 2 * 3600 else 3600.0
    scaled = value / unit
    magnitude = 10 ** math.floor(math.log10(scaled))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if scaled <= step * magnitude * (1 + 1e-9):
            return step * magnitude * unit
    return 10 * magnitude * unit


def _axis_label(seconds: float) -> str:
    """A compact axis label: ``0``, ``45 s``, ``7.5 min``, ``2 h``."""
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _panel(
    runs: Sequence[dict[str, Any]],
    value_key: str,
    objective_key: str,
    title: str,
    top: float,
) -> list[str]:
    """SVG elements of one panel (RTO or RPO) whose top edge is at ``top``."""
    left, right = PAD_LEFT, CHART_WIDTH - PAD_RIGHT
    y0, y1 = top + PANEL_HEIGHT - PAD_BOTTOM, top + PAD_TOP
    out = [
        f'<text x="{left}" y="{top + 18}" font-size="13" font-weight="bold">'
        f"{xml_escape(title)}</text>",
        f'<line x1="{left}" y1="{y0}" x2="{right}" y2="{y0}" stroke="#888"/>',
        f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="#888"/>',
    ]
    points = [(i, r) for i, r in enumerate(runs) if r.get(value_key) is not None]
    objectives = [r.get(objective_key) for r in runs if r.get(objective_key) is not None]
    if not points:
        out.append(
            f'<text x="{(left + right) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" '
            f'font-size="12" fill="#666">no measurements yet</text>'
        )
        return out
    top_value = _nice_max(
        max([float(r[value_key]) for _, r in points] + [float(o) for o in objectives]) * 1.1
    )
    n = len(runs)

    def x_of(i: int) -> float:
        return left + (right - left) * (0.5 if n == 1 else i / (n - 1))

    def y_of(v: float) -> float:
        return y0 - (y0 - y1) * (v / top_value)

    for frac in (0.0, 0.5, 1.0):
        v = top_value * frac
        y = y_of(v)
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{xml_escape(_axis_label(v))}</text>"
        )
        if frac:
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
    if objectives:
        objective = float(objectives[-1])
        y = y_of(objective)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
            f'stroke="{COLOR_OBJECTIVE}" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{right}" y="{y - 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{COLOR_OBJECTIVE}">objective {xml_escape(format_duration(objective))}</text>'
        )
    coords = " ".join(f"{x_of(i):.1f},{y_of(float(r[value_key])):.1f}" for i, r in points)
    if len(points) > 1:
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{COLOR_LINE}" stroke-width="2"/>'
        )
    for i, r in points:
        value = float(r[value_key])
        objective = r.get(objective_key)
        color = COLOR_OK if objective is None or value <= float(objective) else COLOR_BAD
        label = f"{_time(r.get('declared_at'))}: {format_duration(value)}"
        out.append(
            f'<circle cx="{x_of(i):.1f}" cy="{y_of(value):.1f}" r="4" fill="{color}">'
            f"<title>{xml_escape(label)}</title></circle>"
        )
    label_every = max(1, math.ceil(n / 6))
    labelled = list(range(0, n, label_every))
    if labelled[-1] != n - 1 and n - 1 - labelled[-1] >= label_every:
        labelled.append(n - 1)
    for i in labelled:
        moment = _dt(runs[i].get("declared_at"))
        text = moment.strftime("%Y-%m-%d") if moment else ""
        anchor = "middle" if n == 1 else "start" if i == 0 else "end" if i == n - 1 else "middle"
        out.append(
            f'<text x="{x_of(i):.1f}" y="{y0 + 16}" text-anchor="{anchor}" font-size="10" '
            f'fill="#555">{xml_escape(text)}</text>'
        )
    return out


def trend_svg(rows: Iterable[dict[str, Any]], *, title: str = "RTO and RPO over past runs") -> str:
    """A two-panel SVG line chart: RTO (top) and RPO (bottom) of past runs, oldest first.

    Each point is green when within its objective and red when not; the dashed line is the
    objective. Dry runs (nothing measured) are left out.

    Args:
        rows: history rows (see ``tasks.history.query_runs``) or run results; each needs
            ``declared_at`` and may have ``rto_seconds``, ``rpo_seconds``, their objectives
            as ``rto_objective_seconds`` / ``rpo_objective_seconds`` (or ``objectives``),
            and ``mode``.
        title: the chart's title.

    Returns:
        A standalone SVG document.
    """
    runs = []
    for row in _measured_runs(rows):
        row = dict(row)
        objectives = row.get("objectives") or {}
        row.setdefault("rto_objective_seconds", objectives.get("rto_seconds"))
        row.setdefault("rpo_objective_seconds", objectives.get("rpo_seconds"))
        runs.append(row)
    height = 2 * PANEL_HEIGHT + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height}" '
        f'viewBox="0 0 {CHART_WIDTH} {height}" font-family="sans-serif">',
        f'<rect width="{CHART_WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{CHART_WIDTH / 2}" y="16" text-anchor="middle" font-size="14">'
        f"{xml_escape(redact(title))} ({len(runs)} run{'s' if len(runs) != 1 else ''})</text>",
    ]
    parts += _panel(runs, "rto_seconds", "rto_objective_seconds", "RTO (recovery time)", 20)
    parts += _panel(
        runs, "rpo_seconds", "rpo_objective_seconds", "RPO (data-loss window)", 20 + PANEL_HEIGHT
    )
    parts.append("</svg>")
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    """``data:image/svg+xml;base64,...`` for an SVG document (displayed by the Prefect UI)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


# ---------------------------------------------------------------------- markdown report


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(
    run: dict[str, Any],
    *,
    history: Sequence[dict[str, Any]] | None = None,
    history_note: str = "",
) -> str:
    """The run's markdown report (see the module docstring for its sections).

    Args:
        run: the run's result as JSON-able data.
        history: past runs of the same scenario on the same target, for the chart (the
            current run included); None when history could not be read.
        history_note: a sentence about history (e.g. why it was not written).

    Returns:
        Markdown, redacted.
    """
    mode = run.get("mode", "")
    outcome = str(run.get("outcome", "")).upper()
    title = {"drill": "drill", "dry-run": "dry run", "incident": "incident"}.get(mode, mode)
    lines = [f"# DR {title}: {run['scenario']} on {run['target']}: {outcome}", ""]
    meta = [
        f"**Mode:** {mode}",
        f"**Severity:** {run.get('severity') or 'n/a'}",
        f"**Declared:** {_time(run.get('declared_at'))}",
    ]
    if run.get("failure_at"):
        meta.append(f"**Failure:** {_time(run.get('failure_at'))}")
    if run.get("restored_at"):
        meta.append(f"**Restored:** {_time(run.get('restored_at'))}")
    if run.get("flow_run_url"):
        meta.append(f"**Flow run:** [{run.get('flow_run_id')}]({run['flow_run_url']})")
    elif run.get("flow_run_id"):
        meta.append(f"**Flow run:** {run['flow_run_id']}")
    lines += [" · ".join(meta), ""]
    if run.get("reason"):
        lines += [f"> **Why {run.get('outcome')}:** {_cell(run['reason'])}", ""]

    rto_obj, rpo_obj = _objectives(run)
    rto, rpo = run.get("rto_seconds"), run.get("rpo_seconds")
    lines += ["## Measurements against objectives", ""]
    lines += _md_table(
        ["measure", "measured", "objective", "result", "how it was measured"],
        [
            [
                "RTO",
                format_duration(rto),
                f"<= {format_duration(rto_obj)}" if rto_obj is not None else "",
                _verdict(rto, rto_obj).upper(),
                run.get("rto_basis", ""),
            ],
            [
                "RPO",
                format_duration(rpo),
                f"<= {format_duration(rpo_obj)}" if rpo_obj is not None else "",
                _verdict(rpo, rpo_obj).upper(),
                run.get("rpo_basis", ""),
            ],
            ["lost rows", "n/a" if run.get("lost_rows") is None else run["lost_rows"], "", "", ""],
        ],
    )
    met = "met" if run.get("objectives_met") else "NOT met"
    lines += ["", f"Objectives {met}.", ""]

    lines += ["## Timeline (UTC)", ""]
    phases = run.get("phases", [])
    lines += _md_table(
        ["phase", "start", "end", "duration", "outcome", "detail"],
        [
            [
                row["phase"],
                row["start"],
                row["end"],
                format_duration(row["duration_seconds"]),
                row["result"],
                phase.get("detail", ""),
            ]
            for row, phase in zip(table_rows(run), phases, strict=False)
        ],
    )
    lines.append("")

    if run.get("plan"):
        lines += ["## Plan (dry run: nothing was changed)", ""]
        lines += [f"{i}. {_cell(step)}" for i, step in enumerate(run["plan"], 1)]
        lines.append("")

    if run.get("approvals"):
        lines += ["## Approvals", ""]
        lines += _md_table(
            ["step", "decision", "who", "why", "at"],
            [
                [
                    a.get("step"),
                    "approved" if a.get("approved") else "rejected",
                    a.get("who"),
                    a.get("why"),
                    _time(a.get("at")),
                ]
                for a in run["approvals"]
            ],
        )
        lines.append("")

    lines += ["## Checks run", ""]
    if run.get("checks"):
        lines += _md_table(
            ["check", "result", "critical", "detail"],
            [
                [
                    c["name"],
                    "PASS" if c.get("ok") else "FAIL",
                    "yes" if c.get("critical", True) else "no",
                    c.get("detail", ""),
                ]
                for c in run["checks"]
            ],
        )
    else:
        lines.append("No checks were run.")
    lines.append("")

    lines += ["## Changes made and how to undo them", ""]
    if run.get("changes"):
        lines += _md_table(
            ["at", "system", "action", "object", "outcome", "how to undo", "automatic undo"],
            [
                [
                    _time(c.get("at")),
                    c.get("system"),
                    c.get("action"),
                    c.get("object"),
                    c.get("outcome"),
                    c.get("undo") or "nothing to undo",
                    "yes" if c.get("compensable") else "no",
                ]
                for c in run["changes"]
            ],
        )
    else:
        lines.append("No changes were made.")
    lines.append("")

    if run.get("undone") or run.get("not_undone"):
        lines += ["## Compensation", ""]
        if run.get("undone"):
            lines += ["Undone, newest first:", ""] + [f"- {_cell(u)}" for u in run["undone"]]
            lines.append("")
        if run.get("not_undone"):
            lines += ["**Not undone (needs a person):**", ""]
            lines += [f"- {_cell(u)}" for u in run["not_undone"]]
            lines.append("")

    if run.get("notes"):
        lines += ["## Notes", ""] + [f"- {_cell(n)}" for n in run["notes"]] + [""]

    lines += ["## Notifications", ""]
    if run.get("slack_failures"):
        lines += ["Slack messages that could not be delivered:", ""]
        lines += [f"- {_cell(f)}" for f in run["slack_failures"]]
    else:
        lines.append("No Slack failures.")
    lines.append("")

    lines += ["## RTO and RPO over past runs", ""]
    if history_note:
        lines += [history_note, ""]
    chart_rows = list(history) if history is not None else [run]
    svg = trend_svg(chart_rows, title=f"{run['scenario']} on {run['target']}")
    lines += [f"![RTO and RPO over past runs]({svg_data_uri(svg)})", ""]

    lines += ["## Post-incident checklist" if mode == "incident" else "## Follow-up checklist", ""]
    for entry in checklist_for(mode):
        done = "evidence" in entry and _evidence(run, entry["evidence"])
        lines.append(f"- [{'x' if done else ' '}] {entry['item']}")
    lines.append("")
    return redact("\n".join(lines))


# ---------------------------------------------------------------------- Prefect artifacts


def publish_run_artifacts(run: dict[str, Any], markdown: str) -> dict[str, str]:
    """Create the table and markdown artifacts of a run under their stable keys.

    Must be called inside a flow run (artifacts attach to it).

    Args:
        run: the run's result as JSON-able data.
        markdown: from :func:`render_markdown`.

    Returns:
        ``{"table": key, "markdown": key}``.
    """
    table_key = artifact_key(run["scenario"], run["target"])
    report_key = artifact_key(run["scenario"], run["target"], "report")
    summary = (
        f"{run['mode']} {run['scenario']} on {run['target']}: {run['outcome']}; "
        f"RTO {format_duration(run.get('rto_seconds'))}, "
        f"RPO {format_duration(run.get('rpo_seconds'))}"
    )
    create_table_artifact(table=table_rows(run), key=table_key, description=redact(summary))
    create_markdown_artifact(markdown=redact(markdown), key=report_key, description=redact(summary))
    log.info("artifacts %s and %s written", table_key, report_key)
    return {"table": table_key, "markdown": report_key}


class ProgressArtifact:
    """A progress bar in the Prefect UI for a long run (created on first update).

    Args:
        key: a stable key (see :func:`artifact_key` with suffix ``progress``).
        description: shown next to the bar.
    """

    def __init__(self, key: str, description: str = "") -> None:
        self.key = key
        self.description = description
        self.artifact_id: Any = None
        self.percent = 0.0

    def update(self, fraction: float, message: str = "") -> float:
        """Set the progress.

        Args:
            fraction: 0.0 to 1.0 (clamped).
            message: replaces the description when given.

        Returns:
            The percentage now shown.
        """
        self.percent = round(max(0.0, min(1.0, fraction)) * 100, 1)
        description = redact(message or self.description)
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                progress=self.percent, key=self.key, description=description
            )
        else:
            update_progress_artifact(
                artifact_id=self.artifact_id, progress=self.percent, description=description
            )
        return self.percent


# ---------------------------------------------------------------------- HTML report

_HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f3f3f3; }
.pass { color: #2e8540; font-weight: bold; } .fail { color: #c0392b; font-weight: bold; }
h2 { margin-top: 1.6em; }
"""


def _html_verdict(measured: Any, objective: Any) -> str:
    word = _verdict(measured, objective)
    css = {"pass": "pass", "fail": "fail"}.get(word, "")
    return f'<span class="{css}">{html.escape(word)}</span>'


def render_html(rows: Sequence[dict[str, Any]], *, title: str = "DR drill history") -> str:
    """A standalone HTML report: one trend chart per scenario and target, then every run.

    Args:
        rows: history rows (oldest first), from ``tasks.history.query_runs``.
        title: the page title.

    Returns:
        An HTML document (the charts as inline SVG), redacted.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["target"]), []).append(row)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(rows)} run(s); generated {_time(datetime.now(UTC))}.</p>",
    ]
    if not rows:
        out.append("<p>No runs recorded yet.</p>")
    for (scenario, target), group in sorted(groups.items()):
        out.append(f"<h2>{html.escape(scenario)} on {html.escape(target)}</h2>")
        out.append(trend_svg(group, title=f"{scenario} on {target}"))
    if rows:
        out.append("<h2>Runs</h2><table><tr>")
        headers = [
            "declared (UTC)",
            "scenario",
            "target",
            "mode",
            "outcome",
            "RTO",
            "RTO objective",
            "RTO result",
            "RPO",
            "RPO objective",
            "RPO result",
            "lost rows",
            "flow run",
        ]
        out.append("".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
        for r in rows:
            cells = [
                html.escape(_time(r.get("declared_at"))),
                html.escape(str(r.get("scenario", ""))),
                html.escape(str(r.get("target", ""))),
                html.escape(str(r.get("mode", ""))),
                html.escape(str(r.get("outcome", ""))),
                html.escape(format_duration(r.get("rto_seconds"))),
                html.escape(format_duration(r.get("rto_objective_seconds"))),
                _html_verdict(r.get("rto_seconds"), r.get("rto_objective_seconds")),
                html.escape(format_duration(r.get("rpo_seconds"))),
                html.escape(format_duration(r.get("rpo_objective_seconds"))),
                _html_verdict(r.get("rpo_seconds"), r.get("rpo_objective_seconds")),
                html.escape("" if r.get("lost_rows") is None else str(r["lost_rows"])),
                html.escape(str(r.get("flow_run_id") or "")),
            ]
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return redact("\n".join(out))


def write_html_report(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`render_html` of ``rows`` to ``path``.

    Args:
        rows: history rows, oldest first.
        path: the HTML file to write (parent folders are created).

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(rows), encoding="utf-8")
    log.info("HTML report with %d run(s) written to %s", len(rows), out)
    return out
