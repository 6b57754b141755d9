"""The breach response's options: what to isolate, collect, rotate and restore."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dr.config import (
    SecretRef,
)

#: Source networks a drill blocks: RFC 5737 documentation ranges, never routed.
DRILL_BLOCK_CIDRS = ("192.0.2.0/24",)


#: Where an application's database user and password are, by convention (twelve-factor).
DEFAULT_USER_ENV = "DB_USER"


DEFAULT_PASSWORD_ENV = "DB_PASSWORD"  # noqa: S105 - a variable name, not a password


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
    alert_started_at: datetime | None = None
    alert_labels: dict[str, str] | None = None

    @field_validator("dump_tables", "restore_tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for name in value:
            if len([p for p in name.split(".") if p]) != 2:
                raise ValueError(f"{name!r}: give tables as schema.table")
        return value
