"""The alert receiver (``dr serve-alerts``): alerts in, one DR flow run per alert out.

An HTTP service for alerting systems. It authenticates the caller, maps each firing alert
to a scenario, target, mode and approval policy by ``alerts.routes`` in ``dr.yaml``, and
starts exactly one Prefect flow run per alert through the scenario's deployment, with a
Prefect idempotency key so that repeats, retries and several receivers behind a load
balancer never start a second recovery for the same alert.

Endpoints
---------
``POST /alerts/alertmanager``
    Prometheus Alertmanager ``webhook_config`` payloads (version ``"4"``).
``POST /alerts/grafana``
    Grafana unified-alerting webhook contact points.
``POST /alerts/pagerduty``
    PagerDuty V3 webhook subscriptions; only ``incident.triggered`` starts a run, the
    incident id is the fingerprint.
``POST /alerts/plain``
    Our own form for scripts and people::

        {"scenario": "region-failover", "target": "orders", "fingerprint": "INC-4711",
         "mode": "incident", "severity": "SEV1", "labels": {"reporter": "oncall"}}

    ``mode`` (default: the route's), ``severity`` (default ``SEV2``), ``labels``,
    ``status`` (``firing``/``resolved``) and ``summary`` are optional.
``GET /healthz``
    ``{"status": "ok"}`` (no authentication; says nothing about routes or Prefect).

Authentication
--------------
Every ``POST`` needs either ``Authorization: Bearer <alerts.bearer_token>`` or a valid
HMAC-SHA256 signature of the raw body with ``alerts.hmac_secret``: ``X-DR-Signature:
sha256=<hex>`` on any endpoint, PagerDuty's ``X-PagerDuty-Signature: v1=<hex>[,v1=...]``
on ``/alerts/pagerduty``, Grafana's ``X-Grafana-Alerting-Signature: <hex>`` on
``/alerts/grafana`` (with Grafana's "Timestamp Header" set to
``X-Grafana-Alerting-Timestamp``, the signature covers ``<timestamp>:<body>`` and a
timestamp more than 5 minutes off is refused). A signature that is present must be valid
even when the token is right. Alertmanager cannot sign: give it the token with
``http_config: {authorization: {credentials_file: ...}}``. The service refuses to start
when neither secret is configured. Tokens are compared in constant time and never logged.

Routing and answers
-------------------
Routes are tried in order; the first whose ``match`` labels are all on the alert wins
(the plain form instead names scenario and target, and a route with the same scenario
and target must allow them; see :func:`deployments.alert_payloads.match_route`). The run
is started on the deployment :func:`deployment_for` names, ``<scenario>/<scenario>-<mode>``,
with parameters ``{"target", "mode", "options": {"severity", "auto_approve",
"alert_fingerprint", "alert_labels", "alert_starts_at"}}`` (the lifecycle counts an
incident from ``alert_starts_at`` when no ``declared_at`` is given).

Lifecycle: an alert for a target that already has a scheduled or running run of the same
scenario attaches to it (tag ``attached-alert:<fingerprint>`` on the run, answered with
``attached: true`` and its id) instead of starting another. A ``resolved`` alert cancels
the run it started if that has not begun, once every alert attached to it resolved too;
a run already under way is left to finish, with a Slack line (``resolved``: one entry
per run, with the ``action`` taken). See :mod:`deployments.alerts.resolve`.

- 201 a run was started; 200 every alert already had its run (``deduplicated: true``)
  or attached to one, or a resolution acted on a run; the body is ``{"runs":
  [{"attached", "fingerprint", "route", "scenario", "target", "mode", "flow_run_id",
  "flow_run_url", "deduplicated"}], "ignored": [...], "resolved": [...],
  "rate_limited": [...]}``.
- 202 nothing to start: resolved alerts with no run, non-trigger PagerDuty events, alerts
  no route matches (``"reason": "no route"``). An alert that maps nowhere is no error of the
  sender's, so it gets no 4xx (senders report those as failed deliveries).
- 401 unauthenticated, 413 body over 1 MiB, 422 malformed (with pydantic's reasons):
  nothing started.
- 429 a route's rate limit (``rate_limit_per_minute``, a token bucket) is spent, with
  ``Retry-After``. Alerts of the same request that did start are listed and, when the
  sender delivers the group again, answered as duplicates. Repeats of an alert that
  already has a run are answered from an in-process cache before the rate limit and
  without calling Prefect.
- 502 Prefect refused the run (deployment missing, parameters rejected); 503 Prefect
  unreachable, with ``Retry-After``. Nothing is remembered for a failed alert, so the
  sender's next delivery (Alertmanager sends an undelivered group again) starts it.

One run per firing: the idempotency key is ``<route>:<fingerprint>``, plus the alert's
``startsAt`` for Alertmanager and Grafana, whose fingerprints are hashes of the labels
and so repeat every time the same condition fires again (see
:func:`deployments.alert_payloads.idempotency_key`). Concurrent repeats wait for the
first one's run instead of asking Prefect again; runs are created one at a time
(:data:`MAX_CONCURRENT_CREATIONS`).

Configuration
-------------
``dr.yaml``::

    alerts:
      bearer_token: {env: DR_ALERTS_TOKEN}        # or {prefect_secret: dr-alerts-token}
      hmac_secret: {env: DR_ALERTS_HMAC_SECRET}   # optional: PagerDuty, Grafana, X-DR-Signature
      routes:
        - name: primary-down
          match: {alertname: PostgresPrimaryDown, target: orders}
          scenario: region-failover
          target: orders
          mode: incident
          auto_approve: false
          rate_limit_per_minute: 6
    prefect_ui_url: http://127.0.0.1:4200         # for links; default: from the API URL

Alertmanager (``alertmanager.yml``)::

    receivers:
      - name: dr-pipelines
        webhook_configs:
          - url: http://127.0.0.1:8787/alerts/alertmanager
            send_resolved: true
            http_config:
              authorization:
                credentials_file: /etc/alertmanager/dr-alerts-token

Without this service: the Prefect REST call
--------------------------------------------
A sender that can call Prefect itself needs no receiver. Find the deployment's id once,
then create the run with an idempotency key (Prefect answers 201 with a new run, or 200
with the run already created for that key)::

    curl -s "$PREFECT_API_URL/deployments/name/region-failover/region-failover-incident"
    # -> {"id": "<deployment id>", ...}

    curl -s -X POST "$PREFECT_API_URL/deployments/<deployment id>/create_flow_run" \
      -H 'Content-Type: application/json' \
      -d '{"parameters": {"target": "orders", "mode": "incident",
                          "options": {"severity": "SEV1", "alert_fingerprint": "INC-4711"}},
           "idempotency_key": "manual:INC-4711",
           "tags": ["dr", "alert"]}'
    # -> {"id": "<flow run id>", "state": {"type": "SCHEDULED", ...}, ...}

The run's page is ``<Prefect UI>/runs/flow-run/<flow run id>``. Parameters are checked
against the flow's signature: a wrong type answers 409. With
``PREFECT_SERVER_API_AUTH_STRING`` set on the server, add ``-u user:password``; on
Prefect Cloud, ``-H "Authorization: Bearer $PREFECT_API_KEY"``. What this leaves to the
sender: authentication toward Prefect, route matching, rate limiting.

Examples for each payload kind
------------------------------
::

    TOKEN=...   # the value of alerts.bearer_token
    URL=http://127.0.0.1:8787

    # Alertmanager (the documented version 4 payload)
    curl -s -X POST $URL/alerts/alertmanager -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' -d '{
        "version": "4", "groupKey": "{}:{alertname=\"PostgresPrimaryDown\"}",
        "truncatedAlerts": 0, "status": "firing", "receiver": "dr",
        "groupLabels": {"alertname": "PostgresPrimaryDown"},
        "commonLabels": {"alertname": "PostgresPrimaryDown", "target": "orders"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": "firing",
                    "labels": {"alertname": "PostgresPrimaryDown", "target": "orders",
                               "severity": "critical"},
                    "annotations": {"summary": "primary unreachable for 2m"},
                    "startsAt": "2024-05-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": "5b2c1f0e9a7d4c3b"}]}'

    # Grafana (same alerts, plus orgId/state/title/message), signed instead of a token
    BODY='{"receiver": "dr", "status": "firing", "orgId": 1, "state": "alerting",
           "title": "[FIRING:1] PostgresPrimaryDown", "message": "...",
           "alerts": [{"status": "firing", "labels": {"alertname": "PostgresPrimaryDown",
                       "target": "orders"}, "annotations": {},
                       "startsAt": "2024-05-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                       "fingerprint": "c6eadffa33fcdf37", "values": {"B": 0}}]}'
    SIG=$(printf %s "$BODY" | openssl dgst -sha256 -hmac "$HMAC_SECRET" -r | cut -d' ' -f1)
    curl -s -X POST $URL/alerts/grafana -H "X-Grafana-Alerting-Signature: $SIG" \
      -H 'Content-Type: application/json' -d "$BODY"

    # PagerDuty V3 (PagerDuty signs with the subscription's secret = alerts.hmac_secret)
    BODY='{"event": {"id": "01DEN3M9Y2ZQKQ7ZS8SNHC1M3B", "event_type": "incident.triggered",
           "resource_type": "incident", "occurred_at": "2024-05-01T10:00:00Z",
           "data": {"id": "PGR0VU2", "type": "incident", "title": "orders DB down",
                    "urgency": "high", "priority": {"id": "P1ID", "summary": "P1"},
                    "service": {"id": "PF9KMXH", "summary": "orders-db"}}}}'
    SIG=$(printf %s "$BODY" | openssl dgst -sha256 -hmac "$HMAC_SECRET" -r | cut -d' ' -f1)
    curl -s -X POST $URL/alerts/pagerduty -H "X-PagerDuty-Signature: v1=$SIG" \
      -H 'Content-Type: application/json' -d "$BODY"

    # Plain form
    curl -s -X POST $URL/alerts/plain -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' \
      -d '{"scenario": "backup-verification", "target": "orders", "mode": "drill",
           "fingerprint": "manual-2024-05-01"}'
"""

from __future__ import annotations

from deployments.alerts.app import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    create_app,
    default_client_factory,
    serve,
)
from deployments.alerts.receiver import AlertReceiver, TokenBucket
from deployments.alerts.runs import (
    Outcome,
    RunRecord,
    deployment_for,
    flow_parameters,
    ui_url_from_api,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "AlertReceiver",
    "Outcome",
    "RunRecord",
    "TokenBucket",
    "create_app",
    "default_client_factory",
    "deployment_for",
    "flow_parameters",
    "serve",
    "ui_url_from_api",
]
