"""Unit tests of the backup flow's staging: resume, stale dumps, one run at a time.

No server: the "dump" is two files written by a fake maker, the repository a folder.
"""

from __future__ import annotations

import fcntl
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dr.errors import PreconditionError, StorageError
from flows.common import backup_staging as fb
from flows.common.backups import backup_id_time
from tasks.backups.manifest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    new_backup_id,
    read_manifest,
    verify_local_files,
)
from tasks.storage import file as storage_file


def maker(calls: list[str]):
    def make(backup_id: str, out_dir: Path) -> tuple[Manifest, float]:
        calls.append(backup_id)
        out_dir.mkdir(parents=True)
        (out_dir / "toc.dat").write_bytes(b"toc " + backup_id.encode())
        (out_dir / "1.dat.gz").write_bytes(b"data " * 1000 + backup_id.encode())
        now = datetime.now(UTC)
        manifest = build_manifest(
            out_dir,
            target="t",
            database="db",
            server_version="15",
            tool_version="pg_dump 15",
            started_at=now,
            ended_at=now,
            wal_lsn="0/1",
            row_counts={"public.x": 1},
            backup_id=backup_id,
        )
        return manifest, 0.5

    return make


class FlakyRepo(storage_file.FileRepository):
    """A file repository whose disk "goes away" after ``ok_puts`` puts of staged files."""

    def __init__(self, root: Path, ok_puts: int) -> None:
        super().__init__(root)
        self.ok_puts = ok_puts
        self.puts: list[str] = []

    def put_file(self, key, local_path, **kw):
        self.puts.append(key)
        if len(self.puts) > self.ok_puts:
            raise StorageError("injected: disk gone")
        return super().put_file(key, local_path, **kw)


def run(repo, stage: Path, calls: list[str]) -> fb.DatabaseBackupResult:
    return fb.stage_and_upload(repo, "t/db", stage, maker(calls), lambda *a: None, label="t/db")


def test_interrupted_upload_resumes_the_same_dump_without_resending(tmp_path):
    stage, root = tmp_path / "stage", tmp_path / "repo"
    calls: list[str] = []
    with pytest.raises(StorageError):
        run(FlakyRepo(root, ok_puts=1), stage, calls)
    marker = json.loads((stage / fb.PARTIAL_MARKER).read_text())
    assert calls == [marker["backup_id"]]
    folder = root / "t" / "db" / marker["backup_id"]
    first = next(folder.iterdir())
    mtime = first.stat().st_mtime_ns
    assert not (folder / MANIFEST_NAME).exists()

    result = run(storage_file.FileRepository(root), stage, calls)
    assert calls == [marker["backup_id"]]  # no second dump
    assert result.resumed and result.backup_id == marker["backup_id"]
    assert (result.uploaded, result.unchanged) == (1, 1)
    assert first.stat().st_mtime_ns == mtime
    manifest = read_manifest(folder / MANIFEST_NAME)
    assert verify_local_files(folder, manifest) == []
    assert sorted(p.name for p in stage.iterdir()) == [fb.LOCK_FILE]


def test_a_stale_or_altered_staged_dump_is_replaced_by_a_fresh_one(tmp_path):
    stage, root = tmp_path / "stage", tmp_path / "repo"
    calls: list[str] = []
    with pytest.raises(StorageError):
        run(FlakyRepo(root, ok_puts=0), stage, calls)
    marker_path = stage / fb.PARTIAL_MARKER
    marker = json.loads(marker_path.read_text())
    marker["created_at"] = (datetime.now(UTC) - timedelta(hours=7)).isoformat()
    marker_path.write_text(json.dumps(marker))
    result = run(storage_file.FileRepository(root), stage, calls)
    assert not result.resumed and len(calls) == 2 and result.backup_id == calls[1]
    assert not (stage / calls[0]).exists()

    # A staged file changed on disk: not trusted, a fresh dump is taken.
    with pytest.raises(StorageError):
        run(FlakyRepo(root, ok_puts=0), stage, calls)
    staged = stage / calls[2] / "1.dat.gz"
    staged.write_bytes(b"tampered")
    result = run(storage_file.FileRepository(root), stage, calls)
    assert not result.resumed and result.backup_id == calls[3]


def test_two_runs_never_share_a_staging_folder(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    with open(stage / fb.LOCK_FILE, "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(PreconditionError, match="another backup of t/db is running"):
            run(storage_file.FileRepository(tmp_path / "repo"), stage, [])


def test_backup_ids_encode_their_time_for_listing():
    backup_id = new_backup_id(datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert backup_id_time(backup_id) == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert backup_id_time("not-an-id") is None


def test_progress_board_travels_to_another_process() -> None:
    """Dask ships task arguments with cloudpickle: a branch's progress callback must survive."""
    import cloudpickle

    from flows.common.progress import ProgressBoard

    board = ProgressBoard(None, "verify", ["app", "shop"], bars=False)
    board.update("app", 0.5, "restoring")
    callback = cloudpickle.loads(cloudpickle.dumps(board.callback("shop")))
    callback(1.0, "done")  # reported in the copy; the original is untouched
    assert board.overall == 0.25
