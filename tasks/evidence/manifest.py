"""The evidence manifest and the answers about bundles: what was collected, stored, verified."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.clock import utcnow

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dr-pipelines/evidence-bundle/v1"
CHUNK_BYTES = 1024 * 1024
#: Items written and read back at once: independent objects, network-bound on S3.
PARALLEL_ITEMS = 4
#: Default Object Lock retention of evidence (a year covers most post-incident reviews).
DEFAULT_RETAIN_DAYS = 365

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
    at: datetime = Field(default_factory=utcnow)


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


def _manifest_bytes(manifest: EvidenceManifest) -> bytes:
    return (manifest.model_dump_json(indent=2) + "\n").encode()


def _join(prefix: str, path: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{path}" if prefix else path
