"""The backup-verification drill against the lab: green, red on purpose, and bad input.

Every bad input must end with a clear reason, no scratch database left behind, nothing
restored over anything, and the repository's files unchanged.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dr import localexec
from dr.config import load_config
from dr.errors import UnsafeTargetError
from flows.backup.flow import backup_flow
from flows.backup_verification.flow import backup_verification_flow
from flows.backup_verification.foreign import verify_foreign_backup
from flows.backup_verification.newest import find_newest_backup
from flows.backup_verification.restore import verify_database_backup
from tasks.backups import manifest as backups_manifest
from tasks.storage.client import open_repository

pytestmark = pytest.mark.integration


def checks_by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def drill(config: Path, **kw: Any) -> dict[str, Any]:
    return backup_verification_flow("lab", config_path=str(config), **kw)


# --------------------------------------------------------------------------- green


def test_backup_then_green_drill_on_the_lab_measures_rto_and_rpo(backup_lab):
    """The README's main path: the lab's own repository, a backup, then the drill."""
    backup = backup_flow("lab", config_path=str(backup_lab.config_path))
    assert backup["ok"] and backup["backups"][0]["database"] == "app"
    started = datetime.now(UTC)
    result = drill(backup_lab.config_path)
    assert result["outcome"] == "passed", result["reason"]
    assert result["objectives_met"] is True
    checks = checks_by_name(result)
    for name in (
        "app: checksums",
        "app: restore",
        "app: row counts",
        "app: schema",
        "app: amcheck",
        "app: backup age",
        "app: validation no-orphan-order-items",
        "app: validation order-totals-match-lines",
        "app: validation every-customer-has-an-account",
        "files uploads backup restores",
        "link uploads-objects consistent in the backups",
        "link uploads-objects consistent on the live primary",
    ):
        assert checks[name]["ok"], (name, checks[name]["detail"])
    # The restored dump's rows against the restored files backup (taken after the dump).
    (in_backups,) = result["details"]["links_in_backups"]
    assert in_backups["rows"] > 0 and in_backups["missing_count"] == 0
    assert in_backups["mismatched_count"] == 0
    # RTO: the measured restore (download + verify + pg_restore), positive and plausible.
    db = result["details"]["databases"][0]
    assert db["backup_id"] == backup["backups"][0]["backup_id"]
    assert 0 < db["restore_seconds"] <= result["rto_seconds"] < 120
    assert "pg_restore" in result["rto_basis"]
    # RPO: the backup's age at the drill, at least the time since the backup started.
    backup_started = datetime.fromisoformat(backup["started_at"])
    assert result["rpo_seconds"] >= (started - backup_started).total_seconds() - 1
    assert result["rpo_seconds"] < 120 and "age" in result["rpo_basis"]
    assert 1 <= db["restore_jobs"] <= (os.cpu_count() or 1)  # from table sizes
    assert backup_lab.scratch_databases() == []
    repo = Path(backup_lab.raw_config["targets"]["lab"]["backup"]["repository"][7:])
    verified = repo / "lab" / "app" / db["backup_id"] / backups_manifest.VERIFIED_NAME
    assert json.loads(verified.read_text())["checks"]


def test_dry_run_finds_the_backup_and_changes_nothing(backup_lab, seed_copy, work, checksums):
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    before = checksums(seed_copy["repo"])
    result = drill(config, mode="dry-run")
    assert result["outcome"] == "passed", result["reason"]
    assert any("restore" in step and "dr_verify_app_" in step for step in result["plan"])
    assert checksums(seed_copy["repo"]) == before
    assert backup_lab.scratch_databases() == []


def test_foreign_plain_gzip_dump_is_verified_without_a_manifest(backup_lab, seed_copy, work):
    """Seed 001's `backups/db_backup_*.sql.gz`, made by plain pg_dump | gzip."""
    folder = work / "backups"
    folder.mkdir()
    node = backup_lab.raw_config["targets"]["lab"]["postgres"]["primary"]
    dump = subprocess.run(
        [str(localexec.find_tool("pg_dump")), "-h", "127.0.0.1", "-p", str(node["port"]),
         "-U", "postgres", "-d", "app"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    (folder / "db_backup_20250101_000000.sql.gz").write_bytes(gzip.compress(dump, 1))
    (folder / "db_backup_20240101_000000.sql.gz").write_bytes(b"older and broken")
    os.utime(folder / "db_backup_20240101_000000.sql.gz", (1, 1))  # the oldest: not chosen
    config = backup_lab.write_config(
        work,
        repository=f"file://{seed_copy['repo']}",
        foreign=[
            {"location": f"file://{folder}", "pattern": "db_backup_*.sql.gz", "database": "app"}
        ],
    )
    result = drill(config)
    assert result["outcome"] == "passed", result["reason"]
    checks = checks_by_name(result)
    label = "foreign db_backup_*.sql.gz (app)"
    for name in ("restore", "amcheck", "backup age", "validation no-orphan-order-items"):
        assert checks[f"{label}: {name}"]["ok"], checks[f"{label}: {name}"]
    assert "plain-gzip" in checks[f"{label}: restore"]["detail"]
    assert backup_lab.scratch_databases() == []


def test_truncated_foreign_dump_fails_its_restore_check(backup_lab, work):
    folder = work / "backups"
    folder.mkdir()
    full = gzip.compress(b"--\n-- PostgreSQL database dump\n--\n" + b"SELECT 1;\n" * 20000)
    (folder / "db_backup_20250101.sql.gz").write_bytes(full[: len(full) // 2])
    config = load_config(
        backup_lab.write_config(
            work,
            foreign=[{"location": f"file://{folder}", "pattern": "*.sql.gz", "database": "app"}],
        )
    )
    entry = config.targets["lab"].backup.foreign[0]
    result = verify_foreign_backup(config, "lab", entry, short_id="trunc01", rpo_seconds=3600)
    checks = {c.name: c for c in result.checks}
    restore = checks["foreign *.sql.gz (app): restore"]
    assert not restore.ok and "corrupt or truncated" in restore.detail
    assert checks["foreign *.sql.gz (app): backup age"].ok
    assert result.scratch_dropped and backup_lab.scratch_databases() == []


# --------------------------------------------------------------------------- red on purpose


@pytest.mark.parametrize(
    ("inject", "failing_check", "words"),
    [
        ("bad-backup", "app: checksums", "does not match"),
        ("bad-backup-truncate", "app: restore", "truncated gzip stream"),
    ],
)
def test_injected_bad_backup_turns_the_drill_red_and_leaves_the_real_one_untouched(
    backup_lab, seed_copy, work, checksums, inject, failing_check, words
):
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    before = checksums(seed_copy["repo"])
    result = drill(config, inject=inject)
    assert result["outcome"] == "failed"
    assert failing_check in result["reason"] and words in result["reason"]
    checks = checks_by_name(result)
    assert checks[failing_check]["ok"] is False
    injection = result["details"]["injection"]
    assert injection["injection"] == inject and "_drill-scratch" in injection["corrupted_copy"]
    # The real backup: same files, same bytes, not marked verified; the copy is gone.
    assert checksums(seed_copy["repo"]) == before
    assert not (seed_copy["backup_dir"] / backups_manifest.VERIFIED_NAME).exists()
    assert not (seed_copy["repo"] / "_drill-scratch").exists() or not any(
        p.is_file() for p in (seed_copy["repo"] / "_drill-scratch").rglob("*")
    )
    assert backup_lab.scratch_databases() == []


def test_injected_missing_object_fails_the_links_in_the_backups_only(
    backup_lab, seed_copy, work, checksums
):
    """One linked object left out of the restored files backup: the files backup itself
    restores (its manifest is whole), the database restores, the live primary is
    consistent; only the rows-in-the-dump vs objects-in-the-files-backup check sees it."""
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    before = checksums(seed_copy["repo"])
    result = drill(config, inject="missing-object")
    assert result["outcome"] == "failed"
    assert "link uploads-objects consistent in the backups" in result["reason"]
    checks = checks_by_name(result)
    assert checks["link uploads-objects consistent in the backups"]["ok"] is False
    assert (
        "1 row(s) without object"
        in checks["link uploads-objects consistent in the backups"]["detail"]
    )
    for name in ("app: restore", "files uploads backup restores"):
        assert checks[name]["ok"], (name, checks[name]["detail"])
    assert checks["link uploads-objects consistent on the live primary"]["ok"]
    injection = result["details"]["injection"]
    assert injection["injection"] == "missing-object" and injection["files"] == "uploads"
    (in_backups,) = result["details"]["links_in_backups"]
    assert in_backups["missing_objects"] == [injection["key"]]
    # Nothing written to the real backups: no verified marker for the dump's pair.
    assert checksums(seed_copy["repo"]) == before
    assert backup_lab.scratch_databases() == []


# --------------------------------------------------------------------------- bad input


def assert_nothing_changed(backup_lab, repo: Path, before: dict[str, str], checksums) -> None:
    assert checksums(repo) == before
    assert backup_lab.scratch_databases() == []
    assert int(backup_lab.psql("SELECT count(*) FROM shop.customers")) == 20000


def test_empty_repository(backup_lab, work, checksums):
    (work / "repo").mkdir()
    config = backup_lab.write_config(work)
    result = drill(config)
    assert result["outcome"] == "failed"
    assert "no backup of app" in result["reason"] and "empty repository" in result["reason"]
    assert "app: restore" not in checks_by_name(result)
    assert_nothing_changed(backup_lab, work / "repo", {}, checksums)


def test_missing_manifest(backup_lab, seed_copy, work, checksums):
    (seed_copy["backup_dir"] / backups_manifest.MANIFEST_NAME).unlink()
    before = checksums(seed_copy["repo"])
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    result = drill(config)
    assert result["outcome"] == "failed"
    assert "none complete (manifest missing)" in result["reason"]
    assert_nothing_changed(backup_lab, seed_copy["repo"], before, checksums)


def test_checksum_mismatch(backup_lab, seed_copy, work, checksums):
    manifest = backups_manifest.read_manifest(
        seed_copy["backup_dir"] / backups_manifest.MANIFEST_NAME
    )
    victim = seed_copy["backup_dir"] / max(manifest.files, key=lambda f: f.size).path
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    before = checksums(seed_copy["repo"])
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    result = drill(config)
    assert result["outcome"] == "failed"
    assert "app: checksums" in result["reason"] and "does not match" in result["reason"]
    assert "app: restore" not in checks_by_name(result)  # nothing was restored
    assert_nothing_changed(backup_lab, seed_copy["repo"], before, checksums)


def test_truncated_dump(backup_lab, seed_copy, work, checksums):
    manifest = backups_manifest.read_manifest(
        seed_copy["backup_dir"] / backups_manifest.MANIFEST_NAME
    )
    victim = seed_copy["backup_dir"] / max(manifest.files, key=lambda f: f.size).path
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    before = checksums(seed_copy["repo"])
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    result = drill(config)
    assert result["outcome"] == "failed"
    assert "app: checksums" in result["reason"]
    assert "app: restore" not in checks_by_name(result)
    assert_nothing_changed(backup_lab, seed_copy["repo"], before, checksums)


def test_backup_of_another_target_is_refused(backup_lab, seed_copy, work, checksums):
    path = seed_copy["backup_dir"] / backups_manifest.MANIFEST_NAME
    manifest = backups_manifest.read_manifest(path)
    manifest.target = "billing-prod"
    backups_manifest.write_manifest(manifest, path)
    before = checksums(seed_copy["repo"])
    config = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    result = drill(config)
    assert result["outcome"] == "failed"
    assert "backup of target 'billing-prod', not 'lab'" in result["reason"]
    assert "app: restore" not in checks_by_name(result)
    assert_nothing_changed(backup_lab, seed_copy["repo"], before, checksums)


def test_existing_scratch_name_is_refused_and_left_alone(backup_lab, seed_copy, work, checksums):
    config_path = backup_lab.write_config(work, repository=f"file://{seed_copy['repo']}")
    config = load_config(config_path)
    name = backups_manifest.scratch_database_name("app", "taken01")
    backup_lab.psql(f"CREATE DATABASE {name}", "postgres")
    try:
        backup_lab.psql("CREATE TABLE mine (note text); INSERT INTO mine VALUES ('keep me')", name)
        before = checksums(seed_copy["repo"])
        with pytest.raises(UnsafeTargetError, match="already exists"):
            verify_database_backup(
                config, "lab", "app", short_id="taken01", rpo_seconds=3600, work_dir=str(work)
            )
        # Untouched: its own table only, with its row; nothing restored into it.
        tables = backup_lab.psql(
            "SELECT string_agg(relname, ',') FROM pg_catalog.pg_class c JOIN "
            "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            name,
        )
        assert tables == "mine"
        assert backup_lab.psql("SELECT note FROM mine", name) == "keep me"
        assert checksums(seed_copy["repo"]) == before
    finally:
        backup_lab.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "postgres")


def test_newest_backup_skips_incomplete_ones_and_reads_the_manifest(backup_lab, seed_copy, work):
    # An incomplete, newer backup folder (an interrupted upload) is not chosen.
    newer = seed_copy["repo"] / "lab" / "app" / "29991231T000000Z-ffffff"
    newer.mkdir(parents=True)
    (newer / "toc.dat").write_bytes(b"half")
    repo = open_repository(f"file://{seed_copy['repo']}")
    chosen = find_newest_backup(repo, "lab", "app")
    assert chosen.backup_id == seed_copy["backup_id"]
    assert chosen.manifest.target == "lab" and chosen.manifest.row_counts


# --------------------------------------------------------------------------- foreign, strictly


def pg_dump_plain(backup_lab, *extra: str) -> bytes:
    """A plain ``pg_dump`` of the lab's app, as seed 001's cron job makes it."""
    node = backup_lab.raw_config["targets"]["lab"]["postgres"]["primary"]
    return subprocess.run(
        [str(localexec.find_tool("pg_dump")), "-h", "127.0.0.1", "-p", str(node["port"]),
         "-U", "postgres", "-d", "app", *extra],
        capture_output=True, check=True,
    ).stdout  # fmt: skip


def foreign_folder(work: Path, dump: bytes, name: str = "db_backup_20250101_000000.sql.gz") -> Path:
    folder = work / "backups"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(gzip.compress(dump, 1))
    return folder


def foreign_entry(folder: Path) -> list[dict[str, Any]]:
    return [{"location": f"file://{folder}", "pattern": "db_backup_*.sql.gz", "database": "app"}]


LABEL = "foreign db_backup_*.sql.gz (app)"


def test_foreign_dump_counts_every_table_next_to_the_live_source(backup_lab, seed_copy, work):
    folder = foreign_folder(work, pg_dump_plain(backup_lab))
    config = backup_lab.write_config(
        work, repository=f"file://{seed_copy['repo']}", foreign=foreign_entry(folder)
    )
    result = drill(config)
    assert result["outcome"] == "passed", result["reason"]
    checks = checks_by_name(result)
    for name in ("completion trailer", "tables", "constraints", "row counts"):
        assert checks[f"{LABEL}: {name}"]["ok"], checks[f"{LABEL}: {name}"]
    assert "20000 restored / 20000 live" in checks[f"{LABEL}: row counts"]["detail"]
    foreign = next(d for d in result["details"]["databases"] if d["source"] == "foreign")
    assert foreign["coverage"]["tables"]["shop.customers"] == {"restored": 20000, "source": 20000}


def test_cut_plain_dump_fails_on_its_trailer_and_constraints(backup_lab, work):
    """pg_dump died after the first table's data, gzip closed the file: valid SQL, cut."""
    from tasks.backups.inject import cut_plain_dump

    full = work / "full.sql.gz"
    full.write_bytes(gzip.compress(pg_dump_plain(backup_lab), 1))
    folder = work / "backups"
    folder.mkdir()
    with open(full, "rb") as src, open(folder / "db_backup_20250101.sql.gz", "wb") as dst:
        cut = cut_plain_dump(src, dst, gzipped=True)
    assert cut.tables_without_data
    config = load_config(backup_lab.write_config(work, foreign=foreign_entry(folder)))
    entry = config.targets["lab"].backup.foreign[0]
    result = verify_foreign_backup(config, "lab", entry, short_id="cut01", rpo_seconds=3600)
    checks = {c.name.split(": ", 1)[1]: c for c in result.checks}
    assert checks["restore"].ok  # every statement kept is valid SQL
    assert not checks["completion trailer"].ok and checks["completion trailer"].critical
    assert not checks["constraints"].ok and "primary key" in checks["constraints"].detail
    assert not result.ok and result.scratch_dropped and backup_lab.scratch_databases() == []


def test_a_table_missing_from_the_dump_fails_unless_excluded(backup_lab, work):
    # The dump was taken before the source gained a table: the dump lacks it.
    folder = foreign_folder(work, pg_dump_plain(backup_lab))
    backup_lab.psql("CREATE TABLE shop.dr_test_extra (id integer PRIMARY KEY)")
    try:
        config = load_config(backup_lab.write_config(work, foreign=foreign_entry(folder)))
        entry = config.targets["lab"].backup.foreign[0]
        result = verify_foreign_backup(config, "lab", entry, short_id="miss01", rpo_seconds=3600)
        tables = next(c for c in result.checks if c.name.endswith(": tables"))
        assert not tables.ok and tables.critical and "shop.dr_test_extra" in tables.detail
        assert not result.ok
        config.targets["lab"].backup.excluded_tables = ["shop.dr_test_*"]
        result = verify_foreign_backup(config, "lab", entry, short_id="miss02", rpo_seconds=3600)
        tables = next(c for c in result.checks if c.name.endswith(": tables"))
        assert tables.ok and "1 excluded" in tables.detail
        assert result.ok, [c for c in result.checks if not c.ok]
    finally:
        backup_lab.psql("DROP TABLE IF EXISTS shop.dr_test_extra")
    assert backup_lab.scratch_databases() == []


def test_a_target_with_only_foreign_dumps_is_verified_and_the_newest_name_wins(backup_lab, work):
    (work / "repo").mkdir()
    folder = foreign_folder(work, pg_dump_plain(backup_lab), "db_backup_20250102_000000.sql.gz")
    (folder / "db_backup_20250101_000000.sql.gz").write_bytes(b"older and broken")  # newer mtime
    # A database-only target: no files backup of ours exists in this fresh repository.
    config = backup_lab.write_config(work, foreign=foreign_entry(folder), files=False)
    result = drill(config)
    assert result["outcome"] == "passed", result["reason"]
    checks = checks_by_name(result)
    assert checks["app: newest backup"]["ok"] is False
    assert checks["app: newest backup"]["critical"] is False
    assert "foreign dumps are verified instead" in checks["app: newest backup"]["detail"]
    newest = checks[f"{LABEL}: newest foreign dump"]["detail"]
    assert newest.startswith("db_backup_20250102_000000.sql.gz")
    # RPO: the age of the newest backup that passed, the foreign one here.
    assert result["rpo_seconds"] < 120 and "passed every check" in result["rpo_basis"]
    # No marker for an own backup that does not exist (it read as a broken backup "None"
    # and turned the next drill red), and the next drill is green again.
    markers = [p.relative_to(work) for p in (work / "repo").rglob("verified.json")]
    assert markers == [], markers
    again = drill(config)
    assert again["outcome"] == "passed", again["reason"]


def test_injected_truncated_plain_dump_turns_the_drill_red(backup_lab, seed_copy, work, checksums):
    """`dr drill backup-verification --inject truncated-plain-dump`: the red twin."""
    folder = foreign_folder(work, pg_dump_plain(backup_lab))
    config = backup_lab.write_config(
        work, repository=f"file://{seed_copy['repo']}", foreign=foreign_entry(folder)
    )
    before = checksums(folder)
    result = drill(config, inject="truncated-plain-dump")
    assert result["outcome"] == "failed"
    assert f"{LABEL}: completion trailer" in result["reason"]
    checks = checks_by_name(result)
    assert checks[f"{LABEL}: completion trailer"]["ok"] is False
    assert checks["app: restore"]["ok"]  # our own backup is still fine
    injection = result["details"]["injection"]
    assert injection["injection"] == "truncated-plain-dump"
    assert "_drill-scratch" in injection["corrupted_copy"] and injection["tables_without_data"]
    assert checksums(folder) == before  # the real dump untouched, the copy gone
    assert backup_lab.scratch_databases() == []


def test_with_pitr_the_rpo_is_the_wal_archives_age_not_the_old_dumps(backup_lab, work):
    """A monthly drill on a target with hourly dumps: PITR meets the RPO, an old dump does not."""
    config = backup_lab.write_config(work, foreign=[], files=False)  # database-only target
    base = backup_flow("lab", kind="base", config_path=str(config), staging_dir=str(work / "s"))
    assert base["ok"], base
    folder = foreign_folder(work, pg_dump_plain(backup_lab))
    stale = folder / "db_backup_20250101_000000.sql.gz"
    two_hours_ago = datetime.now(UTC).timestamp() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    config = backup_lab.write_config(work, foreign=foreign_entry(folder), files=False)
    result = drill(config)
    assert result["details"]["recovery_point"]["pitr"] is True, result["details"]
    assert result["outcome"] == "passed", result["reason"]
    age = checks_by_name(result)[f"{LABEL}: backup age"]
    assert age["ok"] is False and age["critical"] is False
    assert result["rpo_seconds"] < 300 and "archived WAL" in result["rpo_basis"]
