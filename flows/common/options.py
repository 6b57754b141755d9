"""The options every scenario shares: what an alert route sets and the lifecycle reads.

An alert-started run carries them in its ``options`` parameter
(``deployments/alerts/runs.py: flow_parameters``); :func:`flows.lifecycle.run_scenario` reads
``auto_approve`` (approval gates) and ``declared_at`` (the incident's start, for RTO;
default: the alert's ``alert_starts_at``).
A scenario's options model subclasses :class:`AlertOptions` and adds its own fields.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AlertOptions"]


class AlertOptions(BaseModel):
    """Options shared by every scenario (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    severity: str | None = Field(
        None, description="Overrides the severity parameter (an alert's severity, e.g. SEV1)."
    )
    auto_approve: bool = Field(
        False,
        description="Approve the run's gates without asking (set by an alert route that allows it).",
    )
    declared_at: datetime | None = Field(
        None,
        description="When the incident was declared (ISO 8601); incident RTO counts from it."
        " Default: when the run starts.",
    )
    alert_fingerprint: str | None = Field(
        None, description="The fingerprint of the alert that started the run (for the report)."
    )
    alert_labels: dict[str, str] | None = Field(
        None, description="A summary of the alert's labels (for the report)."
    )
    alert_starts_at: datetime | None = Field(
        None,
        description="When the alert that started the run began firing (its startsAt, ISO"
        " 8601): the outage's start is looked for before it.",
    )
