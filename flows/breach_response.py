"""Security-breach response: contain, preserve evidence, rotate and prove, resume with approval.

The runbooks it replaces (seed 002 "Fusion Bitcoin Bridge", *Suspected Breach Response*:
"immediate isolation, evidence preservation (forensic snapshots), credential rotation"; seed
003 *Security Breach*: "stop all trading, isolate affected systems, rotate all API keys and
passwords, preserve logs for forensics, resume only after clearance"). As phases of one run:

1. **validate** (before the run starts, so a bad request changes nothing): every service
   named exists in the target, every database role named exists, the networks to block are
   networks, an evidence repository is configured. An unknown role or service is a
   :class:`~dr.errors.ConfigError` naming the known ones.
2. drills only, **plant the intruder** at a stamped moment (``failure_at``): a rogue login
   role ``dr_intruder_<id>`` with a session held open, and the application's database
   password treated as leaked (the intruder holds a session with it too).
3. **regulatory clock**: the detection time and every deadline the target names
   (``regulatory_deadlines``, default the GDPR 72-hour notification) as absolute UTC times,
   in the report and as a reply in the Slack thread (again at the end, with time left).
4. **capture volatile evidence** first (RFC 3227's order of volatility): the sessions open
   on every node, roles and privileges, container states, security-group rules. It takes
   milliseconds and is gone once containment ends the sessions.
5. **contain and preserve**, in parallel: *isolation* (containers stopped, deployments
   scaled to zero, an isolating NetworkPolicy, security groups' inbound rules revoked,
   compromised roles set ``NOLOGIN`` with their sessions ended on every node, attacker
   networks rejected at the top of ``pg_hba.conf`` on local nodes and at security groups)
   and *evidence* (server logs, container logs, Kubernetes events, EBS snapshots, a
   ``pg_dump`` of given tables), each file with its SHA-256, bundled with a manifest and
   written once to the evidence repository (S3 Object Lock where the bucket has it), then
   read back and verified. Evidence storage failing does not stop containment: the report
   says the evidence is incomplete and where the staged copy is.
6. **rotate credentials**, only once evidence is preserved, in parallel: database role
   passwords (new values generated here, sent as verifiers only, old sessions ended, the
   value written to every store: those named, and every Prefect Secret block found holding
   the leaked value), Kubernetes secret keys, IAM access keys (new key, old one
   deactivated), Slack and other API tokens by reference (a person puts the token the
   provider issued in a Prefect block or an environment variable).
7. **prove**: every old credential is rejected and every new one works (a login, a signed
   AWS call, Slack's ``auth.test``), compromised roles cannot log in, their sessions are
   gone (the drill's intruder sessions ended and cannot reconnect), every store holds the
   new value.
8. optionally, **restore clean** (``restore_tables`` as they were at ``restore_to``, a
   moment before the intrusion), behind its own approval gate: point-in-time recovery of
   the target's base backup and WAL archive into a side cluster (``tasks.recovery``, as the
   data-corruption scenario does), then the tables copied back into the live database in
   one transaction, digests compared; the side cluster is removed. In drills the intruder
   also deletes rows of those tables, and the restored rows must match a snapshot taken
   just before the intrusion.
9. **approval gate**: services come back only after someone approves (who and why are
   recorded; drills are approved by policy), then the recorded service state is restored
   with the new credentials (containers recreated with the new password) and verified end
   to end: the application writes again, health checks and validation queries pass.
10. **measure**: detected -> contained and detected -> services resumed (the RTO); RPO is
    zero, or the window from ``restore_to`` to containment when tables were restored.
11. drills only, **clean up**: the rogue role is dropped (after the evidence is stored),
    the network blocks the drill made are lifted (its "attacker" is make-believe).

The evidence bundle is checked by anyone, any time, with the command the report prints:
``dr evidence verify <bundle url> --manifest-sha256 <sha256>`` (``dr/cli_evidence.py``).

New secrets never appear in logs, artifacts, messages or the evidence: they are generated
with :func:`secrets.token_urlsafe`, registered for redaction at once, kept in memory as
``SecretStr`` and written only to their stores and the application's environment. A failed
run is compensated only in drills (the lab comes back); in an incident, isolation stays in
place (fail closed) and the report lists how to undo it by hand. A credential that cannot
be rotated is reported as a failed critical check: the run finishes everything else, then
ends failed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dr.changes import Change
from dr.config import (
    DockerService,
    DRConfig,
    KubernetesService,
    Mode,
    PostgresNode,
    Scenario,
    SecretRef,
    Target,
    load_config,
)
from dr.errors import (
    ConfigError,
    DRError,
    PostgresError,
    UnsafeTargetError,
    VerificationError,
    redact,
    register_secret,
)
from dr.tasking import dr_task
from flows.lifecycle import RunContext, run_scenario
from flows.registry import find_config_path
from tasks import cloud, containers, kubernetes, notify, secret_store, storage
from tasks import evidence as ev
from tasks import pg_security as pgs
from tasks import postgres as pg
from tasks import recovery as rc

__all__ = [
    "AccessKeyRotation",
    "BreachOptions",
    "DatabaseCredential",
    "KubernetesSecretKey",
    "PodIsolation",
    "SecretStore",
    "Systems",
    "TokenRotation",
    "breach_response_flow",
    "deadlines_from",
    "preflight",
    "select_services",
]

log = logging.getLogger(__name__)

#: Source networks a drill blocks: RFC 5737 documentation ranges, never routed.
DRILL_BLOCK_CIDRS = ("192.0.2.0/24",)
#: Length of generated secrets (``secrets.token_urlsafe`` bytes: 256 bits).
SECRET_BYTES = 32
#: How long a standby may take to replay a role change before a proof on it fails.
REPLICA_PROOF_SECONDS = 10.0
POLL_SECONDS = 0.1
APPLICATION_NAME = "dr-breach-response"
#: Where an application's database user and password are, by convention (twelve-factor).
DEFAULT_USER_ENV = "DB_USER"
DEFAULT_PASSWORD_ENV = "DB_PASSWORD"  # noqa: S105 - a variable name, not a password


# --------------------------------------------------------------------------- options


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretStore(_Strict):
    """One place where a credential's value is kept: exactly one field."""

    prefect_secret: str | None = Field(None, description="A Prefect Secret block's name.")
    aws_secret: str | None = Field(None, description="A Secrets Manager secret id or ARN.")
    kubernetes_secret: str | None = Field(
        None, description="'namespace/name/key' of a Kubernetes Secret."
    )
    file: Path | None = Field(None, description="A file holding only the value (mode 600).")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretStore:
        given = [f for f in ("prefect_secret", "aws_secret", "kubernetes_secret", "file")
                 if getattr(self, f) is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                "give exactly one of prefect_secret, aws_secret, kubernetes_secret, file"
            )
        if self.kubernetes_secret is not None and len(self.kubernetes_secret.split("/")) != 3:
            raise ValueError("kubernetes_secret must be 'namespace/name/key'")
        return self

    def describe(self) -> str:
        """A safe name for reports (never the value)."""
        if self.prefect_secret:
            return f"prefect-secret:{self.prefect_secret}"
        if self.aws_secret:
            return f"aws-secret:{self.aws_secret}"
        if self.kubernetes_secret:
            return f"kubernetes-secret:{self.kubernetes_secret}"
        return f"file:{self.file}"


class DatabaseCredential(_Strict):
    """A database role whose password is believed leaked: rotate it and repoint its users."""

    role: str
    stores: list[SecretStore] = Field(
        default_factory=list, description="Where the application reads the password."
    )
    discover_prefect_secrets: bool = Field(
        True, description="Also update every Prefect Secret block holding the leaked value."
    )
    containers: list[str] | None = Field(
        None,
        description="Docker services recreated with the new password; default: the target's "
        "Docker services whose user variable names this role.",
    )
    user_env: str = DEFAULT_USER_ENV
    password_env: str = DEFAULT_PASSWORD_ENV


class AccessKeyRotation(_Strict):
    """An IAM access key believed leaked: a new key is created, the old one deactivated."""

    user_name: str
    key_id: str
    secret_store: SecretStore = Field(
        description="Holds the key's secret now (the old one, for the proof) and gets the new."
    )
    key_id_store: SecretStore | None = Field(None, description="Gets the new key's id.")


class KubernetesSecretKey(_Strict):
    """A key of a Kubernetes Secret to replace with a newly generated value."""

    namespace: str
    name: str
    key: str


class TokenRotation(_Strict):
    """An API token re-issued by its provider (Slack...), delivered by reference."""

    name: str
    kind: Literal["slack", "opaque"] = Field(
        "opaque", description="slack: proven with auth.test; opaque: stores only."
    )
    new_value: SecretRef = Field(description="Where a person put the token the provider issued.")
    stores: list[SecretStore] = Field(min_length=1, description="Where the application reads it.")
    base_url: str | None = Field(None, description="Slack API root; default: the config's.")


class PodIsolation(_Strict):
    """Pods to cut off the network with a deny-all NetworkPolicy."""

    namespace: str
    pod_selector: dict[str, str] = Field(min_length=1)


class BreachOptions(_Strict):
    """Options of a breach response (``dr drill breach-response --option k=v``).

    Alert-started runs also carry ``severity``, ``auto_approve``, ``alert_fingerprint`` and
    ``alert_labels``; ``declared_at`` is when the incident was declared.
    """

    detected_at: datetime | None = Field(
        None, description="Incidents: when the breach was detected; default: declared_at."
    )
    services: list[str] | None = Field(
        None, description="Services to isolate (container names or ns/deployment); None: all."
    )
    compromised_roles: list[str] = Field(
        default_factory=list, description="Database roles to set NOLOGIN (sessions ended)."
    )
    credentials: list[DatabaseCredential] = Field(default_factory=list)
    rotate_app_credentials: bool | None = Field(
        None,
        description="Treat the database credentials of the target's Docker services as "
        "leaked; default: yes in drills.",
    )
    isolate_pods: list[PodIsolation] = Field(default_factory=list)
    security_groups: list[str] = Field(
        default_factory=list, description="Security groups whose inbound rules are revoked."
    )
    keep_cidrs: list[str] = Field(
        default_factory=list, description="Inbound rules from these networks stay (responders)."
    )
    block_cidrs: list[str] = Field(
        default_factory=list, description="Attacker networks to refuse (pg_hba, groups)."
    )
    block_in_pg_hba: bool = Field(True, description="Reject block_cidrs on local nodes.")
    block_cidrs_in_groups: list[str] = Field(
        default_factory=list, description="Security groups to remove block_cidrs from."
    )
    volume_ids: list[str] = Field(default_factory=list, description="EBS volumes to snapshot.")
    wait_snapshots: bool = True
    snapshot_timeout_seconds: float = Field(3600, gt=0)
    dump_tables: list[str] = Field(
        default_factory=list, description="'schema.table' to pg_dump as evidence."
    )
    dump_database: str | None = Field(None, description="Default: the heartbeat database.")
    event_namespaces: list[str] = Field(
        default_factory=list, description="Extra namespaces whose Kubernetes events to keep."
    )
    log_since: datetime | None = Field(None, description="Server log files modified since.")
    container_log_tail: int | None = Field(None, ge=1)
    evidence_retain_days: int = Field(365, ge=1)
    evidence_required: bool = Field(
        True, description="Evidence that cannot be stored fails the run (after the rest)."
    )
    access_keys: list[AccessKeyRotation] = Field(default_factory=list)
    kubernetes_secrets: list[KubernetesSecretKey] = Field(default_factory=list)
    tokens: list[TokenRotation] = Field(default_factory=list)
    restore_to: datetime | None = Field(
        None,
        description="Restore restore_tables as they were at this moment (before the "
        "intrusion), by point-in-time recovery; drills: just before the intruder is planted.",
    )
    restore_tables: list[str] = Field(
        default_factory=list, description="'schema.table' to restore clean (restore_to)."
    )
    restore_database: str | None = Field(None, description="Default: the heartbeat database.")
    recovery_timeout_seconds: float = Field(600, gt=0)
    resume: bool = Field(True, description="Bring the services back after the approval gate.")
    resume_timeout_seconds: float = Field(60, gt=0)
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer in dr_heartbeat; None: not checked."
    )
    drill_block_cidrs: list[str] = Field(
        default_factory=lambda: list(DRILL_BLOCK_CIDRS),
        description="Drills: the 'attacker' networks blocked, then unblocked at the end.",
    )
    severity: str | None = None
    auto_approve: bool = False
    declared_at: datetime | None = None
    alert_fingerprint: str | None = None
    alert_labels: dict[str, str] | None = None

    @field_validator("dump_tables", "restore_tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for name in value:
            if len([p for p in name.split(".") if p]) != 2:
                raise ValueError(f"{name!r}: give tables as schema.table")
        return value


# --------------------------------------------------------------------------- pure helpers


def deadlines_from(target: Target, detected_at: datetime) -> list[dict[str, Any]]:
    """The regulatory deadlines of a target as absolute UTC times from the detection.

    Args:
        target: its ``regulatory_deadlines`` (default: GDPR notification, 72 h).
        detected_at: when the breach was detected.

    Returns:
        ``[{"name", "hours", "due_at"}]`` in config order, ``due_at`` ISO 8601 UTC.
    """
    start = detected_at.astimezone(UTC)
    return [
        {
            "name": d.name,
            "hours": d.hours,
            "due_at": (start + timedelta(hours=d.hours)).isoformat(timespec="seconds"),
        }
        for d in target.regulatory_deadlines
    ]


def select_services(
    target: Target, names: Sequence[str] | None
) -> list[DockerService | KubernetesService]:
    """The target's services to isolate: all of them, or those named.

    A Kubernetes service may be named ``namespace/deployment`` or by its deployment alone.

    Raises:
        ConfigError: a name is not a service of the target (the known ones are listed).
    """
    if names is None:
        return list(target.services)
    chosen: list[DockerService | KubernetesService] = []
    unknown: list[str] = []
    for name in names:
        match = [
            s
            for s in target.services
            if s.name == name or (isinstance(s, KubernetesService) and s.deployment == name)
        ]
        if not match:
            unknown.append(name)
        for s in match:
            if s not in chosen:
                chosen.append(s)
    if unknown:
        known = ", ".join(s.name for s in target.services) or "none"
        raise ConfigError(
            f"unknown service(s) {', '.join(unknown)} (the target's services: {known})",
            [
                ("options.services", f"{n}: not a service of the target (known: {known})")
                for n in unknown
            ],
        )
    return chosen


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_secret() -> SecretStr:
    value = secrets.token_urlsafe(SECRET_BYTES)
    register_secret(value)
    return SecretStr(value)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds") if moment else None


# --------------------------------------------------------------------------- clients


class Systems:
    """The external systems' clients, built on first use from the config (one per system)."""

    def __init__(self, config: DRConfig) -> None:
        self.config = config
        self._clients: dict[str, Any] = {}

    def _get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._clients:
            self._clients[key] = build()
        return self._clients[key]

    @property
    def docker(self) -> Any:
        return self._get("docker", lambda: containers.make_client(self.config.docker.base_url))

    @property
    def k8s(self) -> Any:
        k = self.config.kubernetes
        return self._get("k8s", lambda: kubernetes.make_client(k.kubeconfig, k.context))

    def aws(self, service: str) -> Any:
        return self._get(service, lambda: cloud.make_client(self.config.aws, service))

    def repository(self, url: str) -> storage.Repository:
        def build() -> storage.Repository:
            if url.startswith("s3://"):
                return storage.open_repository(
                    url, s3_client=storage.make_s3_client(self.config.aws)
                )
            return storage.open_repository(url)

        return self._get(f"repo:{url}", build)  # type: ignore[no-any-return]

    def close(self) -> None:
        for key in ("docker", "k8s"):
            client = self._clients.get(key)
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._clients.clear()


# --------------------------------------------------------------------------- preflight


@dataclass
class _Credential:
    """A database credential to rotate, as resolved before anything changes."""

    role: str
    spec: DatabaseCredential
    containers: list[str]
    old: SecretStr | None = None


@dataclass
class Preflight:
    """Everything checked and resolved before the run may change anything."""

    config: DRConfig
    target_name: str
    target: Target
    services: list[DockerService | KubernetesService]
    compromised_roles: list[str]
    credentials: list[_Credential]
    block_cidrs: list[str]
    keep_cidrs: list[str]
    admin_password: str | None
    primary_reachable: bool
    notes: list[str] = field(default_factory=list)


def _admin_conninfo(pf: Preflight | Any, node: PostgresNode, dbname: str | None = None) -> str:
    pgc = pf.target.postgres
    return pg.conninfo(
        node,
        user=pgc.user,
        dbname=dbname or pgc.maintenance_db,
        password=pf.admin_password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name=APPLICATION_NAME,
    )


def _container_envs(
    systems: Systems, services: Sequence[DockerService | KubernetesService]
) -> dict[str, dict[str, str]]:
    """container name -> its environment (in memory only: it holds passwords)."""
    envs: dict[str, dict[str, str]] = {}
    for svc in services:
        if isinstance(svc, DockerService):
            for state in containers.find_containers(systems.docker, name=svc.name):
                envs[state.name] = dict(state.env)
    return envs


def _users_of(
    envs: dict[str, dict[str, str]], spec: DatabaseCredential
) -> tuple[list[str], SecretStr | None]:
    """The containers whose user variable names the role, and the password they hold."""
    names: list[str] = []
    old: SecretStr | None = None
    for name, env in envs.items():
        if env.get(spec.user_env) != spec.role:
            continue
        names.append(name)
        password = env.get(spec.password_env)
        if password and old is None:
            register_secret(password)
            old = SecretStr(password)
    return names, old


def preflight(
    config: DRConfig, target_name: str, mode: Mode, opts: BreachOptions, systems: Systems
) -> Preflight:
    """Check the request before anything changes; resolve what the run will act on.

    Args:
        config: the loaded config.
        target_name: the target.
        mode: the run's mode (drills may derive the leaked credentials themselves).
        opts: the options.
        systems: clients (only read here).

    Returns:
        The resolved :class:`Preflight`.

    Raises:
        ConfigError: unknown target, service or role; invalid networks; no evidence
            repository; every problem is listed.
        UnsafeTargetError: a drill on a target that does not allow drills.
    """
    target = config.target(target_name)
    if mode == Mode.drill and not target.drills_allowed:
        kind = "a production target" if target.production else "this target"
        raise UnsafeTargetError(
            f"drill refused: {kind} {target_name!r} does not allow drills;"
            f" set targets.{target_name}.drills_allowed: true to rehearse on it"
        )
    problems: list[tuple[str, str]] = []
    services: list[DockerService | KubernetesService] = []
    try:
        services = select_services(target, opts.services)
    except ConfigError as exc:
        problems.extend(exc.problems)
    block = list(opts.block_cidrs)
    if mode == Mode.drill and not block:
        block = list(opts.drill_block_cidrs)
    try:
        block = pgs.normalize_cidrs(block)
        keep = pgs.normalize_cidrs(opts.keep_cidrs)
    except ConfigError as exc:
        problems.extend(exc.problems)
        keep = []
    if target.evidence_repository is None and opts.evidence_required:
        problems.append(
            (
                f"targets.{target_name}.evidence_repository",
                "not set: a breach response writes its evidence there (or set the option "
                "evidence_required=false)",
            )
        )
    if opts.restore_to is not None and not opts.restore_tables:
        problems.append(
            ("options.restore_tables", "restore_to needs the tables to restore (schema.table)")
        )
    if opts.restore_tables:
        if opts.restore_to is None and mode != Mode.drill:
            problems.append(("options.restore_to", "restore_tables needs a moment to restore to"))
        if opts.restore_to is not None and opts.restore_to.tzinfo is None:
            problems.append(("options.restore_to", "give a time zone (e.g. +00:00)"))
        if target.backup.wal_archive is None:
            problems.append(
                (f"targets.{target_name}.backup.wal_archive", "not set: no point-in-time recovery")
            )
    pgc = target.postgres
    if pgc.user in opts.compromised_roles:
        problems.append(("options.compromised_roles", f"{pgc.user} is the role this run acts with"))
    rotate_app = opts.rotate_app_credentials
    if rotate_app is None:
        rotate_app = mode == Mode.drill and not opts.credentials
    envs: dict[str, dict[str, str]] = {}
    env_problem = ""
    if rotate_app or opts.credentials:
        try:
            envs = _container_envs(systems, target.services)
        except DRError as exc:
            if mode == Mode.drill:
                problems.append(("services", f"cannot read the containers' environment: {exc}"))
            else:  # an incident goes on: the roles are rotated, the containers by hand
                env_problem = f"containers not inspected ({exc}): repoint them by hand"
    known = {s.name for s in target.services if isinstance(s, DockerService)}
    creds: list[_Credential] = []
    for spec in opts.credentials:
        names, old = _users_of(envs, spec)
        chosen = names if spec.containers is None else list(spec.containers)
        for name in chosen:
            if name not in known:
                problems.append(
                    (f"options.credentials.{spec.role}.containers", f"{name}: not a service")
                )
        if spec.containers is not None:
            _, old = _users_of({n: envs.get(n, {}) for n in chosen}, spec)
        creds.append(_Credential(spec.role, spec, chosen, old))
    if rotate_app:
        chosen_envs = {
            n: e for n, e in envs.items() if any(s.name == n for s in services or target.services)
        }
        roles = dict.fromkeys(
            e[DEFAULT_USER_ENV] for e in chosen_envs.values() if e.get(DEFAULT_USER_ENV)
        )
        for role in roles:
            if role not in {c.role for c in creds}:
                spec = DatabaseCredential(role=role)
                names, old = _users_of(chosen_envs, spec)
                creds.append(_Credential(role, spec, names, old))
    if any(isinstance(s, DockerService) for s in services):
        with contextlib.suppress(DRError):
            systems.docker  # noqa: B018 - warm the client now, not on the containment clock
    admin = pgc.password.resolve() if pgc.password else None
    pf = Preflight(
        config=config,
        target_name=target_name,
        target=target,
        services=services,
        compromised_roles=list(dict.fromkeys(opts.compromised_roles)),
        credentials=creds,
        block_cidrs=block,
        keep_cidrs=keep,
        admin_password=admin,
        primary_reachable=False,
        notes=[env_problem] if env_problem else [],
    )
    roles = pf.compromised_roles + [c.role for c in creds]
    if roles:
        conninfo = _admin_conninfo(pf, pgc.primary)
        try:
            for role in roles:
                if not pg.role_exists(conninfo, role):
                    problems.append((f"role {role}", "does not exist on the primary"))
            pf.primary_reachable = True
        except PostgresError as exc:
            pf.notes.append(f"roles not checked: the primary cannot be reached ({exc})")
    if problems:
        listed = "; ".join(f"{where}: {why}" for where, why in problems)
        raise ConfigError(f"breach response on {target_name}, nothing changed: {listed}", problems)
    return pf


# --------------------------------------------------------------------------- steps


@dataclass
class _StepResult:
    label: str
    value: Any
    at: datetime


def _run_step(label: str, fn: Callable[[], Any]) -> _StepResult:
    """Run one step of a parallel branch and say when it finished."""
    value = fn()
    return _StepResult(label, value, _utcnow())


_step_task = dr_task(_run_step, name="breach-step", retries=2, cache_policy=NO_CACHE)
# Rotations are not retried as a whole: a retry after a partial rotation would rotate twice.
_once_task = dr_task(_run_step, name="breach-step-once", retries=0, cache_policy=NO_CACHE)


def _submit(label: str, fn: Callable[[], Any], *, retry: bool = True) -> Any:
    task = _step_task if retry else _once_task
    return task.with_options(name=label[:100]).submit(label, fn)


def _collect(futures: list[tuple[str, Any]]) -> list[tuple[str, _StepResult | BaseException]]:
    out: list[tuple[str, _StepResult | BaseException]] = []
    for label, fut in futures:
        out.append((label, fut.result(raise_on_failure=False)))
    return out


@dataclass
class _Rotation:
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


# --------------------------------------------------------------------------- the run


class BreachResponse:
    """One breach-response run: the state its phases share, and the phases."""

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
        self.held: dict[str, pgs.HeldSession] = {}
        self.stopped: dict[str, Change] = {}
        self.scaled: list[Change] = []
        self.policies: list[Change] = []
        self.revoked: list[Change] = []
        self.hba_blocks: dict[str, Change] = {}
        self.sg_blocks: list[Change] = []
        self.rotations: list[_Rotation] = []
        self.failed_rotations: list[str] = []
        self.stored: ev.StoredBundle | None = None
        self.restore_to: datetime | None = opts.restore_to
        self.digests_before: dict[str, str] = {}
        self.restored: dict[str, Any] | None = None
        self.short = (ctx.flow_run_id or secrets.token_hex(4)).replace("-", "")[:8]
        self.bundle: ev.EvidenceBundle | None = None
        self.scratch_dirs: list[Path] = []
        self.details: dict[str, Any] = {"breach": {}}
        self.info: dict[str, Any] = self.details["breach"]
        ctx.details.update(self.details)

    # ------------------------------------------------------------------ helpers

    def ci(self, node: PostgresNode, dbname: str | None = None) -> str:
        return _admin_conninfo(self.pf, node, dbname)

    def role_ci(self, node: PostgresNode, role: str, password: SecretStr) -> str:
        return pg.conninfo(
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

    # ------------------------------------------------------------------ drill

    def plant_intruder(self) -> None:
        """Drills: a rogue login role with an open session; the app's password 'leaked'."""
        ctx = self.ctx
        primary = self.pgc.primary
        role = f"dr_intruder_{self.short}"
        password = _new_secret()
        if self.opts.restore_tables and not ctx.dry_run:
            self.prepare_drill_restore()
        if not ctx.plan("create", f"rogue login role {role} with an open session (drill)"):
            self.rogue_role = role
            self.compromised.append(role)
            return
        change = pgs.create_login_role(self.ci(primary), role, password.get_secret_value())
        self.record(
            change,
            lambda: pgs.drop_role(self.ci(primary), role, dbnames=self.pgc.databases),
        )
        self.rogue_role, self.rogue_password = role, password
        self.compromised.append(role)
        self.held[role] = pgs.HeldSession(
            self.role_ci(primary, role, password), name=f"dr-intruder-{role}"
        ).start()
        leaked: list[dict[str, Any]] = []
        for cred in self.pf.credentials:
            if cred.old is None:
                continue
            session = pgs.HeldSession(
                self.role_ci(primary, cred.role, cred.old), name=f"dr-leaked-{cred.role}"
            ).start()
            self.held[f"leaked:{cred.role}"] = session
            leaked.append({"role": cred.role, "pid": session.pid})
        self.intrusion_at = ctx.stamp_failure(self.held[role].started_at)
        db = self.restore_db
        for table in self.opts.restore_tables:
            deleted = pgs.delete_rows_bypassing_checks(self.ci(primary, db), table, rows=3)
            self.info.setdefault("drill_damage", {})[table] = f"{deleted} row(s) deleted"
        self.info["drill"] = {
            "rogue_role": role,
            "rogue_session_pid": self.held[role].pid,
            "leaked_credentials": [c.role for c in self.pf.credentials],
            "leaked_sessions": leaked,
            "planted_at": _iso(self.intrusion_at),
        }
        ctx.note(
            f"drill: intruder planted at {_iso(self.intrusion_at)}: rogue role {role} "
            f"(session pid {self.held[role].pid}); leaked password(s) of "
            f"{', '.join(c.role for c in self.pf.credentials) or 'none'}"
        )

    # ------------------------------------------------------------------ clock

    def start_clock(self) -> None:
        """Stamp the detection and announce the regulatory deadlines."""
        ctx = self.ctx
        if ctx.is_drill:
            self.detected_at = _utcnow()
        else:
            self.detected_at = (self.opts.detected_at or ctx.declared_at).astimezone(UTC)
        deadlines = deadlines_from(self.target, self.detected_at)
        self.info["regulatory"] = {"detected_at": _iso(self.detected_at), "deadlines": deadlines}
        lines = "; ".join(f"{d['name']} due by {d['due_at']} ({d['hours']:g} h)" for d in deadlines)
        ctx.note(
            f"Regulatory clock: breach detected at {_iso(self.detected_at)}. "
            + (lines or "no regulatory deadline configured")
        )

    def remind_clock(self) -> None:
        """A closing reply in the thread: how long is left before each deadline."""
        now = _utcnow()
        parts = []
        for d in self.info.get("regulatory", {}).get("deadlines", []):
            left = (datetime.fromisoformat(d["due_at"]) - now).total_seconds() / 3600
            parts.append(f"{d['name']} due by {d['due_at']} ({left:.1f} h left)")
        if parts:
            self.ctx.slack.reply("Reminder, regulatory deadlines: " + "; ".join(parts))

    # ------------------------------------------------------------------ volatile evidence

    def capture_volatile(self) -> None:
        """Sessions, roles and privileges, container states, group rules: before containment."""
        bundle = self.bundle
        assert bundle is not None
        for node in self.pgc.nodes:
            where = f"postgres {node.name} ({node.host}:{node.port})"
            try:
                sessions = pgs.session_snapshot(self.ci(node))
                bundle.add_json(
                    f"postgres/{node.name}/sessions.json",
                    sessions,
                    kind="sessions",
                    source=where,
                    description="client sessions open before containment (pg_stat_activity)",
                )
            except DRError as exc:
                bundle.missing(
                    f"{node.name} sessions", kind="sessions", source=where, reason=str(exc)
                )
        primary = self.pgc.primary
        for db in dict.fromkeys([self.pgc.maintenance_db, *self.pgc.databases]):
            where = f"postgres {primary.name} database {db}"
            try:
                roles = pg.list_roles_and_privileges(self.ci(primary, db))
                bundle.add_json(
                    f"postgres/{primary.name}/roles-{db}.json",
                    roles,
                    kind="roles",
                    source=where,
                    description="roles, attributes, memberships and table privileges",
                )
            except DRError as exc:
                bundle.missing(f"roles in {db}", kind="roles", source=where, reason=str(exc))
        for svc in self.pf.services:
            if isinstance(svc, DockerService):
                try:
                    states = containers.find_containers(self.systems.docker, name=svc.name)
                    bundle.add_json(
                        f"containers/{svc.name}/state.json",
                        [s.model_dump(mode="json") for s in states],
                        kind="container-state",
                        source=f"docker {svc.name}",
                        description="container state (environment variable names only)",
                    )
                except DRError as exc:
                    bundle.missing(
                        f"{svc.name} state",
                        kind="container-state",
                        source=svc.name,
                        reason=str(exc),
                    )
        for group in dict.fromkeys([*self.opts.security_groups, *self.opts.block_cidrs_in_groups]):
            try:
                rules = cloud.describe_ingress(self.systems.aws("ec2"), group)
                bundle.add_json(
                    f"cloud/security-groups/{group}.json",
                    [r.model_dump(mode="json") for r in rules],
                    kind="security-group",
                    source=f"ec2 {group}",
                    description="inbound rules before containment",
                )
            except DRError as exc:
                bundle.missing(group, kind="security-group", source="ec2", reason=str(exc))

    # ------------------------------------------------------------------ contain

    def isolation_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        """Every containment step, each independent of the others."""
        ctx = self.ctx
        steps: list[tuple[str, Callable[[], Any]]] = []
        for svc in self.pf.services:
            if isinstance(svc, DockerService):
                if ctx.plan("stop", f"container {svc.name}"):
                    steps.append(
                        (
                            f"stop container {svc.name}",
                            lambda n=svc.name: containers.ensure_stopped(self.systems.docker, n),
                        )
                    )
            elif ctx.plan("scale to 0", f"deployment {svc.name}"):
                steps.append(
                    (
                        f"scale {svc.name} to 0",
                        lambda s=svc: kubernetes.scale_deployment(
                            self.systems.k8s, s.namespace, s.deployment, 0
                        ),
                    )
                )
        for i, iso in enumerate(self.opts.isolate_pods):
            name = f"dr-breach-isolate-{i}"
            if ctx.plan("apply", f"deny-all NetworkPolicy {iso.namespace}/{name}"):
                steps.append(
                    (
                        f"isolate pods {iso.namespace} {iso.pod_selector}",
                        lambda p=iso, n=name: kubernetes.apply_isolation_policy(
                            self.systems.k8s, p.namespace, p.pod_selector, n
                        ),
                    )
                )
        for group in self.opts.security_groups:
            if ctx.plan("revoke", f"inbound rules of security group {group}"):
                steps.append(
                    (
                        f"revoke inbound of {group}",
                        lambda g=group: cloud.revoke_ingress(
                            self.systems.aws("ec2"), g, keep_cidrs=self.pf.keep_cidrs
                        ),
                    )
                )
        if self.pf.block_cidrs:
            for group in self.opts.block_cidrs_in_groups:
                if ctx.plan("block", f"{', '.join(self.pf.block_cidrs)} at security group {group}"):
                    steps.append(
                        (
                            f"block networks at {group}",
                            lambda g=group: cloud.block_cidrs(
                                self.systems.aws("ec2"), g, self.pf.block_cidrs
                            ),
                        )
                    )
            if self.opts.block_in_pg_hba:
                for node in self.local_nodes():
                    if ctx.plan(
                        "reject", f"{', '.join(self.pf.block_cidrs)} in pg_hba of {node.name}"
                    ):
                        steps.append(
                            (
                                f"block networks in pg_hba of {node.name}",
                                lambda n=node: pgs.block_cidrs_in_hba(
                                    self.ci(n), self.pf.block_cidrs, reason=f"breach {self.short}"
                                ),
                            )
                        )
        for role in self.compromised:
            if ctx.plan("forbid login", f"role {role} (NOLOGIN, sessions ended on every node)"):
                steps.append((f"disable role {role}", lambda r=role: self.disable_role(r)))
        return steps

    def disable_role(self, role: str) -> list[Change]:
        """NOLOGIN on the primary (sessions ended), then sessions ended on every standby."""
        changes = [pg.set_role_login(self.ci(self.pgc.primary), role, False)]
        for node in self.pgc.replicas:
            try:
                ended = pg.terminate_sessions(self.ci(node), role=role)
            except PostgresError as exc:
                log.warning("sessions of %s on %s not ended: %s", role, node.name, exc)
                continue
            changes.append(
                Change(
                    system="postgres",
                    action="terminate-sessions",
                    object=f"role {role} on {node.name}",
                    outcome="changed" if ended else "unchanged",
                    after={"terminated_sessions": ended},
                    compensable=False,
                )
            )
        return changes

    def record_isolation(self, label: str, value: Any) -> None:
        changes = value if isinstance(value, list) else [value]
        for change in changes:
            undo: Callable[[], Any] | None = None
            if change.system == "docker" and change.action == "stop":
                self.stopped[change.object] = change
                undo = lambda c=change: self.drill_restart(c)  # noqa: E731
            elif change.system == "kubernetes" and change.action == "scale":
                self.scaled.append(change)
                undo = lambda c=change: kubernetes.restore_scale(self.systems.k8s, c)  # noqa: E731
            elif change.system == "kubernetes" and change.action == "apply-isolation-policy":
                self.policies.append(change)
                undo = lambda c=change: kubernetes.undo_change(self.systems.k8s, c)  # noqa: E731
            elif change.system == "ec2" and change.action == "revoke-ingress":
                self.revoked.append(change)
                undo = lambda c=change: cloud.restore_ingress(self.systems.aws("ec2"), c)  # noqa: E731
            elif change.system == "ec2" and change.action == "block-cidrs":
                self.sg_blocks.append(change)
                undo = lambda c=change: cloud.restore_ingress(self.systems.aws("ec2"), c)  # noqa: E731
            elif change.action == "block-cidrs-in-hba":
                node = label.rsplit(" ", 1)[-1]
                self.hba_blocks[node] = change
                undo = lambda c=change, n=node: pgs.unblock_cidrs_in_hba(  # noqa: E731
                    self.ci(self.pgc.node(n)), c
                )
            elif change.action == "forbid-login" and change.object.split()[1] != self.rogue_role:
                role = change.object.split()[1]
                undo = lambda r=role: pg.set_role_login(self.ci(self.pgc.primary), r, True)  # noqa: E731
            self.record(change, undo)
        self.ctx.record_check(
            f"contained: {label}", True, detail="; ".join(c.summary() for c in changes)
        )

    def drill_restart(self, change: Change) -> Any:
        """Drill compensation of a stop: the container comes back with a password that works."""
        name = change.object
        for rot in self.rotations:
            if rot.kind == "db-role" and name in rot.containers and rot.new is not None:
                spec = next((c.spec for c in self.pf.credentials if c.role == rot.name), None)
                env = spec.password_env if spec else "DB_PASSWORD"
                containers.recreate_with_env(
                    self.systems.docker, name, {env: rot.new.get_secret_value()}
                )
        return containers.restore_state(self.systems.docker, change)

    # ------------------------------------------------------------------ evidence

    def evidence_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        """Every evidence collection step (files land in the bundle's staging folder)."""
        ctx = self.ctx
        steps: list[tuple[str, Callable[[], Any]]] = []
        if ctx.dry_run:
            ctx.plan("collect", "server logs, container logs, events, snapshots and dumps")
            return steps
        scratch = Path(tempfile.mkdtemp(prefix="dr-evidence-scratch-"))
        self.scratch_dirs.append(scratch)
        for node in self.pgc.nodes:
            if ctx.plan("copy", f"server logs of {node.name}"):
                steps.append(
                    (f"server logs of {node.name}", lambda n=node: self.node_logs(n, scratch))
                )
        for svc in self.pf.services:
            if isinstance(svc, DockerService) and ctx.plan("copy", f"logs of container {svc.name}"):
                steps.append(
                    (f"logs of container {svc.name}", lambda n=svc.name: self.container_logs(n))
                )
        namespaces = [s.namespace for s in self.pf.services if isinstance(s, KubernetesService)]
        namespaces += [p.namespace for p in self.opts.isolate_pods] + self.opts.event_namespaces
        for ns in dict.fromkeys(namespaces):
            if ctx.plan("list", f"Kubernetes events of namespace {ns}"):
                steps.append((f"events of namespace {ns}", lambda n=ns: self.k8s_events(n)))
        if self.opts.volume_ids and ctx.plan(
            "snapshot", f"volumes {', '.join(self.opts.volume_ids)}"
        ):
            steps.append(("volume snapshots", self.snapshots))
        if self.opts.dump_tables and ctx.plan(
            "pg_dump", f"tables {', '.join(self.opts.dump_tables)}"
        ):
            steps.append(("dump of tables", lambda: self.dump_tables(scratch)))
        return steps

    def node_logs(self, node: PostgresNode, scratch: Path) -> int:
        bundle = self.bundle
        assert bundle is not None
        local = node.log_directory or (node.data_directory / "log" if node.data_directory else None)
        conninfo: str | None = self.ci(node)
        entries = pgs.collect_server_logs(
            conninfo, scratch / "logs" / node.name, local_log_dir=local, since=self.opts.log_since
        )
        where = f"postgres {node.name} ({node.host}:{node.port})"
        for e in entries:
            if "path" in e:
                bundle.add_file(
                    f"postgres/{node.name}/log/{e['name']}",
                    e["path"],
                    kind="server-log",
                    source=f"{where} via {e['via']}",
                    description=f"server log file modified {e['modified_at']}",
                )
            else:
                bundle.missing(e["name"], kind="server-log", source=where, reason=e["skipped"])
        return len(entries)

    def container_logs(self, name: str) -> int:
        bundle = self.bundle
        assert bundle is not None
        data = containers.container_logs(
            self.systems.docker, name, tail=self.opts.container_log_tail
        )
        bundle.add_bytes(
            f"containers/{name}/logs.txt",
            data,
            kind="container-log",
            source=f"docker {name}",
            description="stdout and stderr of the container",
        )
        return len(data)

    def k8s_events(self, namespace: str) -> int:
        bundle = self.bundle
        assert bundle is not None
        events = kubernetes.list_events(self.systems.k8s, namespace)
        bundle.add_json(
            f"kubernetes/{namespace}/events.json",
            events,
            kind="kubernetes-events",
            source=f"kubernetes namespace {namespace}",
        )
        return len(events)

    def snapshots(self) -> int:
        bundle = self.bundle
        assert bundle is not None
        ec2 = self.systems.aws("ec2")
        ids = cloud.create_volume_snapshots(
            ec2,
            self.opts.volume_ids,
            description=f"forensic snapshot, breach response {self.short} on {self.pf.target_name}",
            tags={"dr:incident": f"breach-{self.short}", "dr:target": self.pf.target_name},
        )
        if self.opts.wait_snapshots:
            infos = cloud.wait_snapshots(
                ec2, ids, timeout_seconds=self.opts.snapshot_timeout_seconds
            )
            doc = [i.model_dump(mode="json") for i in infos]
        else:
            doc = [{"snapshot_id": i, "state": "pending"} for i in ids]
        bundle.add_json(
            "cloud/snapshots.json",
            doc,
            kind="volume-snapshots",
            source="ec2",
            description="forensic EBS snapshots (the data stays in EC2, tagged dr:incident)",
        )
        self.info["snapshots"] = ids
        return len(ids)

    def dump_tables(self, scratch: Path) -> int:
        bundle = self.bundle
        assert bundle is not None
        db = self.opts.dump_database or self.pgc.heartbeat_db
        primary = self.pgc.primary
        conninfo = pg.conninfo(
            primary,
            user=self.pgc.user,
            dbname=db,
            connect_timeout_seconds=self.pgc.connect_timeout_seconds,
            application_name=APPLICATION_NAME,
        )
        out = scratch / "dumps" / f"{db}-tables.dump"
        info = rc.dump_relations(
            conninfo,
            self.opts.dump_tables,
            out,
            bin_dir=primary.bin_dir,
            password=self.pf.admin_password,
        )
        bundle.add_file(
            f"postgres/dumps/{db}-tables.dump",
            out,
            kind="dump",
            source=f"postgres {primary.name} database {db}",
            description=f"pg_dump -Fc of {', '.join(self.opts.dump_tables)}",
        )
        return int(info["bytes"])

    def store_evidence(self) -> None:
        """Write the bundle once, then read it back and verify every checksum."""
        ctx = self.ctx
        bundle = self.bundle
        assert bundle is not None
        url = self.target.evidence_repository
        manifest = bundle.manifest(
            title=f"breach response on {self.pf.target_name} ({ctx.mode.value})",
            incident={
                "target": self.pf.target_name,
                "scenario": ctx.scenario.value,
                "mode": ctx.mode.value,
                "severity": ctx.severity,
                "declared_at": _iso(ctx.declared_at),
                "detected_at": _iso(self.detected_at),
                "intrusion_at": _iso(self.intrusion_at),
                "alert_fingerprint": self.opts.alert_fingerprint,
            },
            collected_by=ev.collector_identity(ctx.flow_run_id, ctx.flow_run_url),
        )
        evidence: dict[str, Any] = {
            "bundle_id": bundle.bundle_id,
            "items": len(manifest.items),
            "total_bytes": manifest.total_bytes,
            "missing": [m.model_dump(mode="json") for m in manifest.missing],
            "complete": False,
            "stored": False,
            "verified": False,
        }
        self.info["evidence"] = evidence
        critical = self.opts.evidence_required
        if url is None:
            evidence["staged_at"] = str(bundle.staging_dir)
            ctx.record_check(
                "evidence bundle stored", False, critical=critical,
                detail=f"no evidence repository configured; staged copy at {bundle.staging_dir}",
            )  # fmt: skip
            return
        prefix = f"{self.pf.target_name}/breach/{bundle.bundle_id}"
        if not ctx.plan("write once", f"the evidence bundle to {url}/{prefix}"):
            return
        try:
            repo = self.systems.repository(url)
            stored = ev.write_bundle_task.submit(
                repo, prefix, bundle, manifest, retain_days=self.opts.evidence_retain_days
            ).result()
        except Exception as exc:  # noqa: BLE001 - isolation already happened; report it
            evidence["staged_at"] = str(bundle.staging_dir)
            evidence["error"] = redact(str(exc))
            ctx.record_check(
                "evidence bundle stored",
                False,
                critical=critical,
                detail=f"evidence INCOMPLETE: {type(exc).__name__}: {exc}; the staged copy is "
                f"kept at {bundle.staging_dir}",
            )
            ctx.note(f"evidence is incomplete: the bundle could not be stored ({exc})")
            return
        self.stored = stored
        evidence.update(stored.model_dump(mode="json"))
        evidence["stored"] = True
        ctx.record_check(
            "evidence bundle stored",
            True,
            critical=critical,
            detail=f"{stored.items} item(s), {stored.total_bytes} bytes at {stored.url}; "
            + (f"Object Lock {stored.lock_mode} until {_iso(stored.retain_until)}"
               if stored.locked else "no provider-enforced retention"),
            value=stored.url,
        )  # fmt: skip
        ctx.record_check(
            "evidence retained by the storage provider",
            stored.locked,
            critical=False,
            detail=stored.lock_mode or "the bucket has no Object Lock: write-once by convention",
        )
        report = ev.verify_bundle_task.submit(
            repo, prefix, expected_manifest_sha256=stored.manifest_sha256
        ).result()
        evidence["verified"] = report.ok
        evidence["verify"] = report.summary()
        ctx.record_check(
            "evidence bundle checksums verify",
            report.ok,
            critical=critical,
            detail=f"{report.summary()}; verify again with: {stored.verify_command}",
            value=stored.manifest_sha256,
        )
        evidence["complete"] = report.ok and manifest.complete
        if not manifest.complete:
            ctx.record_check(
                "evidence complete",
                False,
                critical=critical,
                detail="; ".join(f"{m.name}: {m.reason}" for m in manifest.missing),
            )
        if report.ok:
            bundle.cleanup()

    # ------------------------------------------------------------------ contain + preserve

    def contain_and_preserve(self) -> None:
        """Isolation and evidence collection in parallel; then store the evidence."""
        ctx = self.ctx
        iso = [(label, _submit(f"isolate: {label}", fn)) for label, fn in self.isolation_steps()]
        evs = [(label, _submit(f"evidence: {label}", fn)) for label, fn in self.evidence_steps()]
        failures: list[str] = []
        finished: list[datetime] = []
        for label, outcome in _collect(iso):
            if isinstance(outcome, BaseException):
                failures.append(label)
                ctx.record_check(f"contained: {label}", False, detail=f"{outcome}")
            else:
                finished.append(outcome.at)
                self.record_isolation(label, outcome.value)
        if iso and not ctx.dry_run:
            self.contained_at = max(finished) if finished else None
            if failures:
                ctx.note(f"containment incomplete: {', '.join(failures)} failed")
        elif not ctx.dry_run:
            self.contained_at = _utcnow()
        for label, outcome in _collect(evs):
            if isinstance(outcome, BaseException):
                assert self.bundle is not None
                self.bundle.missing(label, kind="evidence", source=label, reason=str(outcome))
        if not ctx.dry_run:
            self.store_evidence()
            self.evidence_at = _utcnow()
        else:
            ctx.plan("write once", f"the evidence bundle to {self.target.evidence_repository}")

    # ------------------------------------------------------------------ rotate

    def rotation_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        ctx = self.ctx
        steps: list[tuple[str, Callable[[], Any]]] = []
        for cred in self.pf.credentials:
            stores = ", ".join(s.describe() for s in cred.spec.stores) or "discovered stores"
            if ctx.plan("rotate", f"password of role {cred.role} (stores: {stores})"):
                steps.append((f"rotate role {cred.role}", lambda c=cred: self.rotate_role(c)))
        for key in self.opts.access_keys:
            if ctx.plan("rotate", f"IAM access key {key.key_id} of {key.user_name}"):
                steps.append(
                    (f"rotate access key {key.key_id}", lambda k=key: self.rotate_access_key(k))
                )
        for sk in self.opts.kubernetes_secrets:
            obj = f"{sk.namespace}/{sk.name}/{sk.key}"
            if ctx.plan("replace", f"Kubernetes secret key {obj}"):
                steps.append((f"rotate secret {obj}", lambda s=sk: self.rotate_k8s_secret(s)))
        for tok in self.opts.tokens:
            if ctx.plan("replace", f"token {tok.name} in {len(tok.stores)} store(s)"):
                steps.append((f"rotate token {tok.name}", lambda t=tok: self.rotate_token(t)))
        return steps

    def read_store(self, store: SecretStore) -> str | None:
        if store.prefect_secret:
            return secret_store.read_prefect_secret(store.prefect_secret)
        if store.file:
            return secret_store.read_secret_file(store.file)
        if store.aws_secret:
            return cloud.read_secret(
                self.systems.aws("secretsmanager"), store.aws_secret
            ).get_secret_value()
        assert store.kubernetes_secret is not None
        ns, name, key = store.kubernetes_secret.split("/")
        return kubernetes.read_secret(self.systems.k8s, ns, name).get(key)

    def write_store(self, store: SecretStore, value: SecretStr) -> Change:
        if store.prefect_secret:
            return secret_store.write_prefect_secret(store.prefect_secret, value.get_secret_value())
        if store.file:
            return secret_store.write_secret_file(store.file, value.get_secret_value())
        if store.aws_secret:
            return cloud.put_secret_value(
                self.systems.aws("secretsmanager"), store.aws_secret, value
            )
        assert store.kubernetes_secret is not None
        ns, name, key = store.kubernetes_secret.split("/")
        return kubernetes.replace_secret_key(
            self.systems.k8s, ns, name, key, value.get_secret_value()
        )

    def rotate_role(self, cred: _Credential) -> _Rotation:
        """New password (verifier only), old sessions ended everywhere, stores updated."""
        rot = _Rotation(
            kind="db-role", name=cred.role, old=cred.old, containers=list(cred.containers)
        )
        stores = list(cred.spec.stores)
        if rot.old is None:
            for store in stores:
                with contextlib.suppress(DRError):
                    current = self.read_store(store)
                    if current:
                        rot.old = SecretStr(current)
                        break
        if cred.spec.discover_prefect_secrets and rot.old is not None:
            for block in secret_store.find_prefect_secrets_holding([rot.old.get_secret_value()]):
                if not any(s.prefect_secret == block for s in stores):
                    stores.append(SecretStore(prefect_secret=block))
        rot.new = _new_secret()
        rot.changes.append(
            pg.set_role_password(self.ci(self.pgc.primary), cred.role, rot.new.get_secret_value())
        )
        ended = 0
        for node in self.pgc.nodes:
            try:
                ended += pg.terminate_sessions(self.ci(node), role=cred.role)
            except PostgresError as exc:
                log.warning("sessions of %s on %s not ended: %s", cred.role, node.name, exc)
        rot.detail["sessions_ended"] = ended
        new = rot.new
        for store in stores:
            rot.attempt(f"store in {store.describe()}", lambda s=store: self.write_store(s, new))
            rot.stores.append(store.describe())
            rot.store_specs.append(store)
        for name in rot.containers:
            if name not in self.stopped:
                # Not isolated, so still running with the old password: repoint it now.
                rot.attempt(
                    f"repoint container {name}",
                    lambda n=name: containers.recreate_with_env(
                        self.systems.docker, n, {cred.spec.password_env: new.get_secret_value()}
                    ),
                )
        rot.at = _utcnow()
        return rot

    def rotate_access_key(self, spec: AccessKeyRotation) -> _Rotation:
        rot = _Rotation(kind="iam-key", name=f"{spec.user_name}/{spec.key_id}")
        old = self.read_store(spec.secret_store)
        if not old:
            raise VerificationError(
                f"{spec.secret_store.describe()} holds no secret for access key {spec.key_id}"
            )
        rot.old = SecretStr(old)
        new_id, new_secret, change = cloud.rotate_access_key(
            self.systems.aws("iam"), spec.user_name, spec.key_id
        )
        rot.changes.append(change)
        rot.new = new_secret
        rot.detail = {"user_name": spec.user_name, "old_key_id": spec.key_id, "new_key_id": new_id}
        rot.attempt(
            f"store in {spec.secret_store.describe()}",
            lambda: self.write_store(spec.secret_store, new_secret),
        )
        rot.stores.append(spec.secret_store.describe())
        rot.store_specs.append(spec.secret_store)
        if spec.key_id_store is not None:
            id_store = spec.key_id_store
            rot.attempt(
                f"store in {id_store.describe()}",
                lambda: self.write_store(id_store, SecretStr(new_id)),
            )
            rot.stores.append(id_store.describe())
        rot.at = _utcnow()
        return rot

    def rotate_k8s_secret(self, spec: KubernetesSecretKey) -> _Rotation:
        obj = f"{spec.namespace}/{spec.name}/{spec.key}"
        rot = _Rotation(kind="kubernetes-secret", name=obj)
        current = kubernetes.read_secret(self.systems.k8s, spec.namespace, spec.name).get(spec.key)
        rot.old = SecretStr(current) if current else None
        rot.new = _new_secret()
        store = SecretStore(kubernetes_secret=obj)
        rot.changes.append(self.write_store(store, rot.new))  # the rotation itself
        rot.stores.append(store.describe())
        rot.store_specs.append(store)
        rot.at = _utcnow()
        return rot

    def rotate_token(self, spec: TokenRotation) -> _Rotation:
        rot = _Rotation(kind=f"{spec.kind}-token", name=spec.name)
        with contextlib.suppress(DRError):
            current = self.read_store(spec.stores[0])
            rot.old = SecretStr(current) if current else None
        rot.new = SecretStr(spec.new_value.resolve())
        if rot.old is not None and rot.old.get_secret_value() == rot.new.get_secret_value():
            raise VerificationError(
                f"token {spec.name}: {spec.new_value.describe()} holds the token already in use; "
                "have the provider issue a new one first"
            )
        new = rot.new
        for store in spec.stores:
            rot.attempt(f"store in {store.describe()}", lambda s=store: self.write_store(s, new))
            rot.stores.append(store.describe())
            rot.store_specs.append(store)
        rot.at = _utcnow()
        return rot

    def rotate(self) -> None:
        ctx = self.ctx
        self.rotation_started_at = _utcnow()
        if self.evidence_at is not None:
            ctx.record_check(
                "evidence preserved before remediation",
                self.evidence_at <= self.rotation_started_at,
                detail=f"evidence done {_iso(self.evidence_at)}, rotation started "
                f"{_iso(self.rotation_started_at)}",
            )
        futures = [(label, _submit(label, fn, retry=False)) for label, fn in self.rotation_steps()]
        for label, outcome in _collect(futures):
            if isinstance(outcome, BaseException):
                self.failed_rotations.append(label)
                ctx.record_check(
                    f"credential rotated: {label.removeprefix('rotate ')}",
                    False,
                    detail=f"NOT rotated: {type(outcome).__name__}: {outcome}",
                )
                continue
            rot: _Rotation = outcome.value
            self.rotations.append(rot)
            for change in rot.changes:
                # Never compensated: undoing a rotation would bring back a leaked value.
                self.ctx.record_change(change)
            ctx.record_check(
                f"credential rotated: {rot.kind} {rot.name}",
                True,
                detail=f"stores: {', '.join(rot.stores) or 'none'}"
                + (f"; {rot.detail}" if rot.detail else ""),
            )
            for error in rot.errors:
                self.failed_rotations.append(f"{rot.kind} {rot.name}: {error}")
                ctx.record_check(
                    f"credential followed up: {rot.kind} {rot.name}",
                    False,
                    detail=f"rotated, but {error}; the new value is only in the stores that "
                    "took it and in the containers repointed",
                )
        self.info["rotations"] = [
            {"kind": r.kind, "name": r.name, "stores": r.stores, "containers": r.containers,
             "rotated_at": _iso(r.at), **{k: v for k, v in r.detail.items()}}
            for r in self.rotations
        ]  # fmt: skip
        self.info["rotations_failed"] = list(self.failed_rotations)

    # ------------------------------------------------------------------ prove

    def _login_everywhere(
        self, role: str, password: SecretStr, expect: bool
    ) -> list[tuple[str, bool | None, str]]:
        """Try the credential on every node; standbys get time to replay the change.

        Returns:
            ``(node, logged_in, why)`` per node; ``logged_in`` None when unreachable.
        """
        out: list[tuple[str, bool | None, str]] = []
        for node in self.pgc.nodes:
            wait = 0.0 if node is self.pgc.primary else REPLICA_PROOF_SECONDS
            deadline = time.monotonic() + wait
            while True:
                result: bool | None
                try:
                    result, why = pgs.try_login(self.role_ci(node, role, password))
                except PostgresError as exc:
                    result, why = None, f"unreachable: {exc}"
                if result is expect or time.monotonic() > deadline:
                    out.append((node.name, result, why))
                    break
                time.sleep(POLL_SECONDS)
        return out

    def prove(self) -> None:
        ctx = self.ctx
        proofs: list[dict[str, Any]] = []
        for role in self.compromised:
            self.prove_role_disabled(role, proofs)
        for rot in self.rotations:
            try:
                self.prove_rotation(rot, proofs)
            except DRError as exc:
                ctx.record_check(f"proof: {rot.kind} {rot.name}", False, detail=str(exc))
        self.info["proofs"] = proofs

    def _check(
        self,
        proofs: list[dict[str, Any]],
        name: str,
        ok: bool,
        detail: str,
        *,
        critical: bool = True,
    ) -> None:
        self.ctx.record_check(name, ok, critical=critical, detail=detail)
        proofs.append({"proof": name, "ok": ok, "detail": redact(detail)})

    def prove_role_disabled(self, role: str, proofs: list[dict[str, Any]]) -> None:
        for node in self.pgc.nodes:
            deadline = time.monotonic() + (0 if node is self.pgc.primary else REPLICA_PROOF_SECONDS)
            while True:
                try:
                    can = pgs.role_can_login(self.ci(node), role)
                    sessions = [s for s in pgs.session_snapshot(self.ci(node)) if s["user"] == role]
                except PostgresError as exc:
                    can, sessions = None, []
                    detail = f"cannot ask {node.name}: {exc}"
                    if time.monotonic() > deadline:
                        self._check(proofs, f"role {role} disabled on {node.name}", False, detail)
                        break
                else:
                    if (can is False and not sessions) or time.monotonic() > deadline:
                        self._check(
                            proofs,
                            f"role {role} cannot log in and has no session on {node.name}",
                            can is False and not sessions,
                            f"rolcanlogin={can}, open sessions: {[s['pid'] for s in sessions] or 'none'}",
                        )
                        break
                time.sleep(POLL_SECONDS)
        held = self.held.get(role)
        if held is not None:
            ended = held.wait_ended(5)
            self._check(
                proofs,
                f"drill: intruder session of {role} is gone",
                ended and not pgs.sessions_alive(self.ci(self.pgc.primary), [held.pid or 0]),
                f"pid {held.pid} ended at {_iso(held.ended_at)} ({held.error})",
            )
        if role == self.rogue_role and self.rogue_password is not None:
            for node, ok, why in self._login_everywhere(role, self.rogue_password, expect=False):
                self._check(
                    proofs,
                    f"drill: intruder cannot reconnect to {node}",
                    ok is False,
                    why,
                )

    def prove_rotation(self, rot: _Rotation, proofs: list[dict[str, Any]]) -> None:
        name = f"{rot.kind} {rot.name}"
        if rot.kind == "db-role":
            assert rot.new is not None
            if rot.old is not None:
                for node, ok, why in self._login_everywhere(rot.name, rot.old, expect=False):
                    self._check(
                        proofs, f"{name}: old password rejected on {node}", ok is False, why
                    )
            else:
                self._check(
                    proofs, f"{name}: old password rejected", False,
                    "the old password is unknown (no store or container held it): not provable",
                    critical=False,
                )  # fmt: skip
            for node, ok, why in self._login_everywhere(rot.name, rot.new, expect=True):
                self._check(proofs, f"{name}: new password works on {node}", ok is True, why)
            held = self.held.get(f"leaked:{rot.name}")
            if held is not None:
                ended = held.wait_ended(5)
                self._check(
                    proofs,
                    f"drill: session opened with the leaked password of {rot.name} is gone",
                    ended and not pgs.sessions_alive(self.ci(self.pgc.primary), [held.pid or 0]),
                    f"pid {held.pid} ended at {_iso(held.ended_at)} ({held.error})",
                )
        elif rot.kind == "iam-key":
            aws = self.pf.config.aws
            assert rot.new is not None and rot.old is not None
            old_id, new_id = rot.detail["old_key_id"], rot.detail["new_key_id"]
            user = rot.detail["user_name"]
            try:
                proof = cloud.prove_key_rejected(aws, old_id, rot.old, user_name=user)
                self._check(proofs, f"{name}: old key rejected", proof.proven, proof.summary())
            except VerificationError as exc:
                self._check(proofs, f"{name}: old key rejected", False, str(exc))
            try:
                proof = cloud.prove_key_works(aws, new_id, rot.new, user_name=user)
                self._check(proofs, f"{name}: new key works", proof.proven, proof.summary())
            except VerificationError as exc:
                self._check(proofs, f"{name}: new key works", False, str(exc))
        elif rot.kind == "slack-token":
            spec = next(t for t in self.opts.tokens if t.name == rot.name)
            base = spec.base_url or self.pf.config.slack.base_url
            assert rot.new is not None
            if rot.old is not None:
                ok, why = notify.check_token(notify.make_client(rot.old.get_secret_value(), base))
                self._check(proofs, f"{name}: old token rejected", not ok, why)
            ok, why = notify.check_token(notify.make_client(rot.new.get_secret_value(), base))
            self._check(proofs, f"{name}: new token works", ok, why)
        elif rot.kind == "opaque-token":
            self._check(
                proofs, f"{name}: old token rejected", False,
                "an opaque token cannot be tested by the flow: revoke it at its provider",
                critical=False,
            )  # fmt: skip
        for store in rot.store_specs:
            held_value = self.read_store(store)
            assert rot.new is not None
            self._check(
                proofs,
                f"{name}: {store.describe()} holds the new value",
                held_value == rot.new.get_secret_value(),
                "read back and compared in memory (values never shown)",
            )

    # ------------------------------------------------------------------ restore clean

    @property
    def restore_db(self) -> str:
        return self.opts.restore_database or self.pgc.heartbeat_db

    def prepare_drill_restore(self) -> None:
        """Drills: a base backup to restore from, the tables' digests, the restore point."""
        from flows.backup import base_backup_target

        repo = self.systems.repository(self.target.backup.repository)
        if not rc.list_base_backups(repo, self.pf.target_name):
            result = base_backup_target(self.pf.config, self.pf.target_name)
            self.ctx.note(f"drill: took base backup {result.backup_id} to restore clean from")
        digests = rc.relation_digests(
            self.ci(self.pgc.primary, self.restore_db), self.opts.restore_tables
        )
        self.digests_before = {rel: d.digest for rel, d in digests.items()}
        if self.restore_to is None:
            self.restore_to = _utcnow()

    def restore_clean(self) -> None:
        """Point-in-time recovery into a side cluster, then the tables back in one transaction.

        Why tables and not the whole database: the rows the application wrote since the
        restore point in other tables stay; only what the intruder could have touched comes
        back as it was. The recovered cluster is removed afterwards, whatever happened.
        """
        ctx = self.ctx
        tables = self.opts.restore_tables
        db = self.restore_db
        if self.restore_to is None:  # a dry run of a drill: the point is stamped when planting
            ctx.approve(f"restore {', '.join(tables)} in {db} to just before the intrusion")
            ctx.plan("restore", f"{', '.join(tables)} in {db} (PITR + copy back)")
            return
        point = rc.RecoveryTarget(time=self.restore_to)
        ctx.approve(f"restore {', '.join(tables)} in {db} {point.describe()}")
        if not ctx.plan("restore", f"{', '.join(tables)} {point.describe()} (PITR + copy back)"):
            return
        primary = self.pgc.primary
        live = self.ci(primary, db)
        rc.switch_wal_and_wait(self.ci(primary))
        backup_repo = self.systems.repository(self.target.backup.repository)
        archive = self.target.backup.wal_archive or ""
        wal_repo = self.systems.repository(archive)
        now = rc.server_position(live)
        backup = rc.choose_base_backup(
            rc.list_base_backups(backup_repo, self.pf.target_name),
            point,
            damage_at=self.intrusion_at or self.detected_at,
            now=max(now["at"], _utcnow()),
            current_lsn=now["lsn"],
        )
        plan = rc.plan_wal(wal_repo, backup, point)
        work = Path(tempfile.mkdtemp(prefix="dr-breach-restore-"))
        work.chmod(0o755)
        self.scratch_dirs.append(work)
        rc.download_base_backup(backup_repo, backup, work / "download")
        rc.extract_base_backup(work / "download", work / "data", bin_dir=primary.bin_dir)
        shutil.rmtree(work / "download", ignore_errors=True)
        if archive.startswith("file://"):
            command = rc.restore_command_for(archive)
        else:
            rc.stage_wal(wal_repo, plan, work / "wal")
            command = rc.restore_command_for(None, work / "wal")
        recovered = rc.start_recovery(
            work / "data",
            point.model_copy(update={"timeline": plan.target_timeline}),
            restore_command=command,
            bin_dir=primary.bin_dir,
            user=self.pgc.user,
            password=self.pf.admin_password,
            timeout_seconds=self.opts.recovery_timeout_seconds,
            base_backup_id=backup.backup_id,
            cluster_name=f"dr-breach-{self.short}",
        )
        try:
            source = pg.conninfo(
                PostgresNode(name="recovered", host=recovered.host, port=recovered.port),
                user=self.pgc.user,
                dbname=db,
                password=self.pf.admin_password,
                application_name=APPLICATION_NAME,
            )
            result = rc.restore_relations(source, live, tables)
        finally:
            rc.remove_cluster(recovered.data_dir, bin_dir=primary.bin_dir)
        ctx.record_change(
            Change(
                system="postgres",
                action="restore-relations",
                object=f"{', '.join(tables)} in {db} on {primary.name}",
                outcome="updated",
                before={"restore_to": _iso(self.restore_to)},
                after={
                    "base_backup": backup.backup_id,
                    "last_replayed_at": _iso(recovered.last_replayed_at),
                    "rows": {r: d.rows for r, d in result.relations.items()},
                },
                undo="rows changed after the restore point are gone from these tables; the "
                "evidence bundle holds what was there (dump_tables)",
                compensable=False,
            )
        )
        self.restored = {
            "restore_to": _iso(self.restore_to),
            "base_backup": backup.backup_id,
            "last_replayed_at": _iso(recovered.last_replayed_at),
            "replay_seconds": recovered.replay_seconds,
            "tables": {r: d.model_dump(mode="json") for r, d in result.relations.items()},
            "committed_at": _iso(result.committed_at),
        }
        self.info["restore"] = self.restored
        for rel, digest in result.relations.items():
            ctx.record_check(
                f"restored clean: {rel}",
                True,
                detail=f"{digest.rows} row(s) as at {_iso(self.restore_to)}, digests match the "
                f"recovered copy (base backup {backup.backup_id})",
            )
            if rel in self.digests_before:
                ctx.record_check(
                    f"drill: {rel} is as before the intrusion",
                    digest.digest == self.digests_before[rel],
                    detail="row digests compared with the snapshot taken before the intruder",
                )

    # ------------------------------------------------------------------ resume

    def resume(self) -> None:
        """Restore the recorded service state, with the new credentials."""
        ctx = self.ctx
        self.resume_started_at = _utcnow()
        for rot in self.rotations:
            if rot.kind != "db-role" or rot.new is None:
                continue
            spec = next(c.spec for c in self.pf.credentials if c.role == rot.name)
            for name in rot.containers:
                if name in self.stopped and ctx.plan(
                    "recreate", f"container {name} with the new password"
                ):
                    change = containers.recreate_with_env(
                        self.systems.docker, name, {spec.password_env: rot.new.get_secret_value()}
                    )
                    ctx.record_change(change)
        if ctx.dry_run:
            for svc in self.pf.services:
                ctx.plan("resume", f"{svc.name} in its recorded state, with the new credentials")
            for group in self.opts.security_groups:
                ctx.plan("resume", f"restore the revoked inbound rules of {group}")
            for iso in self.opts.isolate_pods:
                ctx.plan(
                    "resume", f"lift the isolation of pods {iso.pod_selector} in {iso.namespace}"
                )
        steps: list[tuple[str, Callable[[], Change]]] = []
        for name, change in self.stopped.items():
            steps.append(
                (
                    f"start container {name}",
                    lambda c=change: containers.restore_state(self.systems.docker, c),
                )
            )
        for change in self.scaled:
            steps.append(
                (
                    f"scale {change.object} back",
                    lambda c=change: kubernetes.restore_scale(self.systems.k8s, c),
                )
            )
        for change in self.policies:
            steps.append(
                (
                    f"lift isolation {change.object}",
                    lambda c=change: kubernetes.undo_change(self.systems.k8s, c),
                )
            )
        for change in self.revoked:
            steps.append(
                (
                    f"restore inbound of {change.object}",
                    lambda c=change: cloud.restore_ingress(self.systems.aws("ec2"), c),
                )
            )
        for label, fn in steps:
            if not ctx.plan("resume", label):
                continue
            try:
                change = fn()
            except DRError as exc:
                ctx.record_check(f"resumed: {label}", False, detail=str(exc))
                continue
            ctx.record_change(change)
            ctx.record_check(f"resumed: {label}", True, detail=change.summary())

    def verify(self) -> None:
        """The application works with the new credentials; every end-to-end check passes."""
        ctx = self.ctx
        app_at: datetime | None = None
        for rot in self.rotations:
            if rot.kind != "db-role" or rot.new is None:
                continue
            spec = next(c.spec for c in self.pf.credentials if c.role == rot.name)
            for name in rot.containers:
                states = containers.find_containers(self.systems.docker, name=name)
                holds = (
                    bool(states)
                    and states[0].env.get(spec.password_env) == rot.new.get_secret_value()
                )
                ctx.record_check(
                    f"container {name} has the new password of {rot.name}",
                    holds,
                    detail="environment compared in memory (values never shown)",
                )
        writer = self.opts.app_heartbeat_writer
        writers_resumed = any(
            isinstance(s, DockerService) and s.role == "writer" for s in self.pf.services
        )
        if writer and writers_resumed and self.stopped and self.resume_started_at is not None:
            conninfo = self.ci(self.pgc.primary, self.pgc.heartbeat_db)
            deadline = time.monotonic() + self.opts.resume_timeout_seconds
            newest = None
            while time.monotonic() < deadline:
                with contextlib.suppress(PostgresError):
                    newest = pgs.newest_heartbeat(conninfo, writer)
                if newest is not None and newest > self.resume_started_at:
                    app_at = newest
                    break
                time.sleep(POLL_SECONDS)
            ctx.record_check(
                f"application ({writer}) writes again with the new credentials",
                app_at is not None,
                detail=f"heartbeat written at {_iso(app_at)}, after resuming at "
                f"{_iso(self.resume_started_at)}"
                if app_at
                else f"no heartbeat of {writer} after {_iso(self.resume_started_at)} "
                f"(newest {_iso(newest)})",
            )
        health = ctx.verify_health(timeout_seconds=self.opts.resume_timeout_seconds)
        if health is not None and health.ok:
            # Resumed once the application writes AND every check passes: the later of both.
            if app_at is not None and ctx.restored_at is not None and app_at > ctx.restored_at:
                ctx.stamp_restored(app_at)

    # ------------------------------------------------------------------ measure

    def measure(self) -> None:
        ctx = self.ctx
        to_contained = (
            (self.contained_at - self.detected_at).total_seconds() if self.contained_at else None
        )
        resumed = ctx.restored_at if self.opts.resume else None
        to_resumed = (resumed - self.detected_at).total_seconds() if resumed else None
        timeline = {
            "intrusion_at": _iso(self.intrusion_at),
            "detected_at": _iso(self.detected_at),
            "contained_at": _iso(self.contained_at),
            "evidence_preserved_at": _iso(self.evidence_at),
            "rotation_started_at": _iso(self.rotation_started_at),
            "resume_started_at": _iso(self.resume_started_at),
            "services_resumed_at": _iso(resumed),
        }
        self.info["timeline"] = timeline
        self.info["measurements"] = {
            "detected_to_contained_seconds": to_contained,
            "detected_to_resumed_seconds": to_resumed,
        }
        if to_contained is not None:
            ctx.record_check(
                "time from detection to containment measured",
                True,
                critical=False,
                detail=f"{to_contained:.2f} s",
                value=round(to_contained, 3),
            )
        ctx.measure(
            rto_seconds=to_resumed,
            rto_basis="detected_at -> services resumed (first application write with the new "
            "credentials, every end-to-end check passing); detected -> contained: "
            + (f"{to_contained:.2f} s" if to_contained is not None else "not measured"),
            **self.rpo(),
        )

    def rpo(self) -> dict[str, Any]:
        """Data rolled back: none, or the window from the restore point to containment."""
        if self.restored is None or self.restore_to is None:
            return {
                "rpo_seconds": 0.0,
                "rpo_basis": "nothing restored: the response rolls no data back",
                "lost_rows": 0,
            }
        end = self.contained_at or self.detected_at
        return {
            "rpo_seconds": max(0.0, (end - self.restore_to).total_seconds()),
            "rpo_basis": f"restore_to -> contained: changes to {', '.join(self.opts.restore_tables)}"
            " in that window were rolled back",
        }

    # ------------------------------------------------------------------ drill cleanup

    def drill_cleanup(self) -> None:
        """Drop the rogue role, lift the drill's network blocks, close the held sessions."""
        ctx = self.ctx
        for session in self.held.values():
            session.close()
        if self.rogue_role and self.rogue_password is not None:
            try:
                change = pgs.drop_role(
                    self.ci(self.pgc.primary), self.rogue_role, dbnames=self.pgc.databases
                )
                ctx.record_change(change)
                ctx.record_check(
                    f"drill: rogue role {self.rogue_role} dropped",
                    True,
                    critical=False,
                    detail=change.summary(),
                )
            except DRError as exc:
                ctx.record_check(
                    f"drill: rogue role {self.rogue_role} dropped", False, detail=str(exc)
                )
        # The drill's "attacker" is make-believe: lift its blocks, leave the target as found.
        for node_name, change in self.hba_blocks.items():
            try:
                ctx.record_change(
                    pgs.unblock_cidrs_in_hba(self.ci(self.pgc.node(node_name)), change)
                )
            except DRError as exc:
                ctx.record_check(f"drill: pg_hba of {node_name} unblocked", False, detail=str(exc))
        for change in self.sg_blocks:
            try:
                ctx.record_change(cloud.restore_ingress(self.systems.aws("ec2"), change))
            except DRError as exc:
                ctx.record_check(f"drill: {change.object} unblocked", False, detail=str(exc))

    # ------------------------------------------------------------------ the runbook

    def run(self) -> None:
        ctx = self.ctx
        for note in self.pf.notes:
            ctx.note(note)
        if ctx.is_drill:
            with ctx.phase(
                "plant intruder", detail="drill: rogue role with a session, leaked password"
            ):
                self.plant_intruder()
        self.start_clock()
        if not ctx.dry_run:
            self.bundle = ev.EvidenceBundle(f"{self.detected_at:%Y%m%dT%H%M%SZ}-{self.short}")
            self.info["bundle_id"] = self.bundle.bundle_id
            with ctx.phase("capture volatile evidence", detail="sessions, roles, states, rules"):
                self.capture_volatile()
        with ctx.phase(
            "contain and preserve evidence", detail="isolation and evidence, in parallel"
        ):
            self.contain_and_preserve()
        with ctx.phase("rotate credentials", detail="after evidence is preserved, in parallel"):
            self.rotate()
        if not ctx.dry_run:
            with ctx.phase("prove", detail="old credentials rejected, new ones work, intruder out"):
                self.prove()
        if self.opts.restore_tables and (self.restore_to is not None or ctx.dry_run):
            with ctx.phase("restore clean", detail="point-in-time recovery of the tables"):
                self.restore_clean()
        if self.opts.resume:
            step = "resume services with the new credentials"
            if self.failed_rotations:
                step += f" (NOT rotated: {', '.join(self.failed_rotations)})"
            with ctx.phase("approve resume", detail=step):
                ctx.approve(step)
                self.info["approval"] = [a.model_dump(mode="json") for a in ctx.approvals]
            with ctx.phase("resume services", detail="recorded state restored"):
                self.resume()
            with ctx.phase("verify", detail="the application works with the new credentials"):
                self.verify()
        else:
            ctx.note("services stay isolated (resume=false): bring them back by hand after review")
        if not ctx.dry_run:
            with ctx.phase("measure", detail="detected -> contained, detected -> resumed"):
                self.measure()
        self.remind_clock()


def _make_body(
    opts: BreachOptions, pf: Preflight, systems: Systems
) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        run = BreachResponse(ctx, opts, pf, systems)
        try:
            try:
                run.run()
            finally:
                if ctx.is_drill and not ctx.dry_run:
                    with ctx.phase(
                        "drill cleanup", detail="rogue role dropped, drill blocks lifted"
                    ):
                        run.drill_cleanup()
            if not ctx.is_drill and not ctx.dry_run:
                ctx.note(
                    "incident: compromised roles stay NOLOGIN and blocked networks stay blocked"
                )
        except Exception:
            if not ctx.is_drill:
                ctx.note(
                    "the run failed: isolation is left in place (fail closed); the report lists "
                    "how to undo each change by hand once it is safe"
                )
            raise
        finally:
            for session in run.held.values():
                session.close()
            for scratch in run.scratch_dirs:
                shutil.rmtree(scratch, ignore_errors=True)

    return body


@flow(name="breach-response")
def breach_response_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: BreachOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV1",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Respond to a security breach: contain, preserve evidence, rotate and prove, resume.

    Args:
        target: a target of the config.
        mode: ``drill`` (plant an intruder, respond, clean up), ``incident`` (respond to a
            real breach: approval gate before resuming) or ``dry-run`` (print the plan).
        options: see :class:`BreachOptions`.
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: the incident's severity (seed 002: a breach is SEV1).
        fail_flow: end the flow run Failed when the outcome is not ``passed``.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details.breach`` holds the
        regulatory clock, the timeline, the evidence bundle (URL, manifest SHA-256, the
        ``dr evidence verify`` command), the rotations, the proofs and both measurements.

    Raises:
        ConfigError: unknown target, service or role, invalid options: nothing changed.
        UnsafeTargetError: a drill on a target that does not allow drills.
    """
    opts = options or BreachOptions()
    mode = Mode(mode)
    cfg = load_config(find_config_path(config_path))
    # One set of clients for the whole run: the preflight's are warm (building a Docker
    # client negotiates the API version, which costs about a second on the response's clock).
    systems = Systems(cfg)
    try:
        pf = preflight(cfg, target, mode, opts, systems)
        result = run_scenario(
            Scenario.breach_response,
            target,
            mode,
            _make_body(opts, pf, systems),
            config=cfg,
            severity=opts.severity or severity,
            options=opts.model_dump(mode="json"),
            fail_flow=fail_flow,
        )
    finally:
        systems.close()
    return result.model_dump(mode="json")
