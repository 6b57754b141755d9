"""The cache and files packages without I/O: error rules, resume rule, link comparison."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest
import redis.exceptions as rex

from dr.config_state import FileLink, FileSource
from dr.errors import ConfigError
from tasks.cache.client import cache_error, describe_url
from tasks.cache.models import HitRate
from tasks.cache.warm import write_rows
from tasks.files.backup import _unchanged
from tasks.files.client import split_s3_url
from tasks.files.links import compare, compare_restored, first_linked_object, relative_key
from tasks.files.manifest import FileEntry, object_key
from tasks.files.sources import Source, SourceObject, sha256_of

URL = "redis://user:secret@cache:6390/1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (rex.ConnectionError("Connection refused"), True),
        (rex.TimeoutError("Timeout reading"), True),
        (rex.BusyLoadingError("LOADING"), True),
        (rex.TryAgainError("TRYAGAIN"), True),
        (ConnectionResetError(104, "reset"), True),
        (rex.AuthenticationError("invalid password"), False),
        (rex.ResponseError("WRONGPASS invalid username-password pair"), False),
        (rex.NoPermissionError("NOPERM"), False),
        (rex.ReadOnlyError("READONLY You can't write against a read only replica."), False),
        (rex.ResponseError("ERR unknown command"), False),
    ],
)
def test_cache_error_rule(exc: Exception, transient: bool) -> None:
    err = cache_error(exc, "PING", URL)
    assert err.transient is transient
    assert "secret" not in str(err) and "redis://cache:6390/1" in str(err)


def test_describe_url_drops_user_information() -> None:
    assert describe_url(URL) == "redis://cache:6390/1"
    assert describe_url("rediss://h") == "rediss://h"


def test_hit_rate_of_an_empty_sample_is_full() -> None:
    assert HitRate(cache="c", sampled=0, hits=0).rate == 1.0


class _Pipe:
    def __init__(self) -> None:
        self.sets: list[tuple[bytes, bytes, int | None]] = []
        self.executed = 0

    def set(self, key: bytes, value: bytes, ex: int | None = None) -> None:
        self.sets.append((key, value, ex))

    def execute(self) -> None:
        self.executed += 1


class _Client:
    def __init__(self) -> None:
        self.pipe = _Pipe()

    def pipeline(self, transaction: bool) -> _Pipe:
        return self.pipe


def test_write_rows_batches_and_ttls() -> None:
    client = _Client()
    rows = [("k1", "v", None), ("k2", 5, 30), ("k3", None)]
    assert write_rows(client, URL, rows, ttl_seconds=10, batch=2) == 3  # type: ignore[arg-type]
    assert client.pipe.sets == [(b"k1", b"v", 10), (b"k2", b"5", 30), (b"k3", b"", 10)]
    assert client.pipe.executed == 2
    with pytest.raises(ConfigError, match="key, value"):
        write_rows(_Client(), URL, [("only-a-key",)])  # type: ignore[arg-type]


def test_resume_rule() -> None:
    entry = FileEntry(key="a", size=3, sha256="0" * 64, version_id="v1", mtime=T0)
    assert _unchanged(entry, SourceObject("a", 3, T0, version_id="v1"))
    assert not _unchanged(entry, SourceObject("a", 3, T0, version_id="v2"))
    local = FileEntry(key="a", size=3, sha256="0" * 64, mtime=T0)
    assert _unchanged(local, SourceObject("a", 3, T0))
    assert not _unchanged(local, SourceObject("a", 4, T0))
    assert not _unchanged(None, SourceObject("a", 3, T0))


def test_layout_and_urls() -> None:
    assert object_key("uploads", "b1", "x/y.png") == "files/uploads/b1/objects/x/y.png"
    assert split_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert split_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ConfigError):
        split_s3_url("file:///x")


class _Memory(Source):
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.location = "memory"

    def list(self) -> list[SourceObject]:
        return [SourceObject(k, len(v), T0) for k, v in sorted(self.objects.items())]

    def open(self, key: str, version_id: str | None = None) -> BinaryIO:
        return io.BytesIO(self.objects[key])

    def write_file(self, key: str, local_path: Path, mode: int | None = None) -> None:
        raise AssertionError("a check never writes")

    def keep_aside(self, key: str, evidence: str) -> str:
        raise AssertionError("a check never writes")


def test_compare_reports_both_ways() -> None:
    src = _Memory({"a": b"A", "b": b"changed", "orphan": b"O"})
    sha_a = sha256_of(io.BytesIO(b"A"))
    rows = [("a", sha_a.upper()), ("b", sha_a), ("gone", None), ("no-sum", None)]
    result = compare("uploads", rows, src)
    assert (result.missing_objects, result.mismatched) == (["gone", "no-sum"], ["b"])
    assert result.orphan_objects == ["orphan"] and not result.passed
    presence = compare("uploads", rows, src, checksums=False)
    assert presence.mismatched_count == 0 and presence.missing_count == 2


UPLOADS = FileSource(name="uploads", s3="s3://bucket/uploads/")
LINK = FileLink(
    name="uploads-objects", table="public.uploads", key_column="object_key", files="uploads"
)


def test_row_keys_are_relative_to_the_entry() -> None:
    assert relative_key("uploads/a.bin", "uploads/") == "a.bin"
    assert relative_key("a.bin", "uploads/") == "a.bin"
    assert relative_key("other/a.bin", "") == "other/a.bin"


def _restored(folder: Path, objects: dict[str, bytes]) -> Path:
    for key, data in objects.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
    return folder


def test_restored_rows_against_restored_objects_both_ways(tmp_path: Path) -> None:
    """The rows of a restored dump vs the files backup restored into a folder."""
    folder = _restored(tmp_path, {"a.bin": b"A", "d/b.bin": b"B", "newer.bin": b"N"})
    sha = {k: sha256_of(io.BytesIO(v)) for k, v in {"a": b"A", "b": b"B"}.items()}
    rows = [("uploads/a.bin", sha["a"]), ("uploads/d/b.bin", sha["b"])]
    good = compare_restored(LINK, UPLOADS, rows, folder)
    assert good.passed and good.rows == 2 and good.orphan_objects == ["newer.bin"]
    rows += [("uploads/gone.bin", sha["a"])]
    (folder / "d" / "b.bin").write_bytes(b"changed")
    bad = compare_restored(LINK, UPLOADS, rows, folder)
    assert (bad.missing_objects, bad.mismatched) == (["gone.bin"], ["d/b.bin"])
    assert not bad.passed


def test_first_linked_object_is_one_the_restored_folder_holds(tmp_path: Path) -> None:
    folder = _restored(tmp_path / "r", {"b.bin": b"B", "c.bin": b"C"})
    (tmp_path / "outside.bin").write_bytes(b"x")
    rows = [("uploads/c.bin", None), ("uploads/a.bin", None), ("../outside.bin", None),
            ("uploads/b.bin", None)]  # fmt: skip
    assert first_linked_object(rows, UPLOADS, folder) == "b.bin"
    assert first_linked_object([("uploads/a.bin", None)], UPLOADS, folder) is None


def test_every_step_has_its_task() -> None:
    from tasks.cache import flush, probe, recover, warm
    from tasks.files import backup, links, restore, verify

    names = {
        flush.flush_cache_task.name,
        warm.warm_cache_task.name,
        probe.sample_hit_rate_task.name,
        probe.plant_value_task.name,
        probe.read_value_task.name,
        recover.recover_cache_task.name,
        backup.backup_files_task.name,
        verify.verify_files_backup_task.name,
        verify.inject_bad_object_task.name,
        restore.restore_prefix_to_time_task.name,
        restore.restore_from_backup_task.name,
        links.check_links_task.name,
        links.read_link_rows_task.name,
        links.compare_restored_task.name,
    }
    assert len(names) == 14
    assert all(n.startswith(("cache-", "files-")) for n in names)
