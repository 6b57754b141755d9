"""Read a cache on purpose: a sample's hit rate, and planted values for the stale-entry drill.

The drill plants a value before the damage and reads it after the recovery: a value still
there is a stale entry the application would have served.
"""

from __future__ import annotations

from dr.config_state import CacheConfig
from dr.tasking import dr_task
from tasks.cache.client import connect, translated
from tasks.cache.models import HitRate


def sample_hit_rate(cache: CacheConfig, keys: list[str] | None = None) -> HitRate:
    """EXISTS each sample key (the config's ``sample_keys`` unless given); count the hits."""
    sample = list(cache.sample_keys if keys is None else keys)
    if not sample:
        return HitRate(cache=cache.name, sampled=0, hits=0)
    client = connect(cache)
    try:
        with translated("sample reads", cache.url):
            pipe = client.pipeline(transaction=False)
            for key in sample:
                pipe.exists(key)
            found = pipe.execute()
    finally:
        client.close()
    missing = [key for key, hit in zip(sample, found, strict=True) if not hit]
    return HitRate(
        cache=cache.name, sampled=len(sample), hits=len(sample) - len(missing), missing=missing
    )


def plant_value(cache: CacheConfig, key: str, value: str, ttl_seconds: int | None = None) -> None:
    """SET one key (a drill's marker of what the cache held before the damage)."""
    client = connect(cache)
    try:
        with translated(f"SET {key!r}", cache.url):
            client.set(key, value, ex=ttl_seconds)
    finally:
        client.close()


def read_value(cache: CacheConfig, key: str) -> str | None:
    """GET one key as text, or None when it is not there."""
    client = connect(cache)
    try:
        with translated(f"GET {key!r}", cache.url):
            value = client.get(key)
    finally:
        client.close()
    return None if value is None else bytes(value).decode(errors="replace")


sample_hit_rate_task = dr_task(sample_hit_rate, name="cache-sample-hit-rate", timeout_seconds=120)
plant_value_task = dr_task(plant_value, name="cache-plant-value", timeout_seconds=60)
read_value_task = dr_task(read_value, name="cache-read-value", timeout_seconds=60)
