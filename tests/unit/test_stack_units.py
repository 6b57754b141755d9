"""The lab stack's config and the flows' ordering rules, without servers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dr.config import DockerService, parse_config
from dr.config_state import CacheConfig
from flows.backup.files import FilesBackupResult
from flows.backup.markdown import render_markdown
from flows.backup.models import BackupRunResult
from flows.backup_verification.files import drill_backup_id
from flows.backup_verification.models import Injection
from flows.common.writers import split_writers, writer_services
from flows.data_corruption.state import stale_key
from lab.api_app import health
from lab.drconfig import lab_config
from lab.state import new_state


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab_dr_yaml(tmp_path: Path) -> dict:
    state = new_state(tmp_path)
    state.engine, state.podman_base_url = "podman", "unix:///nowhere"
    state.ports.update({"redis": 16390, "api": 18090})
    return lab_config(state, prefect_on=False)


def test_lab_target_declares_the_stack_caches_files_and_links(lab_dr_yaml: dict) -> None:
    lab = parse_config(lab_dr_yaml).target("lab")
    api, worker = lab.services
    assert (api.name, api.start_order, api.health_url) == (
        "dr-lab-api", 1, "http://127.0.0.1:18090/health"
    )  # fmt: skip
    assert (worker.name, worker.start_order, worker.health_url) == ("dr-lab-app", 2, None)
    (cache,) = lab.caches
    assert cache.url == "redis://127.0.0.1:16390/0" and cache.warm and cache.warm.sql
    assert ":6379" not in cache.url
    assert [f.s3 for f in lab.files] == ["s3://dr-lab-uploads/uploads/"]
    (link,) = lab.links
    assert (link.table, link.key_column, link.sha256_column, link.files) == (
        "public.uploads", "object_key", "sha256", "uploads"
    )  # fmt: skip
    assert [c.url for c in lab.health_checks.http] == ["http://127.0.0.1:18090/health"]


def test_seed_targets_get_the_apis_http_check(lab_dr_yaml: dict) -> None:
    config = parse_config(lab_dr_yaml)
    seeds = [n for n in config.targets if n not in ("lab", "lab-s3")]
    assert seeds
    for name in seeds:
        target = config.target(name)
        assert [c.name for c in target.health_checks.http] == ["api-health"], name
        assert target.health_checks.sql, name  # the seed's own SQL checks stay
        assert target.links[0].database == "app"  # the lab's app holds the uploads


def test_a_lab_without_redis_or_api_yet_declares_no_cache_and_one_service(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    state.engine, state.podman_base_url = "podman", "unix:///nowhere"
    lab = parse_config(lab_config(state, prefect_on=False)).target("lab")
    assert [s.name for s in lab.services] == ["dr-lab-app"]
    assert lab.caches == [] and lab.health_checks.http == []


def test_writers_come_in_start_order_and_stop_in_reverse(lab_dr_yaml: dict) -> None:
    lab_dr_yaml["targets"]["lab"]["services"].reverse()  # config order no longer start order
    target = parse_config(lab_dr_yaml).target("lab")
    assert [s.name for s in writer_services(target)] == ["dr-lab-api", "dr-lab-app"]
    docker, _ = split_writers(target)
    assert [s.name for s in docker[::-1]] == ["dr-lab-app", "dr-lab-api"]


def test_health_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="health_url"):
        DockerService(name="x", health_url="ftp://x/health")


def test_stale_key_falls_under_the_flush_pattern() -> None:
    plain = CacheConfig(name="c", url="redis://127.0.0.1:16390/0")
    patterned = CacheConfig(
        name="c",
        url="redis://127.0.0.1:16390/0",
        after_recovery={"flush": "patterns", "patterns": ["user:*", "feed:*"]},
    )
    assert stale_key(plain, "20260101T000000Z") == "dr-drill-stale-20260101t000000z"
    assert stale_key(patterned, "R1") == "user:dr-drill-stale-r1"


def test_bad_object_copy_sorts_before_every_real_backup() -> None:
    assert Injection("bad-object") is Injection.bad_object
    assert drill_backup_id("abc") < "20000101T000000Z"


def test_backup_report_lists_files_next_to_databases() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    result = BackupRunResult(
        target="lab", kind="logical", ok=True, started_at=now, ended_at=now,
        duration_seconds=1.0, rpo_objective_seconds=60,
        files=[FilesBackupResult(source="uploads", location="s3://b/uploads/",
                                 backup_id="20260101T000000Z", objects=3, bytes=2048)],
    )  # fmt: skip
    text = render_markdown(result)
    assert "| uploads | `s3://b/uploads/` | `20260101T000000Z` | 3 |" in text


def test_api_health_is_503_when_the_database_does_not_answer() -> None:
    status, body = health({"DB_HOST": "127.0.0.1", "DB_PORT": str(_closed_port())})
    assert status == 503 and body["status"] == "failing"
    assert body["cache"] == "none" and "database" in body and body["database"] != "ok"
