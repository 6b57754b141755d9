"""The cache package on a real redis-server: flush, warm, sample, plant/read, errors."""

from __future__ import annotations

import sys

import pytest

from dr.config_state import CacheConfig
from dr.errors import CacheError
from lab.pgcluster import Cluster
from tasks.cache.client import connect
from tasks.cache.flush import flush_cache, flush_pattern
from tasks.cache.probe import plant_value, read_value, sample_hit_rate
from tasks.cache.recover import recover_cache
from tasks.cache.warm import warm_cache


def _with(cache: CacheConfig, **changes: object) -> CacheConfig:
    data = cache.model_dump(exclude_none=True)
    data.update(changes)
    return CacheConfig.model_validate(data)


def _fill(cache: CacheConfig, keys: dict[str, str]) -> None:
    client = connect(cache)
    client.mset(keys)
    client.close()


def test_flush_all_counts_and_empties(cache: CacheConfig) -> None:
    _fill(cache, {f"k{i}": "v" for i in range(25)})
    report = flush_cache(cache)
    assert (report.mode, report.keys_flushed) == ("all", 25)
    assert connect(cache).dbsize() == 0


def test_flush_patterns_in_batches_keeps_the_rest(cache: CacheConfig) -> None:
    _fill(cache, {**{f"user:{i}": "x" for i in range(1234)}, "feed:1": "y", "config": "z"})
    patterned = _with(cache, after_recovery={"flush": "patterns", "patterns": ["user:*", "feed:*"]})
    report = flush_cache(patterned, batch=100)
    assert report.by_pattern == {"user:*": 1234, "feed:*": 1}
    assert report.keys_flushed == 1235
    client = connect(cache)
    assert client.keys("*") == [b"config"]
    assert flush_pattern(client, cache.url, "user:*", batch=10) == 0


def test_flush_none_touches_nothing(cache: CacheConfig) -> None:
    _fill(cache, {"a": "1"})
    report = flush_cache(_with(cache, after_recovery={"flush": "none"}))
    assert report.keys_flushed == 0 and "left as it was" in report.sentence()
    assert read_value(cache, "a") == "1"


def test_planted_stale_value_is_gone_after_recovery(cache: CacheConfig) -> None:
    plant_value(cache, "drill:stale", "before-the-damage")
    assert read_value(cache, "drill:stale") == "before-the-damage"
    result = recover_cache(cache)
    assert result.flush.keys_flushed == 1 and result.passed
    assert read_value(cache, "drill:stale") is None


def test_warm_from_sql_then_hit_rate(cache: CacheConfig, pg_cluster: Cluster) -> None:
    pg_cluster.psql(
        "DROP TABLE IF EXISTS users; CREATE TABLE users (id int, name text);"
        "INSERT INTO users SELECT g, 'name-' || g FROM generate_series(1, 2500) g"
    )
    warmed = _with(
        cache,
        warm={"sql": "SELECT 'user:' || id, name FROM users", "ttl_seconds": 600},
        sample_keys=["user:1", "user:2500", "user:9999"],
        min_hit_rate=0.6,
    )
    result = recover_cache(warmed, conninfo=pg_cluster.conninfo())
    assert result.warm.keys_written == 2500 and result.warm.source == "sql"
    assert (result.hit_rate.hits, result.hit_rate.missing) == (2, ["user:9999"])
    assert result.passed and "hit rate 67%" in result.sentence()
    assert 0 < connect(cache).ttl("user:1") <= 600
    assert not recover_cache(_with(warmed, min_hit_rate=0.9), conninfo=pg_cluster.conninfo()).passed


def test_warm_from_command_counts_new_keys(cache: CacheConfig) -> None:
    script = (
        "import os, redis; r = redis.Redis.from_url(os.environ['DR_CACHE_URL'], "
        "password=os.environ['REDISCLI_AUTH']); r.mset({'w1': 1, 'w2': 2, 'w3': 3})"
    )
    report = warm_cache(_with(cache, warm={"command": [sys.executable, "-c", script]}))
    assert (report.source, report.keys_written) == ("command", 3)
    failing = _with(cache, warm={"command": [sys.executable, "-c", "raise SystemExit(3)"]})
    with pytest.raises(CacheError, match="exited 3") as info:
        warm_cache(failing)
    assert not info.value.transient


def test_sample_hit_rate(cache: CacheConfig) -> None:
    _fill(cache, {"a": "1", "b": "2"})
    rate = sample_hit_rate(cache, ["a", "b", "c", "d"])
    assert (rate.sampled, rate.hits, rate.rate) == (4, 2, 0.5)


def test_wrong_password_is_permanent(cache: CacheConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DR_TEST_REDIS_PASSWORD", "not-the-password")
    with pytest.raises(CacheError) as info:
        connect(cache)
    assert not info.value.transient
    assert "not-the-password" not in str(info.value)


def test_nothing_listening_is_transient(cache: CacheConfig) -> None:
    from lab.pgcluster import free_port

    closed = _with(cache, url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(CacheError) as info:
        connect(closed)
    assert info.value.transient
