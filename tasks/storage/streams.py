"""Streaming helpers: hash while reading, read S3 bodies, make renames durable."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from dr.errors import StorageError
from tasks.storage.client import (
    _S3_ERRORS,
    DEFAULT_CHUNK_BYTES,
    ObjectInfo,
    _ObjectChanged,
    _os_error,
    _s3_error,
)

logger = logging.getLogger(__name__)

_MD5_ETAG_RE = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the folder that holds the new name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _move_into_place(part: Path, dest: Path) -> None:
    """Rename the verified ``.part`` file to its destination, durably."""
    try:
        os.replace(part, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        _unlink_quietly(part)
        raise _os_error(exc, f"local file {dest}", missing_is_not_found=False) from exc


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)


class _Digest:
    """SHA-256 of a stream, plus the MD5 ETag S3 will report for it (to verify uploads).

    S3 reports the MD5 of the whole object for a single PUT, and the MD5 of the parts' MD5s
    with a ``-N`` suffix for a multipart upload. The transfer manager uses multipart exactly
    when the size reaches ``threshold``, with parts of ``part_size`` bytes.
    """

    def __init__(self, *, part_size: int | None = None, threshold: int | None = None) -> None:
        self._sha = hashlib.sha256()
        self.size = 0
        self._part_size = part_size
        self._threshold = threshold if threshold is not None else 0
        self._whole = hashlib.md5(usedforsecurity=False)
        self._part = hashlib.md5(usedforsecurity=False)
        self._part_fill = 0
        self._parts: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        if self._part_size is not None:
            view = memoryview(data)
            if self.size < self._threshold:
                self._whole.update(view[: self._threshold - self.size])
            pos = 0
            while pos < len(view):
                take = min(self._part_size - self._part_fill, len(view) - pos)
                self._part.update(view[pos : pos + take])
                self._part_fill += take
                pos += take
                if self._part_fill == self._part_size:
                    self._parts.append(self._part.digest())
                    self._part = hashlib.md5(usedforsecurity=False)
                    self._part_fill = 0
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def expected_etag(self) -> str:
        if self.size < self._threshold:
            return self._whole.hexdigest()
        parts = self._parts + ([self._part.digest()] if self._part_fill else [])
        combined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
        return f"{combined}-{len(parts)}"

    def etag_matches(self, etag: str | None) -> bool | None:
        """True/False when ``etag`` is an MD5 ETag; None when it cannot tell (SSE-KMS)."""
        if etag is None or self._part_size is None:
            return None
        etag = etag.strip('"').lower()
        if not _MD5_ETAG_RE.match(etag):
            return None
        return etag == self.expected_etag()


def _hash_local_file(
    path: Path, *, part_size: int | None = None, threshold: int | None = None
) -> _Digest:
    digest = _Digest(part_size=part_size, threshold=threshold)
    buf = bytearray(DEFAULT_CHUNK_BYTES)
    view = memoryview(buf)
    try:
        with open(path, "rb") as src:
            while n := src.readinto(buf):
                digest.update(view[:n])
    except OSError as exc:
        raise _os_error(exc, f"local file {path}", missing_is_not_found=False) from exc
    return digest


class _HashingReader:
    """A read-only, non-seekable view of a stream that hashes what is read through it."""

    def __init__(self, fileobj: BinaryIO, digest: _Digest) -> None:
        self._fileobj = fileobj
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._fileobj.read(size)
        if data:
            self._digest.update(data)
        return data


class _S3BodyReader(io.RawIOBase):
    """A raw stream over a botocore ``StreamingBody`` that translates read errors."""

    def __init__(self, body: Any, what: str) -> None:
        super().__init__()
        self._body = body
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except _S3_ERRORS as exc:
            raise _s3_error(exc, self._what) from exc
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def resuming_chunks(
    read_range: Callable[[str, int, str | None], AbstractContextManager[Iterator[bytes]]],
    key: str,
    info: ObjectInfo,
    url: str,
    attempts: int,
) -> Iterator[bytes]:
    """Yield ``key``'s bytes; a transient failure resumes from the byte reached (same etag).

    Raises:
        StorageError: not transient, or more than ``attempts`` failures.
    """
    offset = failures = 0
    while offset < info.size:
        try:
            with read_range(key, offset, info.etag) as chunks:
                for chunk in chunks:
                    offset += len(chunk)
                    yield chunk
            if offset < info.size:
                raise StorageError(
                    f"{url}: stream ended at byte {offset} of {info.size}", transient=True
                )
        except _ObjectChanged:
            raise
        except StorageError as exc:
            failures += 1
            if not exc.transient or failures > attempts:
                raise
            logger.warning(
                "read of %s failed at byte %d (%s); resuming (%d/%d)",
                url,
                offset,
                exc,
                failures,
                attempts,
            )
