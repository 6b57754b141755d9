"""The run's markdown report: measurements, timeline, plan, approvals, checks, changes, chart.

Sections, in order: measurements against objectives, the timeline, the dry-run plan, the
approvals, the checks run, every change made and how to undo it, what compensation undid
and did not, Slack failures, a chart of RTO and RPO over past runs, and the post-incident
checklist distilled from the teams' runbooks (``shared/seeds``), ticked where this run
is the evidence. Everything rendered goes through :func:`dr.errors.redact`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dr.errors import redact
from tasks.report.chart import svg_data_uri, trend_svg
from tasks.report.checklists import _evidence, checklist_for
from tasks.report.tables import (
    _cell,
    _objectives,
    _time,
    _verdict,
    format_duration,
    rpo_bound_prefix,
    table_rows,
)


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
    lines = _heading(run)
    lines += _measurements(run)
    lines += _timeline(run)
    lines += _plan_and_approvals(run)
    lines += _checks(run)
    lines += _changes(run)
    lines += _compensation_and_notes(run)
    lines += _chart(run, history, history_note)
    lines += _checklist(run)
    return redact("\n".join(lines))


def _heading(run: dict[str, Any]) -> list[str]:
    """Title, the run's facts on one line, and why it ended as it did."""
    lines: list[str] = []
    mode = run.get("mode", "")
    outcome = str(run.get("outcome", "")).upper()
    title = {"drill": "drill", "dry-run": "dry run", "incident": "incident"}.get(mode, mode)
    lines += [f"# DR {title}: {run['scenario']} on {run['target']}: {outcome}", ""]
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
    return lines


def _measurements(run: dict[str, Any]) -> list[str]:
    """RTO, RPO and lost rows against the objectives."""
    lines: list[str] = []
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
                rpo_bound_prefix(run.get("rpo_bound")) + format_duration(rpo),
                f"<= {format_duration(rpo_obj)}" if rpo_obj is not None else "",
                _verdict(rpo, rpo_obj).upper(),
                run.get("rpo_basis", ""),
            ],
            [
                "lost rows",
                "n/a" if run.get("lost_rows") is None else run["lost_rows"],
                "",
                "",
                run.get("lost_rows_basis", ""),
            ],
        ],
    )
    phases = run.get("rto_phases") or {}
    if phases:
        parts = ", ".join(f"{k} {format_duration(v)}" for k, v in phases.items())
        lines += ["", f"RTO phases: {parts}."]
    met = "met" if run.get("objectives_met") else "NOT met"
    lines += ["", f"Objectives {met}.", ""]
    return lines


def _timeline(run: dict[str, Any]) -> list[str]:
    """Every phase with its times, outcome and detail."""
    lines = ["## Timeline (UTC)", ""]
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
    return lines


def _plan_and_approvals(run: dict[str, Any]) -> list[str]:
    """The dry-run plan and the approval decisions, when there are any."""
    lines: list[str] = []
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
    return lines


def _checks(run: dict[str, Any]) -> list[str]:
    """The checks run and their results."""
    lines = ["## Checks run", ""]
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
    return lines


def _changes(run: dict[str, Any]) -> list[str]:
    """Every change made, with how to undo it."""
    lines = ["## Changes made and how to undo them", ""]
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
    return lines


def _compensation_and_notes(run: dict[str, Any]) -> list[str]:
    """What compensation undid and did not, notes, and Slack failures."""
    lines: list[str] = []
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
    return lines


def _chart(
    run: dict[str, Any], history: Sequence[dict[str, Any]] | None, history_note: str
) -> list[str]:
    """The trend chart of RTO and RPO over past runs (this run alone without history)."""
    lines = ["## RTO and RPO over past runs", ""]
    if history_note:
        lines += [history_note, ""]
    chart_rows = list(history) if history is not None else [run]
    svg = trend_svg(chart_rows, title=f"{run['scenario']} on {run['target']}")
    lines += [f"![RTO and RPO over past runs]({svg_data_uri(svg)})", ""]
    return lines


def _checklist(run: dict[str, Any]) -> list[str]:
    """The post-run checklist, ticked where this run is the evidence."""
    mode = run.get("mode", "")
    lines = ["## Post-incident checklist" if mode == "incident" else "## Follow-up checklist", ""]
    for entry in checklist_for(mode):
        done = "evidence" in entry and _evidence(run, entry["evidence"])
        lines.append(f"- [{'x' if done else ' '}] {entry['item']}")
    lines.append("")
    return lines
