"""Backup verification without servers: trailers, cut dumps, coverage, recovery point, detection."""

from __future__ import annotations

import gzip
import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from dr.config import parse_config
from dr.errors import VerificationError
from flows.backup_verification import recovery_point
from flows.backup_verification.checks import check_backup_age
from flows.backup_verification.coverage import _record, check_completion_trailer
from flows.backup_verification.models import DatabaseVerification
from flows.data_corruption.detection import NOT_CAUGHT, own_check_noticed, report_detection
from flows.lifecycle.models import Measurement
from tasks.backups.coverage import compare_coverage
from tasks.backups.inject import cut_plain_dump
from tasks.backups.plain import _PlainGuard
from tasks.backups.retention import name_timestamp, pick_newest_by_name
from tasks.pitr.base_backup import BaseBackup
from tasks.pitr.lsn import segment_name

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024

# A plain dump shaped as pg_dump writes it: tables, data, then constraints, then the trailer.
DUMP = b"""--
-- PostgreSQL database dump
--
\\restrict abc
CREATE TABLE public.pgbench_accounts (aid integer NOT NULL, abalance integer);
CREATE TABLE public.pgbench_branches (bid integer NOT NULL);
CREATE TABLE public.pgbench_tellers (tid integer NOT NULL);
COPY public.pgbench_accounts (aid, abalance) FROM stdin;
1\t0
2\t0
\\.
COPY public.pgbench_branches (bid) FROM stdin;
1
\\.
COPY public.pgbench_tellers (tid) FROM stdin;
1
\\.
ALTER TABLE ONLY public.pgbench_accounts ADD CONSTRAINT pgbench_accounts_pkey PRIMARY KEY (aid);
--
-- PostgreSQL database dump complete
--

\\unrestrict abc
"""


def guard_over(data: bytes) -> _PlainGuard:
    guard = _PlainGuard()
    for line in io.BytesIO(data):
        guard.check(line)
    return guard


# --------------------------------------------------------------------------- plain dumps


def test_completion_trailer_counts_only_at_the_end() -> None:
    assert guard_over(DUMP).trailer is True
    assert guard_over(DUMP.replace(b"-- PostgreSQL database dump complete\n", b"")).trailer is False
    # A trailer followed by more SQL is not the end of the dump.
    assert guard_over(DUMP + b"CREATE TABLE public.x (i int);\n").trailer is False
    # Data inside COPY never counts as the trailer.
    inside = b"COPY public.t (v) FROM stdin;\n-- PostgreSQL database dump complete\n"
    assert guard_over(inside).trailer is False


def test_cut_plain_dump_keeps_one_tables_data_and_drops_the_rest_regzipped() -> None:
    src, dst = io.BytesIO(gzip.compress(DUMP)), io.BytesIO()
    info = cut_plain_dump(src, dst, gzipped=True)
    cut = gzip.decompress(dst.getvalue())
    assert info.table == "public.pgbench_accounts"
    assert info.tables_without_data == ["public.pgbench_branches", "public.pgbench_tellers"]
    assert cut.endswith(b"2\t0\n\\.\n") and DUMP.startswith(cut)
    assert info.kept_bytes == len(cut) and info.original_bytes == len(DUMP)
    guard = guard_over(cut)
    assert not guard.in_copy and guard.trailer is False  # cut cleanly, no trailer
    with pytest.raises(VerificationError, match="no table data"):
        cut_plain_dump(io.BytesIO(b"CREATE TABLE t (i int);\n"), io.BytesIO(), gzipped=False)


def test_completion_trailer_check_is_critical() -> None:
    result = DatabaseVerification(database="app", label="foreign x (app)")
    check_completion_trailer(result, False)
    check = result.checks[0]
    assert check.name == "foreign x (app): completion trailer"
    assert not check.ok and check.critical and "dump complete" in check.detail
    assert not result.ok


# --------------------------------------------------------------------------- coverage


def test_coverage_missing_tables_and_constraints_unless_excluded() -> None:
    found = compare_coverage(
        {"public.a": 5, "public.b": 0},
        {"public.a": 7, "public.b": 3, "public.c": 1, "audit.log": 9},
        {"public.b": ["primary key b_pkey"]},
        {"public.a": ["primary key a_pkey"], "public.b": ["primary key b_pkey"]},
        excluded=["audit.*"],
    )
    assert found.tables["public.a"] == {"restored": 5, "source": 7}
    assert found.missing_tables == ["public.c"]
    assert found.excluded_tables == ["audit.log"]
    assert found.missing_constraints == {"public.a": ["primary key a_pkey"]}
    assert found.empty_tables == ["public.b"]
    assert (found.restored_rows, found.source_rows) == (5, 20)
    result = DatabaseVerification(database="app")
    _record(found, result)
    checks = {c.name: c for c in result.checks}
    assert checks["app: row counts"].ok and not checks["app: row counts"].critical
    assert "5 restored / 7 live" in checks["app: row counts"].detail
    assert not checks["app: tables"].ok and checks["app: tables"].critical
    assert "public.c" in checks["app: tables"].detail
    assert not checks["app: constraints"].ok and "a_pkey" in checks["app: constraints"].detail


def test_coverage_of_a_complete_copy_passes_and_bare_names_can_be_excluded() -> None:
    found = compare_coverage(
        {"public.a": 5}, {"public.a": 6, "public.tmp": 1}, {}, {}, excluded=["tmp"]
    )
    result = DatabaseVerification(database="app")
    _record(found, result)
    assert result.ok and found.excluded_tables == ["public.tmp"]


# --------------------------------------------------------------------------- newest by name


@dataclass
class Obj:
    key: str
    mtime: datetime
    size: int = 10


def test_newest_foreign_dump_is_the_newest_timestamp_in_the_name() -> None:
    assert name_timestamp("db_backup_20250102_030405.sql.gz") == datetime(
        2025, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert name_timestamp("app-2025-01-02.dump") == datetime(2025, 1, 2, tzinfo=UTC)
    assert name_timestamp("latest.sql.gz") is None
    objs = [
        Obj("db_backup_20250102_000000.sql.gz", T0),
        Obj("db_backup_20250101_000000.sql.gz", T0 + timedelta(days=9)),  # touched later
        Obj("latest.sql.gz", T0 + timedelta(days=30)),  # no timestamp: ignored
    ]
    assert pick_newest_by_name(objs).key == "db_backup_20250102_000000.sql.gz"
    undated = [Obj("a.sql.gz", T0), Obj("b.sql.gz", T0 + timedelta(1))]
    assert pick_newest_by_name(undated).key == "b.sql.gz"
    assert pick_newest_by_name([]) is None


def test_backup_age_is_informational_when_pitr_covers_the_rpo() -> None:
    result = DatabaseVerification(database="app")
    check_backup_age(result, T0, T0 + timedelta(seconds=302), 300, seen="x", critical=False)
    assert result.ok and not result.checks[0].ok and "point-in-time" in result.checks[0].detail
    check_backup_age(result, T0, T0 + timedelta(seconds=302), 300, seen="x")
    assert not result.ok


# --------------------------------------------------------------------------- recovery point


def verified(db: str, age: float, ok: bool = True, source: str = "repository") -> Any:
    r = DatabaseVerification(database=db, source=source, age_seconds=age, restored_at=T0)
    r.check("restore", ok)
    return r


def test_rpo_is_the_newest_passed_backup_of_either_kind_worst_over_databases() -> None:
    results = [
        verified("app", 3600),
        verified("app", 600, source="foreign"),  # newer, foreign, passed: wins
        verified("app", 60, ok=False, source="foreign"),  # newest but failed
        verified("crm", 900),
    ]
    assert recovery_point.newest_passed_age(results) == (900, [])
    assert recovery_point.newest_passed_age([*results, verified("x", 1, ok=False)]) == (None, ["x"])


@dataclass
class Ctx:
    details: dict[str, Any] = field(default_factory=dict)
    measurement: Measurement = field(default_factory=Measurement)

    def measure(self, *, rpo_seconds: float, rpo_basis: str) -> None:
        self.measurement.rpo_seconds, self.measurement.rpo_basis = rpo_seconds, rpo_basis


def test_rpo_with_pitr_is_the_archives_age_not_the_dumps() -> None:
    ctx = Ctx()
    point = recovery_point.RecoveryPoint(
        pitr=True, base_backup="b1", newest_wal="0000000100000000000000AA", wal_age_seconds=12.5
    )
    recovery_point.measure_recovery_point(ctx, [verified("app", 3600)], point)  # type: ignore[arg-type]
    assert ctx.measurement.rpo_seconds == 12.5
    assert "newest archived WAL" in ctx.measurement.rpo_basis
    assert ctx.details["recovery_point"]["pitr"] is True
    ctx = Ctx()
    no_pitr = recovery_point.RecoveryPoint(reason="no WAL archive configured")
    recovery_point.measure_recovery_point(ctx, [verified("app", 3600)], no_pitr)  # type: ignore[arg-type]
    assert ctx.measurement.rpo_seconds == 3600 and "passed every check" in ctx.measurement.rpo_basis
    ctx = Ctx()
    recovery_point.measure_recovery_point(ctx, [verified("app", 1, ok=False)], no_pitr)  # type: ignore[arg-type]
    assert ctx.measurement.rpo_seconds is None and "not measured" in ctx.measurement.rpo_basis


BASE_TAR = b"base tar bytes"


class FakeRepo:
    """A backup repository with one base backup, and a WAL archive of 1 MiB segments."""

    url = "file:///fake"

    def __init__(self, segments: list[int], base_bytes: bytes = BASE_TAR) -> None:
        self.segments = {segment_name(1, n, MIB): T0 + timedelta(minutes=n) for n in segments}
        self.base_bytes = base_bytes

    def list(self, prefix: str = "") -> list[Any]:
        return [Obj(k, t, MIB) for k, t in sorted(self.segments.items())]

    def open_read(self, key: str) -> io.BytesIO:
        assert key == "lab/base/b1/base.tar"
        return io.BytesIO(self.base_bytes)

    def url_for(self, key: str) -> str:
        return f"{self.url}/{key}"


BASE = BaseBackup(
    backup_id="b1",
    prefix="lab/base/b1/",
    location="file:///fake/lab/base/b1",
    target="lab",
    started_at=T0,
    ended_at=T0 + timedelta(minutes=3),
    start_lsn="0/300028",
    stop_lsn="0/300100",
    timeline=1,
    files={"base.tar": hashlib.sha256(BASE_TAR).hexdigest()},
)


def lab_config(wal_archive: bool = True) -> Any:
    backup: dict[str, Any] = {"repository": "file:///var/backups/db"}
    if wal_archive:
        backup["wal_archive"] = "file:///var/backups/wal"
    return parse_config(
        {
            "targets": {
                "lab": {
                    "postgres": {
                        "primary": {"name": "p", "host": "127.0.0.1", "port": 6000},
                        "databases": ["app"],
                    },
                    "backup": backup,
                }
            }
        }
    )


@pytest.mark.parametrize(
    ("segments", "base_bytes", "pitr", "words"),
    [
        (list(range(3, 12)), BASE_TAR, True, ""),
        ([n for n in range(3, 12) if n != 6], BASE_TAR, False, "gap"),
        (list(range(3, 12)), b"rotten", False, "SHA-256 does not match"),
        ([], BASE_TAR, False, "no segment"),
    ],
)
def test_pitr_needs_a_verified_base_backup_and_a_gapless_archive(
    monkeypatch: pytest.MonkeyPatch, segments: list[int], base_bytes: bytes, pitr: bool, words: str
) -> None:
    repo = FakeRepo(segments, base_bytes)
    monkeypatch.setattr(recovery_point, "open_target_repository", lambda config, url: repo)
    monkeypatch.setattr(
        recovery_point.pitr_base_backup, "list_base_backups", lambda r, t, f: [BASE]
    )
    now = T0 + timedelta(minutes=11, seconds=30)
    point = recovery_point.assess_recovery_point(lab_config(), "lab", now)
    assert point.pitr is pitr, point.reason
    assert words in point.reason
    if pitr:
        assert point.newest_wal == segment_name(1, 11, MIB) and point.wal_age_seconds == 30
        assert "reaches WAL" in point.summary()
    no_archive = recovery_point.assess_recovery_point(lab_config(False), "lab", now)
    assert not no_archive.pitr and "no WAL archive" in no_archive.summary()


# --------------------------------------------------------------------------- detection


def answer(ok: bool) -> Any:
    return SimpleNamespace(ok=ok)


def test_own_checks_are_validation_checksums_and_amcheck() -> None:
    assert own_check_noticed("validation: fees", answer(False)) == ("validation query fees", True)
    assert own_check_noticed("amcheck", answer(True)) == ("pg_amcheck", False)
    assert own_check_noticed("checksum counters", {"app": 2}) == ("checksum counters", True)
    assert own_check_noticed("pg_checksums", answer(True)) == ("pg_checksums", False)
    assert own_check_noticed("wal damage finder", []) is None
    assert own_check_noticed("row counts", {}) is None


class Recorder:
    def __init__(self, is_drill: bool = True) -> None:
        self.is_drill = is_drill
        self.dry_run = False
        self.checks: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def record_check(self, name: str, ok: bool, **kw: Any) -> None:
        self.checks.append({"name": name, "ok": ok, **kw})

    def note(self, text: str) -> None:
        self.notes.append(text)


def corruption_run(require: bool, is_drill: bool = True) -> Any:
    return SimpleNamespace(
        ctx=Recorder(is_drill),
        damaged=["public.swaps"],
        details={},
        target=SimpleNamespace(require_detection=require),
    )


@pytest.mark.parametrize(("require", "is_drill", "critical"), [(False, True, False),
                         (True, True, True), (True, False, False)])  # fmt: skip
def test_damage_no_own_check_noticed_is_a_finding(
    require: bool, is_drill: bool, critical: bool
) -> None:
    run = corruption_run(require, is_drill)
    noticed = {"validation query fees": False, "pg_amcheck": False}
    report_detection(run, noticed, {"wal damage finder": ["public.swaps"]})
    check = run.ctx.checks[0]
    assert not check["ok"] and check["critical"] is critical
    assert NOT_CAUGHT in check["detail"] and "public.swaps" in check["detail"]
    assert run.ctx.notes and NOT_CAUGHT in run.ctx.notes[0]  # the report and Slack
    assert run.details["detection"]["detected"] is False


def test_damage_an_own_check_noticed_is_reported_by_name() -> None:
    run = corruption_run(True)
    report_detection(run, {"validation query fees": True, "pg_amcheck": False}, {})
    check = run.ctx.checks[0]
    assert check["ok"] and check["value"] == ["validation query fees"]
    assert run.details["detection"]["noticed_by"] == ["validation query fees"]
    assert run.ctx.notes == []
