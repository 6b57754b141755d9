"""Posting, replying and editing: plain functions over the Slack client, with Prefect tasks.

Every text and block is redacted before it is sent; errors arrive as
:class:`~dr.errors.NotifyError` from :func:`tasks.notify.client._call`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from slack_sdk import WebClient

from dr.errors import NotifyError, redact
from dr.tasking import dr_task
from tasks.notify.client import _call

log = logging.getLogger(__name__)

# chat.postMessage truncates text beyond 40,000 characters:
# https://api.slack.com/methods/chat.postMessage#truncating
MESSAGE_TEXT_LIMIT = 40_000


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


# A post is never cached: two identical messages are two deliberate notifications.
post_message_task = dr_task(post_message, name="slack-post-message", timeout_seconds=120)
reply_in_thread_task = dr_task(reply_in_thread, name="slack-reply-in-thread", timeout_seconds=120)
update_message_task = dr_task(update_message, name="slack-update-message", timeout_seconds=120)
# A proof: never retried (a retry could turn a refusal into a pass).
check_token_task = dr_task(check_token, name="slack-check-token", retries=0, timeout_seconds=60)
