"""What alerting systems send, and how one alert becomes one scenario run.

Pure functions and pydantic models, no I/O: the HTTP service in :mod:`deployments.alerts`
reads the raw body, calls :func:`verify_request` on it, parses it with
:func:`parse_payload`, and hands the resulting :class:`IncomingAlert` list to its
receiver, which picks a route with :func:`match_route` and starts a flow run keyed by
:func:`idempotency_key`.

Four payload kinds are understood:

- Prometheus Alertmanager webhooks, payload ``version "4"``
  (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config);
- Grafana unified-alerting webhooks (the same shape plus ``orgId``, ``state``, ``title``,
  ``message``, and per alert ``values``, ``dashboardURL``, ``panelURL``, ``silenceURL``);
- PagerDuty V3 webhooks (``{"event": {...}}``; only ``incident.triggered`` starts a run);
- a plain JSON form of our own, for scripts and people
  (``{"scenario", "target", "mode", "fingerprint", "severity", "labels"}``).

Sender payloads ignore fields they do not know (senders add fields between versions and
an upgrade of Alertmanager must not stop disaster recovery); the plain form is ours and
refuses unknown keys, like ``dr.yaml``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from dr.config import AlertRoute, Mode, Scenario

__all__ = [
    "DEFAULT_SEVERITY",
    "GRAFANA_SIGNATURE_HEADER",
    "GRAFANA_TIMESTAMP_HEADER",
    "PAGERDUTY_SIGNATURE_HEADER",
    "SIGNATURE_HEADER",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "AuthResult",
    "GrafanaAlert",
    "GrafanaPayload",
    "IncomingAlert",
    "PagerDutyIncident",
    "PagerDutyPayload",
    "PayloadKind",
    "PlainAlert",
    "idempotency_key",
    "label_fingerprint",
    "match_route",
    "parse_payload",
    "sign_body",
    "verify_hmac_sha256",
    "verify_pagerduty_signature",
    "verify_request",
]

PayloadKind = Literal["alertmanager", "grafana", "pagerduty", "plain"]

#: Severity handed to a run when the alert names none (the lifecycle's default).
DEFAULT_SEVERITY = "SEV2"

#: Our own signature header: ``sha256=<hex HMAC-SHA256 of the raw body>``.
SIGNATURE_HEADER = "X-DR-Signature"
#: PagerDuty V3: ``v1=<hex>[,v1=<hex>...]`` (several while a secret is rotated).
#: https://developer.pagerduty.com/docs/webhooks/webhook-signatures/
PAGERDUTY_SIGNATURE_HEADER = "X-PagerDuty-Signature"
#: Grafana's default HMAC header: ``<hex>`` of the body, or of ``<timestamp>:<body>`` when
#: the contact point's "Timestamp Header" is set to :data:`GRAFANA_TIMESTAMP_HEADER`.
GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
GRAFANA_TIMESTAMP_HEADER = "X-Grafana-Alerting-Timestamp"
#: How far a signed Grafana timestamp may be from our clock (replay protection).
GRAFANA_TIMESTAMP_TOLERANCE_SECONDS = 300

#: Labels passed to the flow run are trimmed to keep parameters small.
MAX_LABELS_IN_RUN = 32
MAX_LABEL_VALUE_CHARS = 200

# Go's zero time, which Alertmanager and Grafana send as "no end" (and, rarely, "no start").
_GO_ZERO_YEAR = 1


# --------------------------------------------------------------------------- normalized


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


# --------------------------------------------------------------------------- Alertmanager


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


# --------------------------------------------------------------------------- Grafana


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


# --------------------------------------------------------------------------- PagerDuty


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


# --------------------------------------------------------------------------- plain form


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


# --------------------------------------------------------------------------- routing


def _route_allows_mode(route: AlertRoute, mode: Mode | None) -> bool:
    # A plain sender may ask for the route's own mode, or downgrade to a dry run (which
    # changes nothing); it may never turn a drill route into an incident or the reverse.
    return mode is None or mode == route.mode or mode == Mode.dry_run


def match_route(routes: Sequence[AlertRoute], alert: IncomingAlert) -> AlertRoute | None:
    """The first route that applies to ``alert``, or None.

    Sender alerts (Alertmanager, Grafana, PagerDuty) match a route when every
    ``label=value`` pair of its ``match`` is among the alert's labels (an empty ``match``
    matches everything). Plain alerts name their scenario and target, so they match the
    first route with the same scenario and target whose mode allows the one asked for;
    label matchers are not applied to them: for the plain form a route is the permission
    and the policy (approval, rate limit), not a classifier.

    Args:
        routes: ``config.alerts.routes``, in order; the first match wins.
        alert: the normalized alert.

    Returns:
        The route, or None when the alert maps nowhere.
    """
    for route in routes:
        if alert.source == "plain":
            if (
                route.scenario == alert.scenario
                and route.target == alert.target
                and _route_allows_mode(route, alert.mode)
            ):
                return route
        elif all(alert.labels.get(k) == v for k, v in route.match.items()):
            return route
    return None


def run_mode(route: AlertRoute, alert: IncomingAlert) -> Mode:
    """The mode the run starts in: the plain form's own (if allowed), else the route's."""
    return alert.mode if alert.mode is not None else route.mode


def idempotency_key(route: AlertRoute, alert: IncomingAlert) -> str:
    """The Prefect idempotency key: one flow run per route, fingerprint and firing.

    ``<route>:<fingerprint>``, plus ``:<startsAt UTC>`` for Alertmanager and Grafana
    alerts. Their fingerprint is a hash of the labels, the same every time the same
    condition fires: without the firing's start the key of an alert that resolved and
    fired again next month would still name last month's run, and Prefect would answer
    with it instead of starting a recovery. Repeats of one firing (Alertmanager's
    ``repeat_interval``, retries, several receivers) keep the same ``startsAt`` and so
    the same key. A plain dry run of an incident route gets ``:dry-run`` appended, so
    that rehearsing never uses up the real incident's key.

    Args:
        route: the matched route.
        alert: the normalized alert.

    Returns:
        The key (Prefect keeps it unique per flow).
    """
    key = f"{route.name}:{alert.fingerprint}"
    if alert.episode:
        key += f":{alert.episode}"
    mode = run_mode(route, alert)
    if mode != route.mode:
        key += f":{mode.value}"
    return key


def labels_summary(labels: Mapping[str, str]) -> dict[str, str]:
    """The alert's labels, trimmed, for the run's parameters."""
    items = sorted(labels.items())[:MAX_LABELS_IN_RUN]
    return {k: v[:MAX_LABEL_VALUE_CHARS] for k, v in items}


# --------------------------------------------------------------------------- signatures


def sign_body(secret: str | bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` (what senders put in their signature header)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_hmac_sha256(secret: str | bytes, body: bytes, signature_hex: str) -> bool:
    """Check a hex HMAC-SHA256 in constant time.

    Args:
        secret: the shared secret.
        body: the exact bytes received (never re-serialized JSON).
        signature_hex: the signature as sent, hex (case-insensitive).

    Returns:
        True when it matches.
    """
    expected = sign_body(secret, body)
    return hmac.compare_digest(expected.encode(), signature_hex.strip().lower().encode())


def verify_pagerduty_signature(secret: str | bytes, body: bytes, header: str) -> bool:
    """Check PagerDuty's ``X-PagerDuty-Signature``: true when any ``v1=`` entry matches.

    PagerDuty sends several comma-separated signatures while a subscription's secret is
    being rotated; one valid signature is enough. Entries of other versions are skipped.
    """
    expected = sign_body(secret, body).encode()
    ok = False
    for entry in header.split(","):
        version, _, value = entry.strip().partition("=")
        if version == "v1" and value:
            # No early exit: every entry is compared, so timing says nothing about which.
            ok |= hmac.compare_digest(expected, value.strip().lower().encode())
    return ok


@dataclass(frozen=True)
class AuthResult:
    """Whether a request is authenticated, how, and (when not) why, safe to log."""

    ok: bool
    method: str = ""
    reason: str = ""


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _check_signatures(
    kind: PayloadKind,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    now: float,
) -> AuthResult | None:
    """Verify whichever signature headers are present; None when there are none."""
    dr_sig = headers.get(SIGNATURE_HEADER.lower())
    if dr_sig is not None:
        algorithm, _, value = dr_sig.strip().partition("=")
        if algorithm != "sha256" or not verify_hmac_sha256(secret, body, value):
            return AuthResult(False, reason=f"bad {SIGNATURE_HEADER}")
        return AuthResult(True, method="hmac")
    if kind == "pagerduty":
        pd_sig = headers.get(PAGERDUTY_SIGNATURE_HEADER.lower())
        if pd_sig is not None:
            if not verify_pagerduty_signature(secret, body, pd_sig):
                return AuthResult(False, reason=f"bad {PAGERDUTY_SIGNATURE_HEADER}")
            return AuthResult(True, method="hmac")
    if kind == "grafana":
        gf_sig = headers.get(GRAFANA_SIGNATURE_HEADER.lower())
        if gf_sig is not None:
            stamp = headers.get(GRAFANA_TIMESTAMP_HEADER.lower())
            signed = body if stamp is None else stamp.strip().encode() + b":" + body
            if not verify_hmac_sha256(secret, signed, gf_sig):
                return AuthResult(False, reason=f"bad {GRAFANA_SIGNATURE_HEADER}")
            if stamp is not None:
                try:
                    age = abs(now - float(stamp))
                except ValueError:
                    return AuthResult(False, reason=f"bad {GRAFANA_TIMESTAMP_HEADER}")
                if age > GRAFANA_TIMESTAMP_TOLERANCE_SECONDS:
                    return AuthResult(False, reason="stale signed timestamp")
            return AuthResult(True, method="hmac")
    return None


def verify_request(
    kind: PayloadKind,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bearer_token: str | None,
    hmac_secret: str | None,
    now: float,
) -> AuthResult:
    """Decide whether a request may start runs.

    Either a valid bearer token or a valid signature is enough. A signature header that
    is present (and a secret configured) must be valid, even when the bearer token is
    right: a wrong signature means the body is not what the sender signed. Signatures are
    accepted in :data:`SIGNATURE_HEADER` on every endpoint, plus PagerDuty's own header on
    the PagerDuty endpoint and Grafana's on the Grafana endpoint.

    Args:
        kind: the endpoint's payload kind.
        headers: request headers with lower-case names.
        body: the raw body.
        bearer_token: the expected token, or None when not configured.
        hmac_secret: the shared signing secret, or None when not configured.
        now: the current Unix time (for Grafana's signed timestamp).

    Returns:
        An :class:`AuthResult`; its ``reason`` never contains a credential.
    """
    if hmac_secret:
        signed = _check_signatures(kind, headers, body, hmac_secret, now)
        if signed is not None:
            return signed
    presented = _bearer(headers.get("authorization"))
    if bearer_token and presented is not None:
        if hmac.compare_digest(presented.encode(), bearer_token.encode()):
            return AuthResult(True, method="bearer")
        return AuthResult(False, reason="bad bearer token")
    return AuthResult(False, reason="no credentials")


def canonical_json(data: Any) -> bytes:
    """Compact JSON bytes (what the examples and tests sign and send)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
