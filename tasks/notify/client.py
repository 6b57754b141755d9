"""The Slack client: the one place a ``WebClient`` is built and its errors are classified.

:func:`make_client` builds slack-sdk's ``WebClient`` with slack-sdk's own retry handlers
(429 honouring ``Retry-After``, connection errors, 5xx) and a short timeout. :func:`_call`
translates slack-sdk's errors into :class:`~dr.errors.NotifyError` (transient for 429, 5xx
and connection failures).
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryHandler,
)

from dr.errors import NotifyError

try:  # slack-sdk >= 3.21 has a handler for HTTP 500/503; older ones do not.
    from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
except ImportError:  # pragma: no cover - depends on the installed slack-sdk
    ServerErrorRetryHandler = None  # type: ignore[assignment,misc]

DEFAULT_TIMEOUT_SECONDS = 10
DEFAULT_RATE_LIMIT_RETRIES = 2
DEFAULT_CONNECTION_RETRIES = 1
DEFAULT_SERVER_ERROR_RETRIES = 1

# Slack error codes that mean "try again later" even without a 429/5xx status code.
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "service_unavailable", "internal_error", "fatal_error", "request_timeout"}
)


def make_client(
    token: str,
    base_url: str = "https://slack.com/api/",
    *,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    rate_limit_retries: int = DEFAULT_RATE_LIMIT_RETRIES,
    connection_retries: int = DEFAULT_CONNECTION_RETRIES,
    server_error_retries: int = DEFAULT_SERVER_ERROR_RETRIES,
) -> WebClient:
    """Build the Slack Web API client, with slack-sdk's retry handlers installed.

    slack-sdk's default client retries only connection errors, and a throttled call would
    fail at once; here 429 answers are retried after their ``Retry-After``, and 5xx and
    connection errors once more after a short backoff.

    Args:
        token: a bot token (``xoxb-...``).
        base_url: the Web API root; a local stand-in's in the lab and the tests.
        timeout_seconds: per HTTP request.
        rate_limit_retries: retries after HTTP 429.
        connection_retries: retries after a refused or reset connection.
        server_error_retries: retries after HTTP 500/503 (if slack-sdk supports it).

    Returns:
        A ``slack_sdk.WebClient``.
    """
    handlers: list[RetryHandler] = [
        RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
        ConnectionErrorRetryHandler(max_retry_count=connection_retries),
    ]
    if ServerErrorRetryHandler is not None and server_error_retries > 0:
        handlers.append(ServerErrorRetryHandler(max_retry_count=server_error_retries))
    if not base_url.endswith("/"):
        base_url += "/"
    return WebClient(
        token=token, base_url=base_url, timeout=timeout_seconds, retry_handlers=handlers
    )


def _call(client: WebClient, method: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call one Web API method, translating slack-sdk's errors into NotifyError."""
    try:
        return fn(**kwargs)
    except SlackApiError as exc:
        status = exc.response.status_code
        code = exc.response.get("error") if isinstance(exc.response.data, dict) else None
        code = code or "unexpected response"
        transient = status == 429 or status >= 500 or code in TRANSIENT_SLACK_ERRORS
        hint = ""
        if method == "chat.update" and code == "channel_not_found":
            hint = " (chat.update needs the channel id, not its name)"
        raise NotifyError(
            f"Slack {method} failed: {code} (HTTP {status}){hint}", transient=transient
        ) from exc
    except (URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NotifyError(
            f"Slack {method} failed: cannot reach {client.base_url}: {reason}", transient=True
        ) from exc
    except SlackClientError as exc:
        raise NotifyError(f"Slack {method} failed: {exc}", transient=False) from exc
