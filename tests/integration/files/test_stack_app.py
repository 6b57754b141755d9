"""The lab application stack on real servers: the worker's uploads (moto S3, versioned), its
cache (a redis-server of the test's own, never 6379), the api's health over HTTP, and the
drill's object damage undone by a point-in-time restore, with the links consistent again."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dr.clock import utcnow
from dr.config import AWSConfig
from dr.config_state import FileLink, FileSource
from dr.errors import PreconditionError
from lab import api_app, heartbeat_app
from lab.pgcluster import Cluster
from lab.stack import UPLOADS_DDL
from tasks.files.drill import DAMAGE_BYTES, damage_objects
from tasks.files.links import check_links
from tasks.files.restore import restore_prefix_to_time
from tasks.health.service import wait_service_healthy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    port = _free_port()
    assert port != 6379
    folder: Path = tmp_path_factory.mktemp("stack-redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(folder)],
        stdout=(folder / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (folder / "redis.log").read_text()
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/2"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def app_env(
    pg_cluster: Cluster, redis_url: str, versioned_bucket: str, moto_endpoint: str
) -> dict[str, str]:
    ddl = UPLOADS_DDL.split("ALTER TABLE")[0]  # the test's cluster has no dr_app role
    pg_cluster.psql(f"DROP TABLE IF EXISTS public.uploads; {ddl}")
    return {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(pg_cluster.port),
        "DB_NAME": "postgres",
        "DB_USER": "postgres",
        "CACHE_URL": redis_url,
        "UPLOADS_BUCKET": versioned_bucket,
        "UPLOADS_PREFIX": "uploads/",
        "S3_ENDPOINT": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


def _upload(env: dict[str, str], n: int) -> list[str]:
    s3 = heartbeat_app.s3_client_from_env(env)
    cache = heartbeat_app.cache_from_env(env)
    with heartbeat_app.open_db(env) as conn:
        return [heartbeat_app.upload_one(env, s3, conn, cache) for _ in range(n)]


def _source(env: dict[str, str]) -> FileSource:
    return FileSource(name="uploads", s3=f"s3://{env['UPLOADS_BUCKET']}/uploads/")


LINK = FileLink(
    name="uploads-objects", table="public.uploads", key_column="object_key",
    sha256_column="sha256", files="uploads",
)  # fmt: skip


def test_worker_writes_object_then_row_and_caches_it(
    app_env: dict[str, str], s3: Any, pg_cluster: Cluster
) -> None:
    names = _upload(app_env, 3)
    rows = pg_cluster.psql("SELECT id, object_key, sha256 FROM public.uploads ORDER BY id")
    for line, name in zip(rows.splitlines(), names, strict=True):
        row_id, key, sha = line.split("|")
        body = s3.get_object(Bucket=app_env["UPLOADS_BUCKET"], Key=f"uploads/{key}")["Body"]
        assert key == name and hashlib.sha256(body.read()).hexdigest() == sha
        assert heartbeat_app.cache_from_env(app_env).get(f"upload:{row_id}") == sha
    cache = heartbeat_app.cache_from_env(app_env)
    assert cache.get(heartbeat_app.NEWEST_UPLOAD_KEY) == names[-1]
    cache.flushdb()  # a miss reads the database and fills the cache again
    with heartbeat_app.open_db(app_env) as conn:
        assert heartbeat_app.read_newest_upload(conn, cache) == names[-1]
    assert cache.get(heartbeat_app.NEWEST_UPLOAD_KEY) == names[-1]


def test_uploads_thread_runs_until_stopped(app_env: dict[str, str], pg_cluster: Cluster) -> None:
    stop = threading.Event()
    env = {**app_env, "UPLOAD_INTERVAL_MS": "50"}
    thread = threading.Thread(target=heartbeat_app.run_uploads, args=(env, stop))
    thread.start()
    time.sleep(0.6)
    stop.set()
    thread.join(timeout=10)
    assert int(pg_cluster.psql("SELECT count(*) FROM public.uploads")) >= 3


def test_api_health_over_http_reads_database_and_cache(app_env: dict[str, str]) -> None:
    names = _upload(app_env, 1)
    port = _free_port()
    env = {**app_env, "API_PORT": str(port)}
    stop = threading.Event()
    server = threading.Thread(target=api_app.serve, args=(env, stop), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}/health"
        assert wait_service_healthy("api", url, timeout_seconds=10) < 10
        body = httpx.get(url, timeout=5).json()
        assert body == {
            "status": "ok", "cache": "ok", "uploads": 1, "newest_upload": names[0],
            "database": "ok",
        }  # fmt: skip
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404
    finally:
        stop.set()
        server.join(timeout=10)
    down = {**app_env, "CACHE_URL": f"redis://127.0.0.1:{_free_port()}/0"}
    status, body = api_app.health(down)
    assert status == 503 and body["cache"].startswith("ConnectionError")


def test_wait_service_healthy_names_the_last_answer() -> None:
    with pytest.raises(PreconditionError, match="not healthy"):
        wait_service_healthy("api", f"http://127.0.0.1:{_free_port()}/health", 0.5)


def test_drill_damage_restored_to_the_point_and_links_consistent_again(
    app_env: dict[str, str], aws: AWSConfig, pg_cluster: Cluster, s3: Any
) -> None:
    _upload(app_env, 4)
    conninfo = pg_cluster.conninfo("postgres")
    assert check_links(LINK, _source(app_env), conninfo=conninfo, aws=aws).passed
    before = utcnow()
    time.sleep(1.1)  # S3 reports LastModified to the second (see flows/data_corruption/state.py)
    damaged = damage_objects(_source(app_env), 2, aws=aws)
    broken = check_links(LINK, _source(app_env), conninfo=conninfo, aws=aws)
    assert not broken.passed and sorted(broken.mismatched) == sorted(damaged)
    evidence = f"s3://{app_env['UPLOADS_BUCKET']}/dr-evidence/run1/"
    result = restore_prefix_to_time(_source(app_env), before, evidence=evidence, aws=aws)
    assert sorted(result.restored) == sorted(damaged) and len(result.evidence) == 2
    assert check_links(LINK, _source(app_env), conninfo=conninfo, aws=aws).passed
    kept = s3.get_object(Bucket=app_env["UPLOADS_BUCKET"], Key=f"dr-evidence/run1/{damaged[0]}")
    assert kept["Body"].read().startswith(DAMAGE_BYTES)  # the damaged copy is evidence
