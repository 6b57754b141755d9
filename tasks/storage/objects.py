"""What a repository stores and answers with: object descriptions, put results, valid keys.

Plain values with no I/O, shared by the interface (:mod:`tasks.storage.client`, which
re-exports them) and the backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from dr.errors import ConfigError

LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
Outcome = Literal["created", "unchanged", "replaced"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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


# --------------------------------------------------------------------------- checks


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
