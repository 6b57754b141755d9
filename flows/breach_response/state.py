"""The state one run's phases share (in memory only: it holds new secrets)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from dr.changes import Change
from dr.config import (
    PostgresNode,
)
from dr.errors import (
    DRError,
    redact,
    register_secret,
)
from flows.breach_response.assess import (
    APPLICATION_NAME,
    Preflight,
    admin_conninfo,
)
from flows.breach_response.options import (
    BreachOptions,
    SecretStore,
)
from flows.breach_response.systems import Systems
from flows.lifecycle import RunContext
from tasks.evidence import bundle as evidence_bundle
from tasks.evidence import manifest as evidence_manifest
from tasks.postgres import client as postgres_client
from tasks.postgres import intruder

#: Length of generated secrets (``secrets.token_urlsafe`` bytes: 256 bits).
SECRET_BYTES = 32


def new_secret() -> SecretStr:
    value = secrets.token_urlsafe(SECRET_BYTES)
    register_secret(value)
    return SecretStr(value)


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="microseconds") if moment else None


@dataclass
class Rotation:
    """A rotated credential, in memory only (values never serialized)."""

    kind: str
    name: str
    new: SecretStr | None = None
    old: SecretStr | None = None
    stores: list[str] = field(default_factory=list)
    store_specs: list[SecretStore] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    at: datetime | None = None

    def attempt(self, what: str, fn: Callable[[], Change]) -> None:
        """Run one follow-up of a rotation that already happened; a failure is recorded.

        Why: once the credential changed, its new value must not be lost because one store
        failed; the other stores, the containers and the proofs still get it.
        """
        try:
            self.changes.append(fn())
        except DRError as exc:
            self.errors.append(redact(f"{what}: {type(exc).__name__}: {exc}"))


class BreachRun:
    """One breach-response run: the state its phases share (new secrets in memory only)."""

    def __init__(
        self, ctx: RunContext, opts: BreachOptions, pf: Preflight, systems: Systems
    ) -> None:
        self.ctx = ctx
        self.opts = opts
        self.pf = pf
        self.target = ctx.target
        self.pgc = ctx.target.postgres
        self.systems = systems
        self.compromised = list(pf.compromised_roles)
        self.detected_at: datetime = ctx.declared_at
        self.intrusion_at: datetime | None = None
        self.contained_at: datetime | None = None
        self.evidence_at: datetime | None = None
        self.rotation_started_at: datetime | None = None
        self.resume_started_at: datetime | None = None
        self.rogue_role: str | None = None
        self.rogue_password: SecretStr | None = None
        self.held: dict[str, intruder.HeldSession] = {}
        self.stopped: dict[str, Change] = {}
        self.scaled: list[Change] = []
        self.policies: list[Change] = []
        self.revoked: list[Change] = []
        self.hba_blocks: dict[str, Change] = {}
        self.sg_blocks: list[Change] = []
        self.backdoors: list[Change] = []
        self.rotations: list[Rotation] = []
        self.failed_rotations: list[str] = []
        self.stored: evidence_manifest.StoredBundle | None = None
        self.restore_to: datetime | None = opts.restore_to
        self.digests_before: dict[str, str] = {}
        self.restored: dict[str, Any] | None = None
        self.files_damage: dict[str, dict[str, str]] = {}
        self.files_evidence: dict[str, dict[str, dict[str, Any]]] = {}
        self.files_restored: list[dict[str, Any]] = []
        self.short = (ctx.flow_run_id or secrets.token_hex(4)).replace("-", "")[:8]
        self.bundle: evidence_bundle.EvidenceBundle | None = None
        self.scratch_dirs: list[Path] = []
        self.details: dict[str, Any] = {"breach": {}}
        self.info: dict[str, Any] = self.details["breach"]
        ctx.details.update(self.details)

    def ci(self, node: PostgresNode, dbname: str | None = None) -> str:
        return admin_conninfo(self.pf, node, dbname)

    def role_ci(self, node: PostgresNode, role: str, password: SecretStr) -> str:
        return postgres_client.conninfo(
            node,
            user=role,
            dbname=self.pgc.heartbeat_db,
            password=password.get_secret_value(),
            connect_timeout_seconds=self.pgc.connect_timeout_seconds,
            application_name=APPLICATION_NAME,
        )

    def record(self, change: Change, undo: Callable[[], Any] | None = None) -> None:
        """Record a change; its undo joins the compensation stack in drills only.

        Why: in an incident, undoing isolation after a failure would re-expose a
        compromised system; the report lists the undo for a person instead.
        """
        self.ctx.record_change(change, undo if self.ctx.is_drill else None)

    def local_nodes(self) -> list[PostgresNode]:
        return [n for n in self.pgc.nodes if n.data_directory is not None]

    @property
    def restore_db(self) -> str:
        return self.opts.restore_database or self.pgc.heartbeat_db


class Failed:
    """A step that failed before its task could be submitted (its client was not built)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def result(self, raise_on_failure: bool = True) -> Exception:
        if raise_on_failure:
            raise self.exc
        return self.exc


def submit_with(task: Any, client: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
    """``task.submit(client(), *args, **kwargs)``, or :class:`Failed` if ``client()`` fails.

    Why: a client built in the flow (Docker, Kubernetes, AWS) that cannot be built fails
    that one step, as the step itself failing would, not the whole phase.
    """
    try:
        built = client()
    except Exception as exc:  # noqa: BLE001 - reported as that step's failure
        return Failed(exc)
    return task.submit(built, *args, **kwargs)
