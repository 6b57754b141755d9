"""The five seed runbooks as targets of the real lab (lab.seeds, docs/runbooks.md).

Uses the session ``lab`` (tests/conftest.py). Every seed target is in the lab's dr.yaml and
validates; its database exists with rows; its health checks and validation queries pass
through the same code the drills use; seed 001's cron dump is a gzip'd plain pg_dump; heal
repairs a seed database that a drill dropped or closed; and the backup-verification drill
on ``bun-trading`` proves, through the flow, a backup it did not make.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from dr.config import load_config
from lab import seeds, status, up
from lab import state as lab_state
from tasks.health import checks as health_checks

pytestmark = pytest.mark.integration


def _conn(lab: lab_state.LabState, dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=lab.primary.port, dbname=dbname, user="postgres", autocommit=True
    )


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _scratch_databases(lab: lab_state.LabState) -> list[str]:
    with _conn(lab, "postgres") as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'dr\\_verify\\_%'"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A folder the postgres user can read (pytest's tmp_path is not traversable)."""
    path = Path(tempfile.mkdtemp(prefix="dr-seed-tests-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- config


def test_every_seed_is_a_valid_target_of_the_lab(lab: lab_state.LabState) -> None:
    config = load_config(lab.config_path)
    text = lab.config_path.read_text()
    assert list(config.targets)[:2] == ["lab", "lab-s3"]  # the lab's own come first
    assert config.target("lab").postgres.databases == ["app"]
    for s in seeds.SEEDS:
        target = config.target(s.target)
        objectives = config.objectives(s.target)
        assert (objectives.rto_seconds, objectives.rpo_seconds) == (s.rto_seconds, s.rpo_seconds)
        assert target.production is False and target.drills_allowed is True
        assert target.postgres.databases == [s.database]
        assert target.postgres.primary.port == lab.primary.port
        assert [r.port for r in target.postgres.replicas] == [lab.replica.port]
        assert target.backup.wal_archive == lab.wal_archive
        if s.storage == "s3":
            assert target.backup.repository.startswith(f"s3://{lab_state.BUCKET}/")
        else:
            assert target.backup.repository.startswith(lab.file_repository + "/")
        assert target.slack_channel == s.slack_channel
        assert target.evidence_repository == f"s3://{lab_state.EVIDENCE_BUCKET}/{s.target}"
        # The YAML cites the runbook next to the target (and its tier when custom).
        assert f"  {s.target}:  # seed {s.number}" in text
        if s.custom_tier:
            assert f"  {s.tier}:  # {s.source_path}" in text
    result = CliRunner().invoke(app, ["config", "check", str(lab.config_path)])
    assert result.exit_code == 0, result.output
    assert all(f"{s.target} ({s.tier})" in result.output for s in seeds.SEEDS)


# --------------------------------------------------------------------------- data


def test_seed_databases_hold_rows_and_pass_their_checks(lab: lab_state.LabState) -> None:
    config = load_config(lab.config_path)
    for s in seeds.SEEDS:
        with _conn(lab, s.database) as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            ]
            counts = {
                t: conn.execute(f'SELECT count(*) FROM public."{t}"').fetchone()[0] for t in tables
            }
            marker = conn.execute(
                "SELECT pg_catalog.shobj_description(oid, 'pg_database') "
                "FROM pg_catalog.pg_database WHERE datname = current_database()"
            ).fetchone()[0]
        assert len(tables) >= 3 and all(counts.values()), (s.database, counts)
        assert sum(counts.values()) >= 5000, (s.database, counts)
        assert marker == seeds.dataset_marker(s)
        # The drills' own check runner: SQL health checks and every validation query.
        target = config.target(s.target)
        outcomes, primary = health_checks.run_health_checks(target)
        assert primary == f"127.0.0.1:{lab.primary.port}"
        # The lab api's HTTP health check is shared by every seed target (the same stack).
        assert [c.name for c in target.health_checks.http] == ["api-health"]
        assert len(outcomes) == len(s.health_sql) + len(s.validation) + 1
        failing = [(o.name, o.detail) for o in outcomes if not o.ok]
        assert failing == [], (s.target, failing)


def test_a_validation_query_catches_what_it_names(lab: lab_state.LabState) -> None:
    """bt2c's chain check goes red on a broken link, and green again when it is mended."""
    target = load_config(lab.config_path).target("bt2c")
    with _conn(lab, "bt2c") as conn:
        good = conn.execute("SELECT prev_hash FROM public.blocks WHERE height = 1500").fetchone()[0]
        conn.execute("UPDATE public.blocks SET prev_hash = repeat('f', 64) WHERE height = 1500")
        try:
            outcomes, _ = health_checks.run_health_checks(target)
        finally:
            conn.execute("UPDATE public.blocks SET prev_hash = %s WHERE height = 1500", (good,))
    failing = {o.name: o for o in outcomes if not o.ok}
    assert set(failing) == {"blocks-link-to-parent-hash"}
    assert failing["blocks-link-to-parent-hash"].value == 1
    outcomes, _ = health_checks.run_health_checks(target)
    assert all(o.ok for o in outcomes)


def test_seed_001_cron_dump_is_a_gzipped_plain_pg_dump(lab: lab_state.LabState) -> None:
    folder = lab.base_dir / seeds.FOREIGN_FOLDER
    dumps = sorted(folder.glob(seeds.FOREIGN_PATTERN))
    assert dumps, f"no {seeds.FOREIGN_PATTERN} in {folder}"
    newest = max(dumps, key=lambda p: p.stat().st_mtime)
    assert time.time() - newest.stat().st_mtime < seeds.FOREIGN_REFRESH_SECONDS + 600
    body = gzip.decompress(newest.read_bytes())
    assert b"-- PostgreSQL database dump" in body[:200]
    assert b'COPY public."Trade"' in body and b"CREATE DATABASE" not in body
    assert not list(folder.glob(".*.tmp")), "a half-written dump was left behind"


# --------------------------------------------------------------------------- repair


def test_heal_reloads_a_dropped_seed_reopens_a_closed_one_and_refreshes_the_dump(
    lab: lab_state.LabState,
) -> None:
    folder = lab.base_dir / seeds.FOREIGN_FOLDER
    old = max(folder.glob(seeds.FOREIGN_PATTERN), key=lambda p: p.stat().st_mtime)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    with _conn(lab, "postgres") as conn:
        conn.execute("DROP DATABASE bt2c WITH (FORCE)")
        conn.execute("ALTER DATABASE cryptofunk WITH ALLOW_CONNECTIONS false")

    console = _quiet()
    up.heal(lab.base_dir, console=console)

    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "loaded bt2c" in out and "reopened cryptofunk" in out, out
    assert "dumped db_backup_" in out, out
    newest = max(folder.glob(seeds.FOREIGN_PATTERN), key=lambda p: p.stat().st_mtime)
    assert newest != old and time.time() - newest.stat().st_mtime < 60
    assert status.status(lab.base_dir)["ok"]
    config = load_config(lab.config_path)
    for name in ("bt2c", "cryptofunk"):
        outcomes, _ = health_checks.run_health_checks(config.target(name))
        assert all(o.ok for o in outcomes), [(o.name, o.detail) for o in outcomes if not o.ok]
    # Nothing left to do: the same step again changes nothing.
    state = lab_state.load_state(lab.base_dir)
    assert state is not None
    again = seeds.ensure(lab_state.clusters(state)["primary"], lab.base_dir)
    assert again.startswith("unchanged"), again


# --------------------------------------------------------------------------- drills


@pytest.fixture
def lab_prefect(lab: lab_state.LabState) -> Iterator[None]:
    """This process's Prefect pointed at the lab's server (its Secret blocks)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates: dict[Any, Any] = {
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    if lab.prefect_api_url:
        updates[PREFECT_API_URL] = lab.prefect_api_url
    with temporary_settings(updates=updates):
        yield


def _private_config(lab: lab_state.LabState, folder: Path, target: str) -> Path:
    """The lab's config with ``target``'s repository in ``folder`` (the lab's stays clean)."""
    data = yaml.safe_load(lab.config_path.read_text())
    data["targets"][target]["backup"]["repository"] = f"file://{folder / 'repo'}"
    path = folder / "dr.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_foreign_dump_age_is_held_to_seed_001s_rpo(
    lab: lab_state.LabState, lab_prefect: None, traversable_dir: Path
) -> None:
    """The runbook's daily "latest backup exists and its age" check, with its 1 h RPO."""
    from flows.backup_verification.foreign import verify_foreign_backup

    source = max(
        (lab.base_dir / seeds.FOREIGN_FOLDER).glob(seeds.FOREIGN_PATTERN),
        key=lambda p: p.stat().st_mtime,
    )
    folder = traversable_dir / "backups"
    folder.mkdir()
    stale = folder / "db_backup_20250101_000000.sql.gz"
    shutil.copyfile(source, stale)
    ninety_minutes_ago = time.time() - 90 * 60
    os.utime(stale, (ninety_minutes_ago, ninety_minutes_ago))
    data = yaml.safe_load(lab.config_path.read_text())
    data["targets"]["bun-trading"]["backup"]["foreign"][0]["location"] = f"file://{folder}"
    path = traversable_dir / "dr.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    entry = config.target("bun-trading").backup.foreign[0]
    rpo = config.objectives("bun-trading").rpo_seconds
    assert rpo == 3600

    result = verify_foreign_backup(
        config, "bun-trading", entry, short_id="seedage1", rpo_seconds=rpo
    )

    checks = {c.name.split(": ", 1)[1]: c for c in result.checks}
    assert not checks["backup age"].ok and "RPO 3600 s" in checks["backup age"].detail
    assert checks["restore"].ok and "plain-gzip" in checks["restore"].detail
    for name, _expect, _sql in seeds.seed("bun-trading").validation:
        assert checks[f"validation {name}"].ok, checks[f"validation {name}"].detail
    assert result.scratch_dropped and _scratch_databases(lab) == []


@pytest.mark.slow
def test_backup_verification_drill_on_bun_trading_proves_the_cron_dump(
    lab: lab_state.LabState, lab_prefect: None, traversable_dir: Path
) -> None:
    """Seed 001's monthly test restore, through the flow: its own backup and the cron dump."""
    from flows.backup.flow import backup_flow
    from flows.backup_verification.flow import backup_verification_flow

    config_path = _private_config(lab, traversable_dir, "bun-trading")
    backup = backup_flow(
        "bun-trading", config_path=str(config_path), staging_dir=str(traversable_dir / "stage")
    )
    assert backup["ok"] and [b["database"] for b in backup["backups"]] == ["bun_trading"]

    result = backup_verification_flow("bun-trading", config_path=str(config_path))

    assert result["outcome"] == "passed", result["reason"]
    assert result["objectives_met"] is True
    assert result["rpo_seconds"] <= 3600  # seed 001: RPO 1 h
    checks = {c["name"]: c for c in result["checks"]}
    foreign = f"foreign {seeds.FOREIGN_PATTERN} (bun_trading)"
    for prefix in ("bun_trading", foreign):
        for name in ("restore", "amcheck", "backup age"):
            assert checks[f"{prefix}: {name}"]["ok"], checks[f"{prefix}: {name}"]
        for name, _expect, _sql in seeds.seed("bun-trading").validation:
            assert checks[f"{prefix}: validation {name}"]["ok"], name
    assert "plain-gzip" in checks[f"{foreign}: restore"]["detail"]
    assert checks[f"{foreign}: newest foreign dump"]["detail"].startswith("db_backup_")
    sources = {d["source"] for d in result["details"]["databases"]}
    assert sources == {"repository", "foreign"}
    assert _scratch_databases(lab) == []
