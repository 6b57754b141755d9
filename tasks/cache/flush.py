"""Invalidate a cache after a recovery: its whole database, or the keys matching patterns.

After a point-in-time recovery the cache still serves values computed from the damaged
rows; flushing is what makes the recovered database the only truth again. Patterns are
removed with SCAN + UNLINK in batches (never KEYS, which blocks the server), so a large
cache stays responsive while it is emptied.
"""

from __future__ import annotations

import logging
import time

import redis

from dr.config_state import CacheConfig
from dr.tasking import dr_task
from tasks.cache.client import connect, describe_url, translated
from tasks.cache.models import FlushReport

logger = logging.getLogger(__name__)

#: Keys asked for per SCAN step and removed per UNLINK (Redis' own advice: small steps).
DEFAULT_BATCH = 500


def flush_all(client: redis.Redis, url: str) -> int:
    """Empty the URL's database (FLUSHDB, not FLUSHALL: other databases are not ours).

    Returns:
        How many keys it held just before (DBSIZE; writers racing the flush may add a few).
    """
    with translated("FLUSHDB", url):
        before = int(client.dbsize())
        client.flushdb(asynchronous=True)  # memory is freed in the background
    logger.info("flushed %s: %s key(s)", describe_url(url), before)
    return before


def flush_pattern(client: redis.Redis, url: str, pattern: str, batch: int = DEFAULT_BATCH) -> int:
    """Remove every key matching one glob pattern, in batches; return how many were removed."""
    removed = 0
    pending: list[bytes] = []
    with translated(f"flush {pattern!r}", url):
        for key in client.scan_iter(match=pattern, count=batch):
            pending.append(key)
            if len(pending) >= batch:
                removed += int(client.unlink(*pending))
                pending = []
        if pending:
            removed += int(client.unlink(*pending))
    logger.info("flushed %s matching %r: %s key(s)", describe_url(url), pattern, removed)
    return removed


def flush_cache(cache: CacheConfig, batch: int = DEFAULT_BATCH) -> FlushReport:
    """Do what the cache's ``after_recovery.flush`` says (all, patterns or none).

    Raises:
        CacheError: the cache is unreachable or refused.
    """
    mode = cache.after_recovery.flush
    if mode == "none":
        return FlushReport(cache=cache.name, mode=mode)
    started = time.monotonic()
    client = connect(cache)
    try:
        if mode == "all":
            report = FlushReport(
                cache=cache.name, mode=mode, keys_flushed=flush_all(client, cache.url)
            )
        else:
            counts = {
                p: flush_pattern(client, cache.url, p, batch) for p in cache.after_recovery.patterns
            }
            report = FlushReport(
                cache=cache.name, mode=mode, keys_flushed=sum(counts.values()), by_pattern=counts
            )
    finally:
        client.close()
    report.seconds = time.monotonic() - started
    return report


flush_cache_task = dr_task(flush_cache, name="cache-flush-cache", timeout_seconds=600)
