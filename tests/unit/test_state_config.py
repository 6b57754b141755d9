"""caches:, files: and links: on a target: valid shapes, and problems by key path."""

from __future__ import annotations

from typing import Any

import pytest

from dr.config import SecretRef, parse_config
from dr.errors import ConfigError


def config(**state: Any) -> dict[str, Any]:
    target = {
        "postgres": {
            "primary": {"name": "p", "host": "127.0.0.1", "port": 6000},
            "databases": ["app"],
        },
        "backup": {"repository": "file:///var/backups/db"},
        **state,
    }
    return {"targets": {"shop": target}}


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def test_a_full_state_section_is_valid() -> None:
    cfg = parse_config(
        config(
            caches=[
                {
                    "name": "sessions",
                    "url": "redis://cache.internal:6390/2",
                    "password": {"env": "REDIS_PASSWORD"},
                    "after_recovery": {"flush": "patterns", "patterns": ["user:*"]},
                    "warm": {"sql": "SELECT 'user:' || id, name FROM users", "ttl_seconds": 60},
                    "sample_keys": ["user:1"],
                    "min_hit_rate": 0.5,
                }
            ],
            files=[
                {"name": "uploads", "s3": "s3://shop-uploads/prod"},
                {"name": "config", "directory": "/etc/shop"},
                {"name": "chain", "tarball": "/srv/chain/config.tar.gz"},
            ],
            links=[
                {
                    "name": "uploads",
                    "table": "public.uploads",
                    "key_column": "object_key",
                    "sha256_column": "sha256",
                    "files": "uploads",
                }
            ],
        )
    )
    target = cfg.target("shop")
    assert target.caches[0].password == SecretRef(env="REDIS_PASSWORD")
    assert [f.kind for f in target.files] == ["s3", "directory", "tarball"]
    assert target.links[0].files == "uploads"


def test_defaults_flush_everything_and_warm_nothing() -> None:
    cache = (
        parse_config(config(caches=[{"name": "c", "url": "redis://h/0"}])).target("shop").caches[0]
    )
    assert (cache.after_recovery.flush, cache.warm, cache.sample_keys) == ("all", None, [])


def test_cache_problems_by_key_path() -> None:
    found = problems(
        config(
            caches=[
                {"name": "a", "url": "redis://:hunter2@h:1/0"},
                {"name": "b", "url": "http://h", "after_recovery": {"flush": "patterns"}},
                {"name": "c", "url": "redis://h", "warm": {"sql": "SELECT 1", "command": ["x"]}},
                {"name": "d", "url": "redis://h", "extra": 1},
            ]
        )
    )
    prefix = "targets.shop.caches"
    assert "password" in found[f"{prefix}.0.url"]
    assert found[f"{prefix}.1.url"].startswith("must be redis://")
    assert "at least one" in found[f"{prefix}.1.after_recovery"]
    assert "exactly one of 'sql' or 'command'" in found[f"{prefix}.2.warm"]
    assert f"{prefix}.3.extra" in found


def test_files_and_links_problems_by_key_path() -> None:
    found = problems(
        config(
            files=[
                {"name": "x", "s3": "s3://bucket-name/p", "directory": "/d"},
                {"name": "y", "directory": "relative/dir"},
                {"name": "z", "tarball": "/t.tar"},
                {"name": "z", "tarball": "/u.tar"},
            ],
            links=[
                {"name": "l", "table": "uploads", "key_column": "k", "files": "nope"},
                {"name": "m", "table": "bad table", "key_column": "k", "files": "z"},
            ],
        )
    )
    assert "exactly one of 's3', 'directory' or 'tarball'" in found["targets.shop.files.0"]
    assert found["targets.shop.files.1.directory"] == "must be an absolute path"
    assert "targets.shop.links.1.table" in found
    # Cross-field problems come once every entry parses.
    fixed = config(
        files=[{"name": "z", "tarball": "/t.tar"}, {"name": "z", "tarball": "/u.tar"}],
        links=[{"name": "l", "table": "uploads", "key_column": "k", "files": "nope"}],
    )
    cross = problems(fixed)
    assert "repeated: z" in cross["targets.shop.files"]
    assert cross["targets.shop.links.0.files"] == "unknown files entry 'nope' (known: z)"
