"""Slack notifications: the incident thread a recovery run keeps people informed through.

Three layers, from the bottom:

- :func:`make_client` builds slack-sdk's ``WebClient`` with slack-sdk's own retry handlers
  (429 honouring ``Retry-After``, connection errors, 5xx) and a short timeout. It is the only
  place a Slack client is created.
- Plain functions (:func:`post_message`, :func:`reply_in_thread`, :func:`update_message`)
  redact secrets from every text and block before sending, and translate slack-sdk's errors
  into :class:`~dr.errors.NotifyError` (transient for 429, 5xx and connection failures).
  Block Kit builders (:func:`incident_opening_blocks`, :func:`phase_reply_blocks`,
  :func:`final_blocks`) make the messages readable with plain status words.
- :class:`SlackThread` is what a recovery run uses. Why it exists: a recovery must never wait
  on Slack (DESIGN: "Notification failures never block recovery"). Every call only queues
  the message and returns; one background worker sends them in order, retries failures with
  backoff for a bounded time, and records what could not be delivered in
  :attr:`SlackThread.failures` for the report. :meth:`SlackThread.flush` waits a bounded
  time at the end of the run. :class:`NullThread` has the same interface for runs without
  Slack configured.

Thin Prefect tasks for the plain functions are at the bottom of the module.
"""

from __future__ import annotations

import contextvars
import http.client
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryHandler,
)

from dr.config import SlackConfig
from dr.errors import NotifyError, redact
from dr.tasking import dr_task

try:  # slack-sdk >= 3.21 has a handler for HTTP 500/503; older ones do not.
    from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
except ImportError:  # pragma: no cover - depends on the installed slack-sdk
    ServerErrorRetryHandler = None  # type: ignore[assignment,misc]

__all__ = [
    "IncidentThread",
    "NullThread",
    "PostedMessage",
    "SlackThread",
    "check_token",
    "final_blocks",
    "incident_opening_blocks",
    "make_client",
    "phase_reply_blocks",
    "post_message",
    "post_message_task",
    "reply_in_thread",
    "reply_in_thread_task",
    "send_message",
    "slack_thread_for",
    "status_word",
    "update_message",
    "update_message_task",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10
DEFAULT_RATE_LIMIT_RETRIES = 2
DEFAULT_CONNECTION_RETRIES = 1
DEFAULT_SERVER_ERROR_RETRIES = 1

# Provider limits. Block Kit: https://api.slack.com/reference/block-kit/blocks
# (header text 150 chars, section text 3000, a field 2000, at most 10 fields per section);
# chat.postMessage truncates text beyond 40,000 characters:
# https://api.slack.com/methods/chat.postMessage#truncating
HEADER_TEXT_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
MAX_FIELDS_PER_SECTION = 10
MESSAGE_TEXT_LIMIT = 40_000

# Slack error codes that mean "try again later" even without a 429/5xx status code.
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "service_unavailable", "internal_error", "fatal_error", "request_timeout"}
)

_PASSED_WORDS = frozenset({"passed", "pass", "ok", "success", "succeeded", "successful"})
_FAILED_WORDS = frozenset({"failed", "fail", "failure", "error", "errored"})


# ---------------------------------------------------------------------- client


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


# ---------------------------------------------------------------------- plain functions


class PostedMessage(NamedTuple):
    """Where a message landed: the channel id (chat.update needs it) and its ts."""

    channel: str
    ts: str


def send_message(
    client: WebClient,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    thread_ts: str | None = None,
) -> PostedMessage:
    """Post a message (top-level or in a thread) and tell where it landed.

    Args:
        client: from :func:`make_client`.
        channel: channel name (``#dr`` or ``dr``) or id.
        text: the message, or the notification fallback when ``blocks`` are given.
        blocks: Block Kit blocks.
        thread_ts: ts of the thread's parent message, to reply in that thread.

    Returns:
        The channel id and the new message's ts.

    Raises:
        NotifyError: Slack refused or could not be reached (transient for 429, 5xx and
            connection failures).
    """
    kwargs: dict[str, Any] = {"channel": channel, "text": _clean_text(text)}
    if blocks:
        kwargs["blocks"] = _clean_blocks(blocks)
    if thread_ts:
        kwargs["thread_ts"] = thread_ts
    response = _call(client, "chat.postMessage", client.chat_postMessage, kwargs)
    posted = PostedMessage(channel=str(response["channel"]), ts=str(response["ts"]))
    if thread_ts:
        log.info("Slack: replied in thread %s on %s (ts %s)", thread_ts, posted.channel, posted.ts)
    else:
        log.info("Slack: posted to %s (ts %s)", posted.channel, posted.ts)
    return posted


def post_message(
    client: WebClient,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    thread_ts: str | None = None,
) -> str:
    """Post a message and return its ts (see :func:`send_message` for the channel id too).

    Args:
        client: from :func:`make_client`.
        channel: channel name or id.
        text: the message, or the notification fallback when ``blocks`` are given.
        blocks: Block Kit blocks.
        thread_ts: ts of a thread's parent, to post in that thread.

    Returns:
        The new message's ts.

    Raises:
        NotifyError: see :func:`send_message`.
    """
    return send_message(client, channel, text, blocks, thread_ts).ts


def reply_in_thread(
    client: WebClient,
    channel: str,
    thread_ts: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
) -> str:
    """Reply in the thread under the message ``thread_ts``.

    Args:
        client: from :func:`make_client`.
        channel: channel name or id.
        thread_ts: ts of the thread's parent message.
        text: the reply, or its notification fallback when ``blocks`` are given.
        blocks: Block Kit blocks.

    Returns:
        The reply's ts.

    Raises:
        NotifyError: see :func:`send_message`.
    """
    return send_message(client, channel, text, blocks, thread_ts=thread_ts).ts


def update_message(
    client: WebClient,
    channel: str,
    ts: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
) -> str:
    """Replace the text (and blocks) of the message ``ts``, e.g. the opening's status.

    Without ``blocks`` Slack removes the message's previous blocks and shows ``text``.

    Args:
        client: from :func:`make_client`.
        channel: the channel *id* (Slack's chat.update refuses a channel name).
        ts: the message's ts.
        text: new text, or the notification fallback when ``blocks`` are given.
        blocks: new Block Kit blocks.

    Returns:
        The message's ts.

    Raises:
        NotifyError: see :func:`send_message`.
    """
    kwargs: dict[str, Any] = {"channel": channel, "ts": ts, "text": _clean_text(text)}
    if blocks:
        kwargs["blocks"] = _clean_blocks(blocks)
    response = _call(client, "chat.update", client.chat_update, kwargs)
    log.info("Slack: updated message %s on %s", ts, channel)
    return str(response["ts"])


#: auth.test answers that mean the token itself is refused (revoked, wrong, expired).
REJECTED_TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"}
)


def check_token(client: WebClient) -> tuple[bool, str]:
    """Ask Slack whether the client's token is accepted (``auth.test``), as a rotation proof.

    Args:
        client: from :func:`make_client`, built with the token under test.

    Returns:
        ``(True, "accepted (team ..., user ...)")`` or ``(False, <Slack's error code>)`` when
        the token is refused.

    Raises:
        NotifyError: Slack could not be asked (no proof either way).
    """
    try:
        answer = _call(client, "auth.test", client.auth_test, {})
    except NotifyError as exc:
        code = next((c for c in REJECTED_TOKEN_ERRORS if f": {c} (" in str(exc)), None)
        if code is None:
            raise
        log.info("Slack: token refused by auth.test (%s)", code)
        return False, code
    return True, f"accepted (team {answer.get('team_id')}, user {answer.get('user_id')})"


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


def _clean_text(text: str) -> str:
    return redact(str(text))[:MESSAGE_TEXT_LIMIT]


def _clean_blocks(value: Any) -> Any:
    """Redact every string inside Block Kit blocks (texts, fields, URLs, values)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean_blocks(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_blocks(v) for v in value]
    return value


# ---------------------------------------------------------------------- Block Kit builders


def status_word(outcome: str | bool | None) -> str:
    """A plain, upper-case status word: PASSED, FAILED, or the outcome itself upper-cased.

    Args:
        outcome: True/False, or a word such as "passed", "ok", "failed", "skipped",
            "in_progress".

    Returns:
        e.g. ``"PASSED"``, ``"FAILED"``, ``"SKIPPED"``, ``"IN PROGRESS"``; ``"UNKNOWN"`` for None.
    """
    if outcome is None:
        return "UNKNOWN"
    if isinstance(outcome, bool):
        return "PASSED" if outcome else "FAILED"
    word = str(outcome).strip().lower()
    if word in _PASSED_WORDS:
        return "PASSED"
    if word in _FAILED_WORDS:
        return "FAILED"
    return word.replace("_", " ").replace("-", " ").upper() or "UNKNOWN"


def incident_opening_blocks(
    scenario: str,
    target: str,
    mode: str,
    severity: str | None,
    flow_run_url: str | None,
    status: str,
) -> list[dict[str, Any]]:
    """Blocks for the message that opens an incident or drill thread.

    Args:
        scenario: e.g. "primary-failover".
        target: the protected system's name in dr.yaml.
        mode: "incident", "drill" or "dry-run".
        severity: e.g. "SEV1"; None when not set.
        flow_run_url: link to the Prefect flow run, if the UI is known.
        status: e.g. "in_progress", "passed", "failed" (shown as a plain word).

    Returns:
        Block Kit blocks.
    """
    mode_label = mode.replace("_", " ").replace("-", " ").lower()
    blocks: list[dict[str, Any]] = [
        _header(f"DR {mode_label}: {scenario} on {target}"),
        _fields(
            ("Scenario", scenario),
            ("Target", target),
            ("Mode", mode_label),
            ("Severity", severity or "not set"),
            ("Status", status_word(status)),
        ),
    ]
    if flow_run_url:
        blocks.append(_section(_link(flow_run_url, "Open the flow run in Prefect")))
    blocks.append(_context("Each phase's result follows in this thread."))
    return blocks


def phase_reply_blocks(
    phase: str,
    outcome: str | bool,
    duration_seconds: float | None,
    detail: str | None,
) -> list[dict[str, Any]]:
    """Blocks for a thread reply reporting one recovery phase.

    Args:
        phase: the phase's name, e.g. "promote replica".
        outcome: e.g. "passed", "failed", "skipped", "unchanged", or a bool.
        duration_seconds: how long the phase took; None if not measured.
        detail: one or more lines of explanation (the outcome sentence); may be None.

    Returns:
        Block Kit blocks.
    """
    word = status_word(outcome)
    blocks: list[dict[str, Any]] = [
        _section(f"*{_escape(phase)}*: {word}"),
        _fields(("Outcome", word), ("Duration", _duration(duration_seconds))),
    ]
    if detail:
        blocks.append(_section(_escape(detail)))
    return blocks


def final_blocks(
    outcome: str | bool,
    rto_seconds: float | None,
    rpo_seconds: float | None,
    rto_objective: float | None,
    rpo_objective: float | None,
    flow_run_url: str | None,
    notes: list[str] | str | None,
) -> list[dict[str, Any]]:
    """Blocks for the closing message: outcome and measured RTO/RPO against objectives.

    Args:
        outcome: the run's outcome ("passed"/"failed" or a bool).
        rto_seconds: measured recovery time; None if not measured.
        rpo_seconds: measured data-loss window; None if not measured.
        rto_objective: the tier's RTO objective in seconds; None if none.
        rpo_objective: the tier's RPO objective in seconds; None if none.
        flow_run_url: link to the Prefect flow run.
        notes: remarks for people (e.g. undelivered notifications, manual follow-ups).

    Returns:
        Block Kit blocks.
    """
    word = status_word(outcome)
    blocks: list[dict[str, Any]] = [
        _header(f"DR run {word}"),
        _fields(
            ("Outcome", word),
            ("RTO", _against_objective(rto_seconds, rto_objective)),
            ("RPO", _against_objective(rpo_seconds, rpo_objective)),
        ),
    ]
    if isinstance(notes, str):
        notes = [notes]
    if notes:
        lines = "\n".join(f"- {_escape(note)}" for note in notes)
        blocks.append(_section(f"*Notes*\n{lines}"))
    if flow_run_url:
        blocks.append(_section(_link(flow_run_url, "Open the flow run in Prefect")))
    return blocks


def _against_objective(value: float | None, objective: float | None) -> str:
    if value is None:
        return "not measured"
    text = _duration(value)
    if objective is None:
        return f"{text} (no objective)"
    verdict = "met" if value <= objective else "MISSED"
    return f"{text} (objective {_duration(objective)}): {verdict}"


def _duration(seconds: float | None) -> str:
    """A short human duration: "0.4 s", "12.3 s", "4 min 05 s", "1 h 02 min"."""
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def _escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _truncate(text, HEADER_TEXT_LIMIT)},
    }


def _section(mrkdwn: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _truncate(mrkdwn, SECTION_TEXT_LIMIT)},
    }


def _fields(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {
                "type": "mrkdwn",
                "text": _truncate(f"*{_escape(name)}*\n{_escape(value)}", FIELD_TEXT_LIMIT),
            }
            for name, value in pairs[:MAX_FIELDS_PER_SECTION]
        ],
    }


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(text)}]}


def _link(url: str, label: str) -> str:
    return f"<{_escape(url)}|{_escape(label)}>"


# ---------------------------------------------------------------------- the incident thread


class IncidentThread(Protocol):
    """What a recovery run needs from its notification thread (Slack or nothing)."""

    @property
    def failures(self) -> list[dict[str, Any]]: ...

    def open(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None: ...

    def reply(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None: ...

    def update_opening(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None: ...

    def flush(self, timeout_seconds: float = ...) -> bool: ...

    def close(self, timeout_seconds: float = ...) -> bool: ...


@dataclass
class _Job:
    action: str  # "open", "reply" or "update_opening"
    method: str  # the Slack API method
    text: str
    blocks: list[dict[str, Any]] | None
    attempts: int = 0
    last_error: str | None = None
    abandoned: bool = False
    finished: bool = False
    started_at: float = field(default=0.0)


class SlackThread:
    """An incident's Slack thread, sent by a background worker so the run never waits.

    ``open`` posts the opening message; ``reply`` posts in its thread; ``update_opening``
    edits it. Every call returns at once; messages go out in the order they were queued, and
    replies queued before the opening's ts is known are threaded once it is. Transient
    failures are retried with exponential backoff and jitter, for at most
    ``retry_budget_seconds`` per message; what is given up on is logged and recorded in
    :attr:`failures` as ``{"method", "action", "error", "at"}``.

    Args:
        client_factory: builds the client, called once in the worker (so resolving the
            token never blocks the run), e.g. ``lambda: make_client(token, base_url)``.
        channel: channel name or id.
        retry_budget_seconds: how long one message may be retried.
        first_backoff_seconds: first pause between attempts; doubles up to the max.
        max_backoff_seconds: longest pause between attempts.
    """

    def __init__(
        self,
        client_factory: Callable[[], WebClient],
        channel: str,
        *,
        retry_budget_seconds: float = 120.0,
        first_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
    ) -> None:
        self.channel = channel
        self._client_factory = client_factory
        self._retry_budget_seconds = retry_budget_seconds
        self._first_backoff_seconds = first_backoff_seconds
        self._max_backoff_seconds = max_backoff_seconds
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._in_flight: _Job | None = None
        self._failures: list[dict[str, Any]] = []
        self._client: WebClient | None = None
        self._opening_queued = False
        self._opening_ts: str | None = None
        self._channel_id: str | None = None
        self._delivered = 0
        self._closed = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ public interface

    def open(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Queue the opening message; replies will be threaded under it.

        Args:
            text: the message, or its notification fallback when ``blocks`` are given.
            blocks: Block Kit blocks (see :func:`incident_opening_blocks`).
        """
        with self._cond:
            if self._opening_queued:
                log.warning(
                    "Slack thread on %s is already open; second opening ignored", self.channel
                )
                return
            self._opening_queued = True
        self._enqueue(_Job("open", "chat.postMessage", text, blocks))

    def reply(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Queue a reply in the thread (top-level if the opening could not be posted).

        Args:
            text: the reply, or its notification fallback when ``blocks`` are given.
            blocks: Block Kit blocks (see :func:`phase_reply_blocks`).
        """
        self._enqueue(_Job("reply", "chat.postMessage", text, blocks))

    def update_opening(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Queue an edit of the opening message (e.g. its status once recovered).

        Args:
            text: new text, or the notification fallback when ``blocks`` are given.
            blocks: new Block Kit blocks.
        """
        self._enqueue(_Job("update_opening", "chat.update", text, blocks))

    def flush(self, timeout_seconds: float = 10.0) -> bool:
        """Wait at most ``timeout_seconds`` for every queued message to be sent or given up.

        What is still unsent at the timeout is given up on and recorded in :attr:`failures`;
        later calls are still accepted.

        Args:
            timeout_seconds: the longest the run waits for Slack.

        Returns:
            True if nothing was left unsent.
        """
        with self._cond:
            drained = self._cond.wait_for(self._idle, timeout=max(0.0, timeout_seconds))
            if drained:
                return True
            pending = list(self._queue)
            if self._in_flight is not None and not self._in_flight.abandoned:
                pending.insert(0, self._in_flight)
            self._queue.clear()
            for job in pending:
                job.abandoned = True
                reason = f"not delivered within the {timeout_seconds:g} s flush timeout"
                if job.last_error:
                    reason += f" after {job.attempts} attempt(s); last error: {job.last_error}"
                self._fail_locked(job, reason)
            self._cond.notify_all()
            return False

    def close(self, timeout_seconds: float = 10.0) -> bool:
        """Flush, then stop the worker; later calls are recorded as failures, not sent.

        Args:
            timeout_seconds: the longest the run waits for Slack.

        Returns:
            True if nothing was left unsent.
        """
        drained = self.flush(timeout_seconds)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return drained

    def __enter__(self) -> SlackThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Messages given up on: ``{"method", "action", "error", "at"}`` (``at`` in UTC)."""
        with self._cond:
            return [dict(f) for f in self._failures]

    @property
    def opening_ts(self) -> str | None:
        """The opening message's ts, once it is posted."""
        with self._cond:
            return self._opening_ts

    @property
    def channel_id(self) -> str | None:
        """The channel's id, once a message is posted."""
        with self._cond:
            return self._channel_id

    @property
    def delivered(self) -> int:
        """How many messages and edits Slack accepted."""
        with self._cond:
            return self._delivered

    @property
    def pending(self) -> int:
        """How many messages are queued or being sent."""
        with self._cond:
            busy = self._in_flight is not None and not self._in_flight.abandoned
            return len(self._queue) + int(busy)

    # ------------------------------------------------------------------ worker

    def _idle(self) -> bool:
        return not self._queue and (self._in_flight is None or self._in_flight.abandoned)

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                self._fail_locked(job, "the Slack thread was already closed")
                return
            self._queue.append(job)
            if self._worker is None:
                # The worker runs in a copy of the caller's context, so it resolves the token
                # against the same Prefect API (settings are context variables, and a bare
                # thread would see only the import-time defaults).
                context = contextvars.copy_context()
                self._worker = threading.Thread(
                    target=context.run,
                    args=(self._work,),
                    name=f"slack-thread-{self.channel}",
                    daemon=True,
                )
                self._worker.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed and drained
                job = self._queue.popleft()
                self._in_flight = job
            try:
                self._deliver(job)
            finally:
                with self._cond:
                    self._in_flight = None
                    self._cond.notify_all()

    def _deliver(self, job: _Job) -> None:
        """Send one job, retrying transient failures until its budget is spent."""
        job.started_at = time.monotonic()
        deadline = job.started_at + self._retry_budget_seconds
        backoff = self._first_backoff_seconds
        while True:
            try:
                self._attempt(job)
            except NotifyError as exc:
                error, transient = str(exc), exc.transient
            except Exception as exc:  # noqa: BLE001 - a notifier bug must never reach the run
                error, transient = f"{type(exc).__name__}: {redact(str(exc))}", False
            else:
                with self._cond:
                    self._delivered += 1
                    job.finished = True
                if job.abandoned:
                    log.info("Slack: %s delivered after the flush had given up on it", job.action)
                return
            job.attempts += 1
            job.last_error = error
            pause = backoff * random.uniform(0.5, 1.0)
            if not transient or time.monotonic() + pause > deadline:
                with self._cond:
                    self._fail_locked(job, f"{error} (after {job.attempts} attempt(s))")
                return
            log.info("Slack: %s failed (%s); retrying in %.1f s", job.action, error, pause)
            with self._cond:
                if self._cond.wait_for(lambda: job.abandoned, timeout=pause):
                    return  # flush gave up on it and recorded the failure
            backoff = min(backoff * 2, self._max_backoff_seconds)

    def _attempt(self, job: _Job) -> None:
        if self._client is None:
            self._client = self._client_factory()
        with self._cond:
            opening_ts, channel = self._opening_ts, self._channel_id or self.channel
        if job.action == "open":
            posted = send_message(self._client, channel, job.text, job.blocks)
            with self._cond:
                self._opening_ts, self._channel_id = posted.ts, posted.channel
        elif job.action == "reply":
            if opening_ts is None:
                log.warning("Slack: no opening message; posting the reply at top level")
            posted = send_message(self._client, channel, job.text, job.blocks, opening_ts)
            with self._cond:
                self._channel_id = posted.channel
        else:
            if opening_ts is None:
                raise NotifyError("the opening message was never posted; nothing to update")
            update_message(self._client, channel, opening_ts, job.text, job.blocks)

    def _fail_locked(self, job: _Job, error: str) -> None:
        """Record a failure once per job (caller holds the lock)."""
        if job.finished:
            return
        job.finished = True
        error = redact(error)
        self._failures.append(
            {
                "method": job.method,
                "action": job.action,
                "error": error,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        log.warning("Slack: gave up on %s (%s): %s", job.action, job.method, error)


class NullThread:
    """The incident thread when no Slack is configured: accepts everything, sends nothing."""

    channel: str | None = None
    opening_ts: str | None = None
    channel_id: str | None = None
    delivered = 0
    pending = 0

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Always empty: nothing is sent, so nothing fails."""
        return []

    def open(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Do nothing (no Slack configured)."""

    def reply(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Do nothing (no Slack configured)."""

    def update_opening(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Do nothing (no Slack configured)."""

    def flush(self, timeout_seconds: float = 10.0) -> bool:
        """Nothing to wait for.

        Returns:
            True.
        """
        return True

    def close(self, timeout_seconds: float = 10.0) -> bool:
        """Nothing to stop.

        Returns:
            True.
        """
        return True

    def __enter__(self) -> NullThread:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def slack_thread_for(
    slack: SlackConfig, channel: str | None = None, **options: Any
) -> SlackThread | NullThread:
    """The incident thread for a run: a :class:`SlackThread`, or a :class:`NullThread`.

    The token is resolved in the worker on first use, so a slow or missing secret never
    delays the recovery; a missing one ends up in :attr:`SlackThread.failures`.

    Args:
        slack: the ``slack`` section of dr.yaml.
        channel: the target's channel; falls back to ``slack.default_channel``.
        **options: passed to :class:`SlackThread` (retry budget, backoff).

    Returns:
        A NullThread when no token or no channel is configured.
    """
    channel = channel or slack.default_channel
    token_ref = slack.token
    if token_ref is None or not channel:
        log.info("Slack: not configured (no token or no channel); notifications are off")
        return NullThread()

    def factory() -> WebClient:
        return make_client(token_ref.resolve(), slack.base_url)

    return SlackThread(factory, channel, **options)


# ---------------------------------------------------------------------- Prefect tasks

# A post is never cached: two identical messages are two deliberate notifications.
post_message_task = dr_task(post_message, name="slack-post-message", timeout_seconds=120)
reply_in_thread_task = dr_task(reply_in_thread, name="slack-reply-in-thread", timeout_seconds=120)
update_message_task = dr_task(update_message, name="slack-update-message", timeout_seconds=120)


# --- wrappers added for flows (lead: move on merge)
# A proof: never retried (a retry could turn a refusal into a pass).
check_token_task = dr_task(check_token, name="slack-check-token", retries=0, timeout_seconds=60)
