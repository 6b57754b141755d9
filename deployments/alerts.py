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
"alert_fingerprint", "alert_labels"}}``.

- 201 a run was started; 200 every alert already had its run (``deduplicated: true``);
  the body is ``{"runs": [{"fingerprint", "route", "scenario", "target", "mode",
  "flow_run_id", "flow_run_url", "deduplicated"}], "ignored": [...], "rate_limited": [...]}``.
- 202 nothing to start: resolved alerts, non-trigger PagerDuty events, alerts no route
  matches (``"reason": "no route"``). An alert that maps nowhere is no error of the
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

    curl -s -X POST "$PREFECT_API_URL/deployments/<deployment id>/create_flow_run" \\
      -H 'Content-Type: application/json' \\
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
    curl -s -X POST $URL/alerts/alertmanager -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' -d '{
        "version": "4", "groupKey": "{}:{alertname=\\"PostgresPrimaryDown\\"}",
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
    curl -s -X POST $URL/alerts/grafana -H "X-Grafana-Alerting-Signature: $SIG" \\
      -H 'Content-Type: application/json' -d "$BODY"

    # PagerDuty V3 (PagerDuty signs with the subscription's secret = alerts.hmac_secret)
    BODY='{"event": {"id": "01DEN3M9Y2ZQKQ7ZS8SNHC1M3B", "event_type": "incident.triggered",
           "resource_type": "incident", "occurred_at": "2024-05-01T10:00:00Z",
           "data": {"id": "PGR0VU2", "type": "incident", "title": "orders DB down",
                    "urgency": "high", "priority": {"id": "P1ID", "summary": "P1"},
                    "service": {"id": "PF9KMXH", "summary": "orders-db"}}}}'
    SIG=$(printf %s "$BODY" | openssl dgst -sha256 -hmac "$HMAC_SECRET" -r | cut -d' ' -f1)
    curl -s -X POST $URL/alerts/pagerduty -H "X-PagerDuty-Signature: v1=$SIG" \\
      -H 'Content-Type: application/json' -d "$BODY"

    # Plain form
    curl -s -X POST $URL/alerts/plain -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' \\
      -d '{"scenario": "backup-verification", "target": "orders", "mode": "drill",
           "fingerprint": "manual-2024-05-01"}'
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from deployments.alert_payloads import (
    IncomingAlert,
    PayloadKind,
    idempotency_key,
    labels_summary,
    match_route,
    parse_payload,
    run_mode,
    verify_request,
)
from dr.config import AlertRoute, DRConfig, Mode, Scenario, load_config
from dr.errors import ConfigError, DRError, SystemError_

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

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

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787

#: Alertmanager groups rarely exceed a few kB; 1 MiB leaves room for large groups.
MAX_BODY_BYTES = 1024 * 1024
#: Fingerprint → run entries kept in memory (least recently used dropped first).
RUN_CACHE_SIZE = 10_000
#: Per-request timeout toward the Prefect API; alert senders time out too.
PREFECT_TIMEOUT_SECONDS = 10.0
#: What a sender is told to wait when Prefect cannot be reached.
RETRY_AFTER_UNAVAILABLE_SECONDS = 30
#: Flow runs created at once. One: on a SQLite-backed Prefect server, 10 creations in
#: parallel took 2.5-6.6 s (writers waiting on the database lock) against 0.23 s one after
#: the other (measured with Prefect 3.8.8 here; not measured on a PostgreSQL-backed server).
MAX_CONCURRENT_CREATIONS = 1
#: Deployment look-ups at start-up must not delay serving for long.
WARMUP_TIMEOUT_SECONDS = 10.0

# Tags on every run the receiver starts, so the UI can filter alert-started runs.
BASE_TAGS = ("dr", "alert")


def deployment_for(scenario: Scenario | str, mode: Mode | str) -> str:
    """The ``<flow-name>/<deployment-name>`` a scenario run starts from.

    Each scenario's flow is named after the scenario (``name="region-failover"``) and has
    two deployments, ``<scenario>-incident`` and ``<scenario>-drill``. A dry run prints
    an incident's plan, so it starts from the incident deployment (the ``mode`` parameter
    of the run says ``dry-run``).

    Args:
        scenario: the scenario (enum or its value).
        mode: ``incident``, ``drill`` or ``dry-run`` (enum or value).

    Returns:
        e.g. ``"region-failover/region-failover-incident"``.

    Raises:
        ValueError: unknown scenario or mode.
    """
    scenario_value = Scenario(scenario).value
    mode_value = Mode(mode)
    deployment_mode = Mode.incident if mode_value == Mode.dry_run else mode_value
    return f"{scenario_value}/{scenario_value}-{deployment_mode.value}"


def flow_parameters(route: AlertRoute, alert: IncomingAlert) -> dict[str, Any]:
    """The flow run's parameters for an alert.

    The scenario flows take ``target``, ``mode`` and an ``options`` model that accepts
    these four keys (``auto_approve`` is read by the lifecycle's approval gates).

    Args:
        route: the matched route (target, mode, approval policy).
        alert: the normalized alert (severity, fingerprint, labels).

    Returns:
        JSON-ready parameters for ``create_flow_run_from_deployment``.
    """
    return {
        "target": route.target,
        "mode": run_mode(route, alert).value,
        "options": {
            "severity": alert.severity,
            "auto_approve": route.auto_approve,
            "alert_fingerprint": alert.fingerprint,
            "alert_labels": labels_summary(alert.labels),
        },
    }


def flow_run_tags(route: AlertRoute, alert: IncomingAlert) -> list[str]:
    """Tags for filtering alert-started runs in the UI."""
    return [
        *BASE_TAGS,
        f"alert-source:{alert.source}",
        f"route:{route.name}",
        f"target:{route.target}",
    ]


def ui_url_from_api(api_url: str) -> str:
    """The Prefect UI's base URL for an API URL (as Prefect itself infers it)."""
    ui = api_url.rstrip("/")
    ui = ui.replace("://api.prefect.cloud", "://app.prefect.cloud")
    if ui.endswith("/api"):
        ui = ui[: -len("/api")]
    return (
        ui.replace("/api/", "/")
        .replace("/accounts/", "/account/")
        .replace("/workspaces/", "/workspace/")
    )


# --------------------------------------------------------------------------- rate limits


class TokenBucket:
    """A per-route rate limit: ``per_minute`` runs, refilled continuously, burst of as many.

    Args:
        per_minute: the route's ``rate_limit_per_minute``.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate_per_second = per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def take(self) -> float:
        """Take one token.

        Returns:
            0 when taken, else the seconds until a token will be available.
        """
        now = self._clock()
        self._tokens = min(
            self.capacity, self._tokens + (now - self._updated) * self.rate_per_second
        )
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_second


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class RunRecord:
    """The flow run an alert started (or had already started)."""

    fingerprint: str
    route: str
    scenario: str
    target: str
    mode: str
    flow_run_id: str
    flow_run_url: str
    deduplicated: bool = False

    def as_json(self, *, deduplicated: bool | None = None) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "route": self.route,
            "scenario": self.scenario,
            "target": self.target,
            "mode": self.mode,
            "flow_run_id": self.flow_run_id,
            "flow_run_url": self.flow_run_url,
            "deduplicated": self.deduplicated if deduplicated is None else deduplicated,
        }


@dataclass
class Outcome:
    """What one request led to; decides the HTTP status."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: list[dict[str, Any]] = field(default_factory=list)

    @property
    def retry_after_seconds(self) -> int:
        waits = [item["retry_after_seconds"] for item in self.rate_limited]
        return max(waits, default=0)

    @property
    def status_code(self) -> int:
        if self.rate_limited:
            return 429
        if any(not run["deduplicated"] for run in self.runs):
            return 201
        if self.runs:
            return 200
        return 202

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"runs": self.runs, "ignored": self.ignored}
        if self.rate_limited:
            body["rate_limited"] = self.rate_limited
        return body


# --------------------------------------------------------------------------- receiver


class PrefectClientLike(Protocol):
    """The part of :class:`prefect.client.orchestration.PrefectClient` the receiver uses."""

    @property
    def api_url(self) -> Any: ...

    async def read_deployment_by_name(self, name: str) -> Any: ...

    async def create_flow_run_from_deployment(
        self,
        deployment_id: UUID,
        *,
        parameters: dict[str, Any] | None = None,
        name: str | None = None,
        tags: Any = None,
        idempotency_key: str | None = None,
    ) -> Any: ...


def _deployment_missing(exc: BaseException) -> bool:
    # prefect.exceptions.ObjectNotFound, matched by name: importing prefect costs ~1 s and
    # the fake clients of the unit tests raise their own.
    return type(exc).__name__ == "ObjectNotFound"


def _translate_prefect_error(exc: Exception, what: str) -> DRError:
    """Prefect client errors → our tree: unreachable/5xx transient, the rest permanent."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        detail = exc.response.text[:300]
        if status >= 500 or status == 429:
            return SystemError_(f"{what}: Prefect answered {status}", transient=True)
        return ConfigError(f"{what}: Prefect refused ({status}): {detail}")
    if isinstance(exc, httpx.TransportError | OSError | TimeoutError):
        return SystemError_(
            f"{what}: Prefect API unreachable ({type(exc).__name__})", transient=True
        )
    return SystemError_(f"{what}: {type(exc).__name__}: {exc}", transient=True)


class AlertReceiver:
    """Routes alerts, deduplicates them and starts their flow runs.

    One per process (it holds the caches): create it inside the event loop that will use
    the Prefect client.

    Args:
        routes: ``config.alerts.routes``.
        client: an entered Prefect client (or a stand-in with the same methods).
        ui_url: base URL of the Prefect UI, for links.
        clock: monotonic clock for the rate limits.
        cache_size: how many fingerprint → run entries to keep.
        max_concurrent_creations: flow runs being created at once.
    """

    def __init__(
        self,
        routes: Sequence[AlertRoute],
        client: PrefectClientLike,
        ui_url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = RUN_CACHE_SIZE,
        max_concurrent_creations: int = MAX_CONCURRENT_CREATIONS,
    ) -> None:
        self.routes = list(routes)
        self.client = client
        self.ui_url = ui_url.rstrip("/")
        self._buckets = {r.name: TokenBucket(r.rate_limit_per_minute, clock) for r in self.routes}
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[RunRecord]] = {}
        self._deployment_ids: dict[str, UUID] = {}
        self._cache_size = cache_size
        self._creations = asyncio.Semaphore(max_concurrent_creations)

    def flow_run_url(self, flow_run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    async def warm_up(self) -> list[str]:
        """Look up every route's deployment now, so the first alert pays no look-up.

        Returns:
            The deployments that could not be found (logged; alerts for them get 502).
        """
        missing: list[str] = []
        for name in sorted({deployment_for(r.scenario, r.mode) for r in self.routes}):
            try:
                await self._deployment_id(name)
            except DRError as exc:
                missing.append(name)
                logger.warning("deployment %s not available yet: %s", name, exc)
        return missing

    async def receive(self, alerts: Sequence[IncomingAlert]) -> Outcome:
        """Handle every alert of one request.

        Raises:
            SystemError_: Prefect could not be reached (transient).
            ConfigError: Prefect refused the run (deployment missing, bad parameters).
        """
        outcome = Outcome()
        for alert in alerts:
            if not alert.firing:
                outcome.ignored.append(self._ignored(alert, alert.not_firing_reason))
                continue
            route = match_route(self.routes, alert)
            if route is None:
                outcome.ignored.append(self._ignored(alert, "no route"))
                continue
            key = idempotency_key(route, alert)
            cached = self._runs.get(key)
            if cached is not None:
                self._runs.move_to_end(key)
                logger.debug(
                    "alert %s answered from cache: run %s", alert.fingerprint, cached.flow_run_id
                )
                outcome.runs.append(cached.as_json(deduplicated=True))
                continue
            pending = self._inflight.get(key)
            if pending is not None:
                record = await asyncio.shield(pending)
                outcome.runs.append(record.as_json(deduplicated=True))
                continue
            wait = self._buckets[route.name].take()
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                logger.warning(
                    "route %s over its rate limit (%s/min): %s alert %s refused, retry in %s s",
                    route.name,
                    route.rate_limit_per_minute,
                    alert.source,
                    alert.fingerprint,
                    retry_after,
                )
                outcome.rate_limited.append(
                    {
                        "fingerprint": alert.fingerprint,
                        "route": route.name,
                        "retry_after_seconds": retry_after,
                    }
                )
                continue
            record = await self._start_once(key, route, alert)
            outcome.runs.append(record.as_json())
        return outcome

    def _ignored(self, alert: IncomingAlert, reason: str) -> dict[str, Any]:
        logger.info("ignored %s alert %s: %s", alert.source, alert.fingerprint, reason)
        return {"fingerprint": alert.fingerprint, "source": alert.source, "reason": reason}

    async def _start_once(self, key: str, route: AlertRoute, alert: IncomingAlert) -> RunRecord:
        # Concurrent requests for the same key wait on this future instead of calling
        # Prefect again (Prefect would deduplicate them too, at the cost of a round trip
        # and of rate-limit tokens).
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            record = await self._start(key, route, alert)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                future.cancel()
            raise
        else:
            future.set_result(record)
            self._runs[key] = record
            while len(self._runs) > self._cache_size:
                self._runs.popitem(last=False)
            return record
        finally:
            self._inflight.pop(key, None)

    async def _start(self, key: str, route: AlertRoute, alert: IncomingAlert) -> RunRecord:
        mode = run_mode(route, alert)
        name = deployment_for(route.scenario, mode)
        deployment_id = await self._deployment_id(name)
        asked_at = datetime.now(UTC)
        began = time.monotonic()
        try:
            flow_run = await self._create(deployment_id, route, alert, key)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise _translate_prefect_error(exc, f"starting {name}") from exc
            # The deployment was deleted and re-created since we cached its id.
            self._deployment_ids.pop(name, None)
            deployment_id = await self._deployment_id(name)
            try:
                flow_run = await self._create(deployment_id, route, alert, key)
            except Exception as retry_exc:
                raise _translate_prefect_error(retry_exc, f"starting {name}") from retry_exc
        except Exception as exc:
            raise _translate_prefect_error(exc, f"starting {name}") from exc
        took_ms = (time.monotonic() - began) * 1000
        created = getattr(flow_run, "created", None)
        existed = created is not None and created < asked_at
        flow_run_id = str(flow_run.id)
        record = RunRecord(
            fingerprint=alert.fingerprint,
            route=route.name,
            scenario=route.scenario.value,
            target=route.target,
            mode=mode.value,
            flow_run_id=flow_run_id,
            flow_run_url=self.flow_run_url(flow_run_id),
            deduplicated=existed,
        )
        if existed:
            logger.info(
                "%s alert %s already has flow run %s (route %s, key %s)",
                alert.source,
                alert.fingerprint,
                flow_run_id,
                route.name,
                key,
            )
        else:
            logger.info(
                "started flow run %s of %s for %s alert %s (route %s, target %s, %s, "
                "severity %s) in %.0f ms",
                flow_run_id,
                name,
                alert.source,
                alert.fingerprint,
                route.name,
                route.target,
                mode.value,
                alert.severity,
                took_ms,
            )
        return record

    async def _create(
        self, deployment_id: UUID, route: AlertRoute, alert: IncomingAlert, key: str
    ) -> Any:
        async with self._creations:
            return await self.client.create_flow_run_from_deployment(
                deployment_id,
                parameters=flow_parameters(route, alert),
                name=f"alert-{route.name}-{alert.fingerprint[:16]}",
                tags=flow_run_tags(route, alert),
                idempotency_key=key,
            )

    async def _deployment_id(self, name: str) -> UUID:
        cached = self._deployment_ids.get(name)
        if cached is not None:
            return cached
        try:
            deployment = await self.client.read_deployment_by_name(name)
        except Exception as exc:
            if _deployment_missing(exc):
                raise ConfigError(
                    f"deployment {name} not found in Prefect (deploy it: prefect deploy --all)"
                ) from exc
            raise _translate_prefect_error(exc, f"looking up {name}") from exc
        self._deployment_ids[name] = deployment.id
        return deployment.id


# --------------------------------------------------------------------------- the app


ClientFactory = Callable[[], Any]


def default_client_factory(config: DRConfig) -> tuple[ClientFactory, str]:
    """Build Prefect clients for ``$PREFECT_API_URL``, else ``prefect_api_url`` of dr.yaml.

    Never falls back to Prefect's ephemeral in-process server: runs created there would
    never reach a worker.

    Returns:
        ``(factory, ui_url)``: a callable returning a new (not yet entered) client, and
        the UI's base URL for links.

    Raises:
        ConfigError: no Prefect API is configured.
    """
    from prefect.client.orchestration import PrefectClient
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_URL,
        get_current_settings,
    )

    from_env = PREFECT_API_URL.value()
    api_url = from_env or config.prefect_api_url
    if not api_url:
        raise ConfigError(
            "no Prefect API to start runs on: set PREFECT_API_URL or prefect_api_url in dr.yaml",
            [("prefect_api_url", "not set, and PREFECT_API_URL is not set")],
        )
    ui_url = (
        config.prefect_ui_url
        or (get_current_settings().ui_url if from_env else None)
        or ui_url_from_api(api_url)
    )
    auth_string = PREFECT_API_AUTH_STRING.value()
    api_key = PREFECT_API_KEY.value()

    def factory() -> Any:
        return PrefectClient(
            api_url,
            auth_string=auth_string,
            api_key=api_key,
            httpx_settings={"timeout": PREFECT_TIMEOUT_SECONDS},
        )

    return factory, ui_url


def _check_routes(config: DRConfig) -> None:
    """Refuse routes that could never start a run, before any alert arrives."""
    routes = config.alerts.routes
    problems: list[tuple[str, str]] = []
    names = [r.name for r in routes]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("alerts.routes", f"repeated name: {name} (names key rate limits)"))
    for i, route in enumerate(routes):
        if route.mode == Mode.drill and not config.targets[route.target].drills_allowed:
            problems.append(
                (
                    f"alerts.routes.{i}",
                    f"route {route.name!r} starts drills on {route.target!r}, which does not "
                    f"allow drills (targets.{route.target}.drills_allowed)",
                )
            )
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in alerts.routes", problems)


def _resolve_secrets(config: DRConfig) -> tuple[str | None, str | None]:
    alerts = config.alerts
    bearer = alerts.bearer_token.resolve() if alerts.bearer_token else None
    secret = alerts.hmac_secret.resolve() if alerts.hmac_secret else None
    if not bearer and not secret:
        raise ConfigError(
            "the alert receiver will not start flow runs for anyone: set "
            "alerts.bearer_token and/or alerts.hmac_secret in dr.yaml",
            [("alerts", "neither bearer_token nor hmac_secret is set (or they are empty)")],
        )
    return bearer, secret


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: DRConfig,
    *,
    prefect_client_factory: ClientFactory | None = None,
) -> FastAPI:
    """The alert receiver as an ASGI app.

    Secrets are resolved here, once; the Prefect client is opened when the app starts
    (its lifespan) and every route's deployment is looked up then.

    Args:
        config: the validated ``dr.yaml``.
        prefect_client_factory: returns a new Prefect client (an async context manager
            with ``read_deployment_by_name``, ``create_flow_run_from_deployment`` and
            ``api_url``); default: :func:`default_client_factory`.

    Returns:
        The FastAPI application.

    Raises:
        ConfigError: no credentials configured, duplicate route names, a drill route on a
            target that allows no drills, a secret that cannot be resolved, or (default
            factory) no Prefect API configured.
    """
    _check_routes(config)
    bearer_token, hmac_secret = _resolve_secrets(config)
    if prefect_client_factory is None:
        factory, ui_url = default_client_factory(config)
    else:
        factory, ui_url = prefect_client_factory, config.prefect_ui_url
    routes = list(config.alerts.routes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with factory() as client:
            receiver = AlertReceiver(routes, client, ui_url or ui_url_from_api(str(client.api_url)))
            app.state.receiver = receiver
            try:
                await asyncio.wait_for(receiver.warm_up(), WARMUP_TIMEOUT_SECONDS)
            except TimeoutError:
                logger.warning(
                    "deployment look-ups took over %s s; continuing", WARMUP_TIMEOUT_SECONDS
                )
            logger.info(
                "alert receiver ready: %d route(s), auth by %s",
                len(routes),
                " and ".join(
                    m for m, on in (("bearer token", bearer_token), ("HMAC", hmac_secret)) if on
                ),
            )
            yield

    app = FastAPI(
        title="DR pipelines alert receiver",
        description=(__doc__ or "").split("\n\n")[0],
        lifespan=lifespan,
    )

    async def handle(request: Request, kind: PayloadKind) -> JSONResponse:
        body = await _read_body(request)
        if body is None:
            return JSONResponse({"detail": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
        auth = verify_request(
            kind,
            request.headers,
            body,
            bearer_token=bearer_token,
            hmac_secret=hmac_secret,
            now=time.time(),
        )
        if not auth.ok:
            peer = request.client.host if request.client else "?"
            logger.warning("refused %s request from %s: %s", kind, peer, auth.reason)
            return JSONResponse(
                {"detail": "not authenticated"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            alerts = parse_payload(kind, body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            logger.info("malformed %s payload: %d problem(s)", kind, len(errors))
            return JSONResponse({"detail": errors}, 422)
        receiver: AlertReceiver = request.app.state.receiver
        try:
            outcome = await receiver.receive(alerts)
        except ConfigError as exc:
            logger.error("%s", exc)
            return JSONResponse({"detail": str(exc)}, 502)
        except DRError as exc:
            logger.error("%s", exc)
            return JSONResponse(
                {"detail": str(exc)},
                503,
                headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SECONDS)},
            )
        headers = {}
        if outcome.status_code == 429:
            headers["Retry-After"] = str(outcome.retry_after_seconds)
        return JSONResponse(outcome.as_json(), outcome.status_code, headers=headers)

    @app.post("/alerts/alertmanager", summary="Prometheus Alertmanager webhook (version 4)")
    async def alertmanager(request: Request) -> JSONResponse:
        return await handle(request, "alertmanager")

    @app.post("/alerts/grafana", summary="Grafana alerting webhook")
    async def grafana(request: Request) -> JSONResponse:
        return await handle(request, "grafana")

    @app.post("/alerts/pagerduty", summary="PagerDuty V3 webhook")
    async def pagerduty(request: Request) -> JSONResponse:
        return await handle(request, "pagerduty")

    @app.post("/alerts/plain", summary="Plain JSON: scenario, target, mode, fingerprint")
    async def plain(request: Request) -> JSONResponse:
        return await handle(request, "plain")

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(
    config_path: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> None:
    """Run the receiver until interrupted (what ``dr serve-alerts`` does).

    Args:
        config_path: ``dr.yaml`` to read; default ``$DR_CONFIG`` or ``./dr.yaml``.
        host: address to listen on; loopback by default (put TLS in front to expose it).
        port: TCP port.

    Raises:
        ConfigError: the configuration is invalid or names no credentials / Prefect API.
    """
    import uvicorn

    config = load_config(config_path)
    app = create_app(config)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logger.setLevel(logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
