"""Warm a cache after it was flushed: SQL whose rows become keys, or the application's command.

A cold cache after a recovery sends every read to a database that has just come back;
warming the hot keys first keeps that first minute calm. SQL rows are
``(key, value[, ttl_seconds])`` and are read from a server-side cursor and written with
pipelined SETs in batches, so neither side holds the whole result.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Any

import redis

from dr.config_state import CacheConfig, CacheWarm
from dr.errors import CacheError, ConfigError
from dr.tasking import dr_task
from tasks.cache.client import connect, translated
from tasks.cache.models import WarmReport
from tasks.postgres.client import session

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1000


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def write_rows(
    client: redis.Redis,
    url: str,
    rows: Any,
    *,
    ttl_seconds: int | None = None,
    batch: int = DEFAULT_BATCH,
) -> int:
    """SET each ``(key, value[, ttl_seconds])`` row, pipelined in batches; return how many.

    Raises:
        ConfigError: a row has fewer than two columns or a NULL key.
    """
    written = 0
    with translated("warm-up SET", url):
        pipe = client.pipeline(transaction=False)
        for row in rows:
            if len(row) < 2 or row[0] is None:
                raise ConfigError(f"warm-up rows must be (key, value[, ttl_seconds]); got {row!r}")
            ttl = row[2] if len(row) > 2 and row[2] is not None else ttl_seconds
            pipe.set(_as_bytes(row[0]), _as_bytes("" if row[1] is None else row[1]), ex=ttl)
            written += 1
            if written % batch == 0:
                pipe.execute()
        pipe.execute()
    return written


def warm_from_sql(
    client: redis.Redis,
    url: str,
    warm: CacheWarm,
    *,
    conninfo: str,
    password: str | None = None,
) -> int:
    """Run the warm-up SQL (read-only, streamed) and write its rows as keys."""
    assert warm.sql is not None
    with session(conninfo, "cache warm-up", password=password, autocommit=False) as conn:
        conn.execute("SET TRANSACTION READ ONLY")  # going read-only is allowed mid-transaction
        with conn.cursor(name="dr_cache_warm") as cur:
            cur.itersize = DEFAULT_BATCH
            cur.execute(warm.sql)
            return write_rows(client, url, cur, ttl_seconds=warm.ttl_seconds)


def warm_from_command(cache: CacheConfig, warm: CacheWarm, password: str | None) -> None:
    """Run the application's own warm-up command, with the cache's URL in its environment."""
    assert warm.command is not None
    env = {**os.environ, "DR_CACHE_URL": cache.url}
    if password:
        env["REDISCLI_AUTH"] = password
    try:
        done = subprocess.run(
            warm.command, env=env, capture_output=True, text=True, timeout=warm.timeout_seconds
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"cache {cache.name}: warm-up command not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CacheError(
            f"cache {cache.name}: warm-up command timed out after {warm.timeout_seconds}s",
            transient=True,
        ) from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise CacheError(
            f"cache {cache.name}: warm-up command exited {done.returncode}: {tail[0]}",
            transient=False,
        )


def warm_cache(
    cache: CacheConfig, *, conninfo: str | None = None, password: str | None = None
) -> WarmReport:
    """Warm one cache as its ``warm`` says; nothing when it has none.

    Args:
        cache: the ``caches:`` entry.
        conninfo: where the warm-up SQL runs (the recovered primary, its ``warm.database``).
        password: the PostgreSQL password for ``conninfo``.

    Returns:
        Keys written (for a command: how much DBSIZE grew) and the seconds it took.

    Raises:
        ConfigError: SQL warm-up without a conninfo, or a command that does not exist.
        CacheError, PostgresError: the cache or the database failed.
    """
    warm = cache.warm
    if warm is None:
        return WarmReport(cache=cache.name, source="none")
    started = time.monotonic()
    client = connect(cache)
    try:
        if warm.sql is not None:
            if conninfo is None:
                raise ConfigError(f"cache {cache.name}: warm-up SQL needs a database conninfo")
            written = warm_from_sql(client, cache.url, warm, conninfo=conninfo, password=password)
            source = "sql"
        else:
            with translated("DBSIZE", cache.url):
                before = int(client.dbsize())
            cache_password = cache.password.resolve() if cache.password else None
            warm_from_command(cache, warm, cache_password)
            with translated("DBSIZE", cache.url):
                written = max(0, int(client.dbsize()) - before)
            source = "command"
    finally:
        client.close()
    seconds = time.monotonic() - started
    logger.info("warmed cache %s from %s: %s key(s) in %.1fs", cache.name, source, written, seconds)
    return WarmReport(cache=cache.name, source=source, keys_written=written, seconds=seconds)


warm_cache_task = dr_task(warm_cache, name="cache-warm-cache", timeout_seconds=900)
