"""The lab's S3-compatible endpoint: moto's server on loopback, and the lab's buckets.

No S3 can be reached from the lab's machines; moto speaks the S3 API well enough that the
production code path (boto3 with an ``endpoint_url``) stays the same (shared/lab
``stand-ins.md``: moto accepts a wrong checksum that real S3 rejects, so callers verify
checksums themselves). moto keeps everything in memory: a restarted endpoint has lost
its objects, and :func:`ensure_buckets` only recreates the empty buckets.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from dr.errors import PreconditionError
from lab import procs

__all__ = ["IN_MEMORY_NOTE", "ensure_buckets", "is_up", "start"]

log = logging.getLogger(__name__)

IN_MEMORY_NOTE = "moto keeps objects in memory: they are lost when the endpoint restarts"
REGION = "us-east-1"


def start(base_dir: Path, port: int, *, log_file: Path) -> procs.ProcessInfo:
    """Start ``moto_server`` on 127.0.0.1:``port`` in the background.

    Args:
        base_dir: the lab folder (working directory and owner marker).
        port: a free loopback port.
        log_file: where its output goes.

    Returns:
        The process record.
    """
    script = Path(sys.executable).with_name("moto_server")
    argv = (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    )
    argv += ["-H", "127.0.0.1", "-p", str(port)]
    return procs.spawn(
        argv,
        cwd=base_dir,
        log_file=log_file,
        marker=f"-H 127.0.0.1 -p {port}",
        env=procs.child_env(base_dir),
    )


def is_up(url: str) -> bool:
    """True when moto answers at ``url`` (its own ``/moto-api/`` page)."""
    return procs.http_ok(f"{url}/moto-api/")


def _client(url: str, access_key_id: str, secret_access_key: str) -> Any:
    import boto3  # imported here: slow, and only bucket creation needs it

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
    )


def ensure_buckets(
    url: str,
    *,
    access_key_id: str,
    secret_access_key: str,
    buckets: tuple[str, ...] = (),
    object_lock_buckets: tuple[str, ...] = (),
    versioned_buckets: tuple[str, ...] = (),
) -> list[str]:
    """Create the buckets that are missing (Object Lock ones with the lock enabled,
    versioned ones with versioning on).

    Returns:
        What was done, one phrase per created bucket (empty: unchanged).

    Raises:
        PreconditionError: the endpoint refused.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    done: list[str] = []
    try:
        s3 = _client(url, access_key_id, secret_access_key)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for name in buckets:
            if name not in existing:
                s3.create_bucket(Bucket=name)
                done.append(f"created bucket {name}")
        for name in object_lock_buckets:
            if name not in existing:
                s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
                done.append(f"created bucket {name} (Object Lock)")
        for name in versioned_buckets:
            if name not in existing:
                s3.create_bucket(Bucket=name)
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
                done.append(f"created bucket {name} (versioned)")
    except (BotoCoreError, ClientError) as exc:
        raise PreconditionError(f"the lab's S3 endpoint {url} refused its buckets: {exc}") from exc
    for phrase in done:
        log.info("s3 %s: %s", url, phrase)
    return done
