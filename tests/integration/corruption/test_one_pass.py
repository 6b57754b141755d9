"""PITR in one pass: the base backup streamed, hashed and extracted while the WAL is proved.

Every refusal (a flipped byte, a truncated tar, a missing WAL segment) must come before the
server starts and leave the data directory exactly as it was.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dr.errors import ChecksumMismatch, PreconditionError
from tasks.pitr.archiving import server_position
from tasks.pitr.base_backup import BASE_TAR, BaseBackup, list_base_backups
from tasks.pitr.base_restore import restore_base_backup
from tasks.pitr.cluster import remove_cluster
from tasks.pitr.one_pass import prepare_recovery
from tasks.pitr.recovery import start_recovery
from tasks.pitr.relations import relation_digests
from tasks.pitr.target import RecoveryTarget
from tasks.pitr.wal import plan_wal, restore_command_for
from tasks.storage import client as storage

from .conftest import TARGET, Pitr
from .test_recovery import FlakyRepository, damage, recovered_conninfo

pytestmark = pytest.mark.integration


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def repo_copy(pitr: Pitr, dest: Path) -> tuple[object, BaseBackup, Path]:
    shutil.copytree(Path(pitr.repo.url[len("file://") :]), dest)
    repo = storage.open_repository(f"file://{dest}")
    return repo, list_base_backups(repo, TARGET)[0], dest


def assert_nothing_left(work: Path) -> None:
    assert (work / "data").is_dir() and not any((work / "data").iterdir())
    assert not (work / "data.restoring").exists()


def test_one_pass_brings_the_rows_back_into_an_empty_data_directory(pitr: Pitr) -> None:
    seen = damage(pitr, "DELETE FROM public.t WHERE id % 5 = 0")
    target = RecoveryTarget(lsn=seen["stamp"]["lsn"])
    work = pitr.work()
    (work / "data").mkdir()
    got = prepare_recovery(
        pitr.repo,
        pitr.backup,
        work / "data",
        wal_repo=pitr.wal_repo(),
        target=target,
        work_dir=work / "restore",
    )
    restored = got["restored"]
    assert restored["streamed"] and restored["verified"] == "sizes"
    assert restored["sha256"][BASE_TAR] == pitr.backup.files[BASE_TAR]
    assert got["staged"] is None and got["plan"].needed
    assert not (work / "data.restoring").exists()
    recovered = start_recovery(
        work / "data",
        target.model_copy(update={"timeline": got["plan"].target_timeline}),
        restore_command=restore_command_for(pitr.wal_repo().url),
    )
    try:
        assert relation_digests(recovered_conninfo(recovered), ["public.t"]) == seen["before"]
    finally:
        remove_cluster(recovered.data_dir)


@pytest.mark.parametrize("how", ["flip a byte", "truncate"])
def test_a_damaged_base_tar_is_refused_before_the_server_starts(pitr: Pitr, how: str) -> None:
    work = pitr.work()
    repo, backup, root = repo_copy(pitr, work / "repo")
    tar = root / backup.prefix / BASE_TAR
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        if how == "truncate":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    before = tree_digest(root)
    (work / "data").mkdir()
    target = RecoveryTarget(lsn=server_position(pitr.conninfo)["lsn"])
    pitr.switch_wal(1)
    with pytest.raises(ChecksumMismatch, match="does not match the manifest"):
        prepare_recovery(
            repo,
            backup,
            work / "data",
            wal_repo=pitr.wal_repo(),
            target=target,
            work_dir=work / "restore",
        )
    assert_nothing_left(work)
    assert tree_digest(root) == before


def test_a_missing_wal_segment_stops_the_extraction_and_leaves_nothing(pitr: Pitr) -> None:
    pitr.switch_wal(3)
    target = RecoveryTarget(lsn=server_position(pitr.conninfo)["lsn"])
    pitr.switch_wal(1)
    work = pitr.work()
    archive = pitr.archive_copy(work / "wal")
    plan = plan_wal(pitr.wal_repo(archive), pitr.backup, target)
    missing = plan.needed[len(plan.needed) // 2]
    (archive / missing).unlink()
    (work / "data").mkdir()
    with pytest.raises(PreconditionError, match=f"gap: segment {missing} is missing"):
        prepare_recovery(
            pitr.repo,
            pitr.backup,
            work / "data",
            wal_repo=pitr.wal_repo(archive),
            target=target,
            work_dir=work / "restore",
            stage_dir=work / "staged",
        )
    assert_nothing_left(work)


def test_the_stream_resumes_after_the_storage_fails_mid_object(pitr: Pitr) -> None:
    root = Path(pitr.repo.url[len("file://") :])
    flaky = FlakyRepository(root, failures=2, after_bytes=3 * 1024 * 1024 + 17)
    work = pitr.work()
    got = restore_base_backup(flaky, pitr.backup, work / "data", work_dir=work / "restore")
    assert flaky.raised == 2
    assert any(start > 0 for start in flaky.range_starts)
    assert got["sha256"][BASE_TAR] == pitr.backup.files[BASE_TAR]
    assert (work / "data" / "PG_VERSION").is_file()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from lab.pgcluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_one_pass_from_s3_streams_the_backup_and_stages_the_wal(
    pitr: Pitr, s3_endpoint: str
) -> None:
    client = storage.make_s3_client(
        endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing"
    )
    client.create_bucket(Bucket="onepass")
    repo = storage.open_repository("s3://onepass/backups", s3_client=client)
    wal = storage.open_repository("s3://onepass/wal", s3_client=client)
    local = Path(pitr.repo.url[len("file://") :]) / pitr.backup.prefix
    for path in sorted(local.iterdir()):
        repo.put_file(f"{pitr.backup.prefix}{path.name}", path)
    seen = damage(pitr, "DELETE FROM public.t WHERE id % 7 = 0")
    for path in sorted(pitr.archive.iterdir()):
        wal.put_file(path.name, path)
    target = RecoveryTarget(lsn=seen["stamp"]["lsn"])
    backup = list_base_backups(repo, TARGET)[0]
    work = pitr.work()
    got = prepare_recovery(
        repo,
        backup,
        work / "data",
        wal_repo=wal,
        target=target,
        work_dir=work / "restore",
        stage_dir=work / "wal",
    )
    assert got["restored"]["streamed"] and not list(work.rglob("*.tar"))
    assert set(got["plan"].needed) <= set(got["staged"])
    recovered = start_recovery(
        work / "data",
        target.model_copy(update={"timeline": got["plan"].target_timeline}),
        restore_command=restore_command_for(wal.url, work / "wal"),
    )
    try:
        assert relation_digests(recovered_conninfo(recovered), ["public.t"]) == seen["before"]
    finally:
        remove_cluster(recovered.data_dir)


def test_an_empty_data_directory_that_cannot_be_replaced_receives_the_files(
    pitr: Pitr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount point: rename(2) refuses it (EBUSY), so the verified entries move into it."""
    import errno
    import os

    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(src).endswith(".restoring"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    work = pitr.work()
    (work / "data").mkdir()
    restore_base_backup(pitr.repo, pitr.backup, work / "data", work_dir=work / "restore")
    assert (work / "data" / "PG_VERSION").is_file()
    assert (work / "data").stat().st_mode & 0o777 == 0o700
    assert not (work / "data.restoring").exists()
