"""The file:// backend: a repository in a local (or mounted) folder."""

from __future__ import annotations

import errno
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError
from tasks.storage.base import BaseRepository
from tasks.storage.client import LockMode, ObjectInfo, Outcome, PutResult, _ObjectChanged, _os_error
from tasks.storage.objects import (
    _check_key,
    _check_prefix,
    _check_put_options,
    _check_sha256,
    _short,
)
from tasks.storage.streams import _Digest, _fsync_dir, _hash_local_file, _unlink_quietly

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".dr-tmp"
#: ``link(2)`` failures that mean "copy instead": another filesystem, no hard links there.
_NO_LINK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
)
FILE_READ_ONLY_LOCK = "read-only"


class FileRepository(BaseRepository):
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
        expected_sha256: str | None = None,
    ) -> PutResult:
        if expected_sha256 is not None:
            linked = self._put_linked(key, local_path, expected_sha256, replacing, write_once)
            if linked is not None:
                return linked
        try:
            src = open(local_path, "rb")
        except OSError as exc:
            raise _os_error(exc, f"local file {local_path}", missing_is_not_found=False) from exc
        with src:
            return self.put_stream(
                key,
                src,
                expected_sha256=expected_sha256,
                overwrite=replacing,
                write_once=write_once,
            )

    def _put_linked(
        self, key: str, local_path: Path, expected_sha256: str, replacing: bool, write_once: bool
    ) -> PutResult | None:
        """Store a staged file by hard link when it is on the repository's filesystem.

        Why: a staged backup file is written once, described in its manifest, stored, then
        its staging name is removed; copying it into a repository on the same filesystem
        reads and writes every byte again for nothing. The link shares the inode, so the
        object is then hashed where it is stored (the same check as a copy: nothing that
        does not hash to ``expected_sha256`` is stored), fsynced and renamed into place.
        The staged name must not be written to afterwards (staging only ever unlinks).

        Returns:
            The :class:`PutResult`, or None when no link can be made (another filesystem,
            links not supported): the caller copies instead.
        """
        target = self._path(key)
        url = self.url_for(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
        try:
            os.link(local_path, tmp)
        except OSError as exc:
            if exc.errno in _NO_LINK_ERRNOS:
                logger.debug("cannot link %s into %s (%s): copying", local_path, url, exc)
                return None
            raise _os_error(exc, f"local file {local_path}", missing_is_not_found=False) from exc
        try:
            digest = _hash_local_file(tmp)
            _refuse_mismatch(url, digest.sha256, expected_sha256)
            _fsync_file(tmp)
            return self._place(key, tmp, digest, replacing=replacing, write_once=write_once)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
        finally:
            _unlink_quietly(tmp)

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
            _refuse_mismatch(url, digest.sha256, expected_sha256)
            return self._place(key, tmp, digest, replacing=overwrite, write_once=write_once)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
        finally:
            _unlink_quietly(tmp)

    def _place(
        self, key: str, tmp: Path, digest: _Digest, *, replacing: bool, write_once: bool
    ) -> PutResult:
        """Rename a verified temporary file to ``key`` (unless identical content is there)."""
        url = self.url_for(key)
        sha = digest.sha256
        try:
            outcome: Outcome = "created"
            existing = self._head_or_none(key)
            if existing is not None:
                if self._same_or_refuse(key, existing, sha, replacing):
                    return self._unchanged(key, existing, sha)
                if existing.lock_mode == FILE_READ_ONLY_LOCK:
                    raise StorageError(f"{url} is write-once; it is not replaced", transient=False)
                outcome = "replaced"
            mode = 0o666 & ~_current_umask()
            if write_once:
                mode &= ~0o222
            os.chmod(tmp, mode)
            os.replace(tmp, self._path(key))
            _fsync_dir(tmp.parent)
        except OSError as exc:
            raise _os_error(exc, url, missing_is_not_found=False) from exc
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


def _fsync_file(path: Path) -> None:
    """Make a file's bytes durable (a staged file may have been written without fsync)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _refuse_mismatch(url: str, sha256: str, expected_sha256: str | None) -> None:
    """Nothing is stored when the bytes read do not hash to what the caller expects."""
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ChecksumMismatch(
            f"{url}: content read has sha256 {_short(sha256)}, "
            f"expected {_short(expected_sha256)}; nothing stored"
        )
