"""The standalone HTML report of ``dr report``: a trend chart per scenario and target, then every run."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dr.clock import utcnow
from dr.errors import redact
from tasks.report.chart import trend_svg
from tasks.report.tables import _time, _verdict, format_duration

log = logging.getLogger(__name__)

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
        f"<p>{len(rows)} run(s); generated {_time(utcnow())}.</p>",
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
