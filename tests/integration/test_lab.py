"""The lab on real servers: up, status, repair, heal after a failover, down.

The shared ``lab`` fixture (tests/conftest.py) brings the whole lab up once per session.
Tests that break it repair it before they end; the failover test runs last and leaves the
lab healed for whoever uses it after this module.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.lab import lab_app
from dr.config import load_config
from dr.errors import PreconditionError
from lab import down as lab_down
from lab import state as lab_state
from lab import status as lab_status
from lab import up as lab_up
from tests.conftest import assert_lab_gone, lab_pids, pids_mentioning

pytestmark = pytest.mark.integration


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _output(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _kill_app(state: lab_state.LabState) -> None:
    """Kill the heartbeat writer hard, wherever it runs."""
    if state.engine == "podman":
        from tasks.containers.client import make_client

        client = make_client(state.podman_base_url)
        client.containers.get(state.app_container).kill()
    else:
        os.kill(state.processes["app"].pid, signal.SIGKILL)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# --------------------------------------------------------------------------- status


def test_status_json_reports_every_component(lab: lab_state.LabState) -> None:
    result = CliRunner().invoke(lab_app, ["status", "--dir", str(lab.base_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    assert report["ok"] is True
    primary, replica = report["primary"], report["replica"]
    assert primary["role"] == "primary" and primary["up"]
    assert primary["port"] not in (5432, 6379)
    assert replica["role"] == "standby"
    assert replica["streaming"] is True and replica["state"] == "streaming"
    assert isinstance(replica["lag_bytes"], int) and replica["lag_bytes"] >= 0
    assert isinstance(replica["lag_seconds"], float) and replica["lag_seconds"] < 5
    assert report["control"]["up"]

    repos = report["repositories"]
    assert repos["file"]["url"].startswith("file:///") and repos["file"]["up"]
    assert repos["s3"]["url"] == "s3://dr-lab/lab" and repos["s3"]["up"]
    assert "memory" in repos["s3"]["note"]
    assert repos["evidence"]["up"]

    from lab import podman

    expected = "podman" if podman.available()[0] and not os.environ.get("DR_LAB_ENGINE") else None
    assert report["engine"] in ("podman", "process")
    if expected:
        assert report["engine"] == expected
    assert report["app"]["engine"] == report["engine"] and report["app"]["up"]

    assert report["prefect"]["up"]
    assert report["prefect"]["ui_url"].startswith("http://127.0.0.1:")
    assert report["prefect"]["api_url"] == report["prefect"]["ui_url"] + "/api"
    assert report["slack"]["up"]

    heartbeat = report["heartbeat"]
    assert heartbeat["node"] == "primary"
    assert 0 <= heartbeat["age_seconds"] < 1.0

    archiver = report["archiver"]
    assert archiver["last_archived_wal"] and archiver["last_archived_time"]
    assert archiver["failed_count"] == 0
    # archive_command copies %f as it is: a segment, a .partial one after a promotion, or
    # a timeline's .history file (the session's lab may have failed over already).
    assert (lab.base_dir / "wal" / archiver["last_archived_wal"]).exists()


def test_human_status_is_a_table(lab: lab_state.LabState) -> None:
    result = CliRunner().invoke(lab_app, ["status", "--dir", str(lab.base_dir)])
    assert result.exit_code == 0, result.output
    for word in ("primary", "replica1", "heartbeat", "wal archive", "prefect", lab.prefect_ui_url):
        assert word in result.output


def test_status_of_a_folder_without_lab(new_lab_dir: Path) -> None:
    result = CliRunner().invoke(lab_app, ["status", "--dir", str(new_lab_dir), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.output)["exists"] is False


# --------------------------------------------------------------------------- config


def test_lab_config_is_valid_and_complete(lab: lab_state.LabState) -> None:
    config = load_config(lab.config_path)
    # Then one target per seed runbook (lab.seeds; tests/integration/test_seed_targets.py).
    assert list(config.targets)[:2] == ["lab", "lab-s3"]
    target = config.target("lab")
    assert target.production is False and target.drills_allowed is True
    assert target.postgres.primary.port == lab.primary.port
    assert target.postgres.primary.region == "primary-region"
    assert [r.region for r in target.postgres.replicas] == ["dr-region"]
    assert target.postgres.primary.data_directory == lab.primary.data_dir
    assert target.backup.repository == f"file://{lab.base_dir / 'repo'}"
    assert target.backup.wal_archive == f"file://{lab.base_dir / 'wal'}"
    assert config.target("lab-s3").backup.repository == "s3://dr-lab/lab"
    assert target.evidence_repository == "s3://dr-lab-evidence/lab"
    assert config.aws.endpoint_url == lab.moto_url
    assert config.slack.base_url == lab.slack_url
    assert config.prefect_ui_url == lab.prefect_ui_url
    if lab.engine == "podman":
        # The stack, in start order: the api (healthy first), then the worker.
        assert [s.name for s in target.services] == ["dr-lab-api", "dr-lab-app"]
        assert [s.start_order for s in target.services] == [1, 2]
        assert target.services[0].health_url == f"http://127.0.0.1:{lab.ports['api']}/health"
        assert config.docker.base_url == lab.podman_base_url
    assert [c.url for c in target.caches] == [f"redis://127.0.0.1:{lab.ports['redis']}/0"]
    assert [f.s3 for f in target.files] == ["s3://dr-lab-uploads/uploads/"]
    assert [link.files for link in target.links] == ["uploads"]

    # Every check and invariant the config names holds on the fresh lab.
    with psycopg.connect(
        host="127.0.0.1", port=lab.primary.port, dbname="app", user="postgres"
    ) as conn:
        for check in target.health_checks.sql:
            assert conn.execute(check.sql).fetchone()[0] is True, check.name
        for query in target.validation_queries:
            rows = conn.execute(query.sql).fetchall()
            if query.expect == "no_rows":
                assert rows == [], query.name
            else:
                assert rows and rows[0][0] is True, query.name
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM shop.customers) + (SELECT count(*) FROM shop.accounts)"
            " + (SELECT count(*) FROM shop.orders) + (SELECT count(*) FROM shop.order_items)"
        ).fetchone()[0]
        assert counts >= 200_000
    assert config.history.dsn is not None
    with psycopg.connect(config.history.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_secrets_stay_in_files_and_prefect_blocks(lab: lab_state.LabState) -> None:
    secrets_dir = lab.base_dir / "secrets"
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    password = (secrets_dir / "app-password").read_text().strip()
    for path in secrets_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    # Not in the config, the state file or any command line.
    assert password not in lab.config_path.read_text()
    assert password not in (lab.base_dir / "state.json").read_text()
    # The app role logs in with it (scram), and the Prefect Secret block holds it.
    with psycopg.connect(
        host="127.0.0.1", port=lab.primary.port, dbname="app", user="dr_app", password=password
    ) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM shop.orders").fetchone()[0] is True
    code = (
        "from dr.config import load_config, SecretRef\n"
        "import sys\n"
        "value = SecretRef(prefect_secret='lab-app-password').resolve()\n"
        f"cfg = load_config({str(lab.config_path)!r})\n"
        "ok = value == sys.stdin.read().strip() and cfg.slack.token.resolve().startswith('xoxb')\n"
        "print('match' if ok else 'differ')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=lab.prefect_api_url,
        PREFECT_HOME=str(lab.base_dir / "prefect-home"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=password,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "match", proc.stderr[-2000:]


# --------------------------------------------------------------------------- idempotence


def test_up_twice_is_harmless_and_fast(lab: lab_state.LabState) -> None:
    before = lab_state.load_state(lab.base_dir)
    config_before = lab.config_path.read_text()
    pids_before = {
        name: _postmaster_pid(info.data_dir) for name, info in lab_state.clusters(before).items()
    }
    console = _quiet()

    started = time.monotonic()
    after = lab_up.up(lab.base_dir, prefect=True, console=console)
    elapsed = time.monotonic() - started

    assert elapsed < 15, _output(console)
    out = _output(console)
    for verb in ("created", "started", "rebuilt", "restarted", "recreated", "written"):
        assert f" {verb}" not in out.replace("already running", ""), out
    assert lab.config_path.read_text() == config_before
    assert {n: p.pid for n, p in after.processes.items()} == {
        n: p.pid for n, p in before.processes.items()
    }
    assert after.ports == before.ports
    assert {
        name: _postmaster_pid(info.data_dir) for name, info in lab_state.clusters(after).items()
    } == pids_before


def test_up_repairs_a_killed_replica_and_app(lab: lab_state.LabState) -> None:
    state = lab_state.load_state(lab.base_dir)
    cl = lab_state.clusters(state)
    primary_pid = cl["primary"].pid()
    assert cl["replica1"].kill()
    _kill_app(state)
    broken = lab_status.status(lab.base_dir)
    assert broken["replica"]["up"] is False
    assert _wait_for(lambda: lab_status.status(lab.base_dir)["app"]["up"] is False, 5)

    console = _quiet()
    lab_up.up(lab.base_dir, prefect=True, console=console)

    report = lab_status.status(lab.base_dir)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["replica"]["streaming"]
    assert report["heartbeat"]["age_seconds"] < 1.0
    assert cl["primary"].pid() == primary_pid  # only what was down was touched
    out = _output(console)
    assert "started replica" in out, out


def test_half_finished_state_is_repaired(lab: lab_state.LabState) -> None:
    """A crash between steps leaves a step unmarked: up redoes exactly that step."""
    state = lab_state.load_state(lab.base_dir)
    state.completed.remove("replica-basebackup")
    lab_state.save_state(state)
    console = _quiet()
    lab_up.up(lab.base_dir, prefect=True, console=console)
    assert "created replica" in _output(console)
    report = lab_status.status(lab.base_dir)
    assert report["ok"] and report["replica"]["streaming"]
    assert "replica-basebackup" in lab_state.load_state(lab.base_dir).completed


def test_heal_reopens_a_primary_left_fenced(lab: lab_state.LabState) -> None:
    """A drill that fenced the primary and died before undoing it: heal reopens it."""
    with psycopg.connect(
        host="127.0.0.1", port=lab.primary.port, dbname="postgres", user="postgres",
        autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("ALTER DATABASE app WITH ALLOW_CONNECTIONS false")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app'")
    assert _wait_for(lambda: lab_status.status(lab.base_dir)["heartbeat"]["up"] is False, 5)

    console = _quiet()
    lab_up.heal(lab.base_dir, console=console)

    assert "reopened database app" in _output(console)
    report = lab_status.status(lab.base_dir)
    assert report["ok"] and report["heartbeat"]["age_seconds"] < 1.0
    with psycopg.connect(
        host="127.0.0.1", port=lab.primary.port, dbname="app", user="postgres"
    ) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)


# --------------------------------------------------------------------------- failover


@pytest.mark.slow
def test_heal_switches_back_after_a_failover_without_losing_rows(lab: lab_state.LabState) -> None:
    state = lab_state.load_state(lab.base_dir)
    cl = lab_state.clusters(state)
    primary, replica = cl["primary"], cl["replica1"]
    # A failover as a drill does it: crash the primary, promote the replica, repoint the app.
    primary.kill()
    replica.promote()
    env = {**lab_state.app_env(state), "DB_PORT": str(replica.port)}
    if state.engine == "podman":
        from tasks.containers.client import make_client
        from tasks.containers.recreate import recreate_with_env

        recreate_with_env(make_client(state.podman_base_url), state.app_container, env)
    else:
        os.kill(state.processes["app"].pid, signal.SIGTERM)
    if state.engine == "podman":
        with psycopg.connect(
            host="127.0.0.1", port=replica.port, dbname="app", user="postgres"
        ) as conn:
            assert _wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM dr_heartbeat WHERE ts > now() - interval '0.5 s'"
                    ).fetchone()[0]
                    > 0
                )
            )
    report = lab_status.status(lab.base_dir)
    assert report["replica"]["role"] == "primary"

    lab_up.heal(lab.base_dir, console=_quiet())

    report = lab_status.status(lab.base_dir)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["primary"]["role"] == "primary" and report["replica"]["streaming"]
    assert report["heartbeat"]["node"] == "primary"
    if state.engine == "podman":
        assert report["app"]["db_port"] == state.primary.port
    with psycopg.connect(
        host="127.0.0.1", port=primary.port, dbname="app", user="postgres"
    ) as conn:
        gaps = conn.execute(
            "SELECT count(*) FROM (SELECT seq - lag(seq) OVER (ORDER BY seq) AS d "
            "FROM dr_heartbeat WHERE writer = 'app') g WHERE d <> 1"
        ).fetchone()[0]
        assert gaps == 0  # every acknowledged heartbeat survived both role changes


# --------------------------------------------------------------------------- down


@pytest.mark.slow
def test_process_engine_fallback_then_down_leaves_nothing(
    new_lab_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own small lab: no Prefect, the app as a local process, then ``dr lab down``.

    (The shared lab's teardown runs the same checks on ``down`` with the Podman engine.)
    """
    monkeypatch.setenv("DR_LAB_ENGINE", "process")
    started = time.monotonic()
    state = lab_up.up(new_lab_dir, prefect=False, console=_quiet())
    assert time.monotonic() - started < 60
    assert state.engine == "process" and "DR_LAB_ENGINE" in state.engine_reason
    report = lab_status.status(new_lab_dir)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["engine"] == "process" and report["app"]["up"]
    assert report["prefect"]["enabled"] is False
    text = state.config_path.read_text()
    assert "services: []" in text
    assert "DR_LAB_SLACK_TOKEN" in text  # without Prefect: environment variable references
    assert lab_state.lab_env(state)["DR_LAB_SLACK_TOKEN"].startswith("xoxb-")

    # The app reconnects by itself and continues its sequence after a primary restart.
    primary = lab_state.clusters(state)["primary"]
    primary.stop("immediate")
    primary.start()
    assert _wait_for(lambda: (lab_status.status(new_lab_dir)["heartbeat"]["age_seconds"] or 9) < 1)

    pids = lab_pids(state)
    assert len(pids) >= 6 and pids_mentioning(str(new_lab_dir))
    result = CliRunner().invoke(lab_app, ["down", "--dir", str(new_lab_dir)])
    assert result.exit_code == 0, result.output
    assert_lab_gone(new_lab_dir, pids)


def test_down_refuses_a_folder_that_is_not_a_lab(new_lab_dir: Path) -> None:
    keep = new_lab_dir / "precious.txt"
    keep.write_text("not the lab's")
    with pytest.raises(PreconditionError):
        lab_down.down(new_lab_dir, console=_quiet())
    with pytest.raises(PreconditionError):
        lab_up.up(new_lab_dir, console=_quiet())
    assert keep.read_text() == "not the lab's"
