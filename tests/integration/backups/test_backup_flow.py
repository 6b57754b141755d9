"""Taking backups of the lab: resume after an interruption, base backups, retention, S3, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dr.errors import StorageError
from flows.backup.flow import backup_flow
from flows.backup_verification.flow import backup_verification_flow
from flows.common.backup_staging import PARTIAL_MARKER
from tasks.backups import manifest as backups_manifest
from tasks.storage import file as storage_file

pytestmark = pytest.mark.integration


def test_interrupted_backup_resumes_without_reuploading_identical_files(
    backup_lab, work, monkeypatch
):
    config = backup_lab.write_config(work)
    staging = work / "staging"
    repo_root = work / "repo"
    original = storage_file.FileRepository.put_file  # how staging stores each dump file
    calls: list[str] = []

    def unplugged_after_first(self, key, local_path, **kw):
        if "/app/" not in key:  # the target's files backup (uploads) runs after the dumps
            return original(self, key, local_path, **kw)
        calls.append(key)
        if len(calls) > 1:
            raise StorageError("injected: the repository disk went away", transient=False)
        return original(self, key, local_path, **kw)

    monkeypatch.setattr(storage_file.FileRepository, "put_file", unplugged_after_first)
    with pytest.raises(Exception, match="the repository disk went away"):
        backup_flow("lab", config_path=str(config), staging_dir=str(staging))
    monkeypatch.setattr(storage_file.FileRepository, "put_file", original)

    # Interrupted: one file up, no manifest (so incomplete), the dump kept in staging.
    marker = json.loads((staging / "lab" / "app" / PARTIAL_MARKER).read_text())
    folder = repo_root / "lab" / "app" / marker["backup_id"]
    uploaded = [p for p in folder.iterdir() if p.is_file()]
    assert len(uploaded) == 1 and not (folder / backups_manifest.MANIFEST_NAME).exists()
    first = uploaded[0]
    first_mtime = first.stat().st_mtime_ns

    sent: list[str] = []

    def counting(self, key, local_path, **kw):
        result = original(self, key, local_path, **kw)
        sent.append(result.outcome)
        return result

    monkeypatch.setattr(storage_file.FileRepository, "put_file", counting)
    result = backup_flow("lab", config_path=str(config), staging_dir=str(staging))
    backup = result["backups"][0]
    assert result["ok"] and backup["resumed"] is True
    assert backup["backup_id"] == marker["backup_id"]
    assert backup["unchanged"] == 1 and backup["uploaded"] == backup["files"] - 1
    assert first.stat().st_mtime_ns == first_mtime  # not written again
    # Every put went through the idempotent path: the first one said "unchanged".
    assert sent.count("unchanged") >= 1
    manifest = backups_manifest.read_manifest(folder / backups_manifest.MANIFEST_NAME)
    assert backups_manifest.verify_local_files(folder, manifest) == []
    assert manifest.row_counts["shop.customers"] == 20000
    assert manifest.wal_lsn and manifest.server_version.startswith("15")
    assert not (staging / "lab" / "app" / PARTIAL_MARKER).exists()
    assert [p.name for p in (staging / "lab" / "app").iterdir()] == [".lock"]


def test_base_backup_records_wal_positions_and_checks_the_wal_archive(backup_lab, work):
    config = backup_lab.write_config(work)
    result = backup_flow("lab", kind="base", config_path=str(config), staging_dir=str(work / "s"))
    assert result["ok"], result
    base = result["backups"][0]
    assert base["kind"] == "basebackup" and base["wal_lsn"] and base["wal_stop_lsn"]
    folder = work / "repo" / "lab" / "base" / base["backup_id"]
    names = {p.name for p in folder.iterdir()}
    assert {"base.tar", "backup_manifest", backups_manifest.MANIFEST_NAME} <= names
    manifest = backups_manifest.read_manifest(folder / backups_manifest.MANIFEST_NAME)
    assert manifest.kind == "basebackup" and manifest.wal_stop_lsn == base["wal_stop_lsn"]
    assert backups_manifest.verify_local_files(folder, manifest) == []
    # The lab archives WAL (archive_timeout 30 s): the newest segment is within the RPO.
    assert result["wal_archive_age_seconds"] is not None
    assert result["wal_within_rpo"] is True
    assert result["wal_newest_segment"]


def test_retention_keeps_the_newest_verified_backup_and_drops_the_rest(backup_lab, work):
    repo = work / "repo" / "lab" / "app"
    old = {
        "20200101T000000Z-aaaaaa": ("manifest.json", "verified.json"),  # newest verified
        "20200201T000000Z-bbbbbb": ("manifest.json",),
        "20200301T000000Z-cccccc": ("manifest.json",),
        "20200102T000000Z-dddddd": ("toc.dat",),  # incomplete, old
        "20190101T000000Z-eeeeee": ("manifest.json", "verified.json"),  # older verified
    }
    for backup_id, names in old.items():
        (repo / backup_id).mkdir(parents=True)
        for name in names:
            (repo / backup_id / name).write_text("{}")
    config = backup_lab.write_config(work, retention={"hourly": 1, "daily": 0, "weekly": 0})
    result = backup_flow("lab", config_path=str(config), staging_dir=str(work / "s"))
    new_id = result["backups"][0]["backup_id"]
    retention = result["retention"][0]
    assert set(retention["kept"]) == {new_id, "20200101T000000Z-aaaaaa"}
    assert set(retention["deleted"]) == set(old) - {"20200101T000000Z-aaaaaa"}
    remaining = {p.name for p in repo.iterdir() if any(p.iterdir())}
    assert remaining == {new_id, "20200101T000000Z-aaaaaa"}


@pytest.mark.slow
def test_s3_repository_backup_and_drill(backup_lab):
    """Target ``lab-s3``: the same lab, backed up to the S3-compatible endpoint."""
    config = str(backup_lab.config_path)
    result = backup_flow("lab-s3", config_path=config)
    assert result["ok"]
    backup = result["backups"][0]
    assert backup["location"].startswith("s3://")
    drill = backup_verification_flow("lab-s3", config_path=config)
    assert drill["outcome"] == "passed", drill["reason"]
    assert drill["details"]["databases"][0]["backup_id"] == backup["backup_id"]
    assert drill["rto_seconds"] > 0 and drill["rpo_seconds"] >= 0
    assert backup_lab.scratch_databases() == []


@pytest.mark.slow
def test_dr_backup_command(backup_lab, work):
    config = backup_lab.write_config(work)
    env = {**os.environ}
    if backup_lab.state.prefect_api_url:
        env["PREFECT_API_URL"] = backup_lab.state.prefect_api_url
    dr = Path(sys.executable).with_name("dr")
    proc = subprocess.run(
        [str(dr), "backup", "--target", "lab", "--config", str(config), "--json",
         "--staging-dir", str(work / "s")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["ok"] and data["backups"][0]["database"] == "app"
    bad = subprocess.run(
        [str(dr), "backup", "--target", "nope", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown target 'nope'" in bad.stderr
