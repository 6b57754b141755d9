"""The lab application: a heartbeat writer, configured like a real app by its environment.

It inserts one row into ``public.dr_heartbeat`` (``writer``, ``seq``, ``ts``) every 50 ms
through a single database host, and prints each acknowledged write to standard output as
one JSON line (``{"seq": 41, "ts": "2026-01-01T00:00:00.123456+00:00"}``). The rows are
what drills measure RPO with: only acknowledged rows count as written.

Environment (like a twelve-factor app: a failover repoints it by recreating it with another
``DB_HOST``/``DB_PORT``):

- ``DB_HOST``, ``DB_PORT``, ``DB_NAME``, ``DB_USER``, ``DB_PASSWORD``: where to write;
- ``HEARTBEAT_INTERVAL_MS`` (default 50), ``HEARTBEAT_WRITER`` (default ``app``);
- ``HEARTBEAT_RETRY_MS`` (default 50): pause before reconnecting after a failure;
- ``HEARTBEAT_ACK_LOG``: a file outside the database where every acknowledged write is
  appended as ``{"seq", "ts", "server"}`` (the app's own acknowledgement log: it survives
  the failover, so a drill counts lost rows from data, not from a probe).

On any error it drops the connection, waits ``HEARTBEAT_RETRY_MS`` and reconnects; after a
reconnect the sequence continues from ``max(seq) + 1`` of its writer on that server, so an
ambiguous commit (sent, never acknowledged) is neither duplicated nor counted. It runs
until SIGTERM or SIGINT and only imports psycopg, so it runs in a container that mounts the
host's Python and virtual environment read-only.

The worker's uploads (optional, when ``UPLOADS_BUCKET`` is set): every
``UPLOAD_INTERVAL_MS`` (default 1000) a second thread puts one object into the lab's S3
(``S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, key under
``UPLOADS_PREFIX``, default ``uploads/``), then its row into ``public.uploads``
(``object_key``, ``sha256``, ``size``), then caches it in Redis (``CACHE_URL``) and reads the
newest upload through the cache (a miss reads the database and fills the cache). Object
first, row second: a row never names an object that was not written.

Run it with ``python -m lab.heartbeat_app`` (or the file's path); extra arguments are
ignored, which lets the lab tag the process with its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from typing import Any

import psycopg

INSERT_SQL = (
    "INSERT INTO public.dr_heartbeat (writer, seq) VALUES (%s, %s) "
    "ON CONFLICT (writer, seq) DO NOTHING RETURNING ts"
)
NEXT_SEQ_SQL = "SELECT coalesce(max(seq), 0) + 1 FROM public.dr_heartbeat WHERE writer = %s"


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def conninfo_from_env(env: dict[str, str] | os._Environ[str]) -> dict[str, object]:
    """Connection keyword arguments from ``DB_*`` variables (no password in any log line).

    Args:
        env: the environment to read.

    Returns:
        Keyword arguments for :func:`psycopg.connect`.

    Raises:
        KeyError: ``DB_HOST`` or ``DB_PORT`` is missing.
    """
    return {
        "host": env["DB_HOST"],
        "port": int(env["DB_PORT"]),
        "dbname": env.get("DB_NAME", "app"),
        "user": env.get("DB_USER", "dr_app"),
        "password": env.get("DB_PASSWORD", ""),
        "connect_timeout": 2,
        "application_name": "dr-lab-app",
        "autocommit": True,
    }


class AckLog:
    """Appends one JSON line per acknowledged write; a no-op without a path."""

    def __init__(self, path: str | None) -> None:
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._file = open(path, "a", encoding="utf-8") if path else None

    def write(self, seq: int, ts: str, server: str) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"seq": seq, "ts": ts, "server": server}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def run(env: dict[str, str] | os._Environ[str], stop: threading.Event) -> int:
    """Write heartbeats until ``stop`` is set.

    Args:
        env: the configuration (see the module docstring).
        stop: set it to end the loop (the signal handlers do).

    Returns:
        The last acknowledged sequence number (0 when none).
    """
    kwargs = conninfo_from_env(env)
    writer = env.get("HEARTBEAT_WRITER", "app")
    interval = float(env.get("HEARTBEAT_INTERVAL_MS", "50")) / 1000.0
    retry = float(env.get("HEARTBEAT_RETRY_MS", "50")) / 1000.0
    last_acked = 0
    seq = 1
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    ack_log = AckLog(env.get("HEARTBEAT_ACK_LOG"))
    server = f"{kwargs['host']}:{kwargs['port']}"
    _emit({"event": "start", "host": kwargs["host"], "port": kwargs["port"], "writer": writer})
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                # The lab's application is its own program (not dr): its own connection.
                conn = psycopg.connect(**kwargs)  # type: ignore[arg-type]
                row = conn.execute(NEXT_SEQ_SQL, (writer,)).fetchone()
                seq = int(row[0]) if row else 1
                _emit(
                    {
                        "event": "connected",
                        "host": kwargs["host"],
                        "port": kwargs["port"],
                        "next_seq": seq,
                    }
                )
            row = conn.execute(INSERT_SQL, (writer, seq)).fetchone()
            if row is not None:
                last_acked = seq
                ack_log.write(seq, row[0].isoformat(), server)
                _emit({"seq": seq, "ts": row[0].isoformat()})
            seq += 1
        except psycopg.Error as exc:
            _emit(
                {
                    "event": "error",
                    "error": type(exc).__name__,
                    "detail": str(exc).strip().splitlines()[0][:200] if str(exc) else "",
                }
            )
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
            conn = None
            stop.wait(retry)
            next_at = time.monotonic()
            continue
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()
    if conn is not None:
        conn.close()
    ack_log.close()
    _emit({"event": "stop", "last_acked_seq": last_acked})
    return last_acked


def open_db(env: dict[str, str] | os._Environ[str]) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection from ``DB_*`` (the api and the uploads use it too)."""
    return psycopg.connect(**conninfo_from_env(env))  # type: ignore[arg-type]


UPLOAD_SQL = (
    "INSERT INTO public.uploads (object_key, sha256, size) VALUES (%s, %s, %s) RETURNING id"
)
NEWEST_UPLOAD_SQL = "SELECT id::text, object_key FROM public.uploads ORDER BY id DESC LIMIT 1"
#: The cache key the worker and the api read the newest upload through.
NEWEST_UPLOAD_KEY = "upload:newest"


def s3_client_from_env(env: dict[str, str] | os._Environ[str]) -> Any:
    """boto3 S3 client for the lab's endpoint (imported here: the heartbeat needs none)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env.get("S3_ENDPOINT") or None,
        region_name=env.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
    )


def cache_from_env(env: dict[str, str] | os._Environ[str]) -> Any:
    """A redis client for ``CACHE_URL``, or None when the app runs without a cache."""
    url = env.get("CACHE_URL")
    if not url:
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=1.0, decode_responses=True)


def read_newest_upload(conn: Any, cache: Any) -> str | None:
    """The newest upload's key, read through the cache (a miss fills it from the database)."""
    if cache is not None:
        hit = cache.get(NEWEST_UPLOAD_KEY)
        if hit is not None:
            return str(hit)
    row = conn.execute(NEWEST_UPLOAD_SQL).fetchone()
    if row is None:
        return None
    if cache is not None:
        cache.set(NEWEST_UPLOAD_KEY, row[1], ex=60)
    return str(row[1])


def upload_one(env: dict[str, str] | os._Environ[str], s3: Any, conn: Any, cache: Any) -> str:
    """One upload: the object, then its row, then the cache; returns the object key."""
    body = secrets.token_bytes(512 + secrets.randbelow(1536))
    digest = hashlib.sha256(body).hexdigest()
    name = f"{env.get('HEARTBEAT_WRITER', 'app')}-{time.time_ns()}.bin"
    key = env.get("UPLOADS_PREFIX", "uploads/") + name
    s3.put_object(Bucket=env["UPLOADS_BUCKET"], Key=key, Body=body)
    row = conn.execute(UPLOAD_SQL, (name, digest, len(body))).fetchone()
    if cache is not None:
        cache.set(f"upload:{row[0]}", digest, ex=3600)
        cache.set(NEWEST_UPLOAD_KEY, name, ex=60)
    read_newest_upload(conn, cache)
    return name


def run_uploads(env: dict[str, str] | os._Environ[str], stop: threading.Event) -> int:
    """Upload until ``stop`` is set; every failure is logged and retried. Returns the count."""
    interval = float(env.get("UPLOAD_INTERVAL_MS", "1000")) / 1000.0
    s3, cache, conn, done = s3_client_from_env(env), cache_from_env(env), None, 0
    while not stop.is_set():  # the first upload at once, then one per interval
        try:
            if conn is None or conn.closed:
                conn = open_db(env)
            upload_one(env, s3, conn, cache)
            done += 1
        except Exception as exc:  # noqa: BLE001 - the worker keeps going, like a real one
            _emit({"event": "upload-error", "error": type(exc).__name__, "detail": str(exc)[:200]})
            if conn is not None and not conn.closed:
                conn.close()
            conn = None
        stop.wait(interval)
    if conn is not None:
        conn.close()
    _emit({"event": "uploads-stop", "uploaded": done})
    return done


def start_uploads(env: dict[str, str] | os._Environ[str], stop: threading.Event) -> None:
    """The uploads thread, when ``UPLOADS_BUCKET`` is set."""
    if env.get("UPLOADS_BUCKET"):
        threading.Thread(target=run_uploads, args=(env, stop), daemon=True).start()


def main() -> int:
    """Entry point: run until SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    start_uploads(os.environ, stop)
    try:
        run(os.environ, stop)
    except KeyError as exc:
        sys.stderr.write(f"heartbeat_app: set {exc.args[0]} (and the other DB_* variables)\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
