"""The data-corruption scenario on the lab: three drills green, and bad input refused.

Drills damage the lab's data for real (a bad UPDATE, a mass DELETE) or a page of a stopped
copy, recover by point-in-time recovery, and must prove the rows identical to the snapshot
taken at the stamp, with RTO and RPO measured. Every test leaves the lab healthy (the app
on the primary and writing, no damaged copies left): see ``healthy_lab``.

Bad input runs in incident mode (a drill would inject damage first): each refusal is
checked together with "nothing changed": the same rows, the app container untouched and
writing, no database added, no recovery folder created.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.runs import register
from flows.common.backups import base_backup_target
from flows.data_corruption.flow import data_corruption_flow
from flows.data_corruption.options import CorruptionOptions
from tasks.pitr import archiving, base_backup, wal
from tasks.pitr import relations as pitr_relations
from tasks.pitr import target as pitr_target
from tasks.storage import client as storage_client

from .conftest import CorruptionLab, traversable_dir

pytestmark = pytest.mark.integration

SHOP = ["shop.customers", "shop.orders", "shop.order_items"]


def drill(lab: CorruptionLab, **options: Any) -> dict[str, Any]:
    opts = CorruptionOptions(**lab.options(base_backup_max_age_minutes=0.25, **options))
    result = data_corruption_flow(
        "lab", mode="drill", options=opts, config_path=str(lab.config_path)
    )
    lab.last_result = result
    return result


def check(result: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in result["checks"] if c["name"] == name]
    assert found, f"no check {name!r} in {[c['name'] for c in result['checks']]}"
    return found[-1]


def assert_green(result: dict[str, Any], victim: str) -> None:
    assert result["outcome"] == "passed", (result["reason"], result["phases"])
    assert result["objectives_met"], result
    assert check(result, f"recovered {victim} identical to the stamp")["ok"]
    assert check(result, f"{victim} rows identical to the recovery point")["ok"]
    assert check(result, "writers healthy again (heartbeat written after the restart)")["ok"]
    assert result["rto_seconds"] is not None and result["rto_seconds"] > 0
    # RTO runs from the damage (the stamped failure_at), not from "writers stopped".
    assert result["rto_basis"].startswith("restored_at - failure_at")
    assert result["failure_at"] is not None
    assert result["rto_phases"]["damage -> writers stopped"] is not None
    assert result["rto_seconds"] >= result["rto_phases"]["writers stopped -> application healthy"]
    assert result["rpo_seconds"] is not None and result["rpo_seconds"] >= 0
    assert result["lost_rows"] is not None
    assert result["details"]["evidence"]["assessment"]["sha256"]
    assert [p["name"] for p in result["phases"]][:5] == [
        "validate",
        "prepare drill",
        "inject damage",
        "damage caches and files",
        "assess",
    ]


@pytest.mark.slow
def test_bad_update_drill_restores_the_table_in_one_transaction(healthy_lab: CorruptionLab):
    before = pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP)
    result = drill(healthy_lab, variant="bad-update")
    assert_green(result, "shop.orders")
    details = result["details"]
    # The WAL finder named the table and the damaging commit; recovery stopped just before it.
    assert details["assessment"]["damaged_relations"] == ["shop.orders"]
    assert check(result, "assessment named the damaged relation")["ok"]
    # Detection is reported (which own checks noticed); not critical without require_detection.
    detection = check(result, "detection: the target's own checks noticed the damage")
    assert detection["critical"] is False
    assert details["detection"]["detected"] is detection["ok"]
    assert details["detection"]["noticed_by"] or "would not have caught" in detection["detail"]
    assert details["recovery_plan"]["target"]["lsn"] == details["assessment"]["damage_commit_lsn"]
    assert set(details["relation_restore"]["relations"]) == {"shop.orders"}
    assert (
        "shop.order_items.order_items_order_fk"
        in details["relation_restore"]["constraints_recreated"]
    )
    assert details["evidence"]["dump"]["sha256"]
    # Counted from data: the rows the restore discarded, less the damage's own versions.
    measured = details["measured"]
    assert measured["discarded_row_versions"] >= 1
    assert result["lost_rows"] == 0 and "set membership" in result["lost_rows_basis"]
    # The live data is exactly as before the drill; the app writes to the primary again.
    assert pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP) == before
    assert healthy_lab.app_env()["DB_PORT"] == str(healthy_lab.primary.port)
    assert healthy_lab.app_writing()
    assert not Path(details["recovery"]["data_dir"]).exists()
    assert healthy_lab.damaged_databases() == []


@pytest.fixture
def cli() -> Any:
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout

    return invoke


@pytest.mark.slow
def test_mass_delete_drill_from_the_cli_switches_the_whole_database(
    healthy_lab: CorruptionLab, cli: Any
):
    before = pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP)
    options = healthy_lab.options(whole_database=True, base_backup_max_age_minutes=0.25)
    args = ["--option", "variant=mass-delete"]
    for key, value in options.items():
        args += ["--option", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    code, out = cli(
        "drill",
        "data-corruption",
        "--target",
        "lab",
        "--json",
        "--config",
        str(healthy_lab.config_path),
        *args,
    )
    result = json.loads(out)
    healthy_lab.last_result = result
    assert code == 0, result["reason"]
    assert_green(result, "shop.order_items")
    recovered = result["details"]["recovery"]
    # The application now writes to the recovered cluster; the damaged database is kept.
    assert healthy_lab.app_env()["DB_PORT"] == str(recovered["port"])
    kept = result["details"]["evidence"]["database_copy"]["database"]
    assert kept in healthy_lab.damaged_databases()
    assert healthy_lab.psql("SELECT count(*) FROM shop.order_items", kept) == "0"
    assert result["lost_rows"] >= 0 and "whole database" in result["rpo_basis"]
    # The recovered cluster holds the rows of the stamp; the drill also repaired the old
    # primary, so switching the lab back later finds no damage there.
    recovered_conninfo = f"host=127.0.0.1 port={recovered['port']} dbname=app user=postgres"
    assert pitr_relations.relation_digests(recovered_conninfo, SHOP) == before
    assert pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP) == before


@pytest.mark.slow
def test_damaged_page_drill_is_caught_by_checksums_and_repaired(healthy_lab: CorruptionLab):
    before = pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP)
    result = drill(healthy_lab, variant="damaged-page")
    assert_green(result, "shop.orders")
    details = result["details"]
    found = check(result, "assess: pg_checksums on a stopped copy")
    assert not found["ok"] and "shop.orders" in found["detail"]
    assert details["assessment"]["named_by"]["pg_checksums"] == ["shop.orders"]
    # Detection: the target's own pg_checksums noticed the damage, not only the WAL finder.
    assert "pg_checksums" in details["detection"]["noticed_by"]
    assert check(result, "detection: the target's own checks noticed the damage")["ok"]
    assert check(result, "recovered: pg_checksums")["ok"]
    assert details["evidence"]["damaged_files"][0]["sha256"]
    assert not Path(details["damaged_copy"]["data_dir"]).exists()
    assert pitr_relations.relation_digests(healthy_lab.conninfo(), SHOP) == before
    assert healthy_lab.app_writing()


# --------------------------------------------------------------------------- bad input


def world(lab: CorruptionLab) -> dict[str, Any]:
    container = lab.app_container()
    return {
        "rows": pitr_relations.relation_digests(lab.conninfo(), SHOP),
        "app": (container.id, container.status, lab.app_env().get("DB_PORT")),
        "databases": lab.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"),
    }


def incident(
    lab: CorruptionLab, config: Path | None = None, mode: str = "incident", **options: Any
) -> dict[str, Any]:
    opts = lab.options(**options)
    result = data_corruption_flow(
        "lab",
        mode=mode,
        options=CorruptionOptions(**opts),
        config_path=str(config or lab.config_path),
    )
    assert not Path(opts["recovery_dir"]).exists(), "a recovery folder was created"
    return result


def assert_refused(result: dict[str, Any], words: str) -> None:
    assert result["outcome"] == "refused"
    assert words in result["reason"], result["reason"]
    assert "nothing was changed" in result["reason"], result["reason"]
    assert result["changes"] == [] and result["undone"] == [] and result["not_undone"] == []
    names = [p["name"] for p in result["phases"]]
    assert "stop writers" not in names and "recover" not in names


@pytest.fixture(scope="module")
def lab_backup(corruption_lab: CorruptionLab) -> None:
    """At least one base backup of the lab in its repository."""
    from dr.config import load_config

    cfg = load_config(corruption_lab.config_path)
    repo = storage_client.open_repository(cfg.target("lab").backup.repository)
    if not base_backup.list_base_backups(repo, "lab"):
        base_backup_target(cfg, "lab", staging_dir=str(corruption_lab.root / "staging"))


def test_unsafe_recovery_points_are_refused_and_nothing_changes(
    corruption_lab: CorruptionLab, lab_backup: None
):
    """Future point, point after the damage, point before the oldest base backup, no base
    backup at all: each refused with its reason before the writers are touched."""
    lab = corruption_lab
    now = datetime.now(UTC)
    empty = traversable_dir("empty-", lab.root)
    no_backups = lab.write_config(empty, repository=f"file://{empty / 'repo'}")
    cases: list[tuple[Path | None, dict[str, Any], str]] = [
        (None, {"recovery_time": now + timedelta(hours=1)}, "in the future"),
        (
            None,
            {"recovery_time": now - timedelta(seconds=5), "damage_at": now - timedelta(minutes=1)},
            "after the damage began",
        ),
        (
            None,
            {"recovery_time": datetime(2000, 1, 1, tzinfo=UTC)},
            "the point is before the oldest base backup",
        ),
        (
            no_backups,
            {"recovery_time": now - timedelta(seconds=1)},
            "no base backup in the repository",
        ),
    ]
    before = world(lab)
    for config, options, words in cases:
        app = lab.app_container()
        result = incident(lab, config, **options)
        assert_refused(result, words)
        again = lab.app_container()
        assert (again.id, again.status) == (app.id, "running"), words
    assert world(lab) == before
    assert lab.app_writing()


def test_dry_run_plans_every_step_and_changes_nothing(
    corruption_lab: CorruptionLab, lab_backup: None
):
    before = world(corruption_lab)
    result = incident(
        corruption_lab,
        mode="dry-run",
        recovery_time=datetime.now(UTC) - timedelta(seconds=2),
    )
    assert result["outcome"] == "passed", result["reason"]
    plan = "\n".join(result["plan"])
    for step in ("would stop writer docker", "would recover base backup", "would ask for approval"):
        assert step in plan, plan
    assert result["changes"] == []
    assert world(corruption_lab) == before


def test_wal_gap_is_reported_with_the_segment_before_recovery_starts(
    corruption_lab: CorruptionLab,
):
    """A gap in a COPY of the lab's archive (the lab's own archive is never touched)."""
    from dr.config import load_config

    lab = corruption_lab
    cfg = load_config(lab.config_path)
    target = cfg.target("lab")
    base = base_backup_target(cfg, "lab", staging_dir=str(lab.root / "staging"))
    for _ in range(3):
        archiving.switch_wal_and_wait(lab.conninfo())
    point = archiving.server_position(lab.conninfo())["lsn"]
    archiving.switch_wal_and_wait(lab.conninfo())
    repo = storage_client.open_repository(target.backup.repository)
    backup = next(
        b for b in base_backup.list_base_backups(repo, "lab") if b.backup_id == base.backup_id
    )
    archive = Path(target.backup.wal_archive[len("file://") :])
    plan = wal.plan_wal(
        storage_client.open_repository(target.backup.wal_archive),
        backup,
        pitr_target.RecoveryTarget(lsn=point),
    )
    folder = traversable_dir("gap-", lab.root)
    copy = folder / "wal"
    copy.mkdir()
    for name in [*plan.history_files, *plan.in_backup, *plan.needed, *plan.staged_extra]:
        if (archive / name).exists():
            shutil.copy2(archive / name, copy / name)
    missing = plan.needed[len(plan.needed) // 2]
    (copy / missing).unlink()
    config = lab.write_config(folder, wal_archive=f"file://{copy}")
    before = world(lab)
    result = incident(lab, config, recovery_lsn=point)
    assert_refused(result, f"gap: segment {missing} is missing")
    assert [p["name"] for p in result["phases"]][-1] == "plan recovery"
    assert world(lab) == before
    assert (archive / missing).exists()
