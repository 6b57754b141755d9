"""The flows' steps for caches, files and links, with fake tasks (no servers, no Prefect)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dr.config import DRConfig, parse_config
from dr.errors import VerificationError
from flows.backup_verification import files as bv_files
from flows.backup_verification import links as bv_links
from flows.backup_verification.models import DatabaseVerification, Injection
from flows.common import state as common_state
from flows.data_corruption import state as dc_state
from lab.drconfig import lab_config
from lab.state import new_state
from tasks.files.links import compare_restored


class _Future:
    def __init__(self, fn: Callable[[], Any]) -> None:
        try:
            self._value, self._error = fn(), None
        except Exception as exc:
            self._value, self._error = None, exc

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Task:
    """A task wrapper stand-in: records calls, runs ``fn`` at once."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, []

    def with_options(self, **_: Any) -> _Task:
        return self

    def submit(self, *args: Any, **kwargs: Any) -> _Future:
        return _Future(lambda: self(*args, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


class _Ctx:
    def __init__(self, config: DRConfig, target: str = "lab", drill: bool = True) -> None:
        self.config, self.target_name = config, target
        self.target = config.target(target)
        self.is_drill, self.dry_run = drill, False
        self.checks: list[tuple[str, bool, str]] = []
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.phases: list[str] = []
        self.changes: list[tuple[Any, Any]] = []

    def plan(self, action: str, obj: str) -> bool:
        return True

    @contextlib.contextmanager
    def phase(self, name: str, *, detail: str = "") -> Iterator[None]:
        self.phases.append(name)
        yield

    def record_check(self, name: str, ok: bool, *, detail: str = "", **_: Any) -> None:
        self.checks.append((name, ok, detail))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def record_change(self, change: Any, undo: Any = None) -> None:
        self.changes.append((change, undo))


class _Sentence(SimpleNamespace):
    def sentence(self) -> str:
        return f"{self.name}: fine"

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return {"name": self.name}


@pytest.fixture
def config(tmp_path: Path) -> DRConfig:
    state = new_state(tmp_path)
    state.engine, state.podman_base_url = "podman", "unix:///nowhere"
    state.ports.update({"redis": 16391, "api": 18091})
    return parse_config(lab_config(state, prefect_on=False))


def test_caches_recovered_in_branches_and_reported_as_checks(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _Task(lambda cache, **kw: _Sentence(name=cache.name, passed=True))
    monkeypatch.setattr(common_state, "recover_cache_task", task)
    ctx = _Ctx(config)
    out = common_state.recover_caches(ctx, lambda db: f"dbname={db}", "pw")  # type: ignore[arg-type]
    assert out == [{"name": "app-cache"}] and ctx.details["caches"] == out
    assert ctx.checks == [("cache app-cache recovered", True, "app-cache: fine")]
    (_, kwargs), = task.calls  # fmt: skip
    assert kwargs == {"conninfo": "dbname=app", "password": "pw"}


def test_a_failed_cache_branch_is_a_failed_check(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(cache: Any, **kw: Any) -> Any:
        raise RuntimeError("redis down")

    monkeypatch.setattr(common_state, "recover_cache_task", _Task(boom))
    ctx = _Ctx(config)
    common_state.recover_caches(ctx, lambda db: db, None)  # type: ignore[arg-type]
    assert ctx.checks == [("cache app-cache recovered", False, "RuntimeError: redis down")]


def test_links_checked_on_their_database(config: DRConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _Task(lambda link, source, **kw: _Sentence(name=link.name, passed=False))
    monkeypatch.setattr(common_state, "check_links_task", task)
    ctx = _Ctx(config, target="bun-trading")
    common_state.check_target_links(ctx, lambda db: f"db={db}", None, when="after x")  # type: ignore[arg-type]
    assert ctx.checks == [
        ("link uploads-objects consistent after x", False, "uploads-objects: fine")
    ]
    (args, kwargs), = task.calls  # fmt: skip
    assert args[1].name == "uploads" and kwargs["conninfo"] == "db=app"


def _corruption_run(ctx: _Ctx, tmp_path: Path) -> Any:
    return SimpleNamespace(
        ctx=ctx, target=ctx.target, run_id="20260101T000000Z", details=ctx.details,
        damage_at=datetime(2026, 1, 1, tzinfo=UTC), suspected_at=None, work=tmp_path,
        password="pw", conninfo=lambda db=None: f"db={db}",
    )  # fmt: skip


def test_corruption_drill_damages_then_recovers_files_caches_and_links(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache: dict[str, str] = {}
    monkeypatch.setattr(
        dc_state, "plant_value_task", _Task(lambda c, k, v, **kw: cache.update({k: v}))
    )
    monkeypatch.setattr(dc_state, "read_value_task", _Task(lambda c, k: cache.get(k)))
    monkeypatch.setattr(dc_state, "damage_objects_task", _Task(lambda f, **kw: ["a.bin"]))
    restore = _Task(lambda src, before, **kw: _Sentence(name=src.name, restored=["a.bin"]))
    monkeypatch.setattr(dc_state, "restore_prefix_to_time_task", restore)
    monkeypatch.setattr(dc_state, "time", SimpleNamespace(sleep=lambda s: None))

    def recover(c: Any, **kw: Any) -> Any:
        cache.clear()  # the flush
        return _Sentence(name=c.name, passed=True)

    monkeypatch.setattr(common_state, "recover_cache_task", _Task(recover))
    monkeypatch.setattr(
        common_state,
        "check_links_task",
        _Task(lambda link, s, **kw: _Sentence(name=link.name, passed=True)),
    )
    ctx = _Ctx(config)
    run = _corruption_run(ctx, tmp_path)
    dc_state.damage_state(run)
    assert list(cache) == ["dr-drill-stale-20260101t000000z"]
    assert ctx.details["drill_state"]["damaged_objects"] == {"uploads": ["a.bin"]}
    dc_state.recover_state(run)
    (args, kwargs), = restore.calls  # fmt: skip
    assert args[1] == run.damage_at
    assert kwargs["evidence"] == (
        "s3://dr-lab-uploads/dr-evidence/lab/data-corruption/20260101T000000Z/uploads/"
    )
    names = [(n, ok) for n, ok, _ in ctx.checks]
    assert names == [
        ("cache app-cache recovered", True),
        ("files uploads restored", True),
        ("cache app-cache: stale value gone", True),
        ("link uploads-objects consistent after recovery", True),
    ]
    assert ctx.phases == ["damage caches and files", "caches, files and links"]
    # The overwrite is a recorded change: a drill that ends before its recovery undoes it.
    [(change, undo)] = ctx.changes
    assert change.action == "overwrite-objects" and "a.bin" in change.object
    undo()
    assert restore.calls[-1][0][0].name == "uploads"


def test_bad_object_twin_works_on_a_copy_and_removes_it(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = _Task(lambda src, repo, **kw: None)
    inject = _Task(lambda src, repo, **kw: "first.bin")
    verify = _Task(
        lambda src, repo, scratch, **kw: SimpleNamespace(
            passed=kw["backup_id"] is None,
            sentence=lambda: "checked",
            model_dump=lambda mode: {"backup_id": kw["backup_id"]},
        )
    )
    deleted: list[str] = []
    monkeypatch.setattr(bv_files, "backup_files_task", backup)
    monkeypatch.setattr(bv_files, "inject_bad_object_task", inject)
    monkeypatch.setattr(bv_files, "verify_files_backup_task", verify)
    monkeypatch.setattr(bv_files, "open_target_repository", lambda cfg, url: url)
    monkeypatch.setattr(
        bv_files.storage_operations,
        "delete_prefix_task",
        lambda repo, prefix: deleted.append(prefix),
    )
    monkeypatch.setattr(bv_files, "check_target_links", lambda *a, **kw: [])
    ctx = _Ctx(config)
    branches = bv_files.FilesBranches(ctx, "abcd1234", Injection.bad_object)  # type: ignore[arg-type]
    branches.submit()
    out = branches.collect(mark=True)
    copy_id = bv_files.drill_backup_id("abcd1234")
    assert backup.calls[0][1]["backup_id"] == copy_id
    assert inject.calls[0][1]["backup_id"] == copy_id
    assert out == [{"backup_id": copy_id}]
    assert ctx.checks == [
        ("files uploads backup restores", False, "checked"),
        (
            "link uploads-objects consistent in the backups",
            False,
            "not checked: no backup of ours of database app was restored",
        ),
    ]
    assert deleted == [f"files/uploads/{copy_id}/"] and not branches.scratch.exists()


def _restored_app(rows: list[tuple[str, str | None]]) -> DatabaseVerification:
    db = DatabaseVerification(database="app")
    db.link_rows["uploads-objects"] = rows
    return db


def _linked_folder(tmp_path: Path) -> tuple[Path, list[tuple[str, str | None]]]:
    import hashlib

    folder = tmp_path / "uploads"
    rows: list[tuple[str, str | None]] = []
    for name in ("b.bin", "a.bin"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
        rows.append((f"uploads/{name}", hashlib.sha256(name.encode()).hexdigest()))
    (folder / "newer.bin").write_bytes(b"uploaded after the dump")
    return folder, rows


def test_links_in_the_backups_compare_restored_rows_with_restored_objects(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bv_links, "compare_restored_task", _Task(compare_restored))
    folder, rows = _linked_folder(tmp_path)
    ctx = _Ctx(config)
    ok = bv_links.check_links_in_backups(ctx, [_restored_app(rows)], {"uploads": folder})  # type: ignore[arg-type]
    assert ok is True
    ((name, passed, detail),) = ctx.checks
    assert (name, passed) == ("link uploads-objects consistent in the backups", True)
    assert "1 object(s) without row" in detail
    assert ctx.details["links_in_backups"][0]["orphan_objects"] == ["newer.bin"]


def test_missing_object_twin_leaves_one_out_of_the_restored_copy(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bv_links, "compare_restored_task", _Task(compare_restored))
    folder, rows = _linked_folder(tmp_path)
    ctx = _Ctx(config)
    ok = bv_links.check_links_in_backups(
        ctx,  # type: ignore[arg-type]
        [_restored_app(rows)],
        {"uploads": folder},
        leave_out=True,
    )
    assert ok is False and not (folder / "a.bin").exists() and (folder / "b.bin").exists()
    ((name, passed, detail),) = ctx.checks
    assert (name, passed) == ("link uploads-objects consistent in the backups", False)
    assert "1 row(s) without object" in detail
    assert ctx.details["injection"]["key"] == "a.bin"


def test_missing_object_twin_with_nothing_to_leave_out_is_red(
    config: DRConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bv_links, "compare_restored_task", _Task(compare_restored))
    ctx = _Ctx(config)
    (tmp_path / "uploads").mkdir()
    ok = bv_links.check_links_in_backups(
        ctx,  # type: ignore[arg-type]
        [_restored_app([])],
        {"uploads": tmp_path / "uploads"},
        leave_out=True,
    )
    assert ok is False
    assert ctx.checks[-1][:2] == ("inject missing-object", False)


def test_links_in_the_backups_unreadable_or_unrestored(config: DRConfig, tmp_path: Path) -> None:
    """Rows not readable from the dump fail; a branch that did not restore is shown, and
    is no pass (its own check already fails the drill)."""
    ctx = _Ctx(config)
    broken = DatabaseVerification(database="app")
    broken.link_errors["uploads-objects"] = "relation public.uploads does not exist"
    assert bv_links.check_links_in_backups(ctx, [broken], {"uploads": tmp_path}) is False  # type: ignore[arg-type]
    assert ctx.checks[-1][1] is False and "does not exist" in ctx.checks[-1][2]
    ctx = _Ctx(config)
    assert bv_links.check_links_in_backups(ctx, [_restored_app([])], {}) is True  # type: ignore[arg-type]
    assert ctx.checks == [
        (
            "link uploads-objects consistent in the backups",
            False,
            "not checked: files uploads backup did not restore",
        )
    ]


def test_missing_object_twin_refused_without_links(config: DRConfig) -> None:
    target = config.target("lab").model_copy(update={"links": []})
    with pytest.raises(VerificationError, match="needs a links: entry"):
        bv_links.require_links(target)


def test_files_go_back_to_the_recovery_time_when_no_damage_time_is_known(
    config: DRConfig, tmp_path: Path
) -> None:
    run = _corruption_run(_Ctx(config, drill=False), tmp_path)
    run.damage_at = None
    assert dc_state._files_point(run) is None
    run.details["recovery_plan"] = {"target": {"time": "2026-01-02T03:04:05+00:00"}}
    assert dc_state._files_point(run) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
