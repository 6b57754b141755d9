"""A local stand-in for Slack's Web API, for the lab and the tests.

No Slack server can be reached from the lab's machines, and no maintained emulator exists,
so this small HTTP server answers the handful of Web API methods DR pipelines uses, with
Slack-shaped JSON, under ``/api/``: ``auth.test``, ``chat.postMessage``, ``chat.update``,
``conversations.history``, ``conversations.replies`` and ``conversations.list``. The
production code path stays the same: only slack-sdk's ``base_url`` differs.

Like Slack it:

- takes the token as ``Authorization: Bearer ...`` or a ``token`` parameter, and answers
  ``not_authed`` / ``invalid_auth`` with HTTP 200 and ``ok: false``;
- accepts JSON, form-encoded and multipart bodies plus query-string parameters, and
  ``blocks`` either as a JSON list or as a JSON string;
- returns unique, strictly increasing message timestamps such as ``1700000000.000100``;
- folds a reply to a reply into the parent's thread.

For tests it can answer the next N calls with HTTP 429 and ``Retry-After``
(:meth:`SlackStandIn.rate_limit_next`), pretend to be down (HTTP 503, or connections closed
without an answer: :meth:`SlackStandIn.set_down`), and show every stored message
(:attr:`SlackStandIn.messages`) and every call (:attr:`SlackStandIn.calls`).

Run as a process for the lab::

    python -m lab.slack_standin --port 0 --token xoxb-lab --state-file .lab/slack.json

It prints its base URL on the first line of standard output, writes every message to the
state file on each change (read it with :func:`read_state`), and also serves the controls
over HTTP under ``/_standin/`` (``GET messages``, ``POST down``, ``POST rate_limit``) so
that tests in other processes can drive it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lab.slack_wire import (
    SlackApiError,
    in_window,
    make_handler,
    page_of,
    required_param,
    text_and_blocks,
    ts_key,
)

__all__ = ["SlackStandIn", "main", "read_state"]

log = logging.getLogger(__name__)

TEAM_ID = "T0STANDIN"
BOT_USER_ID = "U0DRBOT"
BOT_ID = "B0DRBOT"
DOWN_MODES = ("503", "close")


class SlackStandIn:
    """A Slack Web API server on loopback, with controls for tests.

    Args:
        token: the only bearer token accepted.
        port: TCP port on ``host``; 0 picks a free one.
        host: address to listen on (loopback only, by design).
        channels: channel names that exist; ``None`` creates any channel on first use.
        state_file: JSON file rewritten on each change (messages and call count); loaded at
            start when it exists, so a restarted lab keeps its history.
    """

    def __init__(
        self,
        token: str = "xoxb-test",  # noqa: S107 - a fake token for a local stand-in
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        channels: list[str] | None = None,
        state_file: str | Path | None = None,
    ) -> None:
        self.token = token
        self._host = host
        self._port = port
        self._auto_channels = channels is None
        self._state_file = Path(state_file) if state_file else None
        self._lock = threading.RLock()
        self._channels: dict[str, dict[str, Any]] = {}  # id -> channel
        self._messages: list[dict[str, Any]] = []
        self._calls: list[str] = []
        self._rate_limited = 0
        self._retry_after_seconds = 1
        self._down: str | None = None
        self._last_ts = (0, 0)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for name in channels or []:
            self._create_channel(name)
        if self._state_file and self._state_file.exists():
            self._load_state()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackStandIn:
        """Start serving in a background thread; returns self."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self._host, self._port), make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="slack-standin", kwargs={"poll_interval": 0.1}
        )
        self._thread.daemon = True
        self._thread.start()
        self._write_state()
        log.info("Slack stand-in listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("Slack stand-in stopped")

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the Slack stand-in is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What slack-sdk's ``base_url`` must be: ``http://127.0.0.1:PORT/api/``."""
        return f"http://{self._host}:{self.port}/api/"

    # ------------------------------------------------------------------ controls

    def rate_limit_next(self, n: int, retry_after_seconds: int = 1) -> None:
        """Answer the next ``n`` API calls with HTTP 429 and ``Retry-After``."""
        with self._lock:
            self._rate_limited = n
            self._retry_after_seconds = retry_after_seconds

    def set_down(self, down: bool, mode: str = "503") -> None:
        """Pretend Slack is down: ``mode`` "503" answers HTTP 503, "close" drops connections."""
        if mode not in DOWN_MODES:
            raise ValueError(f"mode must be one of {DOWN_MODES}, not {mode!r}")
        with self._lock:
            self._down = mode if down else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every stored message, oldest first (deep copies).

        Each has ``channel`` (id), ``channel_name``, ``ts``, ``thread_ts`` (None for a
        top-level message), ``text``, ``blocks``, ``user`` and ``history`` (earlier versions
        replaced by ``chat.update``, oldest first, each with ``text``, ``blocks`` and
        ``edited_ts``).
        """
        with self._lock:
            return copy.deepcopy(self._messages)

    @property
    def calls(self) -> list[str]:
        """Every API method called, in order, including calls answered 429, 503 or an error."""
        with self._lock:
            return list(self._calls)

    def channel_id(self, name: str) -> str:
        """The id of channel ``name`` (with or without ``#``), creating it if allowed."""
        with self._lock:
            return self._find_channel(name)["id"]

    def reset(self) -> None:
        """Forget messages and calls, and clear rate limiting and down mode."""
        with self._lock:
            self._messages.clear()
            self._calls.clear()
            self._rate_limited = 0
            self._down = None
            self._write_state()

    # ------------------------------------------------------------------ request handling

    def _before_call(self, method: str) -> tuple[str, Any] | None:
        """Record the call; return a fault to answer instead (down or rate limited)."""
        with self._lock:
            self._calls.append(method)
            if self._down is not None:
                return ("down", self._down)
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return ("ratelimited", self._retry_after_seconds)
            return None

    def _dispatch(self, method: str, params: dict[str, Any], bearer: str | None) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            raise SlackApiError("unknown_method", status=404)
        token = bearer or params.get("token")
        if not token:
            raise SlackApiError("not_authed")
        if token != self.token:
            raise SlackApiError("invalid_auth")
        with self._lock:
            result = handler(self, params)
        return {"ok": True, **result}

    # Slack methods. Each runs under the lock and returns the response without "ok".

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://dr-lab.slack.invalid/",
            "team": "DR lab",
            "user": "dr-bot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._find_channel(required_param(params, "channel", "channel_not_found"))
        text, blocks = text_and_blocks(params)
        thread_ts = params.get("thread_ts") or None
        if thread_ts is not None:
            parent = self._find_message(channel["id"], str(thread_ts), "thread_not_found")
            thread_ts = parent["thread_ts"] or parent["ts"]
        message = {
            "channel": channel["id"],
            "channel_name": channel["name"],
            "ts": self._next_ts(),
            "thread_ts": thread_ts,
            "text": text,
            "blocks": blocks,
            "user": BOT_USER_ID,
            "history": [],
        }
        self._messages.append(message)
        self._write_state()
        return {"channel": channel["id"], "ts": message["ts"], "message": self._public(message)}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        # Like Slack, chat.update and conversations.* take a channel id, not a name.
        channel = self._channel_by_id(required_param(params, "channel", "channel_not_found"))
        ts = str(required_param(params, "ts", "message_not_found"))
        message = self._find_message(channel["id"], ts, "message_not_found")
        text, blocks = text_and_blocks(params)
        if "blocks" not in params and not params.get("text"):
            blocks = message["blocks"]  # Slack keeps the blocks only when no text is given
        text = text or message["text"]
        edited_ts = self._next_ts()
        message["history"].append(
            {"text": message["text"], "blocks": message["blocks"], "edited_ts": edited_ts}
        )
        message["text"] = text
        message["blocks"] = blocks
        self._write_state()
        return {
            "channel": channel["id"],
            "ts": ts,
            "text": text,
            "message": self._public(message),
        }

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_by_id(required_param(params, "channel", "channel_not_found"))
        top = [
            m for m in self._messages if m["channel"] == channel["id"] and m["thread_ts"] is None
        ]
        top = in_window(top, params)
        top.sort(key=lambda m: ts_key(m["ts"]), reverse=True)  # newest first, like Slack
        page, meta = page_of(top, params)
        return {"messages": [self._public(m) for m in page], **meta}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_by_id(required_param(params, "channel", "channel_not_found"))
        ts = str(required_param(params, "ts", "thread_not_found"))
        parent = self._find_message(channel["id"], ts, "thread_not_found")
        root = parent["thread_ts"] or parent["ts"]
        thread = [
            m
            for m in self._messages
            if m["channel"] == channel["id"] and (m["ts"] == root or m["thread_ts"] == root)
        ]
        thread.sort(key=lambda m: ts_key(m["ts"]))  # parent first, then oldest reply first
        page, meta = page_of(thread, params)
        return {"messages": [self._public(m) for m in page], **meta}

    def _conversations_list(self, params: dict[str, Any]) -> dict[str, Any]:
        channels = [
            {
                "id": c["id"],
                "name": c["name"],
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": True,
                "created": c["created"],
            }
            for c in self._channels.values()
        ]
        page, meta = page_of(channels, params)
        return {"channels": page, **meta}

    _methods = {
        "auth.test": _auth_test,
        "chat.postMessage": _chat_post_message,
        "chat.update": _chat_update,
        "conversations.history": _conversations_history,
        "conversations.replies": _conversations_replies,
        "conversations.list": _conversations_list,
    }

    # ------------------------------------------------------------------ helpers

    def _public(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as Slack's API shows it."""
        out: dict[str, Any] = {
            "type": "message",
            "user": message["user"],
            "bot_id": BOT_ID,
            "team": TEAM_ID,
            "ts": message["ts"],
            "text": message["text"],
        }
        if message["blocks"]:
            out["blocks"] = copy.deepcopy(message["blocks"])
        if message["history"]:
            out["edited"] = {"user": BOT_USER_ID, "ts": message["history"][-1]["edited_ts"]}
        if message["thread_ts"] is not None:
            out["thread_ts"] = message["thread_ts"]
            out["parent_user_id"] = BOT_USER_ID
        else:
            replies = [
                m
                for m in self._messages
                if m["channel"] == message["channel"] and m["thread_ts"] == message["ts"]
            ]
            if replies:
                out["thread_ts"] = message["ts"]
                out["reply_count"] = len(replies)
                out["reply_users_count"] = 1
                out["reply_users"] = [BOT_USER_ID]
                out["latest_reply"] = replies[-1]["ts"]
        return out

    def _create_channel(self, name: str) -> dict[str, Any]:
        channel = {
            "id": f"C{len(self._channels) + 1:08d}",
            "name": name,
            "created": int(time.time()),
        }
        self._channels[channel["id"]] = channel
        return channel

    def _find_channel(self, name_or_id: str) -> dict[str, Any]:
        key = str(name_or_id).lstrip("#")
        if key in self._channels:
            return self._channels[key]
        for channel in self._channels.values():
            if channel["name"] == key:
                return channel
        if self._auto_channels and key:
            return self._create_channel(key)
        raise SlackApiError("channel_not_found")

    def _channel_by_id(self, channel_id: str) -> dict[str, Any]:
        channel = self._channels.get(str(channel_id))
        if channel is None:
            raise SlackApiError("channel_not_found")
        return channel

    def _find_message(self, channel_id: str, ts: str, error: str) -> dict[str, Any]:
        for message in self._messages:
            if message["channel"] == channel_id and message["ts"] == ts:
                return message
        raise SlackApiError(error)

    def _next_ts(self) -> str:
        """A unique, strictly increasing Slack timestamp ``SECONDS.MICROS``."""
        now = time.time()
        candidate = (int(now), int((now % 1) * 1_000_000))
        if candidate <= self._last_ts:
            seconds, micros = self._last_ts
            micros += 1
            if micros >= 1_000_000:
                seconds, micros = seconds + 1, 0
            candidate = (seconds, micros)
        self._last_ts = candidate
        return f"{candidate[0]}.{candidate[1]:06d}"

    def _write_state(self) -> None:
        if self._state_file is None:
            return
        with self._lock:
            state = {
                "base_url": self.base_url if self._server is not None else None,
                "pid": os.getpid(),
                "channels": list(self._channels.values()),
                "messages": self._messages,
                "calls": len(self._calls),
            }
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_name(self._state_file.name + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self._state_file)

    def _load_state(self) -> None:
        state = read_state(self._state_file)  # type: ignore[arg-type]
        for channel in state.get("channels", []):
            self._channels[channel["id"]] = channel
        self._messages = list(state.get("messages", []))
        if self._messages:
            last = max(ts_key(m["ts"]) for m in self._messages)
            edits = [ts_key(h["edited_ts"]) for m in self._messages for h in m["history"]]
            self._last_ts = max([last, *edits])


def read_state(path: str | Path) -> dict[str, Any]:
    """Read a stand-in's state file (``messages``, ``channels``, ``calls``, ``base_url``).

    Args:
        path: the file given as ``--state-file``.

    Returns:
        The parsed state; an empty state when the file does not exist yet.
    """
    path = Path(path)
    if not path.exists():
        return {"base_url": None, "channels": [], "messages": [], "calls": 0}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in as a process until SIGTERM or SIGINT.

    Args:
        argv: command-line arguments (``--port``, ``--token``, ``--state-file``, ``--host``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m lab.slack_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=os.environ.get("SLACK_STANDIN_TOKEN", "xoxb-test"))
    parser.add_argument("--state-file", "--state", dest="state_file", default=None)
    parser.add_argument("--channel", action="append", dest="channels", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    standin = SlackStandIn(
        token=args.token,
        port=args.port,
        host=args.host,
        channels=args.channels,
        state_file=args.state_file,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    standin.start()
    sys.stdout.write(standin.base_url + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
