"""The protected system, as one validated file (``dr.yaml``).

Everything a flow needs to know about a target comes from here: tiers and their
objectives, PostgreSQL nodes, backup repositories, services, DNS, health checks,
validation queries, caches, files and their links to tables (:mod:`dr.config_state`),
Slack, history and alert routing. Credentials are never values in
this file, only references (:class:`SecretRef`): the name of an environment variable or
of a Prefect Secret block, resolved at the moment a client is built.

A bad file fails before any action, with every problem listed by key path
(:func:`load_config` raises :class:`~dr.errors.ConfigError` with ``problems``).
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dr.config_base import SecretRef, Strict
from dr.config_file import (  # noqa: F401 - the resolver and its constants are dr.config's API
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    LAB_CONFIG_PATH,
    config_path,
    problems_from_validation,
    read_yaml_file,
)
from dr.config_state import CacheConfig, FileLink, FileSource, state_problems
from dr.errors import ConfigError

# --------------------------------------------------------------------------- tiers


class Objectives(Strict):
    """Recovery objectives: how long recovery may take, and how much data may be lost."""

    rto_seconds: float = Field(gt=0, description="Recovery time objective, seconds.")
    rpo_seconds: float = Field(ge=0, description="Recovery point objective, seconds.")


DEFAULT_TIERS: dict[str, Objectives] = {
    # From the seeds (000 and 003): critical 15 min / 5 min, important 1 h / 15 min,
    # non-critical 4 h / 1 h.
    "critical": Objectives(rto_seconds=15 * 60, rpo_seconds=5 * 60),
    "important": Objectives(rto_seconds=60 * 60, rpo_seconds=15 * 60),
    "non-critical": Objectives(rto_seconds=4 * 3600, rpo_seconds=60 * 60),
}


# --------------------------------------------------------------------------- postgres


class PostgresNode(Strict):
    """One PostgreSQL server of a target.

    ``data_directory``/``bin_dir``/``os_user`` are set when the flows may act on the server
    locally (stop it to fence it, rewind it, read its logs); remote-only nodes leave them out.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int = Field(5432, ge=1, le=65535)
    region: str = "default"
    data_directory: Path | None = None
    bin_dir: Path | None = None
    os_user: str | None = Field(None, description="OS user owning the data directory.")
    log_directory: Path | None = None


class PostgresConfig(Strict):
    primary: PostgresNode
    replicas: list[PostgresNode] = Field(default_factory=list)
    user: str = "postgres"
    password: SecretRef | None = None
    maintenance_db: str = "postgres"
    databases: list[str] = Field(min_length=1)
    synchronous: bool = Field(False, description="Synchronous replication is configured.")
    heartbeat_database: str | None = Field(
        None, description="Database holding dr_heartbeat (seq, ts); default: the first one."
    )
    connect_timeout_seconds: float = Field(3, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> PostgresConfig:
        names = [self.primary.name] + [r.name for r in self.replicas]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def heartbeat_db(self) -> str:
        return self.heartbeat_database or self.databases[0]

    def node(self, name: str) -> PostgresNode:
        for n in [self.primary, *self.replicas]:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def nodes(self) -> list[PostgresNode]:
        return [self.primary, *self.replicas]


# --------------------------------------------------------------------------- backups

_REPO_RE = re.compile(r"^(file:///.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$")


def _check_repo_url(value: str) -> str:
    if not _REPO_RE.match(value):
        raise ValueError("must be file:///absolute/path or s3://bucket[/prefix]")
    return value.rstrip("/")


RepoURL = Annotated[str, Field(description="file:///absolute/path or s3://bucket/prefix")]


class Retention(Strict):
    """Grandfather-father-son retention (seed 003: 48 hourly, 30 daily, 52 weekly)."""

    hourly: int = Field(48, ge=0)
    daily: int = Field(30, ge=0)
    weekly: int = Field(52, ge=0)


class ForeignBackups(Strict):
    """Dumps made by something else, found by a name pattern (seed 001's cron job)."""

    location: RepoURL
    pattern: str = Field("*.sql.gz", description="Glob matched against object names.")
    database: str | None = Field(None, description="Which database these dumps are of.")

    @field_validator("location")
    @classmethod
    def _repo(cls, v: str) -> str:
        return _check_repo_url(v)


class BackupConfig(Strict):
    repository: RepoURL
    wal_archive: RepoURL | None = None
    retention: Retention = Field(default_factory=Retention)
    dump_jobs: int | None = Field(None, ge=1, description="pg_dump -j; default from CPU count.")
    base_backup_every_hours: float = Field(24, gt=0)
    foreign: list[ForeignBackups] = Field(default_factory=list)
    excluded_tables: list[str] = Field(
        default_factory=list,
        description="Tables (schema.table) the dumps leave out on purpose: a dump that lacks "
        "one is not a failure.",
    )

    @field_validator("repository", "wal_archive")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else _check_repo_url(v)


# --------------------------------------------------------------------------- services


class DockerService(Strict):
    kind: Literal["docker"] = "docker"
    name: str = Field(description="Container name.")
    role: Literal["writer", "reader", "other"] = "writer"
    region: str = "default"


class KubernetesService(Strict):
    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = "default"
    deployment: str
    role: Literal["writer", "reader", "other"] = "writer"
    region: str = "default"
    replicas: int | None = Field(None, ge=0, description="Replica count when scaled up in DR.")
    db_host_secret: str | None = Field(None, description="Secret holding the DB host, if any.")
    db_host_key: str = "DB_HOST"

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.deployment}"


Service = Annotated[DockerService | KubernetesService, Field(discriminator="kind")]


# --------------------------------------------------------------------------- DNS, checks


class DNSRecord(Strict):
    zone_id: str
    name: str
    type: Literal["CNAME", "A", "AAAA"] = "CNAME"
    ttl_seconds: int = Field(30, ge=1)


class HTTPCheck(Strict):
    name: str
    url: str = Field(pattern=r"^https?://")
    expect_status: int = 200
    timeout_seconds: float = Field(5, gt=0)


class SQLCheck(Strict):
    """A query that must return a single truthy value (e.g. ``SELECT count(*) > 0 FROM t``)."""

    name: str
    sql: str
    database: str | None = None


class ValidationQuery(Strict):
    """A business-level invariant, run after every restore (seed 001's validation script)."""

    name: str
    sql: str
    database: str | None = None
    expect: Literal["true", "rows", "no_rows"] = Field(
        "true",
        description="true: first column of first row is true; rows: at least one row; "
        "no_rows: the query returns nothing (an orphan-row check, say).",
    )


class HealthChecks(Strict):
    http: list[HTTPCheck] = Field(default_factory=list)
    sql: list[SQLCheck] = Field(default_factory=list)


class Deadline(Strict):
    """A regulatory clock started at detection (breach response)."""

    name: str
    hours: float = Field(gt=0)


# --------------------------------------------------------------------------- target


class Target(Strict):
    tier: str = "critical"
    description: str = ""
    production: bool = Field(True, description="Production targets refuse drills unless allowed.")
    drills_allowed: bool = Field(False, description="Drills may run in place on this target.")
    postgres: PostgresConfig
    backup: BackupConfig
    services: list[Service] = Field(default_factory=list)
    dns: DNSRecord | None = None
    health_checks: HealthChecks = Field(default_factory=HealthChecks)
    validation_queries: list[ValidationQuery] = Field(default_factory=list)
    slack_channel: str | None = None
    evidence_repository: RepoURL | None = None
    regulatory_deadlines: list[Deadline] = Field(
        default_factory=lambda: [Deadline(name="GDPR notification", hours=72)]
    )
    caches: list[CacheConfig] = Field(default_factory=list)
    files: list[FileSource] = Field(default_factory=list)
    links: list[FileLink] = Field(default_factory=list)
    require_detection: bool = Field(
        False,
        description="A data-corruption drill whose damage none of the target's own checks "
        "noticed fails (otherwise it is a non-critical finding).",
    )

    @field_validator("evidence_repository")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else _check_repo_url(v)


# --------------------------------------------------------------------------- systems


class SlackConfig(Strict):
    token: SecretRef | None = None
    base_url: str = Field("https://slack.com/api/", pattern=r"^https?://")
    status_cadence_seconds: float = Field(60, gt=0)
    default_channel: str | None = None


class AWSConfig(Strict):
    region: str = "us-east-1"
    endpoint_url: str | None = Field(None, description="Only for a local stand-in.")
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None


class KubernetesConfig(Strict):
    kubeconfig: Path | None = None
    context: str | None = None


class DockerConfig(Strict):
    base_url: str | None = Field(None, description="e.g. unix:///run/podman/podman.sock")


class HistoryConfig(Strict):
    """Where drill and incident summaries are kept, beyond the Prefect server's life."""

    dsn: str | None = Field(
        None, description="libpq conninfo of the history database, without a password."
    )
    password: SecretRef | None = None
    table: str = Field("dr_history", pattern=r"^[a-z_][a-z0-9_]*$")


class ApprovalPolicy(Strict):
    timeout_seconds: float = Field(900, gt=0)
    auto_approve_drills: bool = True
    auto_approve_severities: list[str] = Field(default_factory=list)


class ConcurrencyPolicy(Strict):
    on_busy: Literal["wait", "refuse"] = "wait"
    wait_timeout_seconds: float = Field(600, gt=0)


class Scenario(StrEnum):
    backup_verification = "backup-verification"
    region_failover = "region-failover"
    data_corruption = "data-corruption"
    breach_response = "breach-response"


class Mode(StrEnum):
    incident = "incident"
    drill = "drill"
    dry_run = "dry-run"


class AlertRoute(Strict):
    """Maps an incoming alert to a scenario run. All given matchers must match."""

    name: str
    match: dict[str, str] = Field(default_factory=dict, description="label=value pairs")
    scenario: Scenario
    target: str
    mode: Mode = Mode.incident
    auto_approve: bool = False
    rate_limit_per_minute: int = Field(30, ge=1)


class AlertsConfig(Strict):
    bearer_token: SecretRef | None = None
    hmac_secret: SecretRef | None = None
    routes: list[AlertRoute] = Field(default_factory=list)


class Schedules(Strict):
    """Cron schedules for deployments (prefect.yaml reads them from here)."""

    backup: str = "0 * * * *"
    base_backup: str = "30 2 * * *"
    backup_verification: str = "0 3 1 * *"
    data_corruption: str = "0 4 2 * *"
    region_failover: str = "0 5 3 1,4,7,10 *"
    breach_response: str = "0 6 4 1,4,7,10 *"
    timezone: str = "UTC"


class DRConfig(Strict):
    version: Literal[1] = 1
    tiers: dict[str, Objectives] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    targets: dict[str, Target] = Field(min_length=1)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    aws: AWSConfig = Field(default_factory=AWSConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    concurrency: ConcurrencyPolicy = Field(default_factory=ConcurrencyPolicy)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    schedules: Schedules = Field(default_factory=Schedules)
    prefect_api_url: str | None = Field(
        None, description="Prefect API to use when PREFECT_API_URL is not set (the lab's server)."
    )
    prefect_ui_url: str | None = Field(None, description="Base URL of the Prefect UI for links.")

    @field_validator("tiers", mode="before")
    @classmethod
    def _merge_default_tiers(cls, value: Any) -> Any:
        # Overriding one tier keeps the other defaults.
        if isinstance(value, dict):
            merged: dict[str, Any] = {k: v.model_dump() for k, v in DEFAULT_TIERS.items()}
            merged.update(value)
            return merged
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> DRConfig:
        problems: list[str] = []
        for name, target in self.targets.items():
            if target.tier not in self.tiers:
                problems.append(
                    f"targets.{name}.tier: unknown tier {target.tier!r} "
                    f"(known: {', '.join(sorted(self.tiers))})"
                )
            problems.extend(
                state_problems(f"targets.{name}", target.caches, target.files, target.links)
            )
        for i, route in enumerate(self.alerts.routes):
            if route.target not in self.targets:
                problems.append(f"alerts.routes.{i}.target: unknown target {route.target!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def target(self, name: str) -> Target:
        """Return the named target, or a ConfigError naming the known ones."""
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(
                f"unknown target {name!r} (known: {known})", [("targets", f"no {name!r}")]
            ) from None

    def objectives(self, target: str) -> Objectives:
        return self.tiers[self.target(target).tier]


# --------------------------------------------------------------------------- loading


def parse_config(data: Any, source: str = "<dict>") -> DRConfig:
    """Validate an already-parsed mapping. Raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping", [("(top level)", "not a mapping")]
        )
    try:
        return DRConfig.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc)
        raise ConfigError(
            f"{source}: {len(problems)} problem(s) in the configuration", problems
        ) from None


def load_config(path: str | os.PathLike[str] | None = None) -> DRConfig:
    """Read and validate ``dr.yaml``.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; ``problems`` lists every
            problem with its key path.
    """
    p = config_path(path)
    return parse_config(read_yaml_file(p), str(p))
