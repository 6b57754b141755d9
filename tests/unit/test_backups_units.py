"""Unit tests of tasks.backups: retention, manifests, job choice, injection, parsers.

No server, no network: only pure functions and files in a temporary folder.
"""

from __future__ import annotations

import gzip
import itertools
import random
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dr.config import Retention
from dr.errors import ConfigError, UnsafeTargetError, VerificationError
from tasks.backups import toc
from tasks.backups.dump import conninfo_with
from tasks.backups.inject import inject_bad_backup
from tasks.backups.manifest import (
    MANIFEST_NAME,
    VERIFIED_NAME,
    Manifest,
    build_manifest,
    diagnose_dump_dir,
    new_backup_id,
    read_manifest,
    scratch_database_name,
    sha256_file,
    verify_local_files,
    write_manifest,
)
from tasks.backups.plain import _PlainGuard
from tasks.backups.restore import detect_dump_format
from tasks.backups.retention import (
    BackupEntry,
    foreign_database_hint,
    plan_retention,
    retention_reasons,
)
from tasks.backups.toc import choose_restore_jobs, parse_toc_listing
from tasks.backups.verify import AmcheckResult, parse_amcheck_output
from tasks.pitr.archiving import newest_wal_segment, wal_archive_age

NOW = datetime(2025, 6, 18, 12, 30, tzinfo=UTC)  # a Wednesday


def entry(
    hours_ago: float, *, complete: bool = True, verified: bool = False, name: str | None = None
) -> BackupEntry:
    at = NOW - timedelta(hours=hours_ago)
    return BackupEntry(
        backup_id=name or new_backup_id(at),
        started_at=at,
        complete=complete,
        verified=verified,
    )


def ids(entries: list[BackupEntry]) -> set[str]:
    return {e.backup_id for e in entries}


# --------------------------------------------------------------------------- retention


def test_hourly_backups_for_a_year_keep_exactly_the_gfs_buckets():
    # One backup an hour for 400 days, the seed's policy: 48 hourly, 30 daily, 52 weekly.
    backups = [entry(h + 0.5) for h in range(400 * 24)]
    keep, delete = plan_retention(backups, Retention(), NOW)
    reasons = retention_reasons(backups, Retention(), NOW)
    hourly = [b for b in keep if "hourly" in reasons[b.backup_id]]
    daily = [b for b in keep if "daily" in reasons[b.backup_id]]
    weekly = [b for b in keep if "weekly" in reasons[b.backup_id]]
    assert len(hourly) == 48
    assert len(daily) == 30
    assert len(weekly) == 52
    # The 48 hourly ones are the newest 48 backups.
    assert ids(hourly) == ids(sorted(backups, key=lambda b: b.started_at)[-48:])
    # Weekly ones are the newest of each ISO week: the last backup of each past Sunday,
    # a week apart, plus the newest backup of the current week.
    weeks = sorted((b.started_at for b in weekly), reverse=True)
    assert weeks[0] == max(b.started_at for b in backups)
    assert all(w.weekday() == 6 and w.hour == 23 for w in weeks[1:])
    gaps = {a - b for a, b in itertools.pairwise(weeks[1:])}
    assert gaps == {timedelta(days=7)}
    # Nothing older than 52 weeks + a few days survives.
    oldest = min(b.started_at for b in keep)
    assert NOW - oldest < timedelta(weeks=53)
    assert len(keep) + len(delete) == len(backups)
    assert not ids(keep) & ids(delete)
    assert len(keep) < 48 + 30 + 52  # buckets overlap: the newest is hourly, daily and weekly


def test_never_deletes_the_newest_verified_backup_even_when_policy_keeps_nothing():
    verified = entry(24 * 200, verified=True)
    backups = [entry(h) for h in range(1, 50)] + [verified]
    keep, delete = plan_retention(backups, Retention(hourly=0, daily=0, weekly=0), NOW)
    assert verified.backup_id in ids(keep)
    # And the newest complete backup stays too; everything else goes.
    assert ids(keep) == {
        verified.backup_id,
        min(backups, key=lambda b: NOW - b.started_at).backup_id,
    }
    assert len(delete) == len(backups) - 2


def test_only_the_newest_verified_is_protected_not_older_verified_ones():
    old_verified = entry(24 * 300, verified=True)
    new_verified = entry(24 * 100, verified=True)
    backups = [entry(1), old_verified, new_verified]
    keep, delete = plan_retention(backups, Retention(hourly=1, daily=0, weekly=0), NOW)
    assert new_verified.backup_id in ids(keep)
    assert old_verified.backup_id in ids(delete)


def test_verified_but_incomplete_backup_is_not_the_protected_one():
    # A "verified" marker on a backup whose manifest is gone cannot be restored: it does
    # not count, the newest *complete* verified one does.
    broken = entry(2, complete=False, verified=True)
    good = entry(24 * 90, verified=True)
    keep, _ = plan_retention([entry(1), broken, good], Retention(hourly=0, daily=0, weekly=0), NOW)
    assert good.backup_id in ids(keep)


def test_only_newest_backup_of_each_bucket_is_kept():
    # Four backups within the same hour: hourly keeps one of them, the newest.
    same_hour = [entry(0.1 * i + 0.05) for i in range(4)]
    keep, delete = plan_retention(same_hour, Retention(hourly=5, daily=0, weekly=0), NOW)
    assert ids(keep) == {min(same_hour, key=lambda b: NOW - b.started_at).backup_id}
    assert len(delete) == 3


def test_buckets_count_backups_not_clock_hours_so_a_gap_does_not_age_everything_out():
    # Backups stopped 10 days ago: the 48 newest hourly buckets are still kept.
    backups = [entry(24 * 10 + h) for h in range(100)]
    keep, _ = plan_retention(backups, Retention(hourly=48, daily=0, weekly=0), NOW)
    assert len(keep) == 48


def test_weekly_buckets_use_iso_weeks_across_a_year_boundary():
    # 2024-12-30 (Mon) and 2025-01-05 (Sun) are the same ISO week (2025-W01).
    a = BackupEntry(backup_id="a", started_at=datetime(2024, 12, 30, 1, tzinfo=UTC))
    b = BackupEntry(backup_id="b", started_at=datetime(2025, 1, 5, 23, tzinfo=UTC))
    c = BackupEntry(backup_id="c", started_at=datetime(2024, 12, 29, 23, tzinfo=UTC))
    keep, delete = plan_retention([a, b, c], Retention(hourly=0, daily=0, weekly=2), NOW)
    assert ids(keep) == {"b", "c"}
    assert ids(delete) == {"a"}


def test_incomplete_backups_newer_than_newest_complete_or_recent_are_kept():
    complete = entry(10)
    in_progress = entry(1, complete=False)  # newer than the newest complete one
    abandoned = entry(24 * 3, complete=False)  # older, beyond the 24 h grace
    recent_orphan = entry(20, complete=False)  # older than complete, within grace
    keep, delete = plan_retention(
        [complete, in_progress, abandoned, recent_orphan], Retention(), NOW
    )
    assert ids(keep) == {complete.backup_id, in_progress.backup_id, recent_orphan.backup_id}
    assert ids(delete) == {abandoned.backup_id}


def test_no_complete_backup_keeps_every_incomplete_one():
    backups = [entry(h, complete=False) for h in (1, 100, 1000)]
    keep, delete = plan_retention(backups, Retention(), NOW)
    assert ids(keep) == ids(backups) and not delete


def test_future_dated_backups_are_kept():
    future = entry(-5)
    keep, _ = plan_retention([entry(1), future], Retention(hourly=0, daily=0, weekly=0), NOW)
    assert future.backup_id in ids(keep)


def test_empty_input_plans_nothing():
    assert plan_retention([], Retention(), NOW) == ([], [])


def test_retention_is_idempotent_and_a_partition_on_random_histories():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 120)
        backups = [
            entry(
                rng.uniform(0, 24 * 400),
                complete=rng.random() > 0.1,
                verified=rng.random() > 0.8,
            )
            for _ in range(n)
        ]
        policy = Retention(
            hourly=rng.randint(0, 60), daily=rng.randint(0, 40), weekly=rng.randint(0, 60)
        )
        keep, delete = plan_retention(backups, policy, NOW)
        assert ids(keep) | ids(delete) == ids(backups)
        assert not ids(keep) & ids(delete)
        complete = [b for b in backups if b.complete]
        verified = [b for b in complete if b.verified]
        if verified:
            assert max(verified, key=lambda b: b.started_at).backup_id in ids(keep)
        if complete:
            assert max(complete, key=lambda b: b.started_at).backup_id in ids(keep)
        # Applying the plan again deletes nothing more.
        keep2, delete2 = plan_retention(keep, policy, NOW)
        assert not delete2 and ids(keep2) == ids(keep)


# --------------------------------------------------------------------------- job choice


@pytest.mark.parametrize(
    ("sizes", "cores", "jobs"),
    [
        ({"public.pgbench_accounts": 600_000_000, "public.pgbench_branches": 50}, 8, 1),
        ({"a": 100, "b": 100}, 8, 2),
        ({"a": 100, "b": 100, "c": 100}, 2, 2),
        ({"a": 100, "b": 25, "c": 24}, 8, 2),  # exactly 25 % earns a worker, 24 % does not
        ({"a": 100, "b": 90, "c": 80, "d": 70}, 1, 1),
        ({}, 8, 1),
        ({"a": 0, "b": 0}, 8, 1),
    ],
)
def test_restore_jobs_come_from_table_sizes_not_cores(sizes, cores, jobs):
    assert choose_restore_jobs(sizes, cores) == jobs


def test_restore_jobs_default_cap_is_the_cpu_count(monkeypatch):
    monkeypatch.setattr(toc.os, "cpu_count", lambda: 3)
    assert choose_restore_jobs({str(i): 10 for i in range(10)}) == 3


def test_parse_toc_listing_finds_table_data_and_post_data_items():
    listing = """;
; Archive created at 2025-01-01 00:00:00 UTC
;     dbname: app
;
; Selected TOC Entries:
;
214; 1259 16385 TABLE public t postgres
3345; 0 16385 TABLE DATA public t postgres
3346; 0 16392 TABLE DATA shop order items app_owner
3201; 2606 16391 CONSTRAINT public t t_pkey postgres
3202; 1259 16395 INDEX public t_v_idx postgres
3203; 2606 16400 FK CONSTRAINT shop orders orders_customer_fkey postgres
"""
    entries, post = parse_toc_listing(listing)
    assert [(e.dump_id, e.qualified) for e in entries] == [
        (3345, "public.t"),
        (3346, "shop.order items"),
    ]
    assert post == 3


# --------------------------------------------------------------------------- manifest


def make_dump(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "toc.dat").write_bytes(b"PGDMP" + bytes(range(200)))
    (folder / "3345.dat.gz").write_bytes(gzip.compress(b"1\tone\n2\ttwo\n" * 5000))
    (folder / "3346.dat.gz").write_bytes(gzip.compress(b"x\n"))
    return folder


def manifest_for(folder: Path, **kw) -> Manifest:
    args = dict(
        target="lab",
        database="app",
        server_version="15.20",
        tool_version="pg_dump (PostgreSQL) 15.20",
        started_at=NOW,
        ended_at=NOW + timedelta(seconds=3),
        wal_lsn="0/3000148",
        row_counts={"public.t": 10000, "public.u": 1},
    )
    args.update(kw)
    return build_manifest(folder, **args)


def test_manifest_lists_every_file_with_size_and_sha256_and_round_trips(tmp_path):
    dump = make_dump(tmp_path / "dump")
    m = manifest_for(dump, backup_id="20250618T123000Z-abcdef")
    assert m.format_version == 1 and m.kind == "pg_dump-directory" and m.verified_at is None
    assert [f.path for f in m.files] == ["3345.dat.gz", "3346.dat.gz", "toc.dat"]
    assert m.file("toc.dat").size == 205
    assert m.total_bytes == sum(p.stat().st_size for p in dump.iterdir())
    path = write_manifest(m, dump / MANIFEST_NAME)
    again = read_manifest(path)
    assert again == m
    assert read_manifest(path.read_bytes()) == m
    # The manifest never lists itself, nor the verification marker.
    (dump / VERIFIED_NAME).write_text("{}")
    assert [f.path for f in manifest_for(dump).files] == [f.path for f in m.files]
    assert verify_local_files(dump, m) == []


def test_verify_local_files_reports_changed_missing_and_truncated_files(tmp_path):
    dump = make_dump(tmp_path / "dump")
    m = manifest_for(dump)
    data = bytearray((dump / "toc.dat").read_bytes())
    data[10] ^= 1
    (dump / "toc.dat").write_bytes(bytes(data))
    (dump / "3346.dat.gz").unlink()
    with open(dump / "3345.dat.gz", "r+b") as fh:
        fh.truncate(10)
    problems = verify_local_files(dump, m)
    assert len(problems) == 3
    assert any(p.startswith("toc.dat: sha256") for p in problems)
    assert "3346.dat.gz: missing" in problems
    assert any(p.startswith("3345.dat.gz: 10 bytes") for p in problems)


def test_manifest_of_missing_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(VerificationError, match="does not exist"):
        manifest_for(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VerificationError, match="empty"):
        manifest_for(tmp_path / "empty")


@pytest.mark.parametrize("data", [b"not json", b'{"format_version": 2}', b"{}"])
def test_unreadable_manifest_is_a_verification_error(data):
    with pytest.raises(VerificationError, match="manifest"):
        read_manifest(data)


# --------------------------------------------------------------------------- injection


def test_flip_corrupts_one_byte_of_the_copy_and_leaves_the_source_untouched(tmp_path):
    src = make_dump(tmp_path / "real")
    write_manifest(manifest_for(src), src / MANIFEST_NAME)
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    info = inject_bad_backup(src, tmp_path / "copy", "flip")
    assert {p.name: sha256_file(p) for p in src.iterdir()} == before
    assert info.file == "3345.dat.gz"  # the largest data file
    original = (src / info.file).read_bytes()
    damaged = (tmp_path / "copy" / info.file).read_bytes()
    assert len(original) == len(damaged)
    assert [i for i in range(len(original)) if original[i] != damaged[i]] == [info.offset]
    # The copy's manifest still holds the real checksums, so verification catches it.
    problems = verify_local_files(
        tmp_path / "copy", read_manifest(tmp_path / "copy" / MANIFEST_NAME)
    )
    assert len(problems) == 1 and problems[0].startswith("3345.dat.gz: sha256")
    assert not info.resealed


def test_truncate_with_reseal_passes_checksums_but_the_data_is_broken(tmp_path):
    src = make_dump(tmp_path / "real")
    write_manifest(manifest_for(src), src / MANIFEST_NAME)
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    info = inject_bad_backup(src, tmp_path / "copy", "truncate", reseal_manifest=True)
    assert {p.name: sha256_file(p) for p in src.iterdir()} == before
    assert info.new_size == info.original_size // 2 and info.resealed
    copy = tmp_path / "copy"
    assert verify_local_files(copy, read_manifest(copy / MANIFEST_NAME)) == []
    with pytest.raises((EOFError, zlib.error, OSError)):
        gzip.decompress((copy / info.file).read_bytes())


def test_injection_refuses_to_write_into_or_over_the_real_backup(tmp_path):
    src = make_dump(tmp_path / "real")
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    with pytest.raises(UnsafeTargetError):
        inject_bad_backup(src, src, "flip")
    with pytest.raises(UnsafeTargetError):
        inject_bad_backup(src, src / "inside", "flip")
    with pytest.raises(UnsafeTargetError):
        inject_bad_backup(src, tmp_path, "flip")  # would contain the source
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeTargetError, match="not empty"):
        inject_bad_backup(src, busy, "flip")
    assert (busy / "keep.txt").read_text() == "mine"
    assert {p.name: sha256_file(p) for p in src.iterdir()} == before


# --------------------------------------------------------------------------- names, formats


def test_scratch_names_are_prefixed_sanitized_and_fit_postgres_limits():
    assert scratch_database_name("app", "1a2b3c4d") == "dr_verify_app_1a2b3c4d"
    name = scratch_database_name("Shop-DB with spaces", "ABC-123")
    assert name == "dr_verify_shop_db_with_spaces_abc123"
    long = scratch_database_name("x" * 200, "deadbeef")
    assert len(long.encode()) <= 63 and long.endswith("_deadbeef")
    assert scratch_database_name("app", "a") != scratch_database_name("app", "b")
    with pytest.raises(ConfigError):
        scratch_database_name("app", "---")


def test_conninfo_with_quotes_values():
    assert (
        conninfo_with("host=127.0.0.1 port=5433", dbname="it's a db")
        == "host=127.0.0.1 port=5433 dbname='it\\'s a db'"
    )
    with pytest.raises(ConfigError):
        conninfo_with("postgresql://u@h/db", dbname="x")


def test_detect_dump_format():
    assert detect_dump_format(b"PGDMP\x01\x0e\x00") == "custom"
    assert detect_dump_format(b"--\n-- PostgreSQL database dump\n") == "plain"
    assert detect_dump_format(gzip.compress(b"--\n-- PostgreSQL dump\n")[:512]) == "plain-gzip"
    assert detect_dump_format(gzip.compress(b"PGDMP" + b"\0" * 100)[:512]) == "custom-gzip"
    with pytest.raises(VerificationError):
        detect_dump_format(bytes([0x89, 0x50, 0x4E, 0x47, 0, 0, 0xFF, 0xFE] * 40))


def test_plain_guard_refuses_meta_commands_and_database_statements_outside_copy():
    guard = _PlainGuard()
    for line in [
        b"--\n",
        b"\\restrict abc\n",
        b"CREATE TABLE public.t (id integer);\n",
        b"COPY public.t (id, v) FROM stdin;\n",
        b"\\\\connect to something, a data value\n",
        b"CREATE DATABASE looks like data\n",
        b"\\.\n",
        b"\\unrestrict abc\n",
    ]:
        guard.check(line)
    assert not guard.in_copy
    for bad in (b"\\connect other\n", b"\\! rm -rf /\n", b"CREATE DATABASE x;\n"):
        with pytest.raises(UnsafeTargetError):
            _PlainGuard().check(bad)


def test_parse_amcheck_output():
    text = (
        'heap table "app.public.t", block 3, offset 1:\n'
        "    xmin 1234 precedes relation freeze threshold 0:5678\n"
        'btree index "app.public.t_pkey":\n'
        "    ERROR:  invalid page in block 3 of relation base/16384/16385\n"
    )
    failures = parse_amcheck_output(text)
    assert [(f.relation_kind, f.relation, f.location) for f in failures] == [
        ("heap table", "app.public.t", "block 3, offset 1"),
        ("btree index", "app.public.t_pkey", ""),
    ]
    assert failures[1].message.startswith("ERROR:  invalid page")
    result = AmcheckResult(ok=False, failures=failures)
    assert "heap table app.public.t" in result.summary()


def test_wal_archive_age_uses_the_newest_full_segment():
    listing = [
        {"key": "000000010000000000000001", "mtime": NOW - timedelta(seconds=600)},
        {"key": "000000010000000000000002", "mtime": NOW - timedelta(seconds=90)},
        {"key": "000000010000000000000003.partial", "mtime": NOW - timedelta(seconds=1)},
        {"key": "00000002.history", "mtime": NOW - timedelta(seconds=2)},
    ]
    assert wal_archive_age(listing, now=NOW) == 90.0
    assert newest_wal_segment(listing) == (
        "000000010000000000000002",
        NOW - timedelta(seconds=90),
    )
    assert wal_archive_age([], now=NOW) is None

    class Archive:  # a repository: anything with list()
        def list(self, prefix=""):
            return listing

    assert wal_archive_age(Archive(), now=NOW) == 90.0


def test_backup_ids_sort_by_time_and_foreign_names_hint_at_their_database():
    early = new_backup_id(datetime(2025, 1, 1, tzinfo=UTC))
    late = new_backup_id(datetime(2025, 1, 2, tzinfo=UTC))
    assert early < late and early.startswith("20250101T000000Z-")
    assert foreign_database_hint("backups/trading_backup_20251106_120000.sql.gz") == "trading"
    assert foreign_database_hint("db_backup_20251106.sql.gz") == "db"
    assert foreign_database_hint("latest.sql.gz") is None


def test_diagnose_dump_dir_names_truncated_and_corrupt_gzip_files(tmp_path):
    dump = make_dump(tmp_path / "dump")
    assert diagnose_dump_dir(dump) == []
    data = (dump / "3345.dat.gz").read_bytes()
    (dump / "3345.dat.gz").write_bytes(data[: len(data) // 2])
    bad = bytearray((dump / "3346.dat.gz").read_bytes())
    bad[12] ^= 0xFF
    (dump / "3346.dat.gz").write_bytes(bytes(bad))
    problems = diagnose_dump_dir(dump)
    assert problems[0].startswith("3345.dat.gz: truncated gzip stream")
    assert problems[1].startswith("3346.dat.gz: corrupt gzip data")
