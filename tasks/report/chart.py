"""The trend chart: RTO and RPO of past runs as a two-panel SVG (embedded as a data URI).

The Prefect UI strips raw inline ``<svg>`` from markdown but displays data-URI images, hence
:func:`svg_data_uri`; the HTML report embeds the SVG inline.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from dr.errors import redact
from tasks.report.tables import _dt, _time, format_duration

# Chart geometry (pixels).
CHART_WIDTH = 720
PANEL_HEIGHT = 190
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 70, 24, 30, 34
COLOR_LINE = "#3b6ea5"
COLOR_OK = "#2e8540"
COLOR_BAD = "#c0392b"
COLOR_OBJECTIVE = "#d98c00"


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


class _Scale:
    """Maps a run's index and a value in seconds to pixel coordinates inside one panel."""

    def __init__(self, left: float, right: float, y0: float, y1: float, n: int, top_value: float):
        self.left, self.right, self.y0, self.y1 = left, right, y0, y1
        self.n, self.top_value = n, top_value

    def x_of(self, i: int) -> float:
        return self.left + (self.right - self.left) * (0.5 if self.n == 1 else i / (self.n - 1))

    def y_of(self, v: float) -> float:
        return self.y0 - (self.y0 - self.y1) * (v / self.top_value)


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
    scale = _Scale(left, right, y0, y1, len(runs), top_value)
    out += _y_axis(scale)
    if objectives:
        out += _objective_line(scale, float(objectives[-1]))
    out += _points(scale, points, value_key, objective_key)
    out += _date_labels(scale, runs)
    return out


def _y_axis(scale: _Scale) -> list[str]:
    """Labels at 0, half and the top of the value axis, with light grid lines."""
    out = []
    for frac in (0.0, 0.5, 1.0):
        v = scale.top_value * frac
        y = scale.y_of(v)
        out.append(
            f'<text x="{scale.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{xml_escape(_axis_label(v))}</text>"
        )
        if frac:
            out.append(
                f'<line x1="{scale.left}" y1="{y:.1f}" x2="{scale.right}" y2="{y:.1f}" '
                'stroke="#eee"/>'
            )
    return out


def _objective_line(scale: _Scale, objective: float) -> list[str]:
    """The dashed line of the latest objective, labelled."""
    y = scale.y_of(objective)
    return [
        f'<line x1="{scale.left}" y1="{y:.1f}" x2="{scale.right}" y2="{y:.1f}" '
        f'stroke="{COLOR_OBJECTIVE}" stroke-dasharray="6 4"/>',
        f'<text x="{scale.right}" y="{y - 4:.1f}" text-anchor="end" font-size="11" '
        f'fill="{COLOR_OBJECTIVE}">objective {xml_escape(format_duration(objective))}</text>',
    ]


def _points(
    scale: _Scale,
    points: Sequence[tuple[int, dict[str, Any]]],
    value_key: str,
    objective_key: str,
) -> list[str]:
    """The line through the measurements, and one dot per run: green within objective, red not."""
    out = []
    coords = " ".join(
        f"{scale.x_of(i):.1f},{scale.y_of(float(r[value_key])):.1f}" for i, r in points
    )
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
            f'<circle cx="{scale.x_of(i):.1f}" cy="{scale.y_of(value):.1f}" r="4" fill="{color}">'
            f"<title>{xml_escape(label)}</title></circle>"
        )
    return out


def _date_labels(scale: _Scale, runs: Sequence[dict[str, Any]]) -> list[str]:
    """Dates under the axis for at most about six runs, always including the last one."""
    out = []
    n = scale.n
    label_every = max(1, math.ceil(n / 6))
    labelled = list(range(0, n, label_every))
    if labelled[-1] != n - 1 and n - 1 - labelled[-1] >= label_every:
        labelled.append(n - 1)
    for i in labelled:
        moment = _dt(runs[i].get("declared_at"))
        text = moment.strftime("%Y-%m-%d") if moment else ""
        anchor = "middle" if n == 1 else "start" if i == 0 else "end" if i == n - 1 else "middle"
        out.append(
            f'<text x="{scale.x_of(i):.1f}" y="{scale.y0 + 16}" text-anchor="{anchor}" '
            f'font-size="10" fill="#555">{xml_escape(text)}</text>'
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
