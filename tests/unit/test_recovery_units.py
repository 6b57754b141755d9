"""Unit tests of the recovery machinery's pure parts: positions, names, plans, parsers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from dr.errors import ConfigError, PreconditionError, VerificationError
from flows.data_corruption.options import CorruptionOptions, Variant
from tasks.pitr.base_backup import BaseBackup, choose_base_backup
from tasks.pitr.checksums import parse_checksums_output
from tasks.pitr.damage_finder import _commit_time, parse_waldump_line
from tasks.pitr.lsn import (
    _timeline_for_segment,
    format_lsn,
    history_file_name,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_number,
)
from tasks.pitr.recovery import render_recovery_settings
from tasks.pitr.target import RecoveryTarget
from tasks.pitr.wal import plan_wal, restore_command_for

MIB = 1024 * 1024
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- positions, names


def test_lsn_round_trip_and_segment_names() -> None:
    assert parse_lsn("0/3000148") == 0x3000148
    assert parse_lsn("1/0") == 1 << 32
    assert format_lsn(0x1_0300_0148) == "1/3000148"
    # 16 MiB segments: 256 per "log id".
    assert segment_name(1, segment_number("0/3000148", 16 * MIB), 16 * MIB) == (
        "000000010000000000000003"
    )
    assert segment_name(2, segment_number("1/3000148", 16 * MIB), 16 * MIB) == (
        "000000020000000100000003"
    )
    # 1 MiB segments (the lab's): 4096 per log id.
    assert segment_name(1, segment_number("0/A03BE0", MIB), MIB) == ("00000001000000000000000A")
    assert parse_segment_name("000000030000000100000003", 16 * MIB) == (3, 259)
    assert history_file_name(10) == "0000000A.history"
    with pytest.raises(ConfigError):
        parse_lsn("3000148")
    with pytest.raises(ConfigError):
        parse_segment_name("00000001.history", MIB)


def test_history_parsing_and_which_timeline_a_segment_is_read_from() -> None:
    text = "1\t0/5000A0\tno recovery target specified\n\n2\t0/A000B8\tbefore 2026-01-01\n"
    spans = parse_history(text, 3)
    assert [(s.timeline, s.begin_lsn, s.end_lsn) for s in spans] == [
        (1, 0, 0x5000A0),
        (2, 0x5000A0, 0xA000B8),
        (3, 0xA000B8, None),
    ]
    pick = _timeline_for_segment
    assert pick(spans, 4, MIB) == 1
    assert pick(spans, 5, MIB) == 2  # the switch segment is read from the new timeline
    assert pick(spans, 9, MIB) == 2
    assert pick(spans, 10, MIB) == 3
    with pytest.raises(VerificationError):
        parse_history("2\t0/10\tx\n1\t0/20\ty\n", 3)
    with pytest.raises(VerificationError):
        parse_history("garbage\n", 2)


# --------------------------------------------------------------------------- choosing


def backup(bid: str, ended: datetime, start: str, stop: str, tli: int = 1) -> BaseBackup:
    return BaseBackup(
        backup_id=bid,
        prefix=f"lab/base/{bid}/",
        location=f"file:///repo/lab/base/{bid}",
        target="lab",
        started_at=ended - timedelta(seconds=5),
        ended_at=ended,
        start_lsn=start,
        stop_lsn=stop,
        timeline=tli,
        files={"base.tar": "0" * 64},
    )


BACKUPS = [
    backup("b2", T0 + timedelta(hours=1), "0/9000028", "0/9000100"),
    backup("b1", T0, "0/3000028", "0/3000100"),
]


def test_the_newest_backup_before_the_point_is_chosen() -> None:
    now = T0 + timedelta(hours=2)
    assert (
        choose_base_backup(
            BACKUPS, RecoveryTarget(time=T0 + timedelta(minutes=30)), now=now
        ).backup_id
        == "b1"
    )
    assert (
        choose_base_backup(
            BACKUPS, RecoveryTarget(time=T0 + timedelta(minutes=90)), now=now
        ).backup_id
        == "b2"
    )
    assert choose_base_backup(BACKUPS, RecoveryTarget(lsn="0/5000000")).backup_id == "b1"
    assert choose_base_backup(BACKUPS, RecoveryTarget(lsn="0/9000100")).backup_id == "b2"


@pytest.mark.parametrize(
    ("target", "kwargs", "words"),
    [
        (RecoveryTarget(time=T0 + timedelta(hours=3)), {}, "in the future"),
        (RecoveryTarget(time=T0 - timedelta(minutes=1)), {}, "before the oldest base backup"),
        (
            RecoveryTarget(time=T0 + timedelta(minutes=50)),
            {"damage_at": T0 + timedelta(minutes=40)},
            "after the damage began",
        ),
        (RecoveryTarget(lsn="0/2000000"), {}, "before the oldest base backup"),
        (RecoveryTarget(lsn="0/A000000"), {"damage_lsn": "0/9800000"}, "after the damage"),
        (RecoveryTarget(lsn="0/F000000"), {"current_lsn": "0/A000000"}, "in the future"),
    ],
)
def test_unsafe_points_are_refused(target: RecoveryTarget, kwargs: Any, words: str) -> None:
    with pytest.raises(PreconditionError, match=words):
        choose_base_backup(BACKUPS, target, now=T0 + timedelta(hours=2), **kwargs)


def test_no_backup_at_all_is_refused() -> None:
    with pytest.raises(PreconditionError, match="no base backup in the repository"):
        choose_base_backup([], RecoveryTarget(lsn="0/1"))


def test_recovery_target_needs_exactly_one_point_with_a_time_zone() -> None:
    with pytest.raises(ConfigError):
        RecoveryTarget()
    with pytest.raises(ConfigError):
        RecoveryTarget(time=T0, lsn="0/1")
    with pytest.raises(ConfigError, match="time zone"):
        RecoveryTarget(time=datetime(2026, 1, 1))
    assert RecoveryTarget(lsn="0/1").describe() == "just before LSN 0/1"


# --------------------------------------------------------------------------- WAL plans


@dataclass
class Obj:
    key: str
    size: int
    mtime: datetime


class FakeArchive:
    """An in-memory archive: segment names with archive times, plus history files."""

    url = "file:///archive"

    def __init__(self, segments: dict[str, datetime], histories: dict[str, str] | None = None):
        self.segments = segments
        self.histories = histories or {}

    def list(self, prefix: str = "") -> list[Obj]:
        out = [Obj(n, MIB, t) for n, t in self.segments.items()]
        out += [Obj(n, 60, T0) for n in self.histories]
        out.append(Obj("000000010000000000000003.00000028.backup", 300, T0))
        return sorted(out, key=lambda o: o.key)

    def open_read(self, key: str) -> io.BytesIO:
        return io.BytesIO(self.histories[key].encode())

    def head(self, key: str) -> Any:
        raise NotImplementedError

    def get_to_file(self, key: str, local_path: Any, *, expected_sha256: str | None = None) -> str:
        raise NotImplementedError

    def url_for(self, key: str) -> str:
        return f"{self.url}/{key}"


def seg(tli: int, n: int) -> str:
    return segment_name(tli, n, MIB)


B = backup("b", T0, "0/300028", "0/400100")


def test_plan_lists_every_segment_from_the_backup_to_the_target() -> None:
    archive = FakeArchive({seg(1, n): T0 + timedelta(minutes=n) for n in range(3, 12)})
    plan = plan_wal(archive, B, RecoveryTarget(lsn="0/800010"))
    assert plan.segment_size == MIB
    assert plan.in_backup == [seg(1, 3)]
    assert plan.needed == [seg(1, n) for n in range(4, 9)]
    assert plan.staged_extra == [seg(1, n) for n in range(9, 12)]
    assert plan.later_gap is None
    # A time target ends at the first segment archived at or after it.
    plan = plan_wal(archive, B, RecoveryTarget(time=T0 + timedelta(minutes=6, seconds=1)))
    assert plan.end_segment == seg(1, 7)


def test_a_gap_is_named_and_a_point_beyond_the_archive_is_refused() -> None:
    segments = {seg(1, n): T0 + timedelta(minutes=n) for n in range(3, 12) if n != 6}
    archive = FakeArchive(segments)
    with pytest.raises(PreconditionError, match=f"gap: segment {seg(1, 6)} is missing"):
        plan_wal(archive, B, RecoveryTarget(lsn="0/800010"))
    complete = FakeArchive({seg(1, n): T0 for n in range(3, 12)})
    with pytest.raises(PreconditionError, match=f"segment {seg(1, 12)} is not in"):
        plan_wal(complete, B, RecoveryTarget(lsn="0/C00010"))
    # A gap after the end does not stop an LSN target; it is reported.
    plan = plan_wal(archive, B, RecoveryTarget(lsn="0/500010"))
    assert plan.later_gap == seg(1, 6)
    with pytest.raises(PreconditionError, match="before the end of base backup"):
        plan_wal(archive, B, RecoveryTarget(lsn="0/300100"))


def test_plan_follows_timeline_switches_through_the_history() -> None:
    # Timeline 2 began at 0/600000 (segment 6): from there, files of timeline 2 are read.
    segments = {seg(1, n): T0 for n in range(3, 8)}  # timeline 1 went on a little (ignored)
    segments |= {seg(2, n): T0 for n in range(6, 10)}
    archive = FakeArchive(segments, {"00000002.history": "1\t0/600000\tfailover\n"})
    plan = plan_wal(archive, B, RecoveryTarget(lsn="0/900010"))
    assert plan.target_timeline == 2
    assert plan.timelines == [1, 2]
    assert plan.history_files == ["00000002.history"]
    assert plan.needed == [seg(1, 4), seg(1, 5), seg(2, 6), seg(2, 7), seg(2, 8), seg(2, 9)]
    # A backup taken on timeline 1 after it was left belongs to a dead branch.
    dead = backup("dead", T0, "0/700028", "0/700100")
    with pytest.raises(PreconditionError, match="does not lead to timeline 2"):
        plan_wal(archive, dead, RecoveryTarget(lsn="0/900010"))
    # The history of the newest timeline missing: the chain cannot be followed.
    orphan = FakeArchive({seg(3, n): T0 for n in range(3, 10)} | segments)
    orphan.histories = {"00000003.history": "x"}
    orphan.list = lambda prefix="": (
        [  # type: ignore[method-assign]
            Obj(n, MIB, T0) for n in orphan.segments
        ]
        + [Obj("00000003.history", 10, T0)]
    )
    with pytest.raises(VerificationError):
        plan_wal(orphan, B, RecoveryTarget(lsn="0/900010"))


def test_empty_archive_is_refused() -> None:
    with pytest.raises(PreconditionError, match="holds no segment"):
        plan_wal(FakeArchive({}), B, RecoveryTarget(lsn="0/500000"))


# --------------------------------------------------------------------------- settings


def test_recovery_settings_promote_just_before_the_target_and_archive_nothing() -> None:
    settings = render_recovery_settings(
        RecoveryTarget(time=T0),
        restore_command=restore_command_for("file:///lab/it's/wal"),
        port=6543,
        socket_dir="/tmp/s",
        extra_settings={"listen_addresses": "'*'"},
    )
    assert settings["recovery_target_time"] == "'2026-01-01 12:00:00+00:00'"
    assert settings["recovery_target_inclusive"] == "off"
    assert settings["recovery_target_action"] == "'promote'"
    assert settings["recovery_target_timeline"] == "'latest'"
    assert settings["archive_mode"] == "off"
    assert settings["port"] == "6543"
    assert settings["listen_addresses"] == "'*'"
    assert settings["restore_command"] == "'cp ''/lab/it''''s/wal/%f'' ''%p'''"
    lsn = render_recovery_settings(
        RecoveryTarget(lsn="0/5000", timeline=3), restore_command="true", port=1, socket_dir="/s"
    )
    assert lsn["recovery_target_lsn"] == "'0/5000'" and "recovery_target_time" not in lsn
    assert lsn["recovery_target_timeline"] == "'3'"
    with pytest.raises(ConfigError):
        restore_command_for("s3://bucket/wal")
    assert restore_command_for("s3://bucket/wal", "/stage") == "cp '/stage/%f' '%p'"


# --------------------------------------------------------------------------- parsers


def test_pg_checksums_output_is_parsed() -> None:
    stdout = (
        "Checksum operation completed\nFiles scanned:   950\nBlocks scanned:  2859\n"
        "Bad checksums:  2\nData checksum version: 1\n"
    )
    stderr = (
        'pg_checksums: error: checksum verification failed in file "/d/base/5/16389", block 2:'
        " calculated checksum 4BEE but block contains C669\n"
        'pg_checksums: error: checksum verification failed in file "/d/base/5/16389.1", block 7:'
        " calculated checksum 1 but block contains 2\n"
    )
    report = parse_checksums_output("/d", stdout, stderr)
    assert not report.ok
    assert (report.files_scanned, report.blocks_scanned, report.bad_checksums) == (950, 2859, 2)
    assert [(b.relpath, b.block) for b in report.bad_blocks] == [
        ("base/5/16389", 2),
        ("base/5/16389.1", 7),
    ]
    assert report.locators() == ["base/5/16389"]
    assert parse_checksums_output("/d", stdout.replace("2\nData", "0\nData"), "").ok


def test_waldump_lines_are_parsed() -> None:
    update = (
        "rmgr: Heap        len (rec/tot):     82/    82, tx:        726, lsn: 0/0091F808, prev "
        "0/0091F7D0, desc: UPDATE off 190 xmax 726 flags 0x00 ; new off 156 xmax 0, blkref #0: "
        "rel 1663/5/16389 blk 17, blkref #1: rel 1663/5/16389 blk 8"
    )
    rec = parse_waldump_line(update)
    assert rec is not None
    assert (rec["rmgr"], rec["xid"], rec["lsn"], rec["verb"], rec["locator"]) == (
        "Heap",
        726,
        "0/0091F808",
        "UPDATE",
        "base/5/16389",
    )
    commit = (
        "rmgr: Transaction len (rec/tot):    206/   206, tx:        725, lsn: 0/008B41B8, prev "
        "0/008B4178, desc: COMMIT 2026-11-22 00:11:00.584828 UTC; rels: base/5/16387"
    )
    rec = parse_waldump_line(commit)
    assert rec is not None and rec["verb"] == "COMMIT"
    assert _commit_time(rec["rest"]) == datetime(2026, 11, 22, 0, 11, 0, 584828, tzinfo=UTC)
    assert _commit_time(" 2026-11-22 00:11:00 CET") is None  # only UTC is trusted
    assert parse_waldump_line("first record is after 0/800028, at 0/801718") is None


# --------------------------------------------------------------------------- options


def test_scenario_options() -> None:
    opts = CorruptionOptions.model_validate({"inject": "mass-delete", "relations": ["shop.x"]})
    assert opts.variant is Variant.mass_delete
    assert CorruptionOptions.model_validate({"variant": "damaged-page"}).variant is (
        Variant.damaged_page
    )
    with pytest.raises(ValidationError, match=r"schema\.table"):
        CorruptionOptions(relations=["orders"])
    with pytest.raises(ValidationError):
        CorruptionOptions.model_validate({"variant": "bit-flip"})
    with pytest.raises(ValidationError):
        CorruptionOptions.model_validate({"recovery_lsn": "yesterday"})
    with pytest.raises(ValidationError):
        CorruptionOptions.model_validate({"unknown": 1})
    # What the alert receiver sends (deployments/alerts.py) is accepted.
    alert = CorruptionOptions.model_validate(
        {
            "severity": "SEV1",
            "auto_approve": True,
            "alert_fingerprint": "INC-1",
            "alert_labels": {"alertname": "DataCorruption"},
        }
    )
    assert alert.auto_approve and alert.severity == "SEV1"


def test_a_dry_run_plan_may_end_before_the_archive_does() -> None:
    archive = FakeArchive({seg(1, n): T0 for n in range(3, 8)})
    plan = plan_wal(archive, B, RecoveryTarget(lsn="0/A00010"), allow_unarchived_end=True)
    assert plan.unarchived_from == seg(1, 8)
    assert plan.needed == [seg(1, n) for n in range(4, 8)]
    gap = FakeArchive({seg(1, n): T0 for n in range(3, 12) if n != 5})
    with pytest.raises(PreconditionError, match="gap"):
        plan_wal(gap, B, RecoveryTarget(lsn="0/A00010"), allow_unarchived_end=True)
