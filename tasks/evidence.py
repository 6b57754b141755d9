"""Evidence bundles: what was collected during an incident, checksummed, written once.

A breach response collects evidence *before* it remediates (server logs, role listings,
open sessions, container logs, Kubernetes events, volume snapshots, table dumps). This
module turns those pieces into a bundle a third party can check later:

- :class:`EvidenceBundle` stages files in a local folder and records for each one its
  SHA-256 (computed while copying), size, kind, where it came from and when; what could not
  be collected is recorded too, with the reason (:meth:`EvidenceBundle.missing`), so an
  incomplete bundle says so.
- :func:`write_bundle` writes every file once to the evidence repository
  (``put_file(write_once=True, retain_days=...)``: S3 Object Lock retention where the bucket
  has it, a read-only file on ``file://``), checks the stored SHA-256 against the one
  recorded, and writes ``manifest.json`` last: who (OS user, flow run), what (the items),
  when (UTC), from where (host name). A bundle without a manifest is an interrupted write.
- :func:`verify_bundle` reads the manifest back, streams every object, recomputes its
  SHA-256 and compares; objects under the bundle that the manifest does not list are
  reported too. ``dr evidence verify URL`` (``dr/cli_evidence.py``) is this function.

The repository is passed in (an object with ``put_file``, ``put_bytes``, ``head``, ``list``,
``iter_chunks`` and ``url_for``, as :class:`tasks.storage.Repository` has): a module in
``tasks/`` imports no other.
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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError, redact
from dr.tasking import dr_task

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "EvidenceBundle",
    "EvidenceItem",
    "EvidenceManifest",
    "MissingEvidence",
    "StoredBundle",
    "VerifiedItem",
    "VerifyReport",
    "collector_identity",
    "verify_bundle",
    "verify_bundle_task",
    "write_bundle",
    "write_bundle_task",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dr-pipelines/evidence-bundle/v1"
CHUNK_BYTES = 1024 * 1024
#: Default Object Lock retention of evidence (a year covers most post-incident reviews).
DEFAULT_RETAIN_DAYS = 365


class Repository(Protocol):
    """What this module needs of a repository (:class:`tasks.storage.Repository` fits)."""

    def put_file(self, key: str, local_path: str | Path, **kwargs: Any) -> Any: ...
    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> Any: ...
    def head(self, key: str) -> Any: ...
    def list(self, prefix: str = "") -> list[Any]: ...
    def iter_chunks(self, key: str, chunk_size: int = ...) -> Iterator[bytes]: ...
    def url_for(self, key: str) -> str: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- models


class EvidenceItem(BaseModel):
    """One file of the bundle."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Relative path inside the bundle ('/'-separated).")
    sha256: str
    size_bytes: int
    kind: str = Field(description="server-log, roles, sessions, container-log, dump, ...")
    source: str = Field(description="Where it was collected from (system and object).")
    collected_at: datetime
    description: str = ""


class MissingEvidence(BaseModel):
    """A piece of evidence that was asked for and could not be collected."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    source: str
    reason: str
    at: datetime = Field(default_factory=_utcnow)


class EvidenceManifest(BaseModel):
    """Who collected what, when and from where; written last, once."""

    model_config = ConfigDict(extra="forbid")

    format: str = MANIFEST_FORMAT
    bundle_id: str
    title: str
    incident: dict[str, Any] = Field(
        default_factory=dict, description="target, scenario, mode, detected_at, ..."
    )
    collected_by: dict[str, Any] = Field(
        default_factory=dict, description="user, hostname, pid, flow_run_id, flow_run_url"
    )
    created_at: datetime
    complete: bool
    items: list[EvidenceItem]
    missing: list[MissingEvidence] = Field(default_factory=list)
    total_bytes: int = 0


class StoredBundle(BaseModel):
    """Where a bundle was written and how it is protected."""

    model_config = ConfigDict(extra="forbid")

    url: str
    prefix: str
    manifest_url: str
    manifest_sha256: str
    items: int
    total_bytes: int
    complete: bool
    locked: bool = Field(description="Every object is under provider-enforced retention.")
    lock_mode: str | None = None
    retain_until: datetime | None = None
    verify_command: str


class VerifiedItem(BaseModel):
    """One object's verification."""

    model_config = ConfigDict(extra="forbid")

    path: str
    status: Literal["ok", "mismatch", "missing", "error"]
    expected_sha256: str
    actual_sha256: str | None = None
    size_bytes: int | None = None
    lock_mode: str | None = None
    retain_until: datetime | None = None
    detail: str = ""


class VerifyReport(BaseModel):
    """The answer of :func:`verify_bundle`."""

    model_config = ConfigDict(extra="forbid")

    url: str
    ok: bool
    manifest_sha256: str | None = None
    manifest_expected_sha256: str | None = None
    bundle_id: str | None = None
    complete: bool | None = None
    items: list[VerifiedItem] = Field(default_factory=list)
    unlisted: list[str] = Field(
        default_factory=list, description="Objects under the bundle the manifest does not list."
    )
    missing_evidence: list[MissingEvidence] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the report."""
        good = sum(1 for i in self.items if i.status == "ok")
        verdict = "verified" if self.ok else "NOT verified"
        text = f"evidence bundle {self.url}: {verdict}, {good}/{len(self.items)} item(s) match"
        if self.problems:
            text += "; " + "; ".join(self.problems[:5])
        return text


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
            collected_at=collected_at or _utcnow(),
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
            collected_at=_utcnow(),
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
            created_at=_utcnow(),
            complete=not missing,
            items=items,
            missing=missing,
            total_bytes=sum(i.size_bytes for i in items),
        )

    def cleanup(self) -> None:
        """Remove the staging folder (once the bundle is stored and verified)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def _manifest_bytes(manifest: EvidenceManifest) -> bytes:
    return (manifest.model_dump_json(indent=2) + "\n").encode()


def _join(prefix: str, path: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{path}" if prefix else path


# --------------------------------------------------------------------------- writing


def write_bundle(
    repo: Repository,
    prefix: str,
    bundle: EvidenceBundle,
    manifest: EvidenceManifest,
    *,
    retain_days: int | None = DEFAULT_RETAIN_DAYS,
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

    Returns:
        Where it is, the manifest's SHA-256 (record it in the incident report: it pins
        the whole bundle) and whether the provider enforces retention on every object.

    Raises:
        ChecksumMismatch: a stored object does not hash to the recorded SHA-256.
        StorageError: the repository failed (transient ones are retried by the task).
    """
    lock_modes: set[str | None] = set()
    retain_until: datetime | None = None
    for item in manifest.items:
        key = _join(prefix, item.path)
        result = repo.put_file(
            key, bundle.staging_dir / item.path, write_once=True, retain_days=retain_days
        )
        if result.sha256 != item.sha256:
            raise ChecksumMismatch(
                f"{repo.url_for(key)}: stored sha256 {str(result.sha256)[:12]} differs from "
                f"the collected {item.sha256[:12]}"
            )
        lock_modes.add(result.lock_mode if result.locked else None)
        if result.retain_until is not None:
            until = result.retain_until
            retain_until = until if retain_until is None else min(retain_until, until)
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


# --------------------------------------------------------------------------- verifying


def _stream_sha256(repo: Repository, key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in repo.iter_chunks(key, CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify_bundle(
    repo: Repository, prefix: str = "", *, expected_manifest_sha256: str | None = None
) -> VerifyReport:
    """Re-read a bundle and check every object against its manifest.

    Args:
        repo: the repository holding the bundle.
        prefix: the bundle's folder in ``repo`` (empty when ``repo`` is opened at it).
        expected_manifest_sha256: the manifest's SHA-256 as recorded in the incident
            report; when given, a manifest that differs fails verification (it pins the
            bundle against replacement of the manifest and its objects together).

    Returns:
        The :class:`VerifyReport`: ``ok`` only when the manifest is readable (and matches
        the expected hash, if given) and every listed object is present with its SHA-256.
        Objects the manifest does not list are reported in ``unlisted`` (not a failure).

    Raises:
        StorageError: the repository failed in a way that is not about this bundle
            (unreachable, access denied).
    """
    manifest_key = _join(prefix, MANIFEST_NAME)
    url = repo.url_for(manifest_key).rsplit("/", 1)[0]
    report = VerifyReport(url=url, ok=False, manifest_expected_sha256=expected_manifest_sha256)
    try:
        raw = b"".join(repo.iter_chunks(manifest_key, CHUNK_BYTES))
    except ObjectNotFound:
        report.problems.append(f"no {MANIFEST_NAME} at {repo.url_for(manifest_key)}")
        return report
    report.manifest_sha256 = hashlib.sha256(raw).hexdigest()
    if expected_manifest_sha256 and report.manifest_sha256 != expected_manifest_sha256.lower():
        report.problems.append(
            f"manifest sha256 {report.manifest_sha256[:12]} is not the recorded "
            f"{expected_manifest_sha256[:12]}"
        )
    try:
        manifest = EvidenceManifest.model_validate_json(raw)
    except ValueError as exc:
        report.problems.append(f"{MANIFEST_NAME} is not a valid manifest: {exc}")
        return report
    report.bundle_id = manifest.bundle_id
    report.complete = manifest.complete
    report.missing_evidence = manifest.missing
    for item in manifest.items:
        key = _join(prefix, item.path)
        entry = VerifiedItem(path=item.path, status="ok", expected_sha256=item.sha256)
        try:
            info = repo.head(key)
            entry.lock_mode = getattr(info, "lock_mode", None)
            entry.retain_until = getattr(info, "retain_until", None)
            entry.actual_sha256, entry.size_bytes = _stream_sha256(repo, key)
        except ObjectNotFound:
            entry.status, entry.detail = "missing", "object not found"
        except StorageError as exc:
            if exc.transient:
                raise
            entry.status, entry.detail = "error", str(exc)
        else:
            if entry.actual_sha256 != item.sha256:
                entry.status = "mismatch"
                entry.detail = f"sha256 {entry.actual_sha256[:12]} != {item.sha256[:12]}"
            elif entry.size_bytes != item.size_bytes:
                entry.status = "mismatch"
                entry.detail = f"size {entry.size_bytes} != {item.size_bytes}"
        report.items.append(entry)
    bad = [i for i in report.items if i.status != "ok"]
    for i in bad:
        report.problems.append(f"{i.path}: {i.status} ({i.detail})")
    listed = {_join(prefix, i.path) for i in manifest.items} | {manifest_key}
    list_prefix = _join(prefix, "") if prefix else ""
    try:
        present = [o.key for o in repo.list(list_prefix)]
    except StorageError as exc:
        if exc.transient:
            raise
        present = []
        report.problems.append(f"could not list the bundle: {exc}")
    report.unlisted = sorted(k for k in present if k not in listed)
    report.ok = not report.problems
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------- tasks

write_bundle_task = dr_task(write_bundle, name="evidence-write-bundle", timeout_seconds=3600)
# A verification is an observation: retrying would hide the first answer.
verify_bundle_task = dr_task(
    verify_bundle,
    name="evidence-verify-bundle",
    retries=1,
    timeout_seconds=3600,
)
