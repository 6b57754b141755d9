"""The point-in-time recovery machinery against a private cluster, archive and repository.

Each refusal is shown together with the proof that nothing changed: no data directory
made, the archive and the source's rows as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dr.errors import (
    ConfigError,
    PreconditionError,
    StorageError,
    UnsafeTargetError,
    VerificationError,
)
from tasks.pitr.archiving import server_position, switch_wal_and_wait
from tasks.pitr.base_backup import choose_base_backup, list_base_backups
from tasks.pitr.base_restore import download_base_backup, extract_base_backup
from tasks.pitr.checksums import check_checksums, damage_heap_page, make_stopped_copy
from tasks.pitr.cluster import cluster_is_running, remove_cluster
from tasks.pitr.damage_finder import find_damage
from tasks.pitr.drill import run_drill_statement
from tasks.pitr.lsn import format_lsn, parse_lsn
from tasks.pitr.recovery import RecoveredCluster, start_recovery
from tasks.pitr.relation_restore import restore_relations
from tasks.pitr.relations import relation_digests, relation_filepaths, resolve_filenodes
from tasks.pitr.target import RecoveryTarget
from tasks.pitr.wal import plan_wal, restore_command_for, stage_wal
from tasks.storage import client as storage_client
from tasks.storage import file as storage_file

from .conftest import ROWS, Pitr

pytestmark = pytest.mark.integration


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def damage(pitr: Pitr, statement: str) -> dict[str, Any]:
    """Stamp, run a damaging statement, archive everything; return what the test needs."""
    before = relation_digests(pitr.conninfo, ["public.t"])
    stamp = server_position(pitr.conninfo)
    done = run_drill_statement(pitr.conninfo, statement)
    switch_wal_and_wait(pitr.conninfo)
    return {"before": before, "stamp": stamp, "done": done}


def recover(pitr: Pitr, target: RecoveryTarget, work: Path) -> RecoveredCluster:
    backup = choose_base_backup(list_base_backups(pitr.repo, "pitr"), target)
    plan = plan_wal(pitr.wal_repo(), backup, target)
    download_base_backup(pitr.repo, backup, work / "download")
    extract_base_backup(work / "download", work / "data")
    return start_recovery(
        work / "data",
        target.model_copy(update={"timeline": plan.target_timeline}),
        restore_command=restore_command_for(pitr.wal_repo().url),
    )


def test_recovery_to_just_before_the_damage_brings_the_rows_back(pitr: Pitr) -> None:
    seen = damage(pitr, "UPDATE public.t SET v = 0")
    found = find_damage(pitr.archive, timeline=1, start_lsn=seen["stamp"]["lsn"])
    assert len(found) == 1 and found[0].rows_changed == ROWS
    assert found[0].commit_time is not None
    assert found[0].commit_time <= seen["done"]["committed_at"]

    for target in (
        RecoveryTarget(lsn=found[0].commit_lsn),
        RecoveryTarget(time=seen["stamp"]["at"]),
    ):
        work = pitr.work()
        recovered = recover(pitr, target, work)
        try:
            got = relation_digests(recovered_conninfo(recovered), ["public.t"])
            assert got == seen["before"], target.describe()
            assert recovered.timeline_after == (recovered.timeline_before or 0) + 1
            # No other transaction ran since the base backup: nothing committed was replayed.
            assert recovered.last_replayed_at is None or (
                recovered.last_replayed_at <= found[0].commit_time
            )
            assert "recovery stopping before" in recovered.stop_message
        finally:
            remove_cluster(recovered.data_dir)
    pitr.cluster.psql("UPDATE public.t SET v = id")


def recovered_conninfo(recovered: RecoveredCluster, dbname: str = "postgres") -> str:
    return f"host=127.0.0.1 port={recovered.port} dbname={dbname} user=postgres"


def test_gap_in_the_archive_is_reported_with_the_segment_before_anything_starts(
    pitr: Pitr,
) -> None:
    pitr.switch_wal(3)
    position = server_position(pitr.conninfo)
    pitr.switch_wal(1)
    work = pitr.work()
    archive = pitr.archive_copy(work / "wal")
    original = checksums(pitr.archive)
    plan = plan_wal(pitr.wal_repo(archive), pitr.backup, RecoveryTarget(lsn=position["lsn"]))
    missing = plan.needed[len(plan.needed) // 2]
    (archive / missing).unlink()

    with pytest.raises(PreconditionError, match=f"gap: segment {missing} is missing"):
        plan_wal(pitr.wal_repo(archive), pitr.backup, RecoveryTarget(lsn=position["lsn"]))
    # Nothing restored, nothing started, the real archive untouched.
    assert not (work / "data").exists()
    assert checksums(pitr.archive) == original


def test_target_beyond_the_archive_is_refused_and_the_server_says_so_too(pitr: Pitr) -> None:
    position = server_position(pitr.conninfo)
    beyond = format_lsn(parse_lsn(position["lsn"]) + 64 * 1024 * 1024)
    target = RecoveryTarget(lsn=beyond)
    with pytest.raises(PreconditionError, match="beyond the archived WAL"):
        plan_wal(pitr.wal_repo(), pitr.backup, target)
    # Without the plan's check the server replays all there is and stops with a FATAL,
    # which is read from its log and reported the same way.
    work = pitr.work()
    download_base_backup(pitr.repo, pitr.backup, work / "download")
    extract_base_backup(work / "download", work / "data")
    with pytest.raises(PreconditionError, match="recovery ended before configured recovery target"):
        start_recovery(
            work / "data",
            target,
            restore_command=restore_command_for(pitr.wal_repo().url),
            timeout_seconds=120,
        )
    assert not cluster_is_running(work / "data")


def test_unsafe_recovery_points_are_refused_with_the_reason(pitr: Pitr) -> None:
    backups = list_base_backups(pitr.repo, "pitr")
    now = datetime.now(UTC)
    with pytest.raises(PreconditionError, match="in the future"):
        choose_base_backup(backups, RecoveryTarget(time=now + timedelta(hours=1)), now=now)
    with pytest.raises(PreconditionError, match="before the oldest base backup"):
        choose_base_backup(backups, RecoveryTarget(time=datetime(2000, 1, 1, tzinfo=UTC)))
    with pytest.raises(PreconditionError, match="no base backup in the repository"):
        choose_base_backup([], RecoveryTarget(time=now - timedelta(seconds=1)))
    with pytest.raises(PreconditionError, match="after the damage began"):
        choose_base_backup(
            backups,
            RecoveryTarget(time=now - timedelta(seconds=1)),
            damage_at=now - timedelta(seconds=30),
        )
    current = server_position(pitr.conninfo)["lsn"]
    with pytest.raises(PreconditionError, match="after the damage"):
        choose_base_backup(backups, RecoveryTarget(lsn=current), damage_lsn=pitr.backup.stop_lsn)
    with pytest.raises(PreconditionError, match="in the future"):
        choose_base_backup(backups, RecoveryTarget(lsn="F/0"), current_lsn=current)


class FlakyRepository(storage_file.FileRepository):
    """A file repository whose reads fail (transiently) mid-stream a given number of times."""

    def __init__(self, root: Path, failures: int, after_bytes: int) -> None:
        super().__init__(root, resume_min_bytes=1024 * 1024)
        self.failures_left = failures
        self.after_bytes = after_bytes
        self.range_starts: list[int] = []
        self.raised = 0

    def _read_range(
        self, key: str, start: int, etag: str | None
    ) -> AbstractContextManager[Iterator[bytes]]:
        inner = super()._read_range(key, start, etag)
        self.range_starts.append(start)
        repo = self

        @contextmanager
        def flaky() -> Iterator[Iterator[bytes]]:
            with inner as chunks:

                def gen() -> Iterator[bytes]:
                    sent = 0
                    for chunk in chunks:
                        if repo.failures_left > 0 and sent + len(chunk) > repo.after_bytes:
                            repo.failures_left -= 1
                            repo.raised += 1
                            keep = max(0, repo.after_bytes - sent)
                            if keep:
                                yield chunk[:keep]
                            raise StorageError("connection reset by peer (test)", transient=True)
                        sent += len(chunk)
                        yield chunk

                yield gen()

        return flaky()


def test_download_resumes_after_the_storage_fails_mid_stream(pitr: Pitr) -> None:
    root = Path(pitr.repo.url[len("file://") :])
    work = pitr.work()
    # Once: resumed inside the same call with a ranged read from where it stopped.
    flaky = FlakyRepository(root, failures=1, after_bytes=3 * 1024 * 1024 + 17)
    got = download_base_backup(flaky, pitr.backup, work / "once")
    assert flaky.raised == 1
    assert any(start > 0 for start in flaky.range_starts)
    assert got == {k: v for k, v in pitr.backup.files.items() if k != "manifest.json"}

    # More failures than one call absorbs: the call fails (transient) keeping its .part, and
    # the retry (what the Prefect task does) resumes from it and verifies the whole file.
    flaky = FlakyRepository(root, failures=5, after_bytes=2 * 1024 * 1024)
    with pytest.raises(StorageError) as failed:
        download_base_backup(flaky, pitr.backup, work / "twice")
    assert failed.value.transient
    assert list((work / "twice").glob("*.part"))
    flaky.failures_left = 0
    flaky.range_starts.clear()
    got = download_base_backup(flaky, pitr.backup, work / "twice")
    assert flaky.range_starts and flaky.range_starts[0] > 0
    assert got == {k: v for k, v in pitr.backup.files.items() if k != "manifest.json"}
    assert not list((work / "twice").glob("*.part"))


def test_relation_restore_is_one_transaction_and_rolls_back_on_a_broken_key(pitr: Pitr) -> None:
    c = pitr.cluster
    c.psql("DROP DATABASE IF EXISTS recovered_copy")
    c.psql("CREATE DATABASE recovered_copy")
    c.psql(
        "CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO public.t SELECT g, g * 10 FROM generate_series(2, 100) g",
        "recovered_copy",
    )
    c.psql(
        "CREATE TABLE public.child (id int PRIMARY KEY, t_id int REFERENCES public.t (id));"
        "INSERT INTO public.child VALUES (1, 1)"
    )
    src = c.conninfo("recovered_copy")
    live_before = relation_digests(pitr.conninfo, ["public.t"])
    try:
        # Row 1 is referenced by the live child table but absent from the copy: refused,
        # rolled back, the live table exactly as it was.
        with pytest.raises(VerificationError, match="rolled back, nothing changed"):
            restore_relations(src, pitr.conninfo, ["public.t"])
        assert relation_digests(pitr.conninfo, ["public.t"]) == live_before
        c.psql("DELETE FROM public.child")
        result = restore_relations(src, pitr.conninfo, ["public.t"])
        assert result.relations == relation_digests(src, ["public.t"])
        assert result.constraints_recreated == ["public.child.child_t_id_fkey"]
    finally:
        c.psql("DROP TABLE IF EXISTS public.child")
        c.psql(
            f"TRUNCATE public.t; INSERT INTO public.t SELECT g, g FROM generate_series(1, {ROWS}) g"
        )
        c.psql("DROP DATABASE IF EXISTS recovered_copy")


def test_pg_checksums_on_a_stopped_copy_finds_a_flipped_page(pitr: Pitr) -> None:
    work = pitr.work()
    copy = make_stopped_copy(pitr.conninfo, work / "copy")
    relpath = relation_filepaths(pitr.conninfo, ["public.t"])["public.t"]
    assert check_checksums(copy["data_dir"]).ok
    # The live cluster's files are never damaged, whatever the caller asks.
    with pytest.raises(UnsafeTargetError):
        damage_heap_page(pitr.cluster.data_dir, relpath)
    flipped = damage_heap_page(copy["data_dir"], relpath)
    report = check_checksums(copy["data_dir"])
    assert not report.ok and report.bad_checksums == 1
    assert report.bad_blocks[0].block == flipped["block"]
    assert report.locators() == [relpath]
    names = resolve_filenodes(
        lambda db: pitr.cluster.conninfo(db), pitr.conninfo, report.locators()
    )
    assert names == {relpath: "postgres:public.t"}
    remove_cluster(copy["data_dir"])
    assert not Path(copy["data_dir"]).exists()


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


def test_recovery_from_s3_stages_the_wal_locally_and_verifies_every_file(
    pitr: Pitr, s3_endpoint: str
) -> None:
    """Base backup and WAL archive both in S3: the server restores from a staged folder."""
    client = storage_client.make_s3_client(
        endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing"
    )
    client.create_bucket(Bucket="pitr")
    repo = storage_client.open_repository("s3://pitr/backups", s3_client=client)
    wal = storage_client.open_repository("s3://pitr/wal", s3_client=client)
    for name, _sha in sorted(pitr.backup.files.items()):
        repo.put_file(
            f"{pitr.backup.prefix}{name}", Path(pitr.repo.url[7:]) / pitr.backup.prefix / name
        )
    repo.put_file(
        f"{pitr.backup.prefix}manifest.json",
        Path(pitr.repo.url[7:]) / pitr.backup.prefix / "manifest.json",
    )
    seen = damage(pitr, "DELETE FROM public.t WHERE id % 3 = 0")
    for path in sorted(pitr.archive.iterdir()):
        wal.put_file(path.name, path)
    try:
        found = find_damage(pitr.archive, timeline=1, start_lsn=seen["stamp"]["lsn"])
        target = RecoveryTarget(lsn=found[0].commit_lsn)
        backup = choose_base_backup(list_base_backups(repo, "pitr"), target)
        assert backup.location.startswith("s3://pitr/backups/")
        plan = plan_wal(wal, backup, target)
        work = pitr.work()
        staged = stage_wal(wal, plan, work / "wal")
        assert set(plan.needed) <= set(staged)
        download_base_backup(repo, backup, work / "download")
        extract_base_backup(work / "download", work / "data")
        recovered = start_recovery(
            work / "data",
            target.model_copy(update={"timeline": plan.target_timeline}),
            restore_command=restore_command_for(wal.url, work / "wal"),
        )
        try:
            got = relation_digests(recovered_conninfo(recovered), ["public.t"])
            assert got == seen["before"]
        finally:
            remove_cluster(recovered.data_dir)
        with pytest.raises(ConfigError):
            restore_command_for(wal.url)  # the server never reads S3 itself
    finally:
        pitr.cluster.psql(
            f"TRUNCATE public.t; INSERT INTO public.t SELECT g, g FROM generate_series(1, {ROWS}) g"
        )
