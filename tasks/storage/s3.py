"""The s3:// backend: a repository under ``s3://bucket/prefix``, through boto3's transfer manager."""

from __future__ import annotations

import functools
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import ClientError
from s3transfer.utils import ChunksizeAdjuster

from dr.clock import utcnow
from dr.errors import ChecksumMismatch, ConfigError, StorageError
from tasks.storage.base import BaseRepository
from tasks.storage.client import (
    _S3_ERRORS,
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    DEFAULT_PART_SIZE_BYTES,
    GiB,
    LockMode,
    MiB,
    ObjectInfo,
    PutResult,
    _os_error,
    _s3_error,
    s3_code_is_transient,
)
from tasks.storage.objects import (
    _SHA256_RE,
    _check_key,
    _check_prefix,
    _check_put_options,
    _check_sha256,
    _short,
    _utc,
)
from tasks.storage.streams import _Digest, _hash_local_file, _HashingReader, _S3BodyReader

logger = logging.getLogger(__name__)

# Amazon S3 multipart upload limits:
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html
S3_MIN_PART_SIZE_BYTES = 5 * MiB
S3_MAX_PART_SIZE_BYTES = 5 * GiB
S3_MAX_PARTS = 10_000
# At most this many keys per DeleteObjects request:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
S3_DELETE_MAX_KEYS = 1000
DEFAULT_MAX_CONCURRENCY = 4
# Parts of a stream of unknown size held in memory at once by the transfer manager.
MAX_IN_MEMORY_PARTS = 4
SHA256_METADATA_KEY = "sha256"


class S3Repository(BaseRepository):
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
            mtime=_utc(resp["LastModified"]) or utcnow(),
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
                            mtime=_utc(item["LastModified"]) or utcnow(),
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
                    transient=any(s3_code_is_transient(e.get("Code")) for e in errors),
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
            "ObjectLockRetainUntilDate": utcnow() + timedelta(days=retain_days),
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
        expected_sha256: str | None = None,
    ) -> PutResult:
        """Upload by file name, so the transfer manager reads parts in parallel.

        Without ``expected_sha256`` the file is hashed first (the metadata goes before the
        body). With it (a manifest's) the same digest (SHA-256, part MD5s) is computed in
        another thread while the parts go up: the server's size, metadata and ETag are then
        checked against it as after any upload, and a file that does not hash to
        ``expected_sha256`` is removed from the bucket and refused.
        """
        url = self.url_for(key)
        try:
            size = local_path.stat().st_size
        except OSError as exc:
            raise _os_error(exc, f"local file {local_path}", missing_is_not_found=False) from exc
        part_size = self._adjuster.adjust_chunksize(self._part_size, size)
        lock = self._lock_args(url, write_once, retain_days, lock_mode)
        hashing = functools.partial(
            _hash_local_file, local_path, part_size=part_size, threshold=self._threshold
        )
        if expected_sha256 is None:
            digest = hashing()
            extra = {"Metadata": {SHA256_METADATA_KEY: digest.sha256}, **lock}
            self._transfer(str(local_path), key, extra)
        else:
            extra = {"Metadata": {SHA256_METADATA_KEY: expected_sha256}, **lock}
            with ThreadPoolExecutor(1, thread_name_prefix="dr-hash") as pool:
                pending = pool.submit(hashing)
                self._transfer(str(local_path), key, extra)
                digest = pending.result()
            if digest.sha256 != expected_sha256:
                self._remove_mismatched(key, digest, expected_sha256)
        info = self._verify_upload(key, digest, lock)
        return self._result(key, info, replacing)

    def _remove_mismatched(self, key: str, digest: _Digest, expected_sha256: str) -> None:
        url = self.url_for(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except _S3_ERRORS as exc:
            logger.warning("could not remove mismatched %s: %s", url, exc)
        raise ChecksumMismatch(
            f"{url}: content read has sha256 {_short(digest.sha256)}, "
            f"expected {_short(expected_sha256)}; removed"
        )

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
            self._remove_mismatched(key, digest, expected_sha256)
        info = self._verify_upload(key, digest, lock)
        return self._result(key, info, existing is not None)


# --------------------------------------------------------------------------- factory
