"""Compatibility facade (removed when the layout lands): see deployments.alerts.payloads, auth, routing."""

from __future__ import annotations

from deployments.alerts.auth import (  # noqa: F401
    GRAFANA_SIGNATURE_HEADER,
    GRAFANA_TIMESTAMP_HEADER,
    PAGERDUTY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    AuthResult,
    sign_body,
    verify_hmac_sha256,
    verify_pagerduty_signature,
    verify_request,
)
from deployments.alerts.payloads import (  # noqa: F401
    DEFAULT_SEVERITY,
    AlertmanagerAlert,
    AlertmanagerPayload,
    GrafanaAlert,
    GrafanaPayload,
    IncomingAlert,
    PagerDutyIncident,
    PagerDutyPayload,
    PayloadKind,
    PlainAlert,
    label_fingerprint,
    parse_payload,
)
from deployments.alerts.routing import (  # noqa: F401
    idempotency_key,
    match_route,
)
