"""Backup repositories: one interface over ``file:///abs/path`` and ``s3://bucket/prefix``.

Backups, the WAL archive and evidence bundles all go through :class:`Repository`, built by
:func:`open_repository` from the URL in ``dr.yaml``. Keys are relative, ``/``-separated
paths under the repository's root (or S3 prefix).

Why it is shaped like this:

- **Every byte is checksummed while it streams.** Writes compute SHA-256 as they read;
  downloads go to a ``.part`` file that is renamed into place only when its SHA-256 matches
  the expected one, so a corrupt restore input never looks like a good file. On S3 the
  SHA-256 is stored in the object's metadata (``sha256``) and the upload is verified
  afterwards against what the server reports (size, metadata and MD5 ETag), because the
  local S3 stand-in accepts checksums real S3 would reject.
- **Putting is idempotent, as in Barman's WAL archiving.** Putting an object that already
  exists with the same SHA-256 is success (``unchanged``, nothing is sent); putting one that
  exists with other content is :class:`~dr.errors.ChecksumMismatch`, unless the caller
  passes ``overwrite=True``.
- **Nothing is read whole into memory.** Reads and writes stream in chunks; large objects go
  up as multipart uploads; an interrupted large download resumes from its ``.part`` file
  with a ranged request.
- **Errors are translated here**, once: missing objects become
  :class:`~dr.errors.ObjectNotFound`; connection failures, timeouts, throttling and 5xx
  become ``StorageError(transient=True)`` (retried by :func:`dr.tasking.dr_task`); access
  denied, a full disk and the like fail fast.

The plain methods are what tests and other plain functions call; flows call the thin
Prefect tasks at the bottom of the module.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

import boto3
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.utils import ChunksizeAdjuster

from dr.config import AWSConfig, SecretRef
from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError, register_secret
from dr.tasking import dr_task

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MULTIPART_THRESHOLD_BYTES",
    "DEFAULT_PART_SIZE_BYTES",
    "DEFAULT_RESUME_MIN_BYTES",
    "S3_DELETE_MAX_KEYS",
    "S3_MAX_PARTS",
    "S3_MAX_PART_SIZE_BYTES",
    "S3_MIN_PART_SIZE_BYTES",
    "FileRepository",
    "ObjectInfo",
    "PutResult",
    "Repository",
    "S3Repository",
    "copy_to_local_dir",
    "copy_to_local_dir_task",
    "delete_object",
    "delete_object_task",
    "delete_prefix",
    "delete_prefix_task",
    "get_to_file",
    "get_to_file_task",
    "list_objects",
    "list_objects_task",
    "make_s3_client",
    "open_repository",
    "put_bytes",
    "put_bytes_task",
    "put_file",
    "put_file_task",
]

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Amazon S3 multipart upload limits:
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html
S3_MIN_PART_SIZE_BYTES = 5 * MiB
S3_MAX_PART_SIZE_BYTES = 5 * GiB
S3_MAX_PARTS = 10_000
# At most this many keys per DeleteObjects request:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
S3_DELETE_MAX_KEYS = 1000
# botocore's "standard" retry mode retries throttling, 5xx and connection errors with
# backoff; its ``max_attempts`` key counts retries after the first try (so 6 tries in all):
# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
# https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html
S3_MAX_RETRIES = 5
S3_CONNECT_TIMEOUT_SECONDS = 10.0
S3_READ_TIMEOUT_SECONDS = 60.0

DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MiB
DEFAULT_PART_SIZE_BYTES = 16 * MiB
DEFAULT_MAX_CONCURRENCY = 4
# Parts of a stream of unknown size held in memory at once by the transfer manager.
MAX_IN_MEMORY_PARTS = 4
DEFAULT_CHUNK_BYTES = 1 * MiB
# A download at least this large keeps its .part file when it fails, and resumes from it.
DEFAULT_RESUME_MIN_BYTES = 8 * MiB
# Ranged re-requests after a transient failure mid-download, within one call.
DOWNLOAD_RESUME_ATTEMPTS = 3

SHA256_METADATA_KEY = "sha256"
PART_SUFFIX = ".part"
TMP_SUFFIX = ".dr-tmp"
FILE_READ_ONLY_LOCK = "read-only"

LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
Outcome = Literal["created", "unchanged", "replaced"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_ETAG_RE = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
_S3_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_S3_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "OperationAborted",
}
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.EINTR,
    errno.ENETUNREACH,
    errno.ESTALE,
    errno.ETIMEDOUT,
}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ObjectInfo:
    """What a repository knows about one object without reading it.

    ``sha256`` is set when the repository recorded it (S3 metadata from :meth:`head`);
    listings and file:// leave it ``None`` (use :meth:`Repository.sha256`).
    ``etag`` identifies this version of the object, to notice a change mid-download.
    """

    key: str
    size: int
    mtime: datetime
    sha256: str | None = None
    etag: str | None = None
    lock_mode: str | None = None
    retain_until: datetime | None = None


@dataclass(frozen=True)
class PutResult:
    """The outcome of one put: what is stored now, and whether this call changed it.

    ``lock_mode`` is ``GOVERNANCE``/``COMPLIANCE`` when S3 Object Lock retains the object
    (as read back from the server), ``read-only`` for a write-once file:// object (a file
    permission only: it guards against overwrite, not against root), else ``None``.
    """

    key: str
    url: str
    size: int
    sha256: str
    outcome: Outcome
    lock_mode: str | None = None
    retain_until: datetime | None = None

    @property
    def locked(self) -> bool:
        """True when the storage provider itself enforces retention (S3 Object Lock)."""
        return self.lock_mode in ("GOVERNANCE", "COMPLIANCE")

    @property
    def undo(self) -> str:
        """How to revert this put, for the run's compensation record."""
        if self.outcome == "created":
            if self.locked:
                return f"{self.url} is retained by Object Lock until {self.retain_until}"
            return f"delete {self.url}"
        if self.outcome == "replaced":
            return f"previous content of {self.url} is gone unless the bucket keeps versions"
        return "nothing to undo"


# --------------------------------------------------------------------------- helpers


def _check_key(key: str) -> str:
    """Refuse keys that could escape the repository root or mean two things."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"invalid object key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ConfigError(f"invalid object key {key!r}: must be a relative '/'-separated path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ConfigError(f"invalid object key {key!r}: empty, '.' or '..' path segment")
    return key


def _check_prefix(prefix: str) -> str:
    """A key prefix: empty, or a key optionally ending with '/'."""
    if prefix:
        _check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _check_sha256(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if not _SHA256_RE.match(value):
        raise ConfigError(f"{what} is not a SHA-256 hex digest: {value!r}")
    return value


def _check_put_options(overwrite: bool, write_once: bool, retain_days: int | None) -> None:
    if write_once and overwrite:
        raise ConfigError("write_once and overwrite exclude each other")
    if retain_days is not None and (not write_once or retain_days < 1):
        raise ConfigError("retain_days needs write_once=True and must be at least 1")


def _short(digest: str | None) -> str:
    return (digest or "unknown")[:12]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _os_error(exc: OSError, what: str, *, missing_is_not_found: bool = True) -> StorageError:
    """Translate an OSError met at ``what`` (a path or URL) into the storage error tree."""
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code in (errno.ENOENT, errno.ENOTDIR) and missing_is_not_found:
        return ObjectNotFound(f"{what}: not found")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{what}: no space left on device", transient=False)
    if code in _TRANSIENT_ERRNOS:
        return StorageError(f"{what}: {reason}", transient=True)
    return StorageError(f"{what}: {reason}", transient=False)


def _s3_error(exc: Exception, what: str) -> StorageError:
    """Translate a boto3/botocore/urllib3 error met at ``what`` (an s3:// URL)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code == "NoSuchBucket":
            return StorageError(f"{what}: the bucket does not exist", transient=False)
        if code in _S3_NOT_FOUND_CODES or status == 404:
            return ObjectNotFound(f"{what}: not found")
        if code == "PreconditionFailed" or status == 412:
            return _ObjectChanged(f"{what}: the object changed while it was being read")
        if code in _S3_TRANSIENT_CODES or status >= 500 or status == 429:
            return StorageError(f"{what}: {code} {message}", transient=True)
        return StorageError(f"{what}: {code} {message}", transient=False)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{what}: no usable AWS credentials ({exc})", transient=False)
    if isinstance(
        exc,
        (
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return StorageError(f"{what}: {exc}", transient=True)
    return StorageError(f"{what}: {exc}", transient=False)


_S3_ERRORS = (BotoCoreError, ClientError, urllib3.exceptions.HTTPError, ConnectionError)


class _ObjectChanged(StorageError):
    """The object was replaced while a download was under way (retry from the start)."""

    transient_default = True


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


# --------------------------------------------------------------------------- interface


class Repository(ABC):
    """A backup repository: objects addressed by relative keys, checksummed end to end.

    Args:
        url: the repository's URL, as in ``dr.yaml``.
        chunk_bytes: read/write chunk size for streaming.
        resume_min_bytes: downloads at least this large resume from a ``.part`` file.
    """

    def __init__(
        self,
        url: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        resume_min_bytes: int = DEFAULT_RESUME_MIN_BYTES,
    ) -> None:
        self.url = url
        self.chunk_bytes = chunk_bytes
        self.resume_min_bytes = resume_min_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # ----------------------------------------------------------- backend primitives

    @abstractmethod
    def url_for(self, key: str) -> str:
        """The URL of ``key`` in this repository (for logs, reports and evidence).

        Raises:
            ConfigError: the key is not a valid relative path.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Describe one object without reading it.

        Raises:
            ObjectNotFound: no such object.
            StorageError: the repository failed (``transient`` says whether to retry).
        """

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), by key.

        Raises:
            StorageError: the repository failed.
        """

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` as a streaming binary file object (use it as a context manager).

        Raises:
            ObjectNotFound: no such object.
            StorageError: the repository failed (reads may raise it too, mid-stream).
        """

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one object; deleting a missing one is success.

        Returns:
            True when an object was there and was deleted.

        Raises:
            StorageError: the repository refused or failed.
        """

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (which must not be empty).

        Returns:
            How many objects were deleted.

        Raises:
            ConfigError: an empty prefix (that would empty the repository).
            StorageError: the repository refused or failed.
        """

    @abstractmethod
    def _upload_file(
        self,
        key: str,
        local_path: Path,
        *,
        replacing: bool,
        write_once: bool,
        retain_days: int | None,
        lock_mode: LockMode,
    ) -> PutResult:
        """Store ``local_path`` at ``key``: the idempotence check has already been made."""

    @abstractmethod
    def put_stream(
        self,
        key: str,
        fileobj: BinaryIO,
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
    ) -> PutResult:
        """Store everything read from ``fileobj`` at ``key``, hashing it as it streams.

        Same idempotence rule as :meth:`put_file`. With ``expected_sha256`` an existing
        object is compared without reading the stream, and content that does not hash to
        it is refused.

        Args:
            key: relative key.
            fileobj: a binary stream, read once from its current position to the end.
            expected_sha256: the content's SHA-256 when the caller knows it.
            overwrite: replace an existing object with other content.
            write_once: see :meth:`put_file`.
            retain_days: see :meth:`put_file`.
            lock_mode: see :meth:`put_file`.

        Returns:
            The :class:`PutResult`.

        Raises:
            ChecksumMismatch: the object exists with other content, or the stream did not
                hash to ``expected_sha256`` (nothing is left stored then).
            StorageError: the repository failed.
        """

    @abstractmethod
    def _read_range(
        self, key: str, start: int, etag: str | None
    ) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the object's bytes from ``start`` on, failing if its etag changed."""

    # ----------------------------------------------------------- shared behaviour

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` exists.

        Raises:
            StorageError: the repository failed.
        """
        return self._head_or_none(key) is not None

    def sha256(self, key: str) -> str:
        """The object's SHA-256: from its recorded metadata, else computed by streaming it.

        Raises:
            ObjectNotFound: no such object.
            StorageError: the repository failed.
        """
        info = self.head(key)
        if info.sha256:
            return info.sha256
        digest = hashlib.sha256()
        for chunk in self.iter_chunks(key):
            digest.update(chunk)
        return digest.hexdigest()

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the object's bytes in chunks of at most ``chunk_size`` (streaming).

        Raises:
            ObjectNotFound: no such object.
            StorageError: the repository failed.
        """
        with self.open_read(key) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def glob(self, pattern: str) -> list[ObjectInfo]:
        """Objects whose key matches a shell pattern (``*`` also matches ``/``), by key.

        Raises:
            StorageError: the repository failed.
        """
        static = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        base = static[: static.rfind("/") + 1]
        return [o for o in self.list(base) if fnmatch.fnmatchcase(o.key, pattern)]

    def put_file(
        self,
        key: str,
        local_path: str | Path,
        *,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
    ) -> PutResult:
        """Store a local file at ``key``; re-putting identical content is a no-op.

        Why the rule: archiving is retried (WAL segments, hourly dumps), so a second put of
        the same bytes must succeed without work, while a different file under a name that
        already exists means two histories collide and must stop the run.

        Args:
            key: relative key.
            local_path: the file to upload (streamed, never read whole into memory).
            overwrite: replace an existing object with other content.
            write_once: evidence mode. On S3 with Object Lock enabled on the bucket, the
                object is retained in ``lock_mode`` for ``retain_days`` (or the bucket's
                default retention); on file:// the file is made read-only.
            retain_days: days of Object Lock retention (needs ``write_once``).
            lock_mode: ``GOVERNANCE`` (privileged users may lift it) or ``COMPLIANCE``.

        Returns:
            The :class:`PutResult` (``created``, ``unchanged`` or ``replaced``).

        Raises:
            ChecksumMismatch: the object exists with other content and not ``overwrite``,
                or the stored object did not verify after upload (nothing is left then).
            ConfigError: invalid key or options.
            StorageError: the repository or the local file failed.
        """
        key = _check_key(key)
        _check_put_options(overwrite, write_once, retain_days)
        path = Path(local_path)
        existing = self._head_or_none(key)
        if existing is not None:
            local_sha = _hash_local_file(path).sha256
            if self._same_or_refuse(key, existing, local_sha, overwrite):
                return self._unchanged(key, existing, local_sha)
        return self._upload_file(
            key,
            path,
            replacing=existing is not None,
            write_once=write_once,
            retain_days=retain_days,
            lock_mode=lock_mode,
        )

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
    ) -> PutResult:
        """Store small in-memory content (manifests, reports) with the same rules as puts.

        Raises:
            ChecksumMismatch: the object exists with other content and not ``overwrite``.
            StorageError: the repository failed.
        """
        return self.put_stream(
            key,
            io.BytesIO(data),
            expected_sha256=hashlib.sha256(data).hexdigest(),
            overwrite=overwrite,
            write_once=write_once,
            retain_days=retain_days,
            lock_mode=lock_mode,
        )

    def get_to_file(
        self,
        key: str,
        local_path: str | Path,
        *,
        expected_sha256: str | None = None,
        resume: bool = True,
    ) -> str:
        """Download ``key`` to ``local_path`` atomically, verifying its SHA-256 as it streams.

        Bytes go to ``<local_path>.part``, renamed into place only once complete and
        verified, so a partial or corrupt file never sits at ``local_path``. A transient
        failure mid-stream is retried with a ranged request from where it stopped. An
        object of at least ``resume_min_bytes`` whose checksum is known (given, or
        recorded in the repository) keeps its ``.part`` file when the download fails for
        a transient reason, and the next call resumes from it: the final checksum proves
        the joined file.

        Args:
            key: relative key.
            local_path: destination file (its folder is created).
            expected_sha256: the checksum to verify; defaults to the recorded one.
            resume: use a leftover ``.part`` file.

        Returns:
            The SHA-256 of the downloaded content.

        Raises:
            ObjectNotFound: no such object.
            ChecksumMismatch: the content does not match; no file is left behind.
            StorageError: the repository or the local disk failed.
        """
        key = _check_key(key)
        expected_sha256 = _check_sha256(expected_sha256, "expected_sha256")
        info = self.head(key)
        expected = expected_sha256 or info.sha256
        dest = Path(local_path)
        part = dest.with_name(dest.name + PART_SUFFIX)
        resumable = resume and expected is not None and info.size >= self.resume_min_bytes
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"local folder {dest.parent}", missing_is_not_found=False) from exc
        actual = ""
        for fresh in (False, True):
            digest = hashlib.sha256()
            start = 0 if fresh or not resumable else self._usable_part(part, info.size, digest)
            if start == 0:
                digest = hashlib.sha256()
                _unlink_quietly(part)
            else:
                logger.info("resume %s at byte %d of %d", self.url_for(key), start, info.size)
            self._download_into(key, info, part, start, digest, keep_part=resumable)
            actual = digest.hexdigest()
            if expected is None or actual == expected:
                break
            _unlink_quietly(part)
            if start == 0:
                raise ChecksumMismatch(
                    f"{self.url_for(key)}: downloaded sha256 {_short(actual)} does not match "
                    f"expected {_short(expected)}; the object is corrupt or not the one expected"
                )
            logger.warning(
                "resumed download of %s did not verify; downloading it again whole",
                self.url_for(key),
            )
        try:
            os.replace(part, dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            _unlink_quietly(part)
            raise _os_error(exc, f"local file {dest}", missing_is_not_found=False) from exc
        logger.info(
            "get %s -> %s: %d bytes, sha256 %s verified=%s",
            self.url_for(key),
            dest,
            info.size,
            _short(actual),
            expected is not None,
        )
        return actual

    def copy_to_local_dir(
        self,
        prefix: str,
        dest_dir: str | Path,
        *,
        expected: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Download every object under ``prefix`` into ``dest_dir`` (a directory-format dump).

        Each file is verified as :meth:`get_to_file` does; ``expected`` (relative name →
        SHA-256, from a backup's manifest) adds a check per file and for missing files.

        Args:
            prefix: the folder-like prefix (a trailing ``/`` is added if missing).
            dest_dir: local folder; relative names under ``prefix`` are kept.
            expected: optional manifest of relative name → SHA-256.

        Returns:
            Relative name → SHA-256 of every file written.

        Raises:
            ObjectNotFound: nothing under ``prefix``, or a manifest entry is missing.
            ChecksumMismatch: a file does not match its checksum.
            StorageError: the repository or the local disk failed.
        """
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        _check_prefix(prefix)
        objects = self.list(prefix)
        if not objects:
            raise ObjectNotFound(f"{self.url_for_prefix(prefix)}: no objects under this prefix")
        names = {o.key[len(prefix) :] for o in objects}
        missing = sorted(set(expected or {}) - names)
        if missing:
            raise ObjectNotFound(
                f"{self.url_for_prefix(prefix)}: manifest lists missing objects: "
                + ", ".join(missing[:10])
            )
        dest = Path(dest_dir)
        result: dict[str, str] = {}
        for obj in objects:
            rel = _check_key(obj.key[len(prefix) :])
            want = (expected or {}).get(rel)
            result[rel] = self.get_to_file(obj.key, dest / rel, expected_sha256=want)
        logger.info(
            "copied %d objects from %s to %s", len(result), self.url_for_prefix(prefix), dest
        )
        return result

    def url_for_prefix(self, prefix: str) -> str:
        """The URL of a prefix (the repository's own URL for the empty prefix)."""
        return self.url_for(prefix.rstrip("/")) if prefix.strip("/") else self.url

    # ----------------------------------------------------------- internals

    def _head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return self.head(key)
        except ObjectNotFound:
            return None

    def _same_or_refuse(
        self, key: str, existing: ObjectInfo, new_sha: str, overwrite: bool
    ) -> bool:
        """True when ``existing`` already holds ``new_sha``; raise unless ``overwrite``."""
        current = existing.sha256 or self.sha256(key)
        if current == new_sha:
            return True
        if not overwrite:
            raise ChecksumMismatch(
                f"{self.url_for(key)} already exists with other content "
                f"(stored sha256 {_short(current)}, new {_short(new_sha)}); "
                "pass overwrite=True to replace it"
            )
        return False

    def _unchanged(self, key: str, existing: ObjectInfo, sha: str) -> PutResult:
        logger.info(
            "put %s: unchanged (%d bytes, sha256 %s already stored)",
            self.url_for(key),
            existing.size,
            _short(sha),
        )
        return PutResult(
            key=key,
            url=self.url_for(key),
            size=existing.size,
            sha256=sha,
            outcome="unchanged",
            lock_mode=existing.lock_mode,
            retain_until=existing.retain_until,
        )

    def _log_put(self, result: PutResult) -> None:
        logger.info(
            "put %s: %s (%d bytes, sha256 %s, lock %s); undo: %s",
            result.url,
            result.outcome,
            result.size,
            _short(result.sha256),
            result.lock_mode or "none",
            result.undo,
        )

    def _usable_part(self, part: Path, size: int, digest: Any) -> int:
        """Hash a leftover ``.part`` file into ``digest``; return its length, or 0 if unusable."""
        try:
            have = part.stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _os_error(exc, f"local file {part}", missing_is_not_found=False) from exc
        if have == 0 or have > size:
            return 0
        try:
            with open(part, "rb") as src:
                while chunk := src.read(self.chunk_bytes):
                    digest.update(chunk)
        except OSError as exc:
            raise _os_error(exc, f"local file {part}", missing_is_not_found=False) from exc
        return have

    def _download_into(
        self,
        key: str,
        info: ObjectInfo,
        part: Path,
        start: int,
        digest: Any,
        *,
        keep_part: bool,
    ) -> None:
        """Append the object's bytes from ``start`` to ``part``, resuming after hiccups."""
        offset = start
        failures = 0
        try:
            out = open(part, "ab" if start else "wb")
        except OSError as exc:
            raise _os_error(exc, f"local file {part}", missing_is_not_found=False) from exc
        try:
            while offset < info.size:
                try:
                    with self._read_range(key, offset, info.etag) as chunks:
                        for chunk in chunks:
                            try:
                                out.write(chunk)
                            except OSError as exc:
                                raise _os_error(
                                    exc, f"local file {part}", missing_is_not_found=False
                                ) from exc
                            digest.update(chunk)
                            offset += len(chunk)
                    if offset < info.size:
                        raise StorageError(
                            f"{self.url_for(key)}: stream ended at byte {offset} of {info.size}",
                            transient=True,
                        )
                except _ObjectChanged:
                    out.close()
                    _unlink_quietly(part)
                    raise
                except StorageError as exc:
                    failures += 1
                    if not exc.transient or failures > DOWNLOAD_RESUME_ATTEMPTS:
                        out.close()
                        if not (exc.transient and keep_part):
                            _unlink_quietly(part)
                        raise
                    logger.warning(
                        "download of %s failed at byte %d (%s); resuming (%d/%d)",
                        self.url_for(key),
                        offset,
                        exc,
                        failures,
                        DOWNLOAD_RESUME_ATTEMPTS,
                    )
            if offset > info.size:
                out.close()
                _unlink_quietly(part)
                raise _ObjectChanged(f"{self.url_for(key)}: object grew while it was being read")
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                out.close()
                _unlink_quietly(part)
                raise _os_error(exc, f"local file {part}", missing_is_not_found=False) from exc
        finally:
            out.close()


# --------------------------------------------------------------------------- file://


class FileRepository(Repository):
    """A repository in a local (or mounted) folder.

    Writes land in a temporary file in the destination folder, are fsynced and renamed into
    place (atomic on POSIX), so a reader sees the old object or the new one, never a torn one.
    """

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        root = Path(root)
        if not root.is_absolute():
            raise ConfigError(f"file repository root must be absolute: {root}")
        super().__init__(root.as_uri(), **kwargs)
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def url_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except OSError as exc:
            raise _os_error(exc, self.url_for(key)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{self.url_for(key)}: not a regular file")
        return self._info(key, st)

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            mtime=datetime.fromtimestamp(st.st_mtime, UTC),
            etag=f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}",
            lock_mode=None if st.st_mode & stat.S_IWUSR else FILE_READ_ONLY_LOCK,
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        _check_prefix(prefix)
        start = self.root / prefix[: prefix.rfind("/") + 1]
        found: list[ObjectInfo] = []

        def walk_error(exc: OSError) -> None:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise _os_error(exc, str(exc.filename))

        for folder, dirs, files in os.walk(start, onerror=walk_error):
            dirs.sort()
            for name in files:
                if name.endswith(TMP_SUFFIX):
                    continue
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _os_error(exc, self.url_for(key)) from exc
                if stat.S_ISREG(st.st_mode):
                    found.append(self._info(key, st))
        return sorted(found, key=lambda o: o.key)

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except IsADirectoryError as exc:
            raise ObjectNotFound(f"{self.url_for(key)}: not a regular file") from exc
        except OSError as exc:
            raise _os_error(exc, self.url_for(key)) from exc

    @contextmanager
    def _read_range(self, key: str, start: int, etag: str | None) -> Iterator[Iterator[bytes]]:
        src = self.open_read(key)
        try:
            if etag is not None:
                info = self._info(key, os.fstat(src.fileno()))
                if info.etag != etag:
                    raise _ObjectChanged(f"{self.url_for(key)}: replaced while being read")
            src.seek(start)
            yield self._chunks(src, key)
        finally:
            src.close()

    def _chunks(self, src: BinaryIO, key: str) -> Iterator[bytes]:
        while True:
            try:
                chunk = src.read(self.chunk_bytes)
            except OSError as exc:
                raise _os_error(exc, self.url_for(key)) from exc
            if not chunk:
                return
            yield chunk

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(exc, self.url_for(key)) from exc
        _fsync_dir(path.parent)
        logger.info("delete %s: deleted", self.url_for(key))
        return True

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.strip("/"):
            raise ConfigError("delete_prefix needs a non-empty prefix")
        objects = self.list(prefix)
        for obj in objects:
            self.delete(obj.key)
        # Remove the folders this left empty, deepest first, up to (never including) the root.
        folders = {self._path(o.key).parent for o in objects}
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
        logger.info(
            "delete_prefix %s: %d objects deleted", self.url_for_prefix(prefix), len(objects)
        )
        return len(objects)

    def _upload_file(
        self,
        key: str,
        local_path: Path,
        *,
        replacing: bool,
        write_once: bool,
        retain_days: int | None,
        lock_mode: LockMode,
    ) -> PutResult:
        try:
            src = open(local_path, "rb")
        except OSError as exc:
            raise _os_error(exc, f"local file {local_path}", missing_is_not_found=False) from exc
        with src:
            return self.put_stream(key, src, overwrite=replacing, write_once=write_once)

    def put_stream(
        self,
        key: str,
        fileobj: BinaryIO,
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
    ) -> PutResult:
        key = _check_key(key)
        expected_sha256 = _check_sha256(expected_sha256, "expected_sha256")
        _check_put_options(overwrite, write_once, retain_days)
        target = self._path(key)
        url = self.url_for(key)
        if expected_sha256 is not None:
            existing = self._head_or_none(key)
            if existing is not None and self._same_or_refuse(
                key, existing, expected_sha256, overwrite
            ):
                return self._unchanged(key, existing, expected_sha256)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
        try:
            digest = self._write_temp(tmp, fileobj, url)
            sha = digest.sha256
            if expected_sha256 is not None and sha != expected_sha256:
                raise ChecksumMismatch(
                    f"{url}: content read has sha256 {_short(sha)}, "
                    f"expected {_short(expected_sha256)}; nothing stored"
                )
            outcome: Outcome = "created"
            existing = self._head_or_none(key)
            if existing is not None:
                if self._same_or_refuse(key, existing, sha, overwrite):
                    return self._unchanged(key, existing, sha)
                if existing.lock_mode == FILE_READ_ONLY_LOCK:
                    raise StorageError(f"{url} is write-once; it is not replaced", transient=False)
                outcome = "replaced"
            mode = 0o666 & ~_current_umask()
            if write_once:
                mode &= ~0o222
            os.chmod(tmp, mode)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
        finally:
            _unlink_quietly(tmp)
        result = PutResult(
            key=key,
            url=url,
            size=digest.size,
            sha256=sha,
            outcome=outcome,
            lock_mode=FILE_READ_ONLY_LOCK if write_once else None,
        )
        self._log_put(result)
        return result

    def _write_temp(self, tmp: Path, fileobj: BinaryIO, url: str) -> _Digest:
        digest = _Digest()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = fileobj.read(self.chunk_bytes)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        return digest


def _current_umask() -> int:
    """The process umask, read from /proc (setting it to read it would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# --------------------------------------------------------------------------- s3://


def make_s3_client(
    aws: AWSConfig | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | SecretRef | None = None,
    secret_access_key: str | SecretRef | None = None,
    max_retries: int = S3_MAX_RETRIES,
    connect_timeout_seconds: float = S3_CONNECT_TIMEOUT_SECONDS,
    read_timeout_seconds: float = S3_READ_TIMEOUT_SECONDS,
) -> Any:
    """Build the boto3 S3 client: the one place S3 clients and their credentials are made.

    Explicit arguments win over ``aws``. Credentials given as :class:`SecretRef` are
    resolved here and only here; with none at all, boto3's default chain applies
    (environment, shared files, instance role).

    Args:
        aws: the ``aws`` section of ``dr.yaml``.
        endpoint_url: an S3-compatible endpoint (the local stand-in); path-style addressing.
        region: AWS region.
        access_key_id: key id, or a reference to it.
        secret_access_key: secret key, or a reference to it.
        max_retries: retries per request after the first try (botocore standard mode).
        connect_timeout_seconds: TCP connect timeout.
        read_timeout_seconds: socket read timeout.

    Returns:
        A ``botocore`` S3 client.

    Raises:
        ConfigError: only one half of a key pair, or a secret reference that does not resolve.
    """
    aws = aws or AWSConfig()
    endpoint = endpoint_url or aws.endpoint_url
    key_id = access_key_id if access_key_id is not None else aws.access_key_id
    secret = secret_access_key if secret_access_key is not None else aws.secret_access_key
    if (key_id is None) != (secret is None):
        raise ConfigError("give both an AWS access key id and a secret access key, or neither")
    credentials: dict[str, str] = {}
    if key_id is not None and secret is not None:
        key_value = key_id.resolve() if isinstance(key_id, SecretRef) else key_id
        secret_value = secret.resolve() if isinstance(secret, SecretRef) else secret
        register_secret(secret_value)
        credentials = {"aws_access_key_id": key_value, "aws_secret_access_key": secret_value}
    config = Config(
        retries={"mode": "standard", "max_attempts": max_retries},
        connect_timeout=connect_timeout_seconds,
        read_timeout=read_timeout_seconds,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=region or aws.region,
        endpoint_url=endpoint,
        config=config,
        **credentials,
    )


class S3Repository(Repository):
    """A repository under ``s3://bucket/prefix``.

    In a versioned bucket (every Object Lock bucket is one) a delete only adds a delete
    marker: earlier versions, and any version under Object Lock retention, remain.

    Args:
        client: a client from :func:`make_s3_client`.
        bucket: bucket name.
        prefix: key prefix (no leading or trailing ``/``), or empty.
        multipart_threshold_bytes: objects at least this large go up in parts.
        part_size_bytes: part size (raised to S3's minimum, and so that at most
            ``S3_MAX_PARTS`` parts are needed for a file of known size).
        max_concurrency: parallel part uploads.
        spool_dir: where a stream of unknown checksum is spooled before upload.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        spool_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        prefix = prefix.strip("/")
        if prefix:
            _check_key(prefix)
        super().__init__(f"s3://{bucket}/{prefix}".rstrip("/"), **kwargs)
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self._threshold = multipart_threshold_bytes
        self._adjuster = ChunksizeAdjuster(
            max_size=S3_MAX_PART_SIZE_BYTES, min_size=S3_MIN_PART_SIZE_BYTES, max_parts=S3_MAX_PARTS
        )
        self._part_size = self._adjuster.adjust_chunksize(part_size_bytes)
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=self._part_size,
            max_concurrency=max_concurrency,
            max_io_queue=max_concurrency * 4,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # boto3's constructor does not take it; s3transfer reads the attribute.
        self._transfer_config.max_in_memory_upload_chunks = MAX_IN_MEMORY_PARTS
        self._object_lock: bool | None = None

    # ----------------------------------------------------------- naming

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(_check_key(key))}"

    # ----------------------------------------------------------- reads

    def head(self, key: str) -> ObjectInfo:
        url = self.url_for(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except _S3_ERRORS as exc:
            raise _s3_error(exc, url) from exc
        recorded = (resp.get("Metadata") or {}).get(SHA256_METADATA_KEY, "").lower()
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            mtime=_utc(resp["LastModified"]) or datetime.now(UTC),
            sha256=recorded if _SHA256_RE.match(recorded) else None,
            etag=resp.get("ETag"),
            lock_mode=resp.get("ObjectLockMode"),
            retain_until=_utc(resp.get("ObjectLockRetainUntilDate")),
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        _check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[ObjectInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            key=item["Key"][len(base) :],
                            size=int(item["Size"]),
                            mtime=_utc(item["LastModified"]) or datetime.now(UTC),
                            etag=item.get("ETag"),
                        )
                    )
        except _S3_ERRORS as exc:
            raise _s3_error(exc, self.url_for_prefix(prefix)) from exc
        return sorted(found, key=lambda o: o.key)

    def open_read(self, key: str) -> BinaryIO:
        url = self.url_for(key)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
        except _S3_ERRORS as exc:
            raise _s3_error(exc, url) from exc
        raw = _S3BodyReader(resp["Body"], url)
        return io.BufferedReader(raw, buffer_size=self.chunk_bytes)  # type: ignore[return-value]

    @contextmanager
    def _read_range(self, key: str, start: int, etag: str | None) -> Iterator[Iterator[bytes]]:
        url = self.url_for(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if start:
            params["Range"] = f"bytes={start}-"
        if etag:
            params["IfMatch"] = etag
        try:
            resp = self._client.get_object(**params)
        except _S3_ERRORS as exc:
            raise _s3_error(exc, url) from exc
        body = resp["Body"]
        try:
            yield self._chunks(body, url)
        finally:
            body.close()

    def _chunks(self, body: Any, url: str) -> Iterator[bytes]:
        while True:
            try:
                chunk = body.read(self.chunk_bytes)
            except _S3_ERRORS as exc:
                raise _s3_error(exc, url) from exc
            if not chunk:
                return
            yield chunk

    # ----------------------------------------------------------- deletes

    def delete(self, key: str) -> bool:
        url = self.url_for(key)
        if self._head_or_none(key) is None:
            return False
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except _S3_ERRORS as exc:
            raise _s3_error(exc, url) from exc
        logger.info("delete %s: deleted", url)
        return True

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.strip("/"):
            raise ConfigError("delete_prefix needs a non-empty prefix")
        keys = [self._full(o.key) for o in self.list(prefix)]
        url = self.url_for_prefix(prefix)
        for i in range(0, len(keys), S3_DELETE_MAX_KEYS):
            batch = keys[i : i + S3_DELETE_MAX_KEYS]
            try:
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except _S3_ERRORS as exc:
                raise _s3_error(exc, url) from exc
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{url}: {len(errors)} objects not deleted, first {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}",
                    transient=any(e.get("Code") in _S3_TRANSIENT_CODES for e in errors),
                )
        logger.info("delete_prefix %s: %d objects deleted", url, len(keys))
        return len(keys)

    # ----------------------------------------------------------- writes

    def object_lock_enabled(self) -> bool:
        """Tell whether the bucket has S3 Object Lock enabled (asked once, then cached).

        Raises:
            StorageError: the bucket could not be asked (other than access denied).
        """
        if self._object_lock is None:
            try:
                resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
                enabled = (
                    resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "ObjectLockConfigurationNotFoundError":
                    enabled = False
                elif code == "AccessDenied":
                    logger.warning(
                        "cannot read the Object Lock configuration of s3://%s (access denied); "
                        "assuming none",
                        self.bucket,
                    )
                    enabled = False
                else:
                    raise _s3_error(exc, f"s3://{self.bucket}") from exc
            except _S3_ERRORS as exc:
                raise _s3_error(exc, f"s3://{self.bucket}") from exc
            self._object_lock = enabled
        return self._object_lock

    def _lock_args(
        self, url: str, write_once: bool, retain_days: int | None, lock_mode: LockMode
    ) -> dict[str, Any]:
        if not write_once:
            return {}
        if not self.object_lock_enabled():
            logger.warning(
                "s3://%s has no Object Lock: %s is write-once by convention only",
                self.bucket,
                url,
            )
            return {}
        if retain_days is None:
            return {}  # the bucket's default retention applies, if it has one
        if lock_mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise ConfigError(f"lock_mode must be GOVERNANCE or COMPLIANCE, not {lock_mode!r}")
        return {
            "ObjectLockMode": lock_mode,
            "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=retain_days),
        }

    def _transfer(self, source: Any, key: str, extra_args: dict[str, Any]) -> None:
        url = self.url_for(key)
        try:
            with create_transfer_manager(self._client, self._transfer_config) as manager:
                future = manager.upload(source, self.bucket, self._full(key), extra_args=extra_args)
                future.result()
        except _S3_ERRORS as exc:
            raise _s3_error(exc, url) from exc
        except OSError as exc:
            raise _os_error(exc, f"source of {url}", missing_is_not_found=False) from exc

    def _verify_upload(self, key: str, digest: _Digest, lock: dict[str, Any]) -> ObjectInfo:
        """Check what the server stored against what was sent; remove it if it differs.

        Why: the stand-in (and a misbehaving proxy) can store bytes other than those sent
        without complaint; a backup that cannot be trusted is worse than none.
        """
        url = self.url_for(key)
        info = self.head(key)
        problems = []
        if info.size != digest.size:
            problems.append(f"size {info.size} != {digest.size}")
        if info.sha256 != digest.sha256:
            problems.append(f"metadata sha256 {_short(info.sha256)} != {_short(digest.sha256)}")
        etag_ok = digest.etag_matches(info.etag)
        if etag_ok is False:
            problems.append(f"ETag {info.etag} != {digest.expected_etag()}")
        elif etag_ok is None:
            logger.debug("%s: ETag %s is not an MD5; verified size and metadata", url, info.etag)
        if problems:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
            except _S3_ERRORS as exc:
                logger.warning("could not remove unverified %s: %s", url, exc)
            raise ChecksumMismatch(
                f"{url}: upload did not verify ({'; '.join(problems)}); removed, try again",
                transient=True,
            )
        if lock and info.lock_mode is None:
            # Some S3-compatible servers drop lock headers on multipart uploads: set it now.
            try:
                self._client.put_object_retention(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    VersionId=self._version_id(key),
                    Retention={
                        "Mode": lock["ObjectLockMode"],
                        "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                    },
                )
            except _S3_ERRORS as exc:
                raise _s3_error(exc, url) from exc
            info = self.head(key)
        return info

    def _version_id(self, key: str) -> str:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except _S3_ERRORS as exc:
            raise _s3_error(exc, self.url_for(key)) from exc
        return str(resp.get("VersionId") or "null")

    def _result(self, key: str, info: ObjectInfo, replacing: bool) -> PutResult:
        result = PutResult(
            key=key,
            url=self.url_for(key),
            size=info.size,
            sha256=info.sha256 or "",
            outcome="replaced" if replacing else "created",
            lock_mode=info.lock_mode,
            retain_until=info.retain_until,
        )
        self._log_put(result)
        return result

    def _upload_file(
        self,
        key: str,
        local_path: Path,
        *,
        replacing: bool,
        write_once: bool,
        retain_days: int | None,
        lock_mode: LockMode,
    ) -> PutResult:
        url = self.url_for(key)
        try:
            size = local_path.stat().st_size
        except OSError as exc:
            raise _os_error(exc, f"local file {local_path}", missing_is_not_found=False) from exc
        part_size = self._adjuster.adjust_chunksize(self._part_size, size)
        digest = _hash_local_file(local_path, part_size=part_size, threshold=self._threshold)
        lock = self._lock_args(url, write_once, retain_days, lock_mode)
        extra = {"Metadata": {SHA256_METADATA_KEY: digest.sha256}, **lock}
        self._transfer(str(local_path), key, extra)
        info = self._verify_upload(key, digest, lock)
        return self._result(key, info, replacing)

    def put_stream(
        self,
        key: str,
        fileobj: BinaryIO,
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
    ) -> PutResult:
        """See :meth:`Repository.put_stream`.

        Without ``expected_sha256`` the stream is first spooled to a local temporary file
        (S3 metadata is sent before the body, so the checksum must be known up front).
        """
        key = _check_key(key)
        expected_sha256 = _check_sha256(expected_sha256, "expected_sha256")
        _check_put_options(overwrite, write_once, retain_days)
        options: dict[str, Any] = {
            "overwrite": overwrite,
            "write_once": write_once,
            "retain_days": retain_days,
            "lock_mode": lock_mode,
        }
        if expected_sha256 is None:
            with tempfile.TemporaryDirectory(dir=self.spool_dir, prefix="dr-spool-") as tmp:
                spool = Path(tmp, "object")
                try:
                    with open(spool, "wb") as out:
                        shutil.copyfileobj(fileobj, out, self.chunk_bytes)
                except OSError as exc:
                    raise _os_error(exc, f"spool file {spool}", missing_is_not_found=False) from exc
                return self.put_file(key, spool, **options)
        url = self.url_for(key)
        existing = self._head_or_none(key)
        if existing is not None and self._same_or_refuse(key, existing, expected_sha256, overwrite):
            return self._unchanged(key, existing, expected_sha256)
        digest = _Digest(part_size=self._part_size, threshold=self._threshold)
        lock = self._lock_args(url, write_once, retain_days, lock_mode)
        extra = {"Metadata": {SHA256_METADATA_KEY: expected_sha256}, **lock}
        self._transfer(_HashingReader(fileobj, digest), key, extra)
        if digest.sha256 != expected_sha256:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
            except _S3_ERRORS as exc:
                logger.warning("could not remove mismatched %s: %s", url, exc)
            raise ChecksumMismatch(
                f"{url}: content read has sha256 {_short(digest.sha256)}, "
                f"expected {_short(expected_sha256)}; removed"
            )
        info = self._verify_upload(key, digest, lock)
        return self._result(key, info, existing is not None)


# --------------------------------------------------------------------------- factory


def open_repository(
    url: str,
    *,
    s3_client: Any = None,
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
    resume_min_bytes: int = DEFAULT_RESUME_MIN_BYTES,
) -> Repository:
    """Open the repository named by ``url`` (``file:///abs/path`` or ``s3://bucket/prefix``).

    Args:
        url: the repository URL from ``dr.yaml``.
        s3_client: a client from :func:`make_s3_client`; built with defaults if omitted.
        multipart_threshold_bytes: S3 objects at least this large are uploaded in parts.
        part_size_bytes: S3 part size (at least ``S3_MIN_PART_SIZE_BYTES``).
        resume_min_bytes: downloads at least this large resume after a failure.

    Returns:
        A :class:`FileRepository` or :class:`S3Repository`.

    Raises:
        ConfigError: the URL is neither form.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"file repository URL must be file:///absolute/path: {url}")
        return FileRepository(
            unquote(parts.path).rstrip("/") or "/", resume_min_bytes=resume_min_bytes
        )
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"S3 repository URL must be s3://bucket[/prefix]: {url}")
        return S3Repository(
            s3_client if s3_client is not None else make_s3_client(),
            parts.netloc,
            unquote(parts.path),
            multipart_threshold_bytes=multipart_threshold_bytes,
            part_size_bytes=part_size_bytes,
            resume_min_bytes=resume_min_bytes,
        )
    raise ConfigError(f"unsupported repository URL {url!r}: use file:///path or s3://bucket/prefix")


# --------------------------------------------------------------------------- tasks


def put_file(
    repo: Repository,
    key: str,
    local_path: str | Path,
    *,
    overwrite: bool = False,
    write_once: bool = False,
    retain_days: int | None = None,
    lock_mode: LockMode = "GOVERNANCE",
) -> PutResult:
    """Upload a local file (see :meth:`Repository.put_file`)."""
    return repo.put_file(
        key,
        local_path,
        overwrite=overwrite,
        write_once=write_once,
        retain_days=retain_days,
        lock_mode=lock_mode,
    )


def put_bytes(
    repo: Repository,
    key: str,
    data: bytes,
    *,
    overwrite: bool = False,
    write_once: bool = False,
    retain_days: int | None = None,
    lock_mode: LockMode = "GOVERNANCE",
) -> PutResult:
    """Store small content such as a manifest (see :meth:`Repository.put_bytes`)."""
    return repo.put_bytes(
        key,
        data,
        overwrite=overwrite,
        write_once=write_once,
        retain_days=retain_days,
        lock_mode=lock_mode,
    )


def get_to_file(
    repo: Repository,
    key: str,
    local_path: str | Path,
    *,
    expected_sha256: str | None = None,
) -> str:
    """Download and verify one object (see :meth:`Repository.get_to_file`); retries resume."""
    return repo.get_to_file(key, local_path, expected_sha256=expected_sha256)


def copy_to_local_dir(
    repo: Repository,
    prefix: str,
    dest_dir: str | Path,
    *,
    expected: dict[str, str] | None = None,
) -> dict[str, str]:
    """Download a whole prefix, verified (see :meth:`Repository.copy_to_local_dir`)."""
    return repo.copy_to_local_dir(prefix, dest_dir, expected=expected)


def list_objects(repo: Repository, prefix: str = "") -> list[ObjectInfo]:
    """List objects under a prefix, sorted by key (see :meth:`Repository.list`)."""
    return repo.list(prefix)


def delete_object(repo: Repository, key: str) -> bool:
    """Delete one object; a missing one is success (see :meth:`Repository.delete`)."""
    return repo.delete(key)


def delete_prefix(repo: Repository, prefix: str) -> int:
    """Delete every object under a non-empty prefix (see :meth:`Repository.delete_prefix`)."""
    return repo.delete_prefix(prefix)


put_file_task = dr_task(put_file, name="storage-put-file")
put_bytes_task = dr_task(put_bytes, name="storage-put-bytes")
get_to_file_task = dr_task(get_to_file, name="storage-get-to-file")
copy_to_local_dir_task = dr_task(copy_to_local_dir, name="storage-copy-to-local-dir")
list_objects_task = dr_task(list_objects, name="storage-list-objects")
delete_object_task = dr_task(delete_object, name="storage-delete-object")
delete_prefix_task = dr_task(delete_prefix, name="storage-delete-prefix")


# --- wrappers added for flows (lead: move on merge)


def read_object(repo: Repository, key: str, max_bytes: int = -1) -> bytes:
    """The bytes of one small object (a manifest), or its first ``max_bytes``."""
    with repo.open_read(key) as fh:
        return fh.read(max_bytes)


def glob_objects(repo: Repository, pattern: str) -> list[ObjectInfo]:
    """Objects whose key matches a glob pattern (see :meth:`Repository.glob`)."""
    return repo.glob(pattern)


read_object_task = dr_task(read_object, name="storage-read-object")
glob_objects_task = dr_task(glob_objects, name="storage-glob-objects")
