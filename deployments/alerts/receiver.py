"""The receiver: one flow run per alert, deduplicated, rate-limited, through Prefect."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import httpx

from deployments.alerts.payloads import IncomingAlert
from deployments.alerts.resolve import resolve_alert
from deployments.alerts.routing import (
    SeverityFor,
    idempotency_key,
    match_route,
    run_mode,
    with_severity,
)
from deployments.alerts.runs import (
    Outcome,
    RunRecord,
    active_runs,
    attach_alert,
    deployment_for,
    flow_parameters,
    flow_run_tags,
    state_type,
    translate_prefect_error,
)
from dr.config import AlertRoute
from dr.errors import ConfigError, DRError

#: One logger for the receiver's modules (the name operators filter on).
logger = logging.getLogger("deployments.alerts")

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

    async def read_flow_runs(self, **filters: Any) -> list[Any]: ...

    async def update_flow_run(self, flow_run_id: UUID, *, tags: Any = None) -> Any: ...

    async def set_flow_run_state(self, flow_run_id: UUID, state: Any) -> Any: ...


#: Posts one line to the target's Slack channel: ``notify(target, text)``.
Notifier = Callable[[str, str], Awaitable[None]]


class _RateLimited(Exception):
    """The route's rate limit refused a new run (its waiters are refused too)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def _resolves(alert: IncomingAlert) -> bool:
    """A resolution (Alertmanager, Grafana, plain ``resolved``), not another non-firing event."""
    return alert.not_firing_reason == "resolved"


def _deployment_missing(exc: BaseException) -> bool:
    # prefect.exceptions.ObjectNotFound, matched by name: importing prefect costs ~1 s and
    # the fake clients of the unit tests raise their own.
    return type(exc).__name__ == "ObjectNotFound"


class AlertReceiver:
    """Routes alerts, deduplicates them, starts or attaches to their runs, cancels on resolve.

    One per process (it holds the caches): create it inside the event loop that will use
    the Prefect client.

    Args:
        routes: ``config.alerts.routes``.
        client: an entered Prefect client (or a stand-in with the same methods).
        ui_url: base URL of the Prefect UI, for links.
        clock: monotonic clock for the rate limits.
        cache_size: how many fingerprint → run entries to keep.
        max_concurrent_creations: flow runs being created at once.
        notify: posts a line to the target's Slack channel (a resolved alert whose run is
            already under way); None: logged only.
        severity_for: maps an alert's severity onto the config's (``DRConfig.alert_severity``).
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
        notify: Notifier | None = None,
        severity_for: SeverityFor | None = None,
    ) -> None:
        self.routes = list(routes)
        self.severity_for = severity_for
        self.client = client
        self.ui_url = ui_url.rstrip("/")
        self._buckets = {r.name: TokenBucket(r.rate_limit_per_minute, clock) for r in self.routes}
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[RunRecord]] = {}
        self._deployment_ids: dict[str, UUID] = {}
        self._cache_size = cache_size
        self._creations = asyncio.Semaphore(max_concurrent_creations)
        self._target_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._notify = notify

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
        """Handle every alert of one request, in order.

        Raises:
            SystemError_: Prefect could not be reached (transient).
            ConfigError: Prefect refused the run (deployment missing, bad parameters).
        """
        outcome = Outcome()
        for alert in alerts:
            route = match_route(self.routes, alert) if alert.firing or _resolves(alert) else None
            if not alert.firing and route is not None:
                outcome.resolved.extend(await self._resolve(route, alert))
            elif not alert.firing:
                outcome.ignored.append(self._ignored(alert, alert.not_firing_reason))
            elif route is None:
                outcome.ignored.append(self._ignored(alert, "no route"))
            else:
                await self._fire(route, alert, outcome)
        return outcome

    async def _fire(self, route: AlertRoute, alert: IncomingAlert, outcome: Outcome) -> None:
        alert, problem = with_severity(alert, self.severity_for)
        if problem is not None:
            outcome.ignored.append(self._ignored(alert, problem))
            return
        key = idempotency_key(route, alert)
        cached = self._runs.get(key)
        if cached is not None:
            self._runs.move_to_end(key)
            logger.debug(
                "alert %s answered from cache: run %s", alert.fingerprint, cached.flow_run_id
            )
            outcome.runs.append(cached.as_json(deduplicated=True))
            return
        try:
            pending = self._inflight.get(key)
            if pending is not None:
                record = await asyncio.shield(pending)
                outcome.runs.append(record.as_json(deduplicated=True))
                return
            record = await self._start_once(key, route, alert)
        except _RateLimited as limited:
            outcome.rate_limited.append(
                {
                    "fingerprint": alert.fingerprint,
                    "route": route.name,
                    "retry_after_seconds": limited.retry_after,
                }
            )
            return
        outcome.runs.append(record.as_json())

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
            async with self._target_lock(route):
                record = await self._attach_or_start(key, route, alert)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                future.cancel()
            raise
        else:
            future.set_result(record)
            self._remember(key, record)
            return record
        finally:
            self._inflight.pop(key, None)

    def _remember(self, key: str, record: RunRecord) -> None:
        self._runs[key] = record
        while len(self._runs) > self._cache_size:
            self._runs.popitem(last=False)

    async def _attach_or_start(
        self, key: str, route: AlertRoute, alert: IncomingAlert
    ) -> RunRecord:
        """Attach to the target's active run of the scenario, else start one (rate-limited)."""
        try:
            existing = await active_runs(
                self.client, route.scenario.value, route.target, run_mode(route, alert).value
            )
            if existing:
                return await self._attach(key, route, alert, existing[0])
        except DRError:
            raise
        except Exception as exc:
            raise translate_prefect_error(exc, "looking up active runs") from exc
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
            raise _RateLimited(retry_after)
        return await self._start(key, route, alert)

    async def _attach(
        self, key: str, route: AlertRoute, alert: IncomingAlert, flow_run: Any
    ) -> RunRecord:
        flow_run_id = str(flow_run.id)
        own = flow_run.idempotency_key == key
        if not own:
            await attach_alert(self.client, flow_run, alert)
            logger.info(
                "%s alert %s attached to %s run %s of %s on %s (route %s)",
                alert.source,
                alert.fingerprint,
                state_type(flow_run).lower(),
                flow_run_id,
                route.scenario.value,
                route.target,
                route.name,
            )
        return RunRecord(
            fingerprint=alert.fingerprint,
            route=route.name,
            scenario=route.scenario.value,
            target=route.target,
            mode=(flow_run.parameters or {}).get("mode", run_mode(route, alert).value),
            flow_run_id=flow_run_id,
            flow_run_url=self.flow_run_url(flow_run_id),
            deduplicated=own,
            attached=not own,
        )

    async def _resolve(self, route: AlertRoute, alert: IncomingAlert) -> list[dict[str, Any]]:
        # Under the target's lock: a run's tags are read and rewritten by each alert of it.
        key = idempotency_key(route, alert)
        cached = self._runs.pop(key, None)
        async with self._target_lock(route):
            return await resolve_alert(
                self.client, route, alert, key, cached, self.flow_run_url, self._say
            )

    def _target_lock(self, route: AlertRoute) -> asyncio.Lock:
        return self._target_locks.setdefault((route.scenario.value, route.target), asyncio.Lock())

    async def _say(self, target: str, text: str) -> None:
        if self._notify is None:
            return
        try:
            await self._notify(target, text)
        except (DRError, OSError) as exc:  # a Slack outage must not fail the answer
            logger.warning("Slack line not posted for %s: %s", target, exc)

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
                raise translate_prefect_error(exc, f"starting {name}") from exc
            # The deployment was deleted and re-created since we cached its id.
            self._deployment_ids.pop(name, None)
            deployment_id = await self._deployment_id(name)
            try:
                flow_run = await self._create(deployment_id, route, alert, key)
            except Exception as retry_exc:
                raise translate_prefect_error(retry_exc, f"starting {name}") from retry_exc
        except Exception as exc:
            raise translate_prefect_error(exc, f"starting {name}") from exc
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
            raise translate_prefect_error(exc, f"looking up {name}") from exc
        self._deployment_ids[name] = deployment.id
        return deployment.id
