"""Verifying a stored evidence bundle against its manifest, object by object.

:func:`verify_bundle` reads the manifest back, streams every object, recomputes its
SHA-256 and compares; objects under the bundle that the manifest does not list are
reported too. ``dr evidence verify URL`` (``dr/cli_evidence.py``) is this function.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from dr.errors import ObjectNotFound, StorageError
from dr.tasking import dr_task
from tasks.evidence.manifest import (
    CHUNK_BYTES,
    MANIFEST_NAME,
    PARALLEL_ITEMS,
    EvidenceItem,
    EvidenceManifest,
    VerifiedItem,
    VerifyReport,
    _join,
)
from tasks.storage.client import Repository

log = logging.getLogger(__name__)


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
    # Independent reads: at once, results in the manifest's order.
    workers = max(1, min(PARALLEL_ITEMS, len(manifest.items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evidence-verify") as pool:
        report.items = list(pool.map(lambda item: _verify_item(repo, prefix, item), manifest.items))
    bad = [i for i in report.items if i.status != "ok"]
    for i in bad:
        report.problems.append(f"{i.path}: {i.status} ({i.detail})")
    report.unlisted = _unlisted(repo, prefix, manifest, manifest_key, report.problems)
    report.ok = not report.problems
    log.info("%s", report.summary())
    return report


def _verify_item(repo: Repository, prefix: str, item: EvidenceItem) -> VerifiedItem:
    """Stream one listed object and compare it; only a transient failure is raised."""
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
    return entry


def _unlisted(
    repo: Repository,
    prefix: str,
    manifest: EvidenceManifest,
    manifest_key: str,
    problems: list[str],
) -> list[str]:
    """Objects under the bundle the manifest does not list (a listing failure is a problem)."""
    listed = {_join(prefix, i.path) for i in manifest.items} | {manifest_key}
    list_prefix = _join(prefix, "") if prefix else ""
    try:
        present = [o.key for o in repo.list(list_prefix)]
    except StorageError as exc:
        if exc.transient:
            raise
        present = []
        problems.append(f"could not list the bundle: {exc}")
    return sorted(k for k in present if k not in listed)


# A verification is an observation: retrying would hide the first answer.
verify_bundle_task = dr_task(
    verify_bundle,
    name="evidence-verify-bundle",
    retries=1,
    timeout_seconds=3600,
)
