"""What alerting systems send, parsed into one normalized :class:`IncomingAlert` per alert.

Four payload kinds: Prometheus Alertmanager webhooks (payload ``version "4"``,
https://prometheus.io/docs/alerting/latest/configuration/#webhook_config), Grafana
unified-alerting webhooks, PagerDuty V3 webhooks (only ``incident.triggered`` starts a run)
and a plain JSON form of our own. Sender payloads ignore fields they do not know (an
upgrade of Alertmanager must not stop disaster recovery); the plain form refuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from dr.config import Mode, Scenario

PayloadKind = Literal["alertmanager", "grafana", "pagerduty", "plain"]


#: Severity handed to a run when the alert names none (the lifecycle's default).
DEFAULT_SEVERITY = "SEV2"


# Go's zero time, which Alertmanager and Grafana send as "no end" (and, rarely, "no start").
_GO_ZERO_YEAR = 1


@dataclass(frozen=True)
class IncomingAlert:
    """One alert from any sender, in the shape routing and deduplication need.

    Attributes:
        source: which payload kind it came in.
        fingerprint: the sender's identity for the alert (Alertmanager/Grafana fingerprint,
            PagerDuty incident id, the plain form's fingerprint).
        firing: False for resolved alerts (and PagerDuty events other than a trigger).
        labels: what routes match on.
        episode: distinguishes two firings of the same fingerprint (the alert's
            ``startsAt``); None when the sender's fingerprint is already unique.
        severity: handed to the run (approval policy may auto-approve by severity).
        scenario, target, mode: only the plain form names these itself.
        summary: a one-line human description, for logs.
        not_firing_reason: why a non-firing alert is ignored.
    """

    source: PayloadKind
    fingerprint: str
    firing: bool
    labels: dict[str, str] = field(default_factory=dict)
    episode: str | None = None
    severity: str = DEFAULT_SEVERITY
    scenario: Scenario | None = None
    target: str | None = None
    mode: Mode | None = None
    summary: str = ""
    not_firing_reason: str = "resolved"
    starts_at: datetime | None = None


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """A stable identity for an alert that came without a fingerprint.

    Returns:
        The hex SHA-256 of the labels sorted by name, as ``name=value`` lines.
    """
    text = "\n".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()


def _episode(starts_at: datetime | None) -> str | None:
    if starts_at is None or starts_at.year <= _GO_ZERO_YEAR:
        return None
    return starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class _SenderModel(BaseModel):
    """Sender payloads: unknown fields are ignored (senders add fields between versions)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class AlertmanagerAlert(_SenderModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str | None = None

    def normalized(self, source: PayloadKind) -> IncomingAlert:
        """This alert as an :class:`IncomingAlert` (fingerprint from labels when absent)."""
        labels = dict(self.labels)
        return IncomingAlert(
            source=source,
            fingerprint=self.fingerprint or label_fingerprint(labels),
            firing=self.status == "firing",
            labels=labels,
            episode=_episode(self.starts_at),
            severity=labels.get("severity") or DEFAULT_SEVERITY,
            summary=self.annotations.get("summary") or labels.get("alertname", ""),
            starts_at=self.starts_at if _episode(self.starts_at) else None,
        )


class AlertmanagerPayload(_SenderModel):
    """Alertmanager's webhook body, version 4 (the only version it has ever sent)."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[AlertmanagerAlert]

    def incoming(self) -> list[IncomingAlert]:
        return [a.normalized("alertmanager") for a in self.alerts]


class GrafanaAlert(AlertmanagerAlert):
    silence_url: str = Field("", alias="silenceURL")
    dashboard_url: str = Field("", alias="dashboardURL")
    panel_url: str = Field("", alias="panelURL")
    values: dict[str, Any] | None = None
    value_string: str = Field("", alias="valueString")


class GrafanaPayload(_SenderModel):
    """Grafana unified alerting's webhook body (Alertmanager-like; ``version "1"``)."""

    receiver: str = ""
    status: Literal["firing", "resolved"]
    org_id: int | None = Field(None, alias="orgId")
    alerts: list[GrafanaAlert]
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    version: str = "1"
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, ge=0, alias="truncatedAlerts")
    title: str = ""
    state: str = ""
    message: str = ""

    def incoming(self) -> list[IncomingAlert]:
        return [a.normalized("grafana") for a in self.alerts]


class PagerDutyReference(_SenderModel):
    id: str
    type: str = ""
    summary: str = ""
    html_url: str | None = None


class PagerDutyIncident(_SenderModel):
    """``event.data`` of an incident event."""

    id: str = Field(min_length=1)
    type: Literal["incident"]
    title: str = ""
    status: str = ""
    number: int | None = None
    html_url: str | None = None
    incident_key: str | None = None
    urgency: str | None = None
    priority: PagerDutyReference | None = None
    service: PagerDutyReference | None = None
    escalation_policy: PagerDutyReference | None = None


class _PagerDutyEventBase(_SenderModel):
    id: str
    event_type: str
    occurred_at: datetime


class PagerDutyIncidentEvent(_PagerDutyEventBase):
    resource_type: Literal["incident"]
    data: PagerDutyIncident


class PagerDutyOtherEvent(_PagerDutyEventBase):
    """Events about other resources (``pagey.ping``, services...): never start a run."""

    resource_type: str
    data: dict[str, Any] | None = None


def _pagerduty_event_kind(value: Any) -> str:
    resource = value.get("resource_type") if isinstance(value, dict) else None
    resource = resource if resource is not None else getattr(value, "resource_type", None)
    return "incident" if resource == "incident" else "other"


PagerDutyEvent = Annotated[
    Annotated[PagerDutyIncidentEvent, Tag("incident")]
    | Annotated[PagerDutyOtherEvent, Tag("other")],
    Discriminator(_pagerduty_event_kind),
]


#: The only PagerDuty event that starts a run; acknowledgements, resolutions, notes and
#: priority changes are about an incident already handled.
PAGERDUTY_TRIGGER = "incident.triggered"


class PagerDutyPayload(_SenderModel):
    """PagerDuty's V3 webhook body: one event per delivery."""

    event: PagerDutyEvent

    def incoming(self) -> list[IncomingAlert]:
        event = self.event
        if not isinstance(event, PagerDutyIncidentEvent):
            return [
                IncomingAlert(
                    source="pagerduty",
                    fingerprint=event.id,
                    firing=False,
                    not_firing_reason=f"not an incident ({event.event_type})",
                )
            ]
        incident = event.data
        labels = {"event_type": event.event_type}
        if incident.service is not None:
            labels["service"] = incident.service.summary
            labels["service_id"] = incident.service.id
        if incident.escalation_policy is not None:
            labels["escalation_policy"] = incident.escalation_policy.summary
        if incident.urgency:
            labels["urgency"] = incident.urgency
        if incident.priority is not None and incident.priority.summary:
            labels["priority"] = incident.priority.summary
        if incident.incident_key:
            labels["incident_key"] = incident.incident_key
        if incident.title:
            labels["title"] = incident.title
        severity = labels.get("priority") or labels.get("urgency") or DEFAULT_SEVERITY
        labels["severity"] = severity
        return [
            IncomingAlert(
                source="pagerduty",
                fingerprint=incident.id,
                firing=event.event_type == PAGERDUTY_TRIGGER,
                labels=labels,
                severity=severity,
                summary=incident.title,
                not_firing_reason=f"not a trigger ({event.event_type})",
            )
        ]


class PlainAlert(BaseModel):
    """Our own form: the sender names the scenario and target; a route must allow them.

    ``fingerprint`` is required: it is the sender's identity for the incident, and every
    repeat with the same fingerprint answers with the same run.
    """

    model_config = ConfigDict(extra="forbid")

    scenario: Scenario
    target: str = Field(min_length=1)
    mode: Mode | None = Field(None, description="Default: the matching route's mode.")
    fingerprint: str = Field(min_length=1, max_length=200)
    severity: str = Field(DEFAULT_SEVERITY, min_length=1, max_length=50)
    labels: dict[str, str] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"
    summary: str = Field("", max_length=500)

    def incoming(self) -> list[IncomingAlert]:
        return [
            IncomingAlert(
                source="plain",
                fingerprint=self.fingerprint,
                firing=self.status == "firing",
                labels=dict(self.labels),
                severity=self.severity,
                scenario=self.scenario,
                target=self.target,
                mode=self.mode,
                summary=self.summary,
            )
        ]


_MODELS: dict[str, type[AlertmanagerPayload | GrafanaPayload | PagerDutyPayload | PlainAlert]] = {
    "alertmanager": AlertmanagerPayload,
    "grafana": GrafanaPayload,
    "pagerduty": PagerDutyPayload,
    "plain": PlainAlert,
}


def parse_payload(kind: PayloadKind, body: bytes) -> list[IncomingAlert]:
    """Validate a raw body of the given kind and normalize its alerts.

    Args:
        kind: which sender's format the body is in.
        body: the raw request body (JSON).

    Returns:
        One :class:`IncomingAlert` per alert in the body, in order.

    Raises:
        pydantic.ValidationError: the body is not JSON or not a valid payload of ``kind``.
    """
    model = _MODELS[kind]
    return model.model_validate_json(body).incoming()
