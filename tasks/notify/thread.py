"""The incident thread a recovery run keeps people informed through, never waiting on Slack.

:class:`SlackThread` is what a recovery run uses. Why it exists: a recovery must never wait
on Slack (DESIGN: "Notification failures never block recovery"). Every call only queues
the message and returns; one background worker sends them in order, retries failures with
backoff for a bounded time, and records what could not be delivered in
:attr:`SlackThread.failures` for the report. :meth:`SlackThread.flush` waits a bounded
time at the end of the run. :class:`NullThread` has the same interface for runs without
Slack configured.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient

from dr.clock import utcnow
from dr.config import SlackConfig
from dr.errors import NotifyError, redact
from tasks.notify.client import make_client
from tasks.notify.messages import send_message, update_message

log = logging.getLogger(__name__)


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
                "at": utcnow().isoformat(timespec="seconds"),
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
