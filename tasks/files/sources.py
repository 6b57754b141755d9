"""The files being protected, behind one small interface: an S3 prefix, a directory, a tarball.

Keys are relative to the source's prefix or folder (``/``-separated). Writes never delete:
what a restore replaces is first copied aside as evidence (see :meth:`Source.keep_aside`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from dr.config import AWSConfig
from dr.config_state import FileSource
from dr.errors import ConfigError, ObjectNotFound, StorageError
from tasks.files.client import s3_client, s3_errors, split_s3_url

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SourceObject:
    """One file or object as listed, before it is read."""

    key: str
    size: int
    mtime: datetime
    version_id: str | None = None
    etag: str | None = None
    mode: int | None = None


def sha256_of(stream: BinaryIO) -> str:
    """Hash a stream to its end, chunk by chunk."""
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


class Source(ABC):
    """Where the protected files live."""

    location: str

    @abstractmethod
    def list(self) -> list[SourceObject]:
        """Every object, by key (the current version of each on S3)."""

    @abstractmethod
    def open(self, key: str, version_id: str | None = None) -> BinaryIO:
        """Open one object for streaming (a given S3 version when asked)."""

    @abstractmethod
    def write_file(self, key: str, local_path: Path, mode: int | None = None) -> None:
        """Store a local file's content at ``key`` (a new S3 version; an atomic rename).

        ``mode`` is the permission bits a local file had when it was backed up (an ``.env``
        restored world-readable would be a new problem); S3 ignores it.
        """

    @abstractmethod
    def keep_aside(self, key: str, evidence: str) -> str:
        """Copy ``key`` to the evidence place before it is replaced; return where it went."""

    def sha256(self, key: str) -> str:
        """The object's SHA-256, by streaming it."""
        with self.open(key) as stream:
            return sha256_of(stream)


class S3Source(Source):
    """Objects under ``s3://bucket/prefix/``."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.location = url
        self.bucket, self.prefix = split_s3_url(url)

    def full(self, key: str) -> str:
        return self.prefix + key

    def versions(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every version and delete marker under the prefix (unversioned buckets: "null")."""
        versions: list[dict[str, Any]] = []
        markers: list[dict[str, Any]] = []
        with s3_errors(f"list versions of {self.location}"):
            pages = self.client.get_paginator("list_object_versions")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                versions.extend(page.get("Versions", []))
                markers.extend(page.get("DeleteMarkers", []))
        return versions, markers

    def list(self) -> list[SourceObject]:
        current = [v for v in self.versions()[0] if v.get("IsLatest")]
        found = [
            SourceObject(
                key=v["Key"][len(self.prefix) :],
                size=int(v["Size"]),
                mtime=v["LastModified"],
                version_id=None if v.get("VersionId") in (None, "null") else v["VersionId"],
                etag=str(v.get("ETag", "")).strip('"') or None,
            )
            for v in current
            if not v["Key"].endswith("/")
        ]
        return sorted(found, key=lambda o: o.key)

    def open(self, key: str, version_id: str | None = None) -> BinaryIO:
        extra = {"VersionId": version_id} if version_id else {}
        with s3_errors(f"{self.location}{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=self.full(key), **extra)["Body"]

    def write_file(self, key: str, local_path: Path, mode: int | None = None) -> None:
        with s3_errors(f"upload {self.location}{key}"):
            self.client.upload_file(str(local_path), self.bucket, self.full(key))

    def keep_aside(self, key: str, evidence: str, version_id: str | None = None) -> str:
        bucket, prefix = split_s3_url(evidence)
        if bucket == self.bucket and prefix.startswith(self.prefix):
            raise ConfigError(f"evidence {evidence} must not be inside the source {self.location}")
        source: dict[str, str] = {"Bucket": self.bucket, "Key": self.full(key)}
        if version_id:
            source["VersionId"] = version_id
        with s3_errors(f"copy {self.location}{key} aside"):
            # The managed copy: multipart above S3's 5 GiB single-copy limit.
            self.client.copy(source, bucket, prefix + key)
        return f"s3://{bucket}/{prefix}{key}"


class DirectorySource(Source):
    """Regular files under a local directory (symlinks and special files are skipped)."""

    def __init__(self, root: Path, only: str | None = None) -> None:
        self.root = root
        self.only = only
        self.location = str(root / only) if only else str(root)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ConfigError(f"invalid file key {key!r}")
        return self.root / key

    def list(self) -> list[SourceObject]:
        if not self.root.is_dir():
            raise ObjectNotFound(f"{self.root}: no such directory")
        paths = [self.root / self.only] if self.only else sorted(self.root.rglob("*"))
        found = []
        for path in paths:
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            mtime = datetime.fromtimestamp(stat.st_mtime, UTC)
            key = path.relative_to(self.root).as_posix()
            found.append(SourceObject(key, stat.st_size, mtime, mode=stat.st_mode & 0o7777))
        return found

    def open(self, key: str, version_id: str | None = None) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.path(key)}: not found") from None
        except OSError as exc:
            raise StorageError(f"{self.path(key)}: {exc.strerror}", transient=False) from exc

    def write_file(self, key: str, local_path: Path, mode: int | None = None) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.dr-restore")
        shutil.copyfile(local_path, part)
        if mode is not None:
            part.chmod(mode)
        with part.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)

    def keep_aside(self, key: str, evidence: str) -> str:
        target = Path(evidence) / key
        if Path(evidence).resolve().is_relative_to(self.root.resolve()):
            raise ConfigError(f"evidence {evidence} must not be inside the source {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.path(key), target)
        return str(target)


def open_source(source: FileSource, aws: AWSConfig | None = None) -> Source:
    """The :class:`Source` for a ``files:`` entry (a tarball is its folder, one file only)."""
    if source.s3 is not None:
        return S3Source(s3_client(aws), source.s3)
    if source.directory is not None:
        return DirectorySource(source.directory)
    assert source.tarball is not None
    return DirectorySource(source.tarball.parent, only=source.tarball.name)
