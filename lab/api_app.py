"""The lab's ``api`` service: a real HTTP health endpoint that reads the database and the cache.

``GET /health`` answers 200 only when both answer: the database (``SELECT count(*)`` of
``public.uploads`` on ``DB_HOST``/``DB_PORT``) and the cache (PING, then the newest upload
read through it, see :func:`lab.heartbeat_app.read_newest_upload`); otherwise 503 with
what failed. ``GET /uploads/newest`` is the read path a user would hit. Configured by the
environment like the worker (``DB_*``, ``CACHE_URL``) plus ``API_PORT``; one connection
per request, so a failover's repoint (a recreated container) is all it needs.

Run it with ``python -m lab.api_app`` (extra arguments are ignored, which lets the lab tag
the process with its folder).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lab.heartbeat_app import cache_from_env, open_db, read_newest_upload

COUNT_SQL = "SELECT count(*) FROM public.uploads"


def health(env: dict[str, str] | os._Environ[str]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 when the database and the cache both answer."""
    body: dict[str, Any] = {"status": "ok"}
    cache = None
    try:
        cache = cache_from_env(env)
        if cache is not None:
            cache.ping()
        body["cache"] = "ok" if cache is not None else "none"
    except Exception as exc:  # noqa: BLE001 - reported in the body
        body.update(status="failing", cache=f"{type(exc).__name__}: {exc}"[:200])
        cache = None
    try:
        with open_db(env) as conn:
            row = conn.execute(COUNT_SQL).fetchone()
            body["uploads"] = int(row[0]) if row else 0
            body["newest_upload"] = read_newest_upload(conn, cache)
        body["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported in the body
        body.update(status="failing", database=f"{type(exc).__name__}: {exc}"[:200])
    return (200 if body["status"] == "ok" else 503), body


def _handler(env: dict[str, str] | os._Environ[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in ("/health", "/healthz"):
                status, body = health(env)
            elif self.path == "/uploads/newest":
                status, body = health(env)
                body = {"newest_upload": body.get("newest_upload")}
            else:
                status, body = 404, {"error": "not found"}
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def serve(env: dict[str, str] | os._Environ[str], stop: threading.Event) -> None:
    """Serve on 127.0.0.1:``API_PORT`` until ``stop`` is set."""
    server = ThreadingHTTPServer(("127.0.0.1", int(env["API_PORT"])), _handler(env))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"event": "start", "port": server.server_port}) + "\n")
    sys.stdout.flush()
    stop.wait()
    server.shutdown()
    server.server_close()


def main() -> int:
    """Entry point: run until SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve(os.environ, stop)
    except KeyError as exc:
        sys.stderr.write(f"api_app: set {exc.args[0]} (and the DB_* variables)\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
