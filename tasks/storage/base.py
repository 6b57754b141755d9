"""The behaviour every backend shares: checksums while streaming, idempotent puts, resumes.

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

Backends (:mod:`tasks.storage.file`, :mod:`tasks.storage.s3`) implement the primitives of
:class:`~tasks.storage.client.Repository` plus ``_upload_file`` and ``_read_range``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
import os
import re
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from dr.errors import ChecksumMismatch, ObjectNotFound, StorageError
from tasks.storage.client import (
    DEFAULT_CHUNK_BYTES,
    LockMode,
    ObjectInfo,
    PutResult,
    Repository,
    _ObjectChanged,
    _os_error,
)
from tasks.storage.objects import (
    _check_key,
    _check_prefix,
    _check_put_options,
    _check_sha256,
    _short,
)
from tasks.storage.streams import (
    _hash_local_file,
    _move_into_place,
    _unlink_quietly,
    resuming_chunks,
)

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
# Ranged re-requests after a transient failure mid-download, within one call.
DOWNLOAD_RESUME_ATTEMPTS = 3


class BaseRepository(Repository):
    """A :class:`~tasks.storage.client.Repository` with the shared behaviour implemented."""

    # ----------------------------------------------------------- backend hooks

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
        expected_sha256: str | None = None,
    ) -> PutResult:
        """Store ``local_path`` at ``key`` (idempotence checked), verified against the SHA-256."""

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

    def iter_chunks_resuming(self, key: str) -> Iterator[bytes]:
        """The object's bytes; a transient failure resumes with a ranged read (same etag)."""
        key = _check_key(key)
        info = self.head(key)
        url = self.url_for(key)
        return resuming_chunks(self._read_range, key, info, url, DOWNLOAD_RESUME_ATTEMPTS)

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
        expected_sha256: str | None = None,
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
            expected_sha256: the file's SHA-256 (a manifest's): what is stored must match it.

        Returns:
            The :class:`PutResult` (``created``, ``unchanged`` or ``replaced``).

        Raises:
            ChecksumMismatch: the object exists with other content and not ``overwrite``,
                or the stored object did not verify after upload (nothing is left then).
            ConfigError: invalid key or options.
            StorageError: the repository or the local file failed.
        """
        key = _check_key(key)
        expected_sha256 = _check_sha256(expected_sha256, "expected_sha256")
        _check_put_options(overwrite, write_once, retain_days)
        path = Path(local_path)
        existing = self._head_or_none(key)
        if existing is not None:
            local_sha = expected_sha256 or _hash_local_file(path).sha256
            if self._same_or_refuse(key, existing, local_sha, overwrite):
                return self._unchanged(key, existing, local_sha)
        return self._upload_file(
            key,
            path,
            replacing=existing is not None,
            write_once=write_once,
            retain_days=retain_days,
            lock_mode=lock_mode,
            expected_sha256=expected_sha256,
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
        actual = self._download_verified(key, info, part, expected, resumable=resumable)
        _move_into_place(part, dest)
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

    def _download_verified(
        self, key: str, info: ObjectInfo, part: Path, expected: str | None, *, resumable: bool
    ) -> str:
        """Fill ``part`` with the object; a resumed file that does not verify is fetched whole."""
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
                return actual
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
        return actual
