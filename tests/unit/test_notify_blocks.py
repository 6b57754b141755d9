"""Block Kit builders, redaction and error translation of tasks.notify (no I/O)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.error import URLError

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.slack_response import SlackResponse

from dr.config import SecretRef, SlackConfig
from dr.errors import NotifyError, register_secret
from tasks.notify.blocks import (
    FIELD_TEXT_LIMIT,
    HEADER_TEXT_LIMIT,
    SECTION_TEXT_LIMIT,
    final_blocks,
    incident_opening_blocks,
    phase_reply_blocks,
    status_word,
)
from tasks.notify.messages import (
    post_message,
    post_message_task,
    reply_in_thread,
    reply_in_thread_task,
    update_message,
    update_message_task,
)
from tasks.notify.thread import NullThread, SlackThread, slack_thread_for

SECRET = "Pg-unit-s3cret-9f2c"  # a "password" registered for redaction
TOKEN_LIKE = "xoxb-1111-2222-AbCdEfGh"

# Emoji live in these ranges; status words must be plain text (and no :shortcodes:).
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff]")
_SHORTCODE = re.compile(r":[a-z0-9_+-]+:")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _all_text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(_strings(blocks))


def _assert_plain(blocks: list[dict[str, Any]]) -> None:
    text = _all_text(blocks)
    assert not _EMOJI.search(text), text
    assert not _SHORTCODE.search(text.replace("https://", "")), text


class RecordingClient:
    """Stands for slack_sdk.WebClient: records what would be sent, answers like Slack."""

    base_url = "http://127.0.0.1:9/api/"

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def chat_postMessage(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(("chat.postMessage", kwargs))
        if self.error is not None:
            raise self.error
        return {"ok": True, "channel": "C0000001", "ts": f"1700000000.{len(self.sent):06d}"}

    def chat_update(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(("chat.update", kwargs))
        if self.error is not None:
            raise self.error
        return {"ok": True, "channel": kwargs["channel"], "ts": kwargs["ts"]}


def _api_error(status: int, error: str) -> SlackApiError:
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="http://127.0.0.1:9/api/chat.postMessage",
        req_args={},
        data={"ok": False, "error": error},
        headers={},
        status_code=status,
    )
    return SlackApiError("The request to the Slack API failed.", response)


# ---------------------------------------------------------------------- builders


def test_opening_blocks_show_scenario_target_mode_status_and_link() -> None:
    blocks = incident_opening_blocks(
        scenario="primary-failover",
        target="orders-db",
        mode="drill",
        severity="SEV2",
        flow_run_url="http://127.0.0.1:4200/runs/flow-run/abc",
        status="in_progress",
    )
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["text"] == "DR drill: primary-failover on orders-db"
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == [
        "*Scenario*\nprimary-failover",
        "*Target*\norders-db",
        "*Mode*\ndrill",
        "*Severity*\nSEV2",
        "*Status*\nIN PROGRESS",
    ]
    assert "<http://127.0.0.1:4200/runs/flow-run/abc|Open the flow run in Prefect>" in _all_text(
        blocks
    )
    _assert_plain(blocks)


def test_opening_blocks_without_link_or_severity() -> None:
    blocks = incident_opening_blocks("restore", "billing", "dry-run", None, None, "passed")
    text = _all_text(blocks)
    assert "DR dry run: restore on billing" in text
    assert "*Severity*\nnot set" in text
    assert "*Status*\nPASSED" in text
    assert "Open the flow run" not in text


def test_phase_reply_blocks_words_duration_and_escaped_detail() -> None:
    blocks = phase_reply_blocks("promote replica", "ok", 12.34, "pg_promote() <waited> & returned")
    text = _all_text(blocks)
    assert "*promote replica*: PASSED" in text
    assert "*Duration*\n12.3 s" in text
    assert "pg_promote() &lt;waited&gt; &amp; returned" in text
    assert "<waited>" not in text
    _assert_plain(blocks)

    failed = _all_text(phase_reply_blocks("verify", False, 245, None))
    assert "*verify*: FAILED" in failed
    assert "4 min 05 s" in failed
    assert "not measured" in _all_text(phase_reply_blocks("fence", "skipped", None, None))


def test_final_blocks_compare_against_objectives() -> None:
    blocks = final_blocks(
        outcome="passed",
        rto_seconds=42.0,
        rpo_seconds=1.5,
        rto_objective=900,
        rpo_objective=300,
        flow_run_url="http://ui/runs/1",
        notes=["2 Slack messages were not delivered", "re-enable the cron job"],
    )
    text = _all_text(blocks)
    assert blocks[0]["text"]["text"] == "DR run PASSED"
    assert "*RTO*\n42.0 s (objective 15 min 00 s): met" in text
    assert "*RPO*\n1.5 s (objective 5 min 00 s): met" in text
    assert "- 2 Slack messages were not delivered\n- re-enable the cron job" in text
    _assert_plain(blocks)

    missed = _all_text(final_blocks("failed", 4000, None, 900, 300, None, None))
    assert "DR run FAILED" in missed
    assert "*RTO*\n1 h 06 min (objective 15 min 00 s): MISSED" in missed
    assert "*RPO*\nnot measured" in missed
    assert "(no objective)" in _all_text(final_blocks(True, 5, 0, None, None, None, "one note"))


def test_builders_respect_block_kit_limits() -> None:
    long = "x" * 10_000
    blocks = phase_reply_blocks(long, "passed", 1, long)
    assert all(len(b["text"]["text"]) <= SECTION_TEXT_LIMIT for b in blocks if "text" in b)
    assert all(len(f["text"]) <= FIELD_TEXT_LIMIT for f in blocks[1]["fields"])
    header = incident_opening_blocks(long, long, "drill", None, None, "x")[0]
    assert len(header["text"]["text"]) <= HEADER_TEXT_LIMIT


@pytest.mark.parametrize(
    ("outcome", "word"),
    [
        ("passed", "PASSED"),
        ("OK", "PASSED"),
        ("succeeded", "PASSED"),
        (True, "PASSED"),
        ("failed", "FAILED"),
        ("error", "FAILED"),
        (False, "FAILED"),
        ("skipped", "SKIPPED"),
        ("in_progress", "IN PROGRESS"),
        (None, "UNKNOWN"),
    ],
)
def test_status_word(outcome: Any, word: str) -> None:
    assert status_word(outcome) == word


# ---------------------------------------------------------------------- redaction


def test_post_redacts_token_like_and_registered_secret_from_text_and_blocks() -> None:
    register_secret(SECRET)
    client = RecordingClient()
    blocks = phase_reply_blocks(
        "rotate credentials", "passed", 1.0, f"new password {SECRET}, bot {TOKEN_LIKE}"
    )
    ts = post_message(client, "#dr", f"password={SECRET} token {TOKEN_LIKE} done", blocks=blocks)  # type: ignore[arg-type]
    assert ts == "1700000000.000001"
    reply_in_thread(client, "#dr", ts, f"again {SECRET}", blocks=blocks)  # type: ignore[arg-type]
    update_message(client, "C0000001", ts, f"updated {TOKEN_LIKE}", blocks)  # type: ignore[arg-type]

    assert [method for method, _ in client.sent] == [
        "chat.postMessage",
        "chat.postMessage",
        "chat.update",
    ]
    for _, kwargs in client.sent:
        dumped = json.dumps(kwargs)
        assert SECRET not in dumped
        assert TOKEN_LIKE not in dumped
        assert "***" in kwargs["text"]
    assert client.sent[1][1]["thread_ts"] == ts
    assert "thread_ts" not in client.sent[0][1]


# ---------------------------------------------------------------------- error translation


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_api_error(429, "ratelimited"), True),
        (_api_error(503, "service_unavailable"), True),
        (_api_error(500, "internal_error"), True),
        (_api_error(200, "invalid_auth"), False),
        (_api_error(200, "channel_not_found"), False),
        (URLError(ConnectionRefusedError(111, "Connection refused")), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError("timed out"), True),
    ],
)
def test_errors_are_translated_with_transient_marker(error: Exception, transient: bool) -> None:
    client = RecordingClient(error=error)
    with pytest.raises(NotifyError) as info:
        post_message(client, "#dr", "hello")  # type: ignore[arg-type]
    assert info.value.transient is transient
    assert "chat.postMessage" in str(info.value)
    assert info.value.__cause__ is error


def test_update_by_channel_name_explains_that_an_id_is_needed() -> None:
    client = RecordingClient(error=_api_error(200, "channel_not_found"))
    with pytest.raises(NotifyError, match="needs the channel id"):
        update_message(client, "#dr", "1700000000.000001", "x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- thread selection


def test_null_thread_accepts_everything_and_records_nothing() -> None:
    thread = NullThread()
    thread.open("opening", [])
    thread.reply("reply")
    thread.update_opening("done")
    assert thread.flush(0.0) is True
    assert thread.close(0.0) is True
    assert thread.failures == []
    assert thread.opening_ts is None


def test_slack_thread_for_needs_a_token_and_a_channel() -> None:
    assert isinstance(slack_thread_for(SlackConfig()), NullThread)
    with_token = SlackConfig(token=SecretRef(env="DR_UNIT_SLACK_TOKEN"))
    assert isinstance(slack_thread_for(with_token), NullThread)  # no channel anywhere
    thread = slack_thread_for(with_token, "#dr-drills")
    assert isinstance(thread, SlackThread)
    assert thread.channel == "#dr-drills"
    defaulted = slack_thread_for(
        SlackConfig(token=SecretRef(env="DR_UNIT_SLACK_TOKEN"), default_channel="dr")
    )
    assert isinstance(defaulted, SlackThread) and defaulted.channel == "dr"


def test_prefect_task_wrappers_call_the_plain_functions() -> None:
    assert post_message_task.fn is post_message
    assert reply_in_thread_task.fn is reply_in_thread
    assert update_message_task.fn is update_message
    assert post_message_task.name == "slack-post-message"
