"""tasks.notify against the local Slack Web API stand-in (real HTTP through slack-sdk)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from slack_sdk import WebClient

from dr.config import SecretRef, SlackConfig
from dr.errors import NotifyError, register_secret
from lab.slack_standin import SlackStandIn
from tasks.notify.blocks import incident_opening_blocks, phase_reply_blocks
from tasks.notify.client import make_client
from tasks.notify.messages import post_message, reply_in_thread, send_message, update_message
from tasks.notify.thread import SlackThread, slack_thread_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SECRET = "Pg-integration-s3cret-41ad"
NON_BLOCKING_SECONDS = 0.05
FLUSH_MARGIN_SECONDS = 0.5


def _wait_for(condition: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_post_reply_update_are_threaded(standin: SlackStandIn, slack_client: WebClient) -> None:
    blocks = incident_opening_blocks("primary-failover", "orders", "drill", None, None, "running")
    opening = send_message(slack_client, "#dr-drills", "DR drill started", blocks=blocks)
    reply_ts = reply_in_thread(slack_client, opening.channel, opening.ts, "fence: PASSED")
    second_ts = post_message(slack_client, "dr-drills", "promote: PASSED", thread_ts=opening.ts)
    update_message(slack_client, opening.channel, opening.ts, "DR drill PASSED")

    messages = standin.messages
    assert [m["ts"] for m in messages] == [opening.ts, reply_ts, second_ts]
    assert opening.ts < reply_ts < second_ts
    assert opening.channel == standin.channel_id("dr-drills")
    top, r1, r2 = messages
    assert top["thread_ts"] is None
    assert r1["thread_ts"] == r2["thread_ts"] == opening.ts
    assert top["text"] == "DR drill PASSED"
    assert top["history"][0]["text"] == "DR drill started"
    assert top["history"][0]["blocks"][0]["type"] == "header"
    assert top["blocks"] is None  # updated with text only: Slack drops the old blocks
    # and Slack's own read API agrees
    replies = slack_client.conversations_replies(channel=opening.channel, ts=opening.ts)
    assert [m["text"] for m in replies["messages"]] == [
        "DR drill PASSED",
        "fence: PASSED",
        "promote: PASSED",
    ]


def test_rate_limit_retry_after_is_honoured(standin: SlackStandIn, slack_client: WebClient) -> None:
    standin.rate_limit_next(1, retry_after_seconds=1)
    started = time.monotonic()
    ts = post_message(slack_client, "#dr-drills", "after a 429")
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0
    assert standin.calls == ["chat.postMessage", "chat.postMessage"]
    assert [m["ts"] for m in standin.messages] == [ts]


def test_rate_limit_beyond_retries_is_a_transient_error(standin: SlackStandIn) -> None:
    client = make_client(standin.token, standin.base_url, rate_limit_retries=0)
    standin.rate_limit_next(1, retry_after_seconds=30)
    with pytest.raises(NotifyError, match="ratelimited") as info:
        post_message(client, "#dr-drills", "throttled")
    assert info.value.transient is True


def test_invalid_token_is_a_permanent_error(standin: SlackStandIn) -> None:
    client = make_client("xoxb-wrong-token-9999", standin.base_url)
    with pytest.raises(NotifyError, match="invalid_auth") as info:
        post_message(client, "#dr-drills", "hello")
    assert info.value.transient is False
    assert "xoxb-wrong-token-9999" not in str(info.value)
    assert standin.calls == ["chat.postMessage"]  # no retry of a permanent error
    assert standin.messages == []


@pytest.mark.parametrize("mode", ["503", "close"])
def test_slack_down_is_a_transient_error(standin: SlackStandIn, mode: str) -> None:
    client = make_client(standin.token, standin.base_url, server_error_retries=0)
    standin.set_down(True, mode)
    with pytest.raises(NotifyError) as info:
        post_message(client, "#dr-drills", "hello")
    assert info.value.transient is True


def test_unreachable_slack_is_a_transient_error(standin: SlackStandIn) -> None:
    base_url = standin.base_url
    standin.stop()
    client = make_client(standin.token, base_url, connection_retries=0)
    with pytest.raises(NotifyError, match="cannot reach") as info:
        post_message(client, "#dr-drills", "hello")
    assert info.value.transient is True


def test_thread_never_blocks_while_slack_is_down(
    standin: SlackStandIn, make_thread: Callable[..., SlackThread]
) -> None:
    standin.set_down(True)
    thread = make_thread()
    durations = []
    for call, text in [
        (thread.open, "opening"),
        (thread.reply, "phase 1"),
        (thread.reply, "phase 2"),
        (thread.update_opening, "recovered"),
    ]:
        started = time.perf_counter()
        call(text)
        durations.append(time.perf_counter() - started)
    assert max(durations) < NON_BLOCKING_SECONDS, durations
    # 3 calls: slack-sdk's own 5xx retry, then the worker's first retry (so the open has
    # a last error to report)
    _wait_for(lambda: len(standin.calls) >= 3)

    timeout = 1.0
    started = time.monotonic()
    assert thread.flush(timeout) is False
    assert time.monotonic() - started <= timeout + FLUSH_MARGIN_SECONDS

    failures = thread.failures
    assert [(f["action"], f["method"]) for f in failures] == [
        ("open", "chat.postMessage"),
        ("reply", "chat.postMessage"),
        ("reply", "chat.postMessage"),
        ("update_opening", "chat.update"),
    ]
    assert "service_unavailable" in failures[0]["error"]
    assert all("flush timeout" in f["error"] for f in failures)
    assert standin.messages == []
    assert thread.pending == 0


@pytest.mark.parametrize("mode", ["503", "close"])
def test_thread_delivers_in_order_once_slack_is_back(
    standin: SlackStandIn, make_thread: Callable[..., SlackThread], mode: str
) -> None:
    standin.set_down(True, mode)
    thread = make_thread()
    thread.open(
        "opening", incident_opening_blocks("restore", "orders", "drill", "SEV3", None, "running")
    )
    for n in range(1, 4):
        thread.reply(f"phase {n}", phase_reply_blocks(f"phase {n}", "passed", n, None))
    thread.update_opening("recovered")
    _wait_for(lambda: len(standin.calls) >= 2)  # failed at least once, retrying
    standin.set_down(False)

    assert thread.flush(15.0) is True
    assert thread.failures == []
    messages = standin.messages
    opening, *replies = messages
    assert opening["thread_ts"] is None
    assert opening["ts"] == thread.opening_ts
    assert opening["text"] == "recovered"
    assert [m["text"] for m in replies] == ["phase 1", "phase 2", "phase 3"]
    assert all(m["thread_ts"] == opening["ts"] for m in replies)
    assert [m["ts"] for m in messages] == sorted(m["ts"] for m in messages)


def test_messages_never_contain_a_registered_secret(
    standin: SlackStandIn, make_thread: Callable[..., SlackThread], slack_client: WebClient
) -> None:
    register_secret(SECRET)
    thread = make_thread()
    thread.open(
        f"restore with password={SECRET}",
        incident_opening_blocks("restore", f"db {SECRET}", "drill", None, None, "running"),
    )
    thread.reply(f"conninfo postgresql://dr:{SECRET}@127.0.0.1:5433/app")
    thread.reply("rotated", phase_reply_blocks("rotate", "passed", 1, f"new: {SECRET}"))
    thread.update_opening(f"done; token {standin.token}")
    post_message(slack_client, "#dr-drills", f"direct {SECRET}")
    assert thread.flush(10.0) is True

    dumped = json.dumps(standin.messages)
    assert len(standin.messages) == 4
    assert SECRET not in dumped
    assert standin.token not in dumped
    assert "***" in dumped


def test_thread_from_config_resolves_the_token_in_the_background(
    standin: SlackStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SlackConfig(
        token=SecretRef(env="DR_TEST_standin.token"),
        base_url=standin.base_url,
        default_channel="dr-drills",
    )
    missing = slack_thread_for(config)
    missing.open("opening")  # env var not set yet: recorded, not raised
    assert missing.close(5.0) is True
    assert "DR_TEST_standin.token" in missing.failures[0]["error"]

    monkeypatch.setenv("DR_TEST_standin.token", standin.token)
    thread = slack_thread_for(config, "#incidents")
    thread.open("opening")
    thread.reply("reply")
    assert thread.close(10.0) is True
    assert thread.failures == []
    assert [m["channel_name"] for m in standin.messages] == ["incidents", "incidents"]
