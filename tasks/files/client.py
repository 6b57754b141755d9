"""The clients of the files package: S3 through the storage package's one factory.

S3 is one system whatever is stored in it, so this package does not build a boto3 client of
its own: :func:`tasks.storage.client.make_s3_client` already holds the credentials, the
retry mode and the timeouts, and its error rule (``NoSuchKey`` is "not found", throttling
and 5xx transient, access denied permanent) is the one applied here to the calls the
repository interface does not have (object versions, copies). Backups are written through
the storage package's :class:`~tasks.storage.client.Repository`, like the database backups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from dr.config import AWSConfig
from dr.errors import ConfigError
from tasks.storage.client import (
    _S3_ERRORS,
    Repository,
    _s3_error,
    make_s3_client,
    open_repository,
)


def s3_client(aws: AWSConfig | None = None) -> Any:
    """The boto3 S3 client for ``aws`` (see :func:`tasks.storage.client.make_s3_client`)."""
    return make_s3_client(aws)


def repository(url: str, aws: AWSConfig | None = None) -> Repository:
    """Open the backup repository at ``url``; an S3 one with the client for ``aws``."""
    client = s3_client(aws) if url.startswith("s3://") else None
    return open_repository(url, s3_client=client)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"not an s3://bucket[/prefix] URL: {url!r}")
    prefix = unquote(parts.path).strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """S3 calls in this block fail as StorageError (transient or not, by the storage rule)."""
    try:
        yield
    except _S3_ERRORS as exc:
        raise _s3_error(exc, what) from exc
