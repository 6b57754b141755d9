"""The files package on moto's S3 (versioned) and local folders: backup, verify, restore."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ObjectNotFound, StorageError
from tasks.files import backup as backup_module
from tasks.files.backup import backup_files
from tasks.files.changes import changes_since, save_changed_objects
from tasks.files.client import repository
from tasks.files.drill import INTRUDER_BYTES, intrude_objects
from tasks.files.manifest import complete_backups
from tasks.files.restore import restore_from_backup, restore_prefix_to_time
from tasks.files.verify import inject_bad_object, verify_files_backup


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(s3: Any, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def _get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture
def uploads(s3: Any, versioned_bucket: str) -> FileSource:
    for i in range(5):
        _put(s3, versioned_bucket, f"uploads/u{i}.bin", f"content {i}".encode() * (i + 1))
    _put(s3, versioned_bucket, "other/not-ours.txt", b"outside the prefix")
    return FileSource(name="uploads", s3=f"s3://{versioned_bucket}/uploads")


def test_s3_backup_manifest_has_versions_and_checksums(
    uploads: FileSource, backup_bucket: str, aws: AWSConfig, s3: Any
) -> None:
    manifest = backup_files(uploads, f"s3://{backup_bucket}/dr", backup_id="b1", aws=aws)
    assert manifest.count == 5
    first = manifest.entries[0]
    assert (first.key, first.sha256, first.size) == ("u0.bin", _sha(b"content 0"), 9)
    assert all(e.version_id for e in manifest.entries)
    again = backup_files(uploads, f"s3://{backup_bucket}/dr", backup_id="b1", aws=aws)
    assert again == manifest  # a complete backup is returned as it is
    assert complete_backups(repository(f"s3://{backup_bucket}/dr", aws), "uploads") == ["b1"]


def test_interrupted_backup_resumes_without_reading_again(
    uploads: FileSource, tmp_path: Path, aws: AWSConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_module, "PROGRESS_EVERY", 2)
    real = backup_module.store_object
    calls: list[str] = []
    failures = iter([False, False, True])

    def flaky(*args: Any) -> Any:
        calls.append(args[-1].key)
        if next(failures, False):
            raise StorageError("connection reset", transient=True)
        return real(*args)

    monkeypatch.setattr(backup_module, "store_object", flaky)
    repo_url = f"file://{tmp_path}/repo"
    with pytest.raises(StorageError):
        backup_files(uploads, repo_url, backup_id="b1", aws=aws)
    calls.clear()
    manifest = backup_files(uploads, repo_url, backup_id="b1", aws=aws)
    assert manifest.count == 5
    assert calls == ["u2.bin", "u3.bin", "u4.bin"]  # u0, u1 were in progress.json


def test_verify_passes_then_bad_object_fails(
    uploads: FileSource, backup_bucket: str, aws: AWSConfig, tmp_path: Path
) -> None:
    repo_url = f"s3://{backup_bucket}/dr"
    backup_files(uploads, repo_url, backup_id="b1", aws=aws)
    green = verify_files_backup(uploads, repo_url, tmp_path / "scratch", aws=aws)
    assert green.passed and green.restored_count == green.expected_count == 5
    assert (tmp_path / "scratch" / "u3.bin").read_bytes() == b"content 3" * 4
    damaged = inject_bad_object(uploads, repo_url, key="u2.bin", aws=aws)
    red = verify_files_backup(uploads, repo_url, tmp_path / "scratch2", aws=aws)
    assert (damaged, red.state, red.mismatched) == ("u2.bin", "failed", ["u2.bin"])
    assert red.restored_count == 4 and "1 checksum mismatch" in red.sentence()


def test_restore_prefix_to_a_point_in_time_keeps_the_damage(
    uploads: FileSource, versioned_bucket: str, aws: AWSConfig, s3: Any
) -> None:
    time.sleep(1.1)  # S3 times have a one-second resolution here
    point = datetime.now(UTC)
    time.sleep(1.1)
    _put(s3, versioned_bucket, "uploads/u0.bin", b"ransomware")
    s3.delete_object(Bucket=versioned_bucket, Key="uploads/u1.bin")
    _put(s3, versioned_bucket, "uploads/new.bin", b"created after")
    evidence = f"s3://{versioned_bucket}/dr-evidence/run1"
    result = restore_prefix_to_time(uploads, point, evidence=evidence, aws=aws)
    assert sorted(result.restored) == ["u0.bin", "u1.bin"]
    assert (result.unchanged, result.newer, result.removed) == (3, ["new.bin"], [])
    assert _get(s3, versioned_bucket, "uploads/u0.bin") == b"content 0"
    assert _get(s3, versioned_bucket, "uploads/u1.bin") == b"content 1" * 2
    assert _get(s3, versioned_bucket, "dr-evidence/run1/u0.bin") == b"ransomware"
    assert _get(s3, versioned_bucket, "uploads/new.bin") == b"created after"
    again = restore_prefix_to_time(uploads, point, evidence=evidence, aws=aws, remove_newer=True)
    assert (again.restored, again.removed) == ([], ["new.bin"])
    assert _get(s3, versioned_bucket, "dr-evidence/run1/new.bin") == b"created after"


def test_breach_restore_keeps_linked_newer_objects_and_proves_the_point(
    uploads: FileSource, versioned_bucket: str, aws: AWSConfig, s3: Any, tmp_path: Path
) -> None:
    """The breach response's use: an intruder's writes listed and saved as evidence, the
    prefix restored with the new objects a row names kept, then compared with the point."""
    time.sleep(1.1)  # S3 times have a one-second resolution here
    point = datetime.now(UTC)
    time.sleep(1.1)
    damage = intrude_objects(uploads, "planted.bin", aws=aws)
    assert damage == {"overwritten": "u0.bin", "deleted": "u1.bin", "planted": "planted.bin"}
    _put(s3, versioned_bucket, "uploads/legit.bin", b"a user's upload, with its row")
    changes = {c.key: c.change for c in changes_since(uploads, point, aws=aws)}
    assert changes == {
        "u0.bin": "overwritten", "u1.bin": "deleted", "planted.bin": "created",
        "legit.bin": "created",
    }  # fmt: skip
    saved = save_changed_objects(uploads, point, tmp_path / "evidence", aws=aws)
    locals_ = {row["key"]: row.get("local") for row in saved}
    assert locals_["u1.bin"] is None and Path(locals_["planted.bin"]).read_bytes().startswith(
        INTRUDER_BYTES
    )
    evidence = f"s3://{versioned_bucket}/dr-evidence/breach1"
    skipped = restore_prefix_to_time(
        uploads, point, evidence=evidence, remove_newer=True, keep_newer={"legit.bin"},
        skip={"u0.bin"}, aws=aws,
    )  # fmt: skip
    assert (skipped.skipped, sorted(skipped.restored)) == (["u0.bin"], ["u1.bin"])
    assert skipped.removed == ["planted.bin"] and sorted(skipped.newer) == [
        "legit.bin", "planted.bin",
    ]  # fmt: skip
    assert "legit.bin" not in skipped.evidence  # kept live: not copied aside
    left = {c.key: c.change for c in changes_since(uploads, point, aws=aws)}
    assert left == {"u0.bin": "overwritten", "legit.bin": "created"}  # the twin's proof fails
    undo = restore_prefix_to_time(
        uploads, point, evidence=evidence, remove_newer=True, only=set(damage.values()), aws=aws
    )
    assert undo.restored == ["u0.bin"] and undo.removed == []
    assert {c.key for c in changes_since(uploads, point, aws=aws)} == {"legit.bin"}
    assert _get(s3, versioned_bucket, "uploads/u0.bin") == b"content 0"
    assert _get(s3, versioned_bucket, "uploads/legit.bin").startswith(b"a user's")
    assert _get(s3, versioned_bucket, "dr-evidence/breach1/planted.bin").startswith(INTRUDER_BYTES)


def test_restore_refuses_evidence_inside_the_source(
    uploads: FileSource, versioned_bucket: str, aws: AWSConfig, s3: Any
) -> None:
    _put(s3, versioned_bucket, "uploads/u0.bin", b"damaged")
    from dr.errors import ConfigError

    with pytest.raises(ConfigError, match="must not be inside"):
        restore_prefix_to_time(
            uploads,
            datetime(2000, 1, 1, tzinfo=UTC),
            evidence=f"s3://{versioned_bucket}/uploads/evidence",
            aws=aws,
        )


def _folder(root: Path) -> FileSource:
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.env").write_text("SECRET_REF=env:X\n")
    (root / "conf" / "app.env").chmod(0o600)
    (root / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    return FileSource(name="config", directory=root)


def test_directory_restore_from_the_newest_verified_backup(tmp_path: Path) -> None:
    source = _folder(tmp_path / "srv")
    repo_url = f"file://{tmp_path}/repo"
    with pytest.raises(ObjectNotFound, match="no verified"):
        restore_from_backup(source, repo_url, evidence=str(tmp_path / "evidence"))
    backup_files(source, repo_url, backup_id="20260101T000000Z")
    assert verify_files_backup(source, repo_url, tmp_path / "scratch").passed
    (tmp_path / "srv" / "conf" / "app.env").unlink()
    (tmp_path / "srv" / "conf" / "app.env").write_text("tampered\n")
    (tmp_path / "srv" / "conf" / "app.env").chmod(0o644)
    (tmp_path / "srv" / "cert.pem").unlink()
    (tmp_path / "srv" / "dropped.sh").write_text("#!/bin/sh\n")
    result = restore_from_backup(source, repo_url, evidence=str(tmp_path / "evidence"))
    assert sorted(result.restored) == ["cert.pem", "conf/app.env"]
    assert result.newer == ["dropped.sh"] and result.unchanged == 0
    assert (tmp_path / "srv" / "conf" / "app.env").read_text() == "SECRET_REF=env:X\n"
    assert (tmp_path / "srv" / "conf" / "app.env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "evidence" / "conf" / "app.env").read_text() == "tampered\n"
    assert (tmp_path / "srv" / "dropped.sh").exists()


def test_tarball_backup_and_verify(tmp_path: Path) -> None:
    tar_path = tmp_path / "chain" / "config.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tar:
        data = b"genesis"
        info = tarfile.TarInfo("genesis.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "chain" / "other.log").write_text("not part of it")
    source = FileSource(name="chain-config", tarball=tar_path)
    manifest = backup_files(source, f"file://{tmp_path}/repo")
    assert [e.key for e in manifest.entries] == ["config.tar.gz"]
    assert verify_files_backup(source, f"file://{tmp_path}/repo", tmp_path / "scratch").passed
