"""Compatibility facade (removed when the layout lands): the old ``tasks.report`` names.

New code imports :mod:`tasks.report.tables`, :mod:`tasks.report.chart`,
:mod:`tasks.report.markdown`, :mod:`tasks.report.checklists`, :mod:`tasks.report.artifacts`
(Prefect artifacts) and :mod:`tasks.report.html_report`.
"""

from tasks.report.artifacts import ProgressArtifact, publish_run_artifacts  # noqa: F401
from tasks.report.chart import svg_data_uri, trend_svg  # noqa: F401
from tasks.report.checklists import (  # noqa: F401
    DRILL_CHECKLIST,
    DRY_RUN_CHECKLIST,
    INCIDENT_CHECKLIST,
    checklist_for,
)
from tasks.report.html_report import render_html, write_html_report  # noqa: F401
from tasks.report.markdown import render_markdown  # noqa: F401
from tasks.report.tables import artifact_key, format_duration, table_rows  # noqa: F401
