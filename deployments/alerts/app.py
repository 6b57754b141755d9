"""The alert receiver (``dr serve-alerts``): alerts in, one DR flow run per alert out.

The HTTP app (FastAPI): endpoints, authentication, start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from deployments.alerts.auth import verify_request
from deployments.alerts.payloads import PayloadKind, parse_payload
from deployments.alerts.receiver import (
    PREFECT_TIMEOUT_SECONDS,
    RETRY_AFTER_UNAVAILABLE_SECONDS,
    AlertReceiver,
    Notifier,
)
from deployments.alerts.runs import ui_url_from_api
from dr.config import AlertRoute, DRConfig, Mode, load_config
from dr.errors import ConfigError, DRError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: One logger for the receiver's modules (the name operators filter on).
logger = logging.getLogger("deployments.alerts")

DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 8787


#: Alertmanager groups rarely exceed a few kB; 1 MiB leaves room for large groups.
MAX_BODY_BYTES = 1024 * 1024


#: Deployment look-ups at start-up must not delay serving for long.
WARMUP_TIMEOUT_SECONDS = 10.0


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


def slack_notifier(config: DRConfig) -> Notifier | None:
    """Posts a line to a target's Slack channel, or None when Slack is not configured."""
    token_ref = config.slack.token
    if token_ref is None:
        return None
    base_url = config.slack.base_url

    async def notify(target: str, text: str) -> None:
        from tasks.notify.client import make_client
        from tasks.notify.messages import send_message

        spec = config.targets.get(target)
        channel = (spec.slack_channel if spec else None) or config.slack.default_channel
        if not channel:
            logger.info("no Slack channel for %s: %s", target, text)
            return

        def post() -> None:
            # Resolved when needed (a Slack secret missing must not stop the receiver), and
            # in a thread: a Prefect Secret block loaded inside the event loop would come
            # back as an un-awaited coroutine.
            client = make_client(token_ref.resolve(), base_url)
            send_message(client, channel, text)

        await asyncio.to_thread(post)

    return notify


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


def _lifespan(
    routes: list[AlertRoute],
    factory: ClientFactory,
    ui_url: str | None,
    bearer_token: str | None,
    hmac_secret: str | None,
    notify: Notifier | None = None,
    severity_for: Callable[[str | None], str | None] | None = None,
) -> Callable[[FastAPI], Any]:
    """The app's lifespan: open the Prefect client, look up every route's deployment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with factory() as client:
            receiver = AlertReceiver(
                routes,
                client,
                ui_url or ui_url_from_api(str(client.api_url)),
                notify=notify,
                severity_for=severity_for,
            )
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

    return lifespan


async def _handle(
    request: Request, kind: PayloadKind, bearer_token: str | None, hmac_secret: str | None
) -> JSONResponse:
    """One alert request: size, authentication, payload, then the receiver."""
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

    notify = slack_notifier(config)
    lifespan = _lifespan(
        routes,
        factory,
        ui_url,
        bearer_token,
        hmac_secret,
        notify,
        severity_for=config.alert_severity,
    )
    app = FastAPI(
        title="DR pipelines alert receiver",
        description=(__doc__ or "").split("\n\n")[0],
        lifespan=lifespan,
    )

    async def handle(request: Request, kind: PayloadKind) -> JSONResponse:
        return await _handle(request, kind, bearer_token, hmac_secret)

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
