"""The Slack stand-in itself: Slack's behaviours it imitates, and its process mode."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from lab.slack_standin import SlackStandIn, read_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKEN = "xoxb-standin-own-test"  # for stand-ins these tests start themselves


def test_auth_and_unknown_method_answer_like_slack(standin: SlackStandIn) -> None:
    assert WebClient(token=standin.token, base_url=standin.base_url).auth_test()["ok"] is True
    for token, error in [("xoxb-nope-1", "invalid_auth"), (None, "not_authed")]:
        with pytest.raises(SlackApiError) as info:
            WebClient(token=token, base_url=standin.base_url).auth_test()
        assert info.value.response.status_code == 200
        assert info.value.response["error"] == error
    with pytest.raises(SlackApiError) as info:
        WebClient(token=standin.token, base_url=standin.base_url).api_call("chat.delete")
    assert info.value.response["error"] == "unknown_method"


def test_json_form_and_multipart_bodies_are_accepted(
    standin: SlackStandIn, slack_client: WebClient
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    slack_client.chat_postMessage(channel="#dr", text="json", blocks=blocks)
    slack_client.api_call(
        "chat.postMessage", params={"channel": "dr", "text": "form", "blocks": json.dumps(blocks)}
    )
    slack_client.api_call("chat.postMessage", data={"channel": "dr", "text": "multipart"})
    assert [(m["text"], m["blocks"]) for m in standin.messages] == [
        ("json", blocks),
        ("form", blocks),
        ("multipart", None),
    ]


def test_timestamps_are_unique_and_increasing(
    standin: SlackStandIn, slack_client: WebClient
) -> None:
    stamps = [slack_client.chat_postMessage(channel="dr", text=str(n))["ts"] for n in range(30)]
    assert len(set(stamps)) == 30
    keys = [tuple(int(part) for part in ts.split(".")) for ts in stamps]
    assert keys == sorted(keys)
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)


def test_reply_to_a_reply_joins_the_parent_thread_and_history_pages(
    standin: SlackStandIn, slack_client: WebClient
) -> None:
    parent = slack_client.chat_postMessage(channel="dr", text="parent")
    channel = parent["channel"]
    reply = slack_client.chat_postMessage(channel=channel, text="r1", thread_ts=parent["ts"])
    nested = slack_client.chat_postMessage(channel=channel, text="r2", thread_ts=reply["ts"])
    assert nested["message"]["thread_ts"] == parent["ts"]
    for n in range(3):
        slack_client.chat_postMessage(channel=channel, text=f"top {n}")

    first = slack_client.conversations_history(channel=channel, limit=2)
    assert [m["text"] for m in first["messages"]] == ["top 2", "top 1"]  # newest first
    cursor = first["response_metadata"]["next_cursor"]
    rest = slack_client.conversations_history(channel=channel, limit=10, cursor=cursor)
    assert [m["text"] for m in rest["messages"]] == ["top 0", "parent"]
    assert rest["messages"][1]["reply_count"] == 2
    assert rest["has_more"] is False
    listed = slack_client.conversations_list()["channels"]
    assert [(c["id"], c["name"]) for c in listed] == [(channel, "dr")]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_errors_for_missing_things() -> None:
    fixed = SlackStandIn(token=TOKEN, channels=["dr-drills"]).start()
    try:
        client = WebClient(token=TOKEN, base_url=fixed.base_url)
        cases = [
            (lambda: client.chat_postMessage(channel="#other", text="x"), "channel_not_found"),
            (lambda: client.chat_postMessage(channel="dr-drills"), "no_text"),
            (
                lambda: client.chat_postMessage(channel="dr-drills", text="x", thread_ts="1.2"),
                "thread_not_found",
            ),
            # chat.update takes a channel id, not a name, as on Slack
            (
                lambda: client.chat_update(channel="dr-drills", ts="1.2", text="x"),
                "channel_not_found",
            ),
            (
                lambda: client.chat_update(
                    channel=fixed.channel_id("dr-drills"), ts="1.2", text="x"
                ),
                "message_not_found",
            ),
        ]
        for call, error in cases:
            with pytest.raises(SlackApiError) as info:
                call()
            assert info.value.response["error"] == error
    finally:
        fixed.stop()


def test_process_mode_writes_state_and_serves_controls(tmp_path: Path) -> None:
    state_file = tmp_path / "slack.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.slack_standin",
            "--port",
            "0",
            "--token",
            TOKEN,
            "--state-file",
            str(state_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/")
        client = WebClient(token=TOKEN, base_url=base_url)
        posted = client.chat_postMessage(channel="dr-lab", text="from another process")

        state = read_state(state_file)
        assert state["base_url"] == base_url
        assert [(m["text"], m["ts"]) for m in state["messages"]] == [
            ("from another process", posted["ts"])
        ]

        control = base_url.replace("/api/", "/_standin/")
        request = urllib.request.Request(
            control + "down", data=json.dumps({"down": True}).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=5).close()
        with pytest.raises(SlackApiError) as info:
            WebClient(token=TOKEN, base_url=base_url, retry_handlers=[]).auth_test()
        assert info.value.response.status_code == 503
        with urllib.request.urlopen(control + "messages", timeout=5) as answer:
            seen = json.load(answer)
        assert seen["calls"] == ["chat.postMessage", "auth.test"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

    # a restarted stand-in keeps its history and keeps timestamps increasing
    again = SlackStandIn(token=TOKEN, state_file=state_file).start()
    try:
        client = WebClient(token=TOKEN, base_url=again.base_url)
        later = client.chat_postMessage(channel="dr-lab", text="after restart")
        assert [m["text"] for m in again.messages] == ["from another process", "after restart"]
        assert later["channel"] == posted["channel"]
        assert later["ts"] > posted["ts"]
    finally:
        again.stop()
