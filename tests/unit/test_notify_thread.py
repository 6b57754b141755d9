"""SlackThread's queueing, ordering and retry logic with a scripted client (no I/O)."""

from __future__ import annotations

import threading
import time
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.slack_response import SlackResponse

from dr.errors import ConfigError
from tasks.notify.thread import SlackThread

FAST = {"first_backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


def _api_error(status: int, error: str) -> SlackApiError:
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="http://127.0.0.1:9/api/x",
        req_args={},
        data={"ok": False, "error": error},
        headers={},
        status_code=status,
    )
    return SlackApiError("The request to the Slack API failed.", response)


class ScriptedClient:
    """Answers like Slack, raising the scripted errors first (one per call)."""

    base_url = "http://127.0.0.1:9/api/"

    def __init__(self, errors: list[Exception] | None = None, always: Exception | None = None):
        self.errors = list(errors or [])
        self.always = always
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _answer(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append((method, kwargs))
            if self.always is not None:
                raise self.always
            if self.errors:
                raise self.errors.pop(0)
            self.delivered.append((method, kwargs))
            ts = kwargs.get("ts") or f"1700000000.{len(self.calls):06d}"
            return {"ok": True, "channel": "C0000001", "ts": ts}

    def chat_postMessage(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer("chat.postMessage", kwargs)

    def chat_update(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer("chat.update", kwargs)


def test_transient_failures_are_retried_and_order_and_threading_kept() -> None:
    client = ScriptedClient(errors=[_api_error(429, "ratelimited"), _api_error(503, "x")])
    thread = SlackThread(lambda: client, "#dr", **FAST)  # type: ignore[arg-type,return-value]
    thread.open("opening")
    thread.reply("phase 1")
    thread.reply("phase 2")
    thread.update_opening("recovered")
    assert thread.flush(5.0) is True
    assert thread.failures == []
    assert thread.delivered == 4
    opening_ts = thread.opening_ts
    assert [(m, k["text"]) for m, k in client.delivered] == [
        ("chat.postMessage", "opening"),
        ("chat.postMessage", "phase 1"),
        ("chat.postMessage", "phase 2"),
        ("chat.update", "recovered"),
    ]
    assert "thread_ts" not in client.delivered[0][1]
    assert [k["thread_ts"] for _, k in client.delivered[1:3]] == [opening_ts, opening_ts]
    # chat.update needs the channel id, learnt from the opening's answer
    assert client.delivered[3][1]["channel"] == "C0000001"
    assert client.delivered[3][1]["ts"] == opening_ts
    assert len(client.calls) == 6
    thread.close(1.0)


def test_permanent_failure_is_not_retried_and_is_recorded() -> None:
    client = ScriptedClient(errors=[_api_error(200, "channel_not_found")])
    thread = SlackThread(lambda: client, "#nowhere", **FAST)  # type: ignore[arg-type,return-value]
    thread.open("opening")
    thread.update_opening("recovered")
    thread.reply("phase 1")
    assert thread.flush(5.0) is True
    failures = thread.failures
    assert [(f["action"], f["method"]) for f in failures] == [
        ("open", "chat.postMessage"),
        ("update_opening", "chat.update"),
    ]
    assert "channel_not_found" in failures[0]["error"]
    assert "after 1 attempt(s)" in failures[0]["error"]
    assert "never posted" in failures[1]["error"]
    assert failures[0]["at"].endswith("+00:00")
    # the reply still reaches people, at top level
    assert [(m, k.get("thread_ts")) for m, k in client.delivered] == [("chat.postMessage", None)]
    thread.close(1.0)


def test_retry_budget_bounds_the_time_spent_on_one_message() -> None:
    client = ScriptedClient(always=_api_error(503, "service_unavailable"))
    thread = SlackThread(
        lambda: client,  # type: ignore[arg-type,return-value]
        "#dr",
        retry_budget_seconds=0.3,
        **FAST,
    )
    started = time.monotonic()
    thread.open("opening")
    thread.reply("phase 1")
    assert thread.flush(5.0) is True  # both given up on within their budgets
    assert time.monotonic() - started < 2.0
    failures = thread.failures
    assert [f["action"] for f in failures] == ["open", "reply"]
    assert all("service_unavailable" in f["error"] for f in failures)
    assert len(client.calls) > 2  # retried, not just tried once each
    thread.close(1.0)


def test_client_factory_failure_is_recorded_not_raised() -> None:
    def factory() -> Any:
        raise ConfigError("environment variable DR_SLACK_TOKEN is not set")

    thread = SlackThread(factory, "#dr", **FAST)
    thread.open("opening")
    assert thread.flush(5.0) is True
    (failure,) = thread.failures
    assert "DR_SLACK_TOKEN is not set" in failure["error"]
    thread.close(1.0)


def test_calls_after_close_are_recorded_not_sent() -> None:
    client = ScriptedClient()
    thread = SlackThread(lambda: client, "#dr", **FAST)  # type: ignore[arg-type,return-value]
    thread.open("opening")
    assert thread.close(5.0) is True
    thread.reply("too late")
    assert [f["action"] for f in thread.failures] == ["reply"]
    assert "closed" in thread.failures[0]["error"]
    assert len(client.delivered) == 1
