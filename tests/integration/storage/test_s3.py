"""The S3 repository against a real moto server on loopback (see conftest.py)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ResponseStreamingError

from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError
from tasks.storage.client import make_s3_client, open_repository
from tasks.storage.s3 import S3Repository

from .conftest import free_port

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
UPLOAD_OPS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


def write_file(path: Path, size: int, seed: bytes = b"") -> str:
    """Write ``size`` pseudo-random bytes in 1 MiB blocks; return their SHA-256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    with open(path, "wb") as out:
        written = 0
        n = 0
        while written < size:
            chunk = (n.to_bytes(8, "big") + block)[: min(MiB, size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def uploads(calls: Counter[str]) -> int:
    return sum(calls[op] for op in UPLOAD_OPS)


def test_round_trip_records_and_verifies_sha256(repo: S3Repository, tmp_path: Path) -> None:
    src = tmp_path / "dump.bin"
    sha = write_file(src, 300_000)

    result = repo.put_file("db/2024/dump.bin", src)

    assert result.outcome == "created"
    assert result.sha256 == sha
    assert result.size == 300_000
    assert result.url == f"s3://{repo.bucket}/backups/db/2024/dump.bin"
    assert result.undo == f"delete {result.url}"
    info = repo.head("db/2024/dump.bin")
    assert info.sha256 == sha
    assert info.size == 300_000
    assert repo.exists("db/2024/dump.bin")
    assert repo.sha256("db/2024/dump.bin") == sha
    assert [o.key for o in repo.list("db/")] == ["db/2024/dump.bin"]

    dest = tmp_path / "restore" / "dump.bin"
    assert repo.get_to_file("db/2024/dump.bin", dest) == sha
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name("dump.bin.part").exists()


def test_identical_re_put_is_unchanged_and_uploads_nothing(
    repo: S3Repository, tmp_path: Path, s3_calls: Counter[str]
) -> None:
    src = tmp_path / "wal"
    write_file(src, 100_000)
    first = repo.put_file("wal/000000010000000000000001", src)
    before = repo.head("wal/000000010000000000000001")
    s3_calls.clear()

    second = repo.put_file("wal/000000010000000000000001", src)

    assert second.outcome == "unchanged"
    assert second.sha256 == first.sha256
    assert uploads(s3_calls) == 0
    after = repo.head("wal/000000010000000000000001")
    assert after.mtime == before.mtime
    assert after.etag == before.etag


def test_different_content_is_refused_unless_overwrite(repo: S3Repository, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    sha_one = write_file(one, 50_000, b"one")
    sha_two = write_file(two, 50_000, b"two")
    repo.put_file("k", one)

    with pytest.raises(ChecksumMismatch, match="already exists with other content") as info:
        repo.put_file("k", two)

    assert not info.value.transient
    assert repo.sha256("k") == sha_one
    replaced = repo.put_file("k", two, overwrite=True)
    assert replaced.outcome == "replaced"
    assert repo.sha256("k") == sha_two


def test_corrupted_object_fails_download_and_leaves_no_file(
    repo: S3Repository, s3_client: Any, tmp_path: Path
) -> None:
    src = tmp_path / "dump"
    sha = write_file(src, 200_000)
    repo.put_file("dump", src)
    data = bytearray(src.read_bytes())
    data[1234] ^= 0xFF
    # Rewrite the stored object behind the adapter's back, keeping its recorded checksum.
    s3_client.put_object(
        Bucket=repo.bucket, Key="backups/dump", Body=bytes(data), Metadata={"sha256": sha}
    )
    dest = tmp_path / "out" / "dump"

    with pytest.raises(ChecksumMismatch, match="does not match"):
        repo.get_to_file("dump", dest)

    assert not dest.exists()
    assert not dest.with_name("dump.part").exists()


def test_multipart_upload_above_threshold(
    repo: S3Repository, tmp_path: Path, s3_calls: Counter[str]
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 12 * MiB)

    result = repo.put_file("big", src)

    assert result.outcome == "created"
    assert s3_calls["CreateMultipartUpload"] == 1
    assert s3_calls["UploadPart"] == 3
    assert s3_calls["PutObject"] == 0
    info = repo.head("big")
    assert info.etag is not None and info.etag.strip('"').endswith("-3")
    assert info.sha256 == sha
    assert repo.get_to_file("big", tmp_path / "big.copy") == sha


def test_small_threshold_does_not_split_small_files(
    repo: S3Repository, tmp_path: Path, s3_calls: Counter[str]
) -> None:
    src = tmp_path / "small"
    write_file(src, 4 * MiB)
    repo.put_file("small", src)
    assert s3_calls["PutObject"] == 1
    assert s3_calls["CreateMultipartUpload"] == 0


def _record_ranges(client: Any) -> tuple[list[str | None], Callable[[], None]]:
    ranges: list[str | None] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        ranges.append(params.get("Range"))

    client.meta.events.register("before-parameter-build.s3.GetObject", record)
    return ranges, lambda: client.meta.events.unregister(
        "before-parameter-build.s3.GetObject", record
    )


class _FailingBody:
    """A response body that breaks after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, body: Any, limit: int) -> None:
        self._body = body
        self._left = limit

    def read(self, amt: int | None = None) -> bytes:
        if self._left <= 0:
            raise ResponseStreamingError(error="connection reset by peer (injected)")
        data = self._body.read(min(amt or self._left, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()


def _break_downloads(client: Any, limit: int, times: int) -> Callable[[], None]:
    """Make the next ``times`` GetObject bodies fail after ``limit`` bytes."""
    state = {"left": times}

    def inject(parsed: dict[str, Any], **_: Any) -> None:
        if state["left"] > 0 and "Body" in parsed:
            state["left"] -= 1
            parsed["Body"] = _FailingBody(parsed["Body"], limit)

    client.meta.events.register("after-call.s3.GetObject", inject)
    return lambda: client.meta.events.unregister("after-call.s3.GetObject", inject)


def test_resume_from_partial_download(repo: S3Repository, s3_client: Any, tmp_path: Path) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 12 * MiB)
    repo.put_file("big", src)
    dest = tmp_path / "restore" / "big"
    dest.parent.mkdir()
    # A previous attempt died after 5 MiB.
    dest.with_name("big.part").write_bytes(src.read_bytes()[: 5 * MiB])
    ranges, stop = _record_ranges(s3_client)
    try:
        assert repo.get_to_file("big", dest) == sha
    finally:
        stop()

    assert ranges == [f"bytes={5 * MiB}-"]
    assert dest.read_bytes() == src.read_bytes()


def test_failure_mid_download_is_retried_with_a_range_request(
    repo: S3Repository, s3_client: Any, tmp_path: Path
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 6 * MiB)
    repo.put_file("big", src)
    ranges, stop_recording = _record_ranges(s3_client)
    stop_breaking = _break_downloads(s3_client, limit=2 * MiB, times=2)
    try:
        assert repo.get_to_file("big", tmp_path / "big.out") == sha
    finally:
        stop_breaking()
        stop_recording()

    assert ranges == [None, f"bytes={2 * MiB}-", f"bytes={4 * MiB}-"]
    assert (tmp_path / "big.out").read_bytes() == src.read_bytes()


def test_storage_failing_keeps_part_and_next_attempt_resumes(
    repo: S3Repository, s3_client: Any, tmp_path: Path
) -> None:
    src = tmp_path / "big"
    sha = write_file(src, 6 * MiB)
    repo.put_file("big", src)
    dest = tmp_path / "big.out"
    stop_breaking = _break_downloads(s3_client, limit=1 * MiB, times=100)
    try:
        with pytest.raises(StorageError) as info:
            repo.get_to_file("big", dest)
    finally:
        stop_breaking()
    assert info.value.transient
    assert not dest.exists()
    kept = dest.with_name("big.out.part").stat().st_size
    assert kept == 4 * MiB  # the first request and three resumptions, 1 MiB each

    ranges, stop = _record_ranges(s3_client)
    try:
        assert repo.get_to_file("big", dest) == sha
    finally:
        stop()
    assert ranges == [f"bytes={kept}-"]
    assert dest.read_bytes() == src.read_bytes()


def test_missing_key_and_missing_bucket(
    repo: S3Repository, make_repo: Callable[..., S3Repository], tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFound):
        repo.head("nope")
    with pytest.raises(ObjectNotFound):
        repo.get_to_file("nope", tmp_path / "x")
    with pytest.raises(ObjectNotFound):
        repo.open_read("nope")
    assert not repo.exists("nope")
    assert repo.delete("nope") is False
    assert not (tmp_path / "x").exists()

    gone = make_repo("no-such-bucket-here")
    with pytest.raises(StorageError, match="bucket does not exist") as info:
        gone.list()
    assert not info.value.transient


def test_streaming_a_large_object_does_not_read_it_whole(
    make_repo: Callable[..., S3Repository], bucket: str, tmp_path: Path
) -> None:
    repo = make_repo(bucket, multipart_threshold_bytes=16 * MiB, part_size_bytes=16 * MiB)
    size = 50 * MiB
    src = tmp_path / "huge"
    sha = write_file(src, size)
    tracemalloc.start()
    try:
        repo.put_file("huge", src)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        digest = hashlib.sha256()
        total = 0
        for chunk in repo.iter_chunks("huge", 1 * MiB):
            digest.update(chunk)
            total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        got = repo.get_to_file("huge", tmp_path / "huge.out")
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == size and digest.hexdigest() == sha and got == sha
    assert read_peak < 16 * MiB, read_peak
    assert get_peak < 16 * MiB, get_peak
    # Parts are read from the file in small pieces by the transfer threads.
    assert put_peak < 16 * MiB, put_peak


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    client = make_s3_client(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="testing",
        secret_access_key="testing",
        max_retries=0,
        connect_timeout_seconds=2,
    )
    repo = open_repository("s3://dr-nowhere/backups", s3_client=client)
    src = tmp_path / "f"
    src.write_bytes(b"data")

    for call in (lambda: repo.head("k"), lambda: repo.put_file("k", src), repo.list):
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.transient, info.value


def test_write_once_applies_object_lock(
    make_repo: Callable[..., S3Repository], locked_bucket: str, tmp_path: Path
) -> None:
    repo = make_repo(locked_bucket, prefix="evidence")
    src = tmp_path / "bundle.tar.gz"
    write_file(src, 10_000)

    result = repo.put_file("case-1/bundle.tar.gz", src, write_once=True, retain_days=30)

    assert result.locked
    assert result.lock_mode == "GOVERNANCE"
    assert result.retain_until is not None
    expected_until = datetime.now(UTC) + timedelta(days=30)
    assert abs((result.retain_until - expected_until).total_seconds()) < 120
    info = repo.head("case-1/bundle.tar.gz")
    assert info.lock_mode == "GOVERNANCE"
    # Re-putting the same evidence is a no-op that still reports the lock.
    again = repo.put_file("case-1/bundle.tar.gz", src, write_once=True, retain_days=30)
    assert again.outcome == "unchanged" and again.locked
    with pytest.raises(ConfigError):
        repo.put_file("case-1/other", src, write_once=True, overwrite=True)


def test_write_once_multipart_gets_compliance_lock(
    make_repo: Callable[..., S3Repository], locked_bucket: str, tmp_path: Path
) -> None:
    repo = make_repo(locked_bucket, prefix="evidence")
    src = tmp_path / "disk.img"
    write_file(src, 11 * MiB)

    result = repo.put_file(
        "case-2/disk.img", src, write_once=True, retain_days=1, lock_mode="COMPLIANCE"
    )

    assert result.locked and result.lock_mode == "COMPLIANCE"
    assert repo.head("case-2/disk.img").lock_mode == "COMPLIANCE"


def test_write_once_without_object_lock_reports_no_lock(repo: S3Repository, tmp_path: Path) -> None:
    src = tmp_path / "bundle"
    write_file(src, 1000)
    result = repo.put_file("bundle", src, write_once=True, retain_days=30)
    assert result.outcome == "created"
    assert not result.locked
    assert result.lock_mode is None


def _corrupt_body(params: dict[str, Any], **_: Any) -> None:
    """A botocore hook: one byte of the PutObject body flipped on its way out."""
    body = bytearray(params["Body"].read())
    body[10] ^= 0xFF
    params["Body"] = bytes(body)


def test_upload_corrupted_in_transit_is_detected_and_removed(
    repo: S3Repository, s3_client: Any, tmp_path: Path
) -> None:
    src = tmp_path / "f"
    write_file(src, 100_000)

    s3_client.meta.events.register("before-parameter-build.s3.PutObject", _corrupt_body)
    try:
        with pytest.raises(ChecksumMismatch, match="did not verify") as info:
            repo.put_file("f", src)
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.PutObject", _corrupt_body)

    assert info.value.transient
    assert not repo.exists("f")


def test_put_stream_and_put_bytes(repo: S3Repository, tmp_path: Path) -> None:
    src = tmp_path / "s"
    sha = write_file(src, 7 * MiB)

    with open(src, "rb") as stream:  # unknown checksum: spooled, then uploaded
        spooled = repo.put_stream("streams/spooled", stream)
    with open(src, "rb") as stream:  # known checksum: streamed straight through
        direct = repo.put_stream("streams/direct", stream, expected_sha256=sha)
    with open(src, "rb") as stream:
        again = repo.put_stream("streams/direct", stream, expected_sha256=sha)

    assert spooled.outcome == direct.outcome == "created"
    assert spooled.sha256 == direct.sha256 == sha
    assert again.outcome == "unchanged"
    assert repo.head("streams/direct").sha256 == sha

    with open(src, "rb") as stream, pytest.raises(ChecksumMismatch, match="expected"):
        repo.put_stream("streams/wrong", stream, expected_sha256="0" * 64)
    assert not repo.exists("streams/wrong")

    manifest = repo.put_bytes("manifest.json", b'{"files": 1}')
    assert manifest.outcome == "created"
    assert repo.put_bytes("manifest.json", b'{"files": 1}').outcome == "unchanged"
    with pytest.raises(ChecksumMismatch):
        repo.put_bytes("manifest.json", b'{"files": 2}')
    with repo.open_read("manifest.json") as stream:
        assert stream.read() == b'{"files": 1}'


def test_list_glob_delete_and_copy_prefix(repo: S3Repository, tmp_path: Path) -> None:
    files = {"toc.dat": b"toc", "3001.dat.gz": b"a" * 5000, "3002.dat.gz": b"b" * 7000}
    for name, data in files.items():
        repo.put_bytes(f"dumps/app/20240101T000000Z/{name}", data)
    repo.put_bytes("dumps/app/20240102T000000Z/toc.dat", b"toc2")
    repo.put_bytes("dumps/app-old.sql.gz", b"old")

    keys = [o.key for o in repo.list("dumps/app/")]
    assert keys == sorted(keys) and len(keys) == 4
    assert [o.key for o in repo.glob("dumps/*.sql.gz")] == ["dumps/app-old.sql.gz"]
    assert [o.key for o in repo.glob("dumps/app/*/toc.dat")] == [
        "dumps/app/20240101T000000Z/toc.dat",
        "dumps/app/20240102T000000Z/toc.dat",
    ]

    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    got = repo.copy_to_local_dir("dumps/app/20240101T000000Z", tmp_path / "dump", expected=manifest)
    assert got == manifest
    for name, data in files.items():
        assert (tmp_path / "dump" / name).read_bytes() == data

    assert repo.delete_prefix("dumps/app/20240101T000000Z/") == 3
    assert [o.key for o in repo.list("dumps/")] == [
        "dumps/app-old.sql.gz",
        "dumps/app/20240102T000000Z/toc.dat",
    ]
    assert repo.delete("dumps/app-old.sql.gz") is True
    with pytest.raises(ConfigError):
        repo.delete_prefix("")


def test_objects_written_by_others_get_their_checksum_computed(
    repo: S3Repository, s3_client: Any, tmp_path: Path
) -> None:
    data = os.urandom(10_000)
    s3_client.put_object(Bucket=repo.bucket, Key="backups/foreign.sql.gz", Body=data)
    sha = hashlib.sha256(data).hexdigest()

    assert repo.head("foreign.sql.gz").sha256 is None
    assert repo.sha256("foreign.sql.gz") == sha
    assert repo.put_bytes("foreign.sql.gz", data).outcome == "unchanged"
    assert repo.get_to_file("foreign.sql.gz", tmp_path / "f", expected_sha256=sha) == sha


def test_put_file_with_known_sha256_hashes_while_uploading_and_verifies(
    repo: S3Repository, s3_client: Any, tmp_path: Path, s3_calls: Counter[str]
) -> None:
    """The backup's path: the manifest's checksum, parts read in parallel, same checks."""
    src = tmp_path / "big"
    sha = write_file(src, 12 * MiB)

    result = repo.put_file("big", src, expected_sha256=sha)
    assert (result.outcome, result.sha256) == ("created", sha)
    assert (s3_calls["CreateMultipartUpload"], s3_calls["UploadPart"]) == (1, 3)
    info = repo.head("big")
    assert info.sha256 == sha and info.etag is not None and info.etag.strip('"').endswith("-3")
    assert repo.get_to_file("big", tmp_path / "big.copy") == sha
    sent = uploads(s3_calls)
    assert repo.put_file("big", src, expected_sha256=sha).outcome == "unchanged"
    assert uploads(s3_calls) == sent

    with pytest.raises(ChecksumMismatch, match="expected"):
        repo.put_file("wrong", src, expected_sha256="0" * 64)
    assert not repo.exists("wrong")

    small = tmp_path / "small"
    small_sha = write_file(small, 100_000)

    s3_client.meta.events.register("before-parameter-build.s3.PutObject", _corrupt_body)
    try:
        with pytest.raises(ChecksumMismatch, match="did not verify"):
            repo.put_file("small", small, expected_sha256=small_sha)
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.PutObject", _corrupt_body)
    assert not repo.exists("small")
