"""Collecting evidence into a staged bundle, and writing it once to the evidence repository.

A breach response collects evidence *before* it remediates (server logs, role listings,
open sessions, container logs, Kubernetes events, volume snapshots, table dumps):

- :class:`EvidenceBundle` stages files in a local folder and records for each one its
  SHA-256 (computed while copying), size, kind, where it came from and when; what could not
  be collected is recorded too, with the reason (:meth:`EvidenceBundle.missing`), so an
  incomplete bundle says so.
- :func:`write_bundle` writes every file once to the evidence repository
  (``put_file(write_once=True, retain_days=...)``: S3 Object Lock retention where the bucket
  has it, a read-only file on ``file://``), checks the stored SHA-256 against the one
  recorded, and writes ``manifest.json`` last: who (OS user, flow run), what (the items),
  when (UTC), from where (host name). A bundle without a manifest is an interrupted write.

Verification is :mod:`tasks.evidence.verify`; the manifest's models are in
:mod:`tasks.evidence.manifest`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from dr.clock import utcnow
from dr.errors import ChecksumMismatch, ConfigError, redact
from dr.secretscan import ensure_no_secrets
from dr.tasking import dr_task
from tasks.evidence.manifest import (
    CHUNK_BYTES,
    DEFAULT_RETAIN_DAYS,
    MANIFEST_NAME,
    PARALLEL_ITEMS,
    EvidenceItem,
    EvidenceManifest,
    MissingEvidence,
    StoredBundle,
    _join,
    _manifest_bytes,
)
from tasks.storage.client import Repository

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- collecting


def collector_identity(
    flow_run_id: str | None = None, flow_run_url: str | None = None
) -> dict[str, Any]:
    """Who and where: the OS user, host name, process and flow run collecting evidence."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "user": user,
        "uid": os.getuid(),
        "hostname": socket.gethostname(),
        "fqdn": socket.getfqdn(),
        "pid": os.getpid(),
        "flow_run_id": flow_run_id,
        "flow_run_url": flow_run_url,
        "tool": "dr-pipelines",
    }


def _check_path(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise ConfigError(f"invalid evidence path {path!r}: must be relative, without '..'")
    if str(p) == MANIFEST_NAME:
        raise ConfigError(f"{MANIFEST_NAME} is reserved for the bundle's manifest")
    return str(p)


def _hash_copy(src: Path, dest: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


class EvidenceBundle:
    """A bundle being collected in a local staging folder (thread-safe for adding).

    Args:
        bundle_id: the bundle's name (also its folder in the repository).
        staging_dir: where files are staged; a new temporary folder when None.
    """

    def __init__(self, bundle_id: str, staging_dir: str | os.PathLike[str] | None = None) -> None:
        self.bundle_id = bundle_id
        self.staging_dir = Path(staging_dir or tempfile.mkdtemp(prefix=f"dr-evidence-{bundle_id}-"))
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.chmod(0o700)
        self.items: list[EvidenceItem] = []
        self.missing_items: list[MissingEvidence] = []
        self._lock = threading.Lock()

    def _add(self, item: EvidenceItem, staged: Path) -> EvidenceItem:
        """Move a staged file into place and record it.

        The same content again is a no-op (a retried step); other content under a path
        already in the bundle is refused, and the recorded file is left untouched.
        """
        dest = self.staging_dir / item.path
        with self._lock:
            existing = next((i for i in self.items if i.path == item.path), None)
            if existing is not None:
                staged.unlink(missing_ok=True)
                if existing.sha256 == item.sha256:
                    return existing
                raise ConfigError(
                    f"evidence path {item.path!r} is already in the bundle with other content"
                )
            os.replace(staged, dest)
            self.items.append(item)
        log.info(
            "evidence: %s (%s, %d bytes, sha256 %s) from %s",
            item.path,
            item.kind,
            item.size_bytes,
            item.sha256[:12],
            item.source,
        )
        return item

    def _staging_path(self, rel: str) -> Path:
        dest = self.staging_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.with_name(f".{dest.name}.{threading.get_ident()}.partial")

    def add_file(
        self,
        path: str,
        src: str | os.PathLike[str],
        *,
        kind: str,
        source: str,
        description: str = "",
        collected_at: datetime | None = None,
    ) -> EvidenceItem:
        """Copy a file into the bundle, hashing it on the way.

        Args:
            path: its path inside the bundle.
            src: the file to copy (left in place).
            kind: what it is (``server-log``, ``dump``...).
            source: where it came from.
            description: a sentence for the reader.
            collected_at: when it was collected (default: now).

        Returns:
            The recorded item.

        Raises:
            ConfigError: invalid path, or a path already recorded with other content.
            OSError: the file cannot be read.
        """
        rel = _check_path(path)
        staged = self._staging_path(rel)
        sha, size = _hash_copy(Path(src), staged)
        item = EvidenceItem(
            path=rel,
            sha256=sha,
            size_bytes=size,
            kind=kind,
            source=source,
            collected_at=collected_at or utcnow(),
            description=description,
        )
        return self._add(item, staged)

    def add_bytes(
        self, path: str, data: bytes, *, kind: str, source: str, description: str = ""
    ) -> EvidenceItem:
        """Add in-memory content (listings, inspections) to the bundle.

        Raises:
            ConfigError: invalid path, or a path already recorded with other content.
        """
        rel = _check_path(path)
        staged = self._staging_path(rel)
        staged.write_bytes(data)
        item = EvidenceItem(
            path=rel,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            kind=kind,
            source=source,
            collected_at=utcnow(),
            description=description,
        )
        return self._add(item, staged)

    def add_json(
        self, path: str, value: Any, *, kind: str, source: str, description: str = ""
    ) -> EvidenceItem:
        """Add a JSON document (sorted keys, UTF-8; registered secrets redacted).

        Raises:
            ConfigError: invalid or duplicate path.
        """
        text = redact(json.dumps(value, indent=2, sort_keys=True, default=str)) + "\n"
        return self.add_bytes(
            path, text.encode(), kind=kind, source=source, description=description
        )

    def missing(self, name: str, *, kind: str, source: str, reason: str) -> MissingEvidence:
        """Record evidence that could not be collected, and why."""
        entry = MissingEvidence(name=name, kind=kind, source=source, reason=redact(reason))
        with self._lock:
            self.missing_items.append(entry)
        log.warning("evidence missing: %s from %s: %s", name, source, entry.reason)
        return entry

    def manifest(
        self,
        *,
        title: str,
        incident: dict[str, Any],
        collected_by: dict[str, Any],
        extra_missing: list[MissingEvidence] | None = None,
    ) -> EvidenceManifest:
        """The manifest of what is staged now."""
        with self._lock:
            items = sorted(self.items, key=lambda i: i.path)
            missing = list(self.missing_items) + list(extra_missing or [])
        return EvidenceManifest(
            bundle_id=self.bundle_id,
            title=title,
            incident=incident,
            collected_by=collected_by,
            created_at=utcnow(),
            complete=not missing,
            items=items,
            missing=missing,
            total_bytes=sum(i.size_bytes for i in items),
        )

    def cleanup(self) -> None:
        """Remove the staging folder (once the bundle is stored and verified)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)


# --------------------------------------------------------------------------- writing


def _store_items(
    repo: Repository,
    prefix: str,
    bundle: EvidenceBundle,
    manifest: EvidenceManifest,
    retain_days: int | None,
) -> tuple[set[str | None], datetime | None]:
    """Write each staged file once (see :func:`_put_items`); lock modes seen, earliest retention end."""
    lock_modes: set[str | None] = set()
    retain_until: datetime | None = None
    for result in _put_items(repo, prefix, bundle, manifest, retain_days):
        lock_modes.add(result.lock_mode if result.locked else None)
        if result.retain_until is not None:
            until = result.retain_until
            retain_until = until if retain_until is None else min(retain_until, until)
    return lock_modes, retain_until


def write_bundle(
    repo: Repository,
    prefix: str,
    bundle: EvidenceBundle,
    manifest: EvidenceManifest,
    *,
    retain_days: int | None = DEFAULT_RETAIN_DAYS,
    secrets: Mapping[str, str] | None = None,
) -> StoredBundle:
    """Write every staged file once, then the manifest, under ``prefix`` in ``repo``.

    Each file is written with ``write_once=True`` (Object Lock retention for
    ``retain_days`` where the bucket has it) and its stored SHA-256 is compared with the
    one recorded when it was collected. A retried call finds the files already there with
    the same content and goes on (the repository's puts are idempotent); a file present
    with other content stops it (:class:`~dr.errors.ChecksumMismatch`): evidence is never
    overwritten.

    Args:
        repo: the evidence repository.
        prefix: the bundle's folder in it (``<target>/breach/<bundle id>``).
        bundle: the staged bundle.
        manifest: from :meth:`EvidenceBundle.manifest` (lists exactly the staged items).
        retain_days: Object Lock retention; None uses the bucket's default.
        secrets: name → value no file may hold (default: those this process resolved).

    Returns:
        Where it is, the manifest's SHA-256 (record it in the incident report: it pins
        the whole bundle) and whether the provider enforces retention on every object.

    Raises:
        ChecksumMismatch: a stored object does not hash to the recorded SHA-256.
        StorageError: the repository failed (transient ones are retried by the task).
        SecretFoundError: a staged file holds a secret in plain text; nothing is written.
    """
    ensure_no_secrets(
        [bundle.staging_dir / i.path for i in manifest.items], f"evidence {prefix}", secrets
    )
    lock_modes, retain_until = _store_items(repo, prefix, bundle, manifest, retain_days)
    data = _manifest_bytes(manifest)
    manifest_key = _join(prefix, MANIFEST_NAME)
    result = repo.put_bytes(manifest_key, data, write_once=True, retain_days=retain_days)
    lock_modes.add(result.lock_mode if result.locked else None)
    locked = None not in lock_modes
    url = repo.url_for(manifest_key).rsplit("/", 1)[0]
    stored = StoredBundle(
        url=url,
        prefix=prefix,
        manifest_url=repo.url_for(manifest_key),
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        items=len(manifest.items),
        total_bytes=manifest.total_bytes,
        complete=manifest.complete,
        locked=locked,
        lock_mode=next(iter(lock_modes)) if locked and len(lock_modes) == 1 else None,
        retain_until=retain_until,
        verify_command=(
            f"dr evidence verify {url} --manifest-sha256 {hashlib.sha256(data).hexdigest()}"
        ),
    )
    log.info(
        "evidence bundle written to %s: %d item(s), %d bytes, manifest sha256 %s, %s",
        url,
        stored.items,
        stored.total_bytes,
        stored.manifest_sha256[:12],
        f"locked ({stored.lock_mode}) until {retain_until}" if locked else "not locked",
    )
    return stored


def _put_items(
    repo: Repository,
    prefix: str,
    bundle: EvidenceBundle,
    manifest: EvidenceManifest,
    retain_days: int | None,
) -> list[Any]:
    """Every item at once (independent puts), each checked; the first failure in order."""

    def put(item: EvidenceItem) -> Any:
        key = _join(prefix, item.path)
        result = repo.put_file(
            key, bundle.staging_dir / item.path, write_once=True, retain_days=retain_days
        )
        if result.sha256 != item.sha256:
            raise ChecksumMismatch(
                f"{repo.url_for(key)}: stored sha256 {str(result.sha256)[:12]} differs from "
                f"the collected {item.sha256[:12]}"
            )
        return result

    if len(manifest.items) < 2:
        return [put(item) for item in manifest.items]
    workers = min(PARALLEL_ITEMS, len(manifest.items))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evidence-put") as pool:
        futures = [pool.submit(put, item) for item in manifest.items]
        return [future.result() for future in futures]


write_bundle_task = dr_task(write_bundle, name="evidence-write-bundle", timeout_seconds=3600)
