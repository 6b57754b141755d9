"""A cache after a recovery, in one step: flush, warm, then measure the hit rate.

The order matters: warming before flushing would keep stale values, and the hit rate only
means something once the warm-up is done.
"""

from __future__ import annotations

from dr.config_state import CacheConfig
from dr.tasking import dr_task
from tasks.cache.flush import flush_cache
from tasks.cache.models import CacheRecovery
from tasks.cache.probe import sample_hit_rate
from tasks.cache.warm import warm_cache


def recover_cache(
    cache: CacheConfig, *, conninfo: str | None = None, password: str | None = None
) -> CacheRecovery:
    """Flush, warm and sample one cache; ``passed`` when the hit rate reaches ``min_hit_rate``.

    Args:
        cache: the ``caches:`` entry.
        conninfo: the recovered database for a SQL warm-up (see :func:`warm_cache`).
        password: its PostgreSQL password.

    Raises:
        CacheError, PostgresError, ConfigError: as the three steps do.
    """
    flushed = flush_cache(cache)
    warmed = warm_cache(cache, conninfo=conninfo, password=password)
    hits = sample_hit_rate(cache)
    return CacheRecovery(
        cache=cache.name,
        flush=flushed,
        warm=warmed,
        hit_rate=hits,
        min_hit_rate=cache.min_hit_rate,
        passed=hits.rate >= cache.min_hit_rate,
    )


recover_cache_task = dr_task(recover_cache, name="cache-recover-cache", timeout_seconds=1200)
