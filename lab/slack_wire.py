"""The Slack stand-in's wire: request parsing, paging, errors and the HTTP handler."""

from __future__ import annotations

import json
import logging
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from lab.slack_standin import SlackStandIn

log = logging.getLogger("lab.slack_standin")

# Slack's own page size default for conversations.* (docs: conversations.history "limit").
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000


class SlackApiError(Exception):
    """A Slack API error answered as ``{"ok": false, "error": code}``."""

    def __init__(self, code: str, status: int = 200) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


# ---------------------------------------------------------------------- parsing helpers


def required_param(params: dict[str, Any], key: str, error: str) -> Any:
    """A parameter Slack requires, else the API error Slack answers."""
    value = params.get(key)
    if value in (None, ""):
        raise SlackApiError(error)
    return value


def text_and_blocks(params: dict[str, Any]) -> tuple[str, list[Any] | None]:
    """``text`` and ``blocks`` (a JSON list, or a JSON string of one)."""
    text = params.get("text") or ""
    blocks = params.get("blocks") or None
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except json.JSONDecodeError as exc:
            raise SlackApiError("invalid_blocks_format") from exc
    if blocks is not None and not isinstance(blocks, list):
        raise SlackApiError("invalid_blocks_format")
    if not text and not blocks:
        raise SlackApiError("no_text")
    return str(text), blocks


def page_of(
    items: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Cursor pagination as Slack does it: ``limit`` + opaque ``next_cursor``."""
    try:
        limit = int(params.get("limit") or DEFAULT_PAGE_LIMIT)
        start = int(params.get("cursor") or 0)
    except ValueError as exc:
        raise SlackApiError("invalid_cursor") from exc
    limit = max(1, min(limit, MAX_PAGE_LIMIT))
    more = start + limit < len(items)
    meta = {
        "has_more": more,
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }
    return items[start : start + limit], meta


def ts_key(ts: str) -> tuple[int, int]:
    """A message timestamp as a sortable (seconds, micros) pair."""
    seconds, _, micros = str(ts).partition(".")
    return int(seconds), int(micros or 0)


def in_window(messages: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply ``oldest`` / ``latest`` / ``inclusive`` as conversations.history does."""
    inclusive = str(params.get("inclusive", "0")).lower() in ("1", "true")
    oldest = params.get("oldest")
    latest = params.get("latest")
    out = []
    for m in messages:
        key = ts_key(m["ts"])
        if oldest and (key < ts_key(oldest) or (key == ts_key(oldest) and not inclusive)):
            continue
        if latest and (key > ts_key(latest) or (key == ts_key(latest) and not inclusive)):
            continue
        out.append(m)
    return out


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Parameters from a JSON, form-encoded or multipart body."""
    if not body:
        return {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict):
            raise SlackApiError("invalid_json")
        return data
    if kind == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        params: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                payload = part.get_payload(decode=True) or b""
                params[str(name)] = payload.decode("utf-8")
        return params
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def make_handler(standin: SlackStandIn) -> type[BaseHTTPRequestHandler]:
    """The HTTP handler class serving ``standin``'s API and its controls."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "SlackStandIn/1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("slack stand-in: " + format, *args)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if url.path.startswith("/_standin/"):
                self._control(url.path.removeprefix("/_standin/"), body)
                return
            if not url.path.startswith("/api/"):
                self._send(404, {"ok": False, "error": "unknown_method"})
                return
            method = url.path.removeprefix("/api/")
            fault = standin._before_call(method)
            if fault is not None:
                kind, value = fault
                if kind == "down" and value == "close":
                    self.close_connection = True
                    return
                if kind == "down":
                    self._send(503, {"ok": False, "error": "service_unavailable"})
                    return
                self._send(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": value})
                return
            try:
                params = dict(parse_qsl(url.query, keep_blank_values=True))
                params.update(parse_body(self.headers.get("Content-Type", ""), body))
                auth = self.headers.get("Authorization", "")
                bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
                self._send(200, standin._dispatch(method, params, bearer))
            except SlackApiError as exc:
                self._send(exc.status, {"ok": False, "error": exc.code})
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._send(200, {"ok": False, "error": "invalid_json"})

        def _control(self, action: str, body: bytes) -> None:
            data = json.loads(body.decode("utf-8")) if body else {}
            if action == "messages":
                self._send(200, {"messages": standin.messages, "calls": standin.calls})
            elif action == "down":
                standin.set_down(bool(data.get("down", True)), str(data.get("mode", "503")))
                self._send(200, {"ok": True})
            elif action == "rate_limit":
                standin.rate_limit_next(
                    int(data.get("n", 1)), int(data.get("retry_after_seconds", 1))
                )
                self._send(200, {"ok": True})
            elif action == "reset":
                standin.reset()
                self._send(200, {"ok": True})
            else:
                self._send(404, {"ok": False, "error": "unknown_control"})

        def _send(
            self, status: int, payload: dict[str, Any], headers: dict[str, Any] | None = None
        ) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.end_headers()
            self.wfile.write(data)

    return Handler
