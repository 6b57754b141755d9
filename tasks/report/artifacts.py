"""Prefect artifacts of a run: its table and markdown report, and a progress bar.

What a run leaves behind in the Prefect UI, under stable keys per scenario and target
(``dr-<scenario>-<target>`` for the table, ``...-report`` for the markdown) so that the UI
shows the history of each key:

- a table artifact: each phase (start, end, duration, outcome), then RTO and RPO against
  their objectives, pass or fail;
- a markdown report (:mod:`tasks.report.markdown`);
- a progress artifact while the run lasts (:class:`ProgressArtifact`).

Everything rendered goes through :func:`dr.errors.redact`. Functions take the run as JSON-able
data (``RunResult.model_dump(mode="json")``) so this package depends on no flow code.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from dr.errors import redact
from tasks.report.tables import artifact_key, format_duration, table_rows

log = logging.getLogger(__name__)


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
