"""Breach response and files without I/O: what changed since a point, which entries are
restored, the options refused, and the files' RPO reported as an upper bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dr.config import Mode, parse_config
from flows.breach_response.assess import _request_problems
from flows.breach_response.options import BreachOptions, files_to_restore
from tasks.files.changes import classify
from tasks.report.tables import rpo_bound_prefix

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _v(version: str, seconds: float, *, latest: bool = False, etag: str = "e") -> dict[str, Any]:
    return {
        "VersionId": version,
        "LastModified": T + timedelta(seconds=seconds),
        "IsLatest": latest,
        "ETag": f'"{etag}{version}"',
        "Size": 10,
    }


def _marker(version: str, seconds: float, *, latest: bool = False) -> dict[str, Any]:
    return {**_v(version, seconds, latest=latest), "marker": True}


def test_changes_since_a_point_by_key() -> None:
    assert classify("k", [_v("1", -5, latest=True)], T) is None
    over = classify("k", [_v("1", -5), _v("2", 3, latest=True)], T)
    assert over is not None and (over.change, over.version_id, over.before_version_id) == (
        "overwritten", "2", "1",
    )  # fmt: skip
    gone = classify("k", [_v("1", -5), _marker("2", 3, latest=True)], T)
    assert gone is not None and (gone.change, gone.version_id) == ("deleted", None)
    new = classify("k", [_v("1", 3, latest=True)], T)
    assert new is not None and (new.change, new.before_version_id) == ("created", None)
    assert classify("k", [_v("1", 3), _marker("2", 4, latest=True)], T) is None
    back = classify("k", [_v("1", -5), _marker("2", -3), _v("3", 2, latest=True)], T)
    assert back is not None and back.change == "created"
    # A restore copies the old version: a new version id with the same content is no change.
    copied = {**_v("9", 6, latest=True), "ETag": '"e1"'}
    assert classify("k", [_v("1", -5), _v("2", 3), copied], T) is None


def _target(files: bool = True, wal: bool = True) -> Any:
    data: dict[str, Any] = {
        "postgres": {
            "primary": {"name": "p", "host": "127.0.0.1", "port": 6000},
            "databases": ["app"],
        },
        "backup": {"repository": "file:///tmp/repo"},
        "evidence_repository": "file:///tmp/evidence",
    }
    if wal:
        data["backup"]["wal_archive"] = "file:///tmp/wal"
    if files:
        data["files"] = [
            {"name": "uploads", "s3": "s3://uploads-bucket/uploads/"},
            {"name": "conf", "directory": "/etc/app"},
        ]
    return parse_config({"targets": {"t": data}}).target("t")


def test_files_restored_by_default_when_a_point_is_known() -> None:
    target = _target()
    names = lambda opts, mode: [f.name for f in files_to_restore(opts, target, mode)]  # noqa: E731
    assert names(BreachOptions(), Mode.drill) == ["uploads"]  # S3 only: versions
    assert names(BreachOptions(), Mode.incident) == []  # no restore_to: no guess
    assert names(BreachOptions(restore_to=T), Mode.incident) == ["uploads"]
    assert names(BreachOptions(restore_files=False), Mode.drill) == []
    assert files_to_restore(BreachOptions(), _target(files=False), Mode.drill) == []


@pytest.mark.parametrize(
    ("options", "mode", "files", "where", "words"),
    [
        ({"restore_files": True}, "incident", True, "options.restore_to", "restore_files needs"),
        ({"restore_files": True}, "drill", False, "targets.t.files", "no S3 files"),
        ({"inject": "object-survives", "restore_files": False}, "drill", True,
         "options.inject", "object-survives needs S3 files"),
        ({"inject": "object-survives"}, "drill", False, "options.inject", "object-survives"),
        ({"restore_to": T.isoformat()}, "incident", False, "options.restore_tables",
         "or S3 files to restore"),
        ({"restore_to": "2026-03-01T12:00:00"}, "incident", True, "options.restore_to",
         "time zone"),
    ],
)  # fmt: skip
def test_files_options_refused_before_anything_changes(
    options: dict[str, Any], mode: str, files: bool, where: str, words: str
) -> None:
    problems = _request_problems("t", _target(files), Mode(mode), BreachOptions(**options))
    assert any(w == where and words in why for w, why in problems), problems


def test_files_options_that_are_fine() -> None:
    for options in ({"restore_to": T.isoformat()}, {"inject": "object-survives"}, {}):
        assert _request_problems("t", _target(), Mode.drill, BreachOptions(**options)) == []


class _Run:
    def __init__(self, *, files: bool, tables: bool) -> None:
        self.pgc = type("P", (), {"primary": object(), "heartbeat_db": "app"})()
        t = datetime(2026, 3, 1, tzinfo=UTC)
        self.info: dict[str, Any] = {
            "writes_before": {"app": {"max_seq": 10, "max_ts": t.isoformat(), "rows": 10}}
        }
        self.restore_to = t
        self.contained_at, self.detected_at = t + timedelta(seconds=4), t + timedelta(seconds=3)
        self.restored = {"tables": {}} if tables else None
        self.files_restored = [{"source": "uploads"}] if files else []
        self.opts = BreachOptions(restore_tables=["shop.t"] if tables else [])

    def ci(self, node: Any, dbname: str | None = None) -> str:
        return "host=x"


def test_files_rpo_is_the_window_as_an_upper_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.breach_response import clock

    monkeypatch.setattr(
        clock.postgres_heartbeat, "count_heartbeat_rows_through_task", lambda c, w, last: 10
    )
    files = clock.rpo(_Run(files=True, tables=False))  # type: ignore[arg-type]
    assert files["rpo_seconds"] == 4.0 and files["rpo_bound"] == "upper"
    assert files["rpo_basis"].startswith("upper bound: restore_to -> contained")
    assert "files uploads" in files["rpo_basis"]
    tables = clock.rpo(_Run(files=False, tables=True))  # type: ignore[arg-type]
    assert tables["rpo_seconds"] == 4.0 and "rpo_bound" not in tables
    both = clock.rpo(_Run(files=True, tables=True))  # type: ignore[arg-type]
    assert "shop.t, files uploads" in both["rpo_basis"] and both["rpo_bound"] == "upper"


def test_rpo_bounds_read_as_at_least_and_at_most() -> None:
    assert rpo_bound_prefix("lower") == "at least "
    assert rpo_bound_prefix("upper") == "at most "
    assert rpo_bound_prefix("exact") == rpo_bound_prefix(None) == ""


def test_object_survives_is_a_red_twin() -> None:
    assert BreachOptions(inject="object-survives").inject == "object-survives"
