"""The state of a target beyond PostgreSQL: caches, files and objects, and links between them.

``caches:`` says what to do with a Redis cache after a recovery (it would still serve the
values of before the damage); ``files:`` names S3 prefixes, local directories and tarballs
to back up and restore; ``links:`` ties a table's rows to the objects of a ``files`` entry
(``uploads.object_key`` + ``uploads.sha256``), checked after every restore.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from dr.config_base import SecretRef, Strict

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_S3_PREFIX_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TABLE = r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$"


# --------------------------------------------------------------------------- caches


class CacheAfterRecovery(Strict):
    """What a recovery does to the cache: flush the whole database, some key patterns, or nothing."""

    flush: Literal["all", "patterns", "none"] = "all"
    patterns: list[str] = Field(
        default_factory=list, description="Redis glob patterns (SCAN MATCH) for flush: patterns."
    )

    @model_validator(mode="after")
    def _patterns_iff_asked(self) -> CacheAfterRecovery:
        if self.flush == "patterns" and not self.patterns:
            raise ValueError("flush: patterns needs at least one entry in 'patterns'")
        if self.flush != "patterns" and self.patterns:
            raise ValueError(f"'patterns' is only used with flush: patterns (not {self.flush!r})")
        return self


class CacheWarm(Strict):
    """An optional warm-up: SQL whose rows (key, value[, ttl_seconds]) become keys, or a command."""

    sql: str | None = None
    database: str | None = Field(None, description="Default: the target's first database.")
    command: list[str] | None = Field(
        None, min_length=1, description="argv; gets DR_CACHE_URL (and REDISCLI_AUTH) in its env."
    )
    ttl_seconds: int | None = Field(None, gt=0, description="TTL for rows without their own.")
    timeout_seconds: float = Field(300, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> CacheWarm:
        if (self.sql is None) == (self.command is None):
            raise ValueError("give exactly one of 'sql' or 'command'")
        if self.command is not None and self.database is not None:
            raise ValueError("'database' is only used with 'sql'")
        return self


class CacheConfig(Strict):
    """One Redis cache in front of the target's data."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(description="redis://host:port/db or rediss://...; no password in it.")
    username: str | None = None
    password: SecretRef | None = None
    after_recovery: CacheAfterRecovery = Field(default_factory=CacheAfterRecovery)
    warm: CacheWarm | None = None
    sample_keys: list[str] = Field(
        default_factory=list, description="Keys read after the warm-up to measure the hit rate."
    )
    min_hit_rate: float = Field(0.0, ge=0, le=1, description="Below this the check fails.")
    socket_timeout_seconds: float = Field(5, gt=0)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("must be redis://host[:port][/db] or rediss://...")
        if parts.password:
            raise ValueError("must not contain a password: use 'password' (a secret reference)")
        return value


# --------------------------------------------------------------------------- files


class FileSource(Strict):
    """Files or objects to back up: exactly one of an S3 prefix, a directory or a tarball."""

    name: str = Field(pattern=NAME_PATTERN)
    s3: str | None = Field(None, description="s3://bucket/prefix (versioned buckets preferred).")
    directory: Path | None = Field(None, description="An absolute local directory.")
    tarball: Path | None = Field(None, description="An absolute path to one tarball.")
    repository: str | None = Field(
        None, description="Where its backups go; default: the target's backup repository."
    )

    @field_validator("s3")
    @classmethod
    def _s3(cls, value: str | None) -> str | None:
        if value is not None and not _S3_PREFIX_RE.match(value):
            raise ValueError("must be s3://bucket[/prefix]")
        return value

    @field_validator("directory", "tarball")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> FileSource:
        given = [k for k in ("s3", "directory", "tarball") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 's3', 'directory' or 'tarball'")
        return self

    @property
    def kind(self) -> Literal["s3", "directory", "tarball"]:
        if self.s3 is not None:
            return "s3"
        return "directory" if self.directory is not None else "tarball"

    @property
    def location(self) -> str:
        """The source as a string (an s3:// URL or a path), for reports."""
        return str(self.s3 or self.directory or self.tarball)


class FileLink(Strict):
    """Rows of a table that name objects of a ``files`` entry (by key, with their SHA-256).

    Keys in ``key_column`` are relative to the entry's prefix or directory; a key that
    starts with the S3 prefix itself is accepted too.
    """

    name: str = Field(pattern=NAME_PATTERN)
    database: str | None = Field(None, description="Default: the target's first database.")
    table: str = Field(pattern=_TABLE, description="table or schema.table")
    key_column: str = Field(pattern=_IDENT)
    sha256_column: str | None = Field(None, pattern=_IDENT)
    files: str = Field(description="The name of an entry in this target's 'files'.")


def state_problems(
    path: str, caches: list[CacheConfig], files: list[FileSource], links: list[FileLink]
) -> list[str]:
    """Cross-field problems of one target's state, each prefixed by its key path."""
    problems: list[str] = []
    for key, items in (("caches", caches), ("files", files), ("links", links)):
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"{path}.{key}: names must be unique, repeated: {', '.join(dupes)}")
    known = {f.name for f in files}
    for i, link in enumerate(links):
        if link.files not in known:
            problems.append(
                f"{path}.links.{i}.files: unknown files entry {link.files!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
    return problems
