"""The storage boundary: the Repository interface, its factory, the S3 client, the error rule.

Backups, the WAL archive and evidence bundles all go through :class:`Repository`, built by
:func:`open_repository` from the URL in ``dr.yaml`` (``file:///abs/path`` or
``s3://bucket/prefix``). Keys are relative, ``/``-separated paths under the repository's root.

Errors are translated here, once: missing objects become :class:`~dr.errors.ObjectNotFound`;
connection failures, timeouts, throttling and 5xx become ``StorageError(transient=True)``
(retried by :func:`dr.tasking.dr_task`); access denied, a full disk and the like fail fast.
The behaviour every backend shares (checksums while streaming, idempotent puts, resumable
downloads) is in :mod:`tasks.storage.base`; the backends are :mod:`tasks.storage.file` and
:mod:`tasks.storage.s3`.
"""

from __future__ import annotations

import errno
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import boto3
import urllib3.exceptions
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

from dr.config import AWSConfig, SecretRef
from dr.errors import ConfigError, ObjectNotFound, StorageError, register_secret
from tasks.storage.objects import (  # noqa: F401 - the interface's vocabulary, found here
    LockMode,
    ObjectInfo,
    Outcome,
    PutResult,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# botocore's "standard" retry mode retries throttling, 5xx and connection errors with
# backoff; its ``max_attempts`` key counts retries after the first try (so 6 tries in all):
# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
# https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html
S3_MAX_RETRIES = 5
S3_CONNECT_TIMEOUT_SECONDS = 10.0
S3_READ_TIMEOUT_SECONDS = 60.0

DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MiB
DEFAULT_PART_SIZE_BYTES = 16 * MiB
DEFAULT_CHUNK_BYTES = 1 * MiB
# A download at least this large keeps its .part file when it fails, and resumes from it.
DEFAULT_RESUME_MIN_BYTES = 8 * MiB

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


# --------------------------------------------------------------------------- errors


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
        if s3_code_is_transient(code) or status >= 500 or status == 429:
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


def s3_code_is_transient(code: object) -> bool:
    """Whether an S3 error code means "try again later" (throttling, timeouts, 5xx)."""
    return code in _S3_TRANSIENT_CODES


# --------------------------------------------------------------------------- S3 client


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
    # With explicit keys the models are loaded once per process; boto3's own credential
    # chain gets a fresh session, which reads it again (keys may have been rotated).
    session = _shared_session() if credentials else boto3.session.Session()
    with _SESSION_LOCK:  # a botocore session is not thread-safe; its clients are
        return session.client(
            "s3",
            region_name=region or aws.region,
            endpoint_url=endpoint,
            config=config,
            **credentials,
        )


_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[int, boto3.session.Session] = {}


def _shared_session() -> boto3.session.Session:
    """One boto3 session per process, for clients built with explicit keys.

    Why: a new session parses botocore's S3 model and endpoint rules again (0.1 s, over 1 s
    on a loaded 2-core machine, and a backup run builds a client per task); a session
    given the keys explicitly holds no credentials of its own. Keyed by pid: a forked
    worker builds its own.
    """
    with _SESSION_LOCK:
        if os.getpid() not in _SESSIONS:
            _SESSIONS[os.getpid()] = boto3.session.Session()
        return _SESSIONS[os.getpid()]


# --------------------------------------------------------------------------- interface


class Repository(ABC):
    """A backup repository: objects addressed by relative keys, checksummed end to end.

    The interface callers code against; backends subclass
    :class:`tasks.storage.base.BaseRepository`, which implements the shared methods below
    the primitives.

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

    # ----------------------------------------------------------- shared (tasks.storage.base)

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Tell whether ``key`` exists (``StorageError`` when the repository failed)."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """The object's SHA-256: from its recorded metadata, else computed by streaming it."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the object's bytes in chunks of at most ``chunk_size`` (streaming)."""

    @abstractmethod
    def iter_chunks_resuming(self, key: str) -> Iterator[bytes]:
        """Yield the object's bytes, resuming with ranged reads after transient failures."""

    @abstractmethod
    def glob(self, pattern: str) -> list[ObjectInfo]:
        """Objects whose key matches a shell pattern (``*`` also matches ``/``), by key."""

    @abstractmethod
    def put_file(
        self,
        key: str,
        local_path: str | Path,
        *,
        overwrite: bool = False,
        write_once: bool = False,
        retain_days: int | None = None,
        lock_mode: LockMode = "GOVERNANCE",
        expected_sha256: str | None = None,
    ) -> PutResult:
        """Store a local file at ``key``; re-putting identical content is a no-op.

        With ``expected_sha256`` (the file's checksum from a manifest) what is stored is
        verified against it, and content that does not hash to it is refused.

        Raises:
            ChecksumMismatch: the object exists with other content and not ``overwrite``.
        """

    @abstractmethod
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
        """Store small in-memory content (manifests, reports) with the same rules as puts."""

    @abstractmethod
    def get_to_file(
        self,
        key: str,
        local_path: str | Path,
        *,
        expected_sha256: str | None = None,
        resume: bool = True,
    ) -> str:
        """Download ``key`` to ``local_path`` atomically, verifying its SHA-256; return it.

        Raises:
            ChecksumMismatch: the content does not match; no file is left behind.
        """

    @abstractmethod
    def copy_to_local_dir(
        self,
        prefix: str,
        dest_dir: str | Path,
        *,
        expected: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Download every object under ``prefix`` into ``dest_dir``, verified; name -> SHA-256."""

    @abstractmethod
    def url_for_prefix(self, prefix: str) -> str:
        """The URL of a prefix (the repository's own URL for the empty prefix)."""


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
    # The backends subclass Repository (defined here), so they are imported on first use.
    from tasks.storage.file import FileRepository
    from tasks.storage.s3 import S3Repository

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
