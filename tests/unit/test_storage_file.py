"""The file:// repository, on real files in a temporary folder."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tracemalloc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError
from tasks.storage.client import Repository, open_repository
from tasks.storage.file import FileRepository

MiB = 1024 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> FileRepository:
    r = open_repository((tmp_path / "repo").as_uri(), resume_min_bytes=1 * MiB)
    assert isinstance(r, FileRepository)
    return r


def write_file(path: Path, size: int, seed: bytes = b"") -> str:
    digest = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    with open(path, "wb") as out:
        written = n = 0
        while written < size:
            chunk = (n.to_bytes(8, "big") + block)[: min(MiB, size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def test_round_trip_with_checksum(repo: FileRepository, tmp_path: Path) -> None:
    src = tmp_path / "dump"
    sha = write_file(src, 3 * MiB + 17)

    result = repo.put_file("db/2024/dump", src)

    stored = repo.root / "db" / "2024" / "dump"
    assert result.outcome == "created"
    assert result.sha256 == sha and result.size == 3 * MiB + 17
    assert result.url == stored.as_uri() == repo.url_for("db/2024/dump")
    assert stored.read_bytes() == src.read_bytes()
    assert repo.head("db/2024/dump").size == 3 * MiB + 17
    assert repo.sha256("db/2024/dump") == sha
    assert repo.exists("db/2024/dump")
    # No temporary file is left next to the object.
    assert sorted(p.name for p in stored.parent.iterdir()) == ["dump"]

    dest = tmp_path / "restore" / "dump"
    assert repo.get_to_file("db/2024/dump", dest, expected_sha256=sha) == sha
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name("dump.part").exists()


def test_identical_re_put_is_unchanged_and_writes_nothing(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "seg"
    write_file(src, 200_000)
    repo.put_file("wal/seg", src)
    before = (repo.root / "wal" / "seg").stat()
    writes: list[Path] = []
    original = FileRepository._write_temp

    def counting(self: FileRepository, tmp: Path, *args: object) -> object:
        writes.append(tmp)
        return original(self, tmp, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(FileRepository, "_write_temp", counting)

    again = repo.put_file("wal/seg", src)

    assert again.outcome == "unchanged"
    assert writes == []
    after = (repo.root / "wal" / "seg").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_different_content_raises_unless_overwrite(repo: FileRepository, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write_file(one, 1000, b"1")
    sha_two = write_file(two, 1000, b"2")
    repo.put_file("k", one)

    with pytest.raises(ChecksumMismatch, match="overwrite=True"):
        repo.put_file("k", two)
    assert (repo.root / "k").read_bytes() == one.read_bytes()

    result = repo.put_file("k", two, overwrite=True)
    assert result.outcome == "replaced"
    assert repo.sha256("k") == sha_two


def test_put_stream_checks_expected_sha256(repo: FileRepository) -> None:
    data = b"x" * 10_000
    with pytest.raises(ChecksumMismatch):
        repo.put_stream("s", io.BytesIO(data), expected_sha256="0" * 64)
    assert not repo.exists("s")
    assert list(repo.root.iterdir()) == []  # the temporary file went too

    sha = hashlib.sha256(data).hexdigest()
    assert repo.put_stream("s", io.BytesIO(data), expected_sha256=sha).outcome == "created"
    # With the checksum known, an identical put does not even read the stream.
    unread = io.BytesIO(data)
    assert repo.put_stream("s", unread, expected_sha256=sha).outcome == "unchanged"
    assert unread.tell() == 0
    assert repo.put_stream("s", io.BytesIO(data)).outcome == "unchanged"
    assert repo.put_bytes("t", b"abc").sha256 == hashlib.sha256(b"abc").hexdigest()


def test_staged_file_with_known_sha256_is_linked_not_copied(
    repo: FileRepository, tmp_path: Path
) -> None:
    """Same filesystem: the stored object is the staged inode, hashed where it is stored."""
    staged = tmp_path / "staged.dat"
    sha = write_file(staged, 3 * MiB + 5)
    staged.chmod(0o600)
    result = repo.put_file("db/id/1.dat.gz", staged, expected_sha256=sha)
    assert (result.outcome, result.sha256, result.size) == ("created", sha, 3 * MiB + 5)
    stored = repo.root / "db" / "id" / "1.dat.gz"
    assert stored.stat().st_ino == staged.stat().st_ino
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666 & ~umask  # as a copy would be
    staged.unlink()  # what staging does next: the object stays
    assert repo.sha256("db/id/1.dat.gz") == sha
    assert [p.name for p in stored.parent.iterdir()] == ["1.dat.gz"]
    assert repo.put_file("db/id/1.dat.gz", stored, expected_sha256=sha).outcome == "unchanged"


def test_staged_file_that_does_not_hash_to_its_manifest_is_not_stored(
    repo: FileRepository, tmp_path: Path
) -> None:
    staged = tmp_path / "staged.dat"
    write_file(staged, MiB)
    with pytest.raises(ChecksumMismatch, match="nothing stored"):
        repo.put_file("db/id/1.dat.gz", staged, expected_sha256="0" * 64)
    assert not repo.exists("db/id/1.dat.gz")
    assert list((repo.root / "db" / "id").iterdir()) == []  # no temporary link left
    assert staged.stat().st_nlink == 1


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM])
def test_staged_file_on_another_filesystem_is_copied_and_checked(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_link)
    staged = tmp_path / "staged.dat"
    sha = write_file(staged, 2 * MiB)
    with pytest.raises(ChecksumMismatch):
        repo.put_file("k", staged, expected_sha256="1" * 64)
    assert not repo.exists("k")
    assert repo.put_file("k", staged, expected_sha256=sha).outcome == "created"
    stored = repo.root / "k"
    assert stored.stat().st_ino != staged.stat().st_ino
    assert repo.sha256("k") == sha


def test_corrupted_object_fails_download_and_leaves_no_file(
    repo: FileRepository, tmp_path: Path
) -> None:
    src = tmp_path / "dump"
    sha = write_file(src, 2 * MiB)
    repo.put_file("dump", src)
    stored = repo.root / "dump"
    with open(stored, "r+b") as f:  # flip one byte behind the repository's back
        f.seek(123_456)
        byte = f.read(1)
        f.seek(123_456)
        f.write(bytes([byte[0] ^ 0xFF]))
    dest = tmp_path / "out" / "dump"

    with pytest.raises(ChecksumMismatch):
        repo.get_to_file("dump", dest, expected_sha256=sha)

    assert not dest.exists()
    assert not dest.with_name("dump.part").exists()


def _record_starts(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    starts: list[int] = []
    original = repo._read_range

    def recording(key: str, start: int, etag: str | None) -> AbstractContextManager[object]:
        starts.append(start)
        return original(key, start, etag)

    monkeypatch.setattr(repo, "_read_range", recording)
    return starts


def test_resume_from_partial_download(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 5 * MiB)
    repo.put_file("big", src)
    dest = tmp_path / "big.out"
    dest.with_name("big.out.part").write_bytes(src.read_bytes()[: 3 * MiB])
    starts = _record_starts(repo, monkeypatch)

    assert repo.get_to_file("big", dest, expected_sha256=sha) == sha

    assert starts == [3 * MiB]
    assert dest.read_bytes() == src.read_bytes()


def test_stale_partial_download_is_discarded(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 2 * MiB)
    repo.put_file("big", src)
    dest = tmp_path / "big.out"
    dest.with_name("big.out.part").write_bytes(b"\0" * MiB)  # from some other object
    starts = _record_starts(repo, monkeypatch)

    assert repo.get_to_file("big", dest, expected_sha256=sha) == sha
    assert starts == [MiB, 0]

    # Without a known checksum a leftover .part is never trusted.
    dest.unlink()
    dest.with_name("big.out.part").write_bytes(b"\0" * MiB)
    starts.clear()
    assert repo.get_to_file("big", dest) == sha
    assert starts == [0]


def test_mid_stream_failure_resumes_within_the_call(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 3 * MiB)
    repo.put_file("big", src)
    original = repo._read_range
    starts: list[int] = []

    @contextmanager
    def flaky(key: str, start: int, etag: str | None) -> Iterator[Iterator[bytes]]:
        starts.append(start)
        with original(key, start, etag) as chunks:

            def broken() -> Iterator[bytes]:
                yield next(chunks)
                raise StorageError("connection reset (injected)", transient=True)

            yield broken() if len(starts) == 1 else chunks

    monkeypatch.setattr(repo, "_read_range", flaky)

    assert repo.get_to_file("big", tmp_path / "out") == sha
    assert starts == [0, MiB]


def test_permanent_failure_mid_stream_removes_part(
    repo: FileRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 3 * MiB)
    repo.put_file("big", src)
    original = repo._read_range

    @contextmanager
    def denied(key: str, start: int, etag: str | None) -> Iterator[Iterator[bytes]]:
        with original(key, start, etag) as chunks:

            def broken() -> Iterator[bytes]:
                yield next(chunks)
                raise StorageError("permission denied (injected)", transient=False)

            yield broken()

    monkeypatch.setattr(repo, "_read_range", denied)
    dest = tmp_path / "out"
    with pytest.raises(StorageError, match="permission denied") as info:
        repo.get_to_file("big", dest, expected_sha256=sha)
    assert not info.value.transient
    assert not dest.exists()
    assert not dest.with_name("out.part").exists()


def test_empty_object_round_trip(repo: FileRepository, tmp_path: Path) -> None:
    result = repo.put_bytes("empty", b"")
    assert result.size == 0
    assert repo.get_to_file("empty", tmp_path / "e") == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / "e").read_bytes() == b""


def test_missing_objects(repo: FileRepository, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        repo.head("nope")
    with pytest.raises(ObjectNotFound):
        repo.open_read("nope")
    with pytest.raises(ObjectNotFound):
        repo.get_to_file("nope", tmp_path / "x")
    with pytest.raises(ObjectNotFound):
        repo.sha256("a/b/c")
    assert not repo.exists("nope")
    assert repo.delete("nope") is False
    assert repo.list() == []
    assert not (tmp_path / "x").exists()
    repo.put_bytes("dir/file", b"x")
    with pytest.raises(ObjectNotFound):
        repo.head("dir")
    with pytest.raises(ObjectNotFound):
        repo.head("dir/file/below")


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a\\b", "a/"])
def test_invalid_keys_are_refused(repo: FileRepository, key: str) -> None:
    with pytest.raises(ConfigError):
        repo.put_bytes(key, b"x")
    assert not repo.root.exists()


def test_list_glob_delete_prefix(repo: FileRepository) -> None:
    for key in ["b/2", "a/1", "a/sub/3", "ab", "c.sql.gz", "d/e.sql.gz"]:
        repo.put_bytes(key, key.encode())
    (repo.root / "a" / f".x.123{'.dr-tmp'}").write_bytes(b"in flight")

    assert [o.key for o in repo.list()] == ["a/1", "a/sub/3", "ab", "b/2", "c.sql.gz", "d/e.sql.gz"]
    assert [o.key for o in repo.list("a/")] == ["a/1", "a/sub/3"]
    assert [o.key for o in repo.list("a")] == ["a/1", "a/sub/3", "ab"]
    assert [o.key for o in repo.glob("*.sql.gz")] == ["c.sql.gz", "d/e.sql.gz"]
    assert [o.key for o in repo.glob("a/*")] == ["a/1", "a/sub/3"]
    assert [o.key for o in repo.glob("a/?")] == ["a/1"]

    assert repo.delete_prefix("a/") == 2
    assert not (repo.root / "a" / "sub").exists()
    assert [o.key for o in repo.list()] == ["ab", "b/2", "c.sql.gz", "d/e.sql.gz"]
    with pytest.raises(ConfigError):
        repo.delete_prefix("")
    assert repo.delete("ab") is True


def test_write_once_is_read_only_and_not_replaced(repo: FileRepository, tmp_path: Path) -> None:
    src = tmp_path / "bundle"
    write_file(src, 5000, b"evidence")
    other = tmp_path / "other"
    write_file(other, 5000, b"other")

    result = repo.put_file("case/bundle", src, write_once=True)

    mode = (repo.root / "case" / "bundle").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert result.lock_mode == "read-only"
    assert not result.locked  # a file permission, not provider-enforced retention
    assert repo.put_file("case/bundle", src, write_once=True).outcome == "unchanged"
    with pytest.raises(ConfigError):
        repo.put_file("case/bundle", other, write_once=True, overwrite=True)
    with pytest.raises(StorageError, match="write-once"):
        repo.put_file("case/bundle", other, overwrite=True)
    assert repo.sha256("case/bundle") == result.sha256


def test_new_files_follow_the_umask(repo: FileRepository, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        repo.put_bytes("m", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((repo.root / "m").stat().st_mode) == 0o640


def test_copy_to_local_dir_with_manifest(repo: FileRepository, tmp_path: Path) -> None:
    files = {"toc.dat": b"toc", "3001.dat.gz": b"a" * 3000, "sub/3002.dat.gz": b"b" * 10}
    for name, data in files.items():
        repo.put_bytes(f"dumps/d1/{name}", data)
    repo.put_bytes("dumps/d10/toc.dat", b"not part of d1")
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}

    got = repo.copy_to_local_dir("dumps/d1", tmp_path / "dump", expected=manifest)

    assert got == manifest
    assert (tmp_path / "dump" / "sub" / "3002.dat.gz").read_bytes() == b"b" * 10
    assert not (tmp_path / "dump" / "d10").exists()

    with pytest.raises(ObjectNotFound, match="missing"):
        repo.copy_to_local_dir(
            "dumps/d1", tmp_path / "d2", expected={**manifest, "x.dat": "0" * 64}
        )
    with pytest.raises(ChecksumMismatch):
        repo.copy_to_local_dir("dumps/d1", tmp_path / "d3", expected={"toc.dat": "0" * 64})
    with pytest.raises(ObjectNotFound):
        repo.copy_to_local_dir("dumps/none", tmp_path / "d4")


def test_streaming_does_not_read_whole_file(repo: FileRepository, tmp_path: Path) -> None:
    src = tmp_path / "huge"
    sha = write_file(src, 50 * MiB)
    tracemalloc.start()
    try:
        repo.put_file("huge", src)
        got = repo.get_to_file("huge", tmp_path / "huge.out")
        total = sum(len(c) for c in repo.iter_chunks("huge"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == sha and total == 50 * MiB
    assert peak < 16 * MiB, peak


def test_open_repository_parses_urls(tmp_path: Path) -> None:
    assert open_repository("file:///var/backups/").url == "file:///var/backups"
    assert isinstance(open_repository("file://localhost/srv/x"), FileRepository)
    for bad in ["file://relative/path", "ftp://host/x", "/plain/path", "s3://"]:
        with pytest.raises(ConfigError):
            open_repository(bad)
