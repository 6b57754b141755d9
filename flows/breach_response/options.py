"""The breach response's options: what to isolate, collect, rotate and restore."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dr.config import (
    Mode,
    SecretRef,
    Target,
)
from dr.config_state import FileSource
from flows.common.options import AlertOptions

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

    role: str = Field(description="The database role whose password is rotated.")
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
    user_env: str = Field(
        DEFAULT_USER_ENV, description="The services' environment variable naming the user."
    )
    password_env: str = Field(
        DEFAULT_PASSWORD_ENV, description="The services' environment variable with the password."
    )


class AccessKeyRotation(_Strict):
    """An IAM access key believed leaked: a new key is created, the old one deactivated."""

    user_name: str = Field(description="The IAM user owning the leaked key.")
    key_id: str = Field(description="The leaked access key's id (deactivated).")
    secret_store: SecretStore = Field(
        description="Holds the key's secret now (the old one, for the proof) and gets the new."
    )
    key_id_store: SecretStore | None = Field(None, description="Gets the new key's id.")


class KubernetesSecretKey(_Strict):
    """A key of a Kubernetes Secret to replace with a newly generated value."""

    namespace: str = Field(description="The Secret's namespace.")
    name: str = Field(description="The Secret's name.")
    key: str = Field(description="The key within the Secret that gets a new value.")


class TokenRotation(_Strict):
    """An API token re-issued by its provider (Slack...), delivered by reference."""

    name: str = Field(description="A name for the token in the report.")
    kind: Literal["slack", "opaque"] = Field(
        "opaque", description="slack: proven with auth.test; opaque: stores only."
    )
    new_value: SecretRef = Field(description="Where a person put the token the provider issued.")
    stores: list[SecretStore] = Field(min_length=1, description="Where the application reads it.")
    base_url: str | None = Field(None, description="Slack API root; default: the config's.")


class PodIsolation(_Strict):
    """Pods to cut off the network with a deny-all NetworkPolicy."""

    namespace: str = Field(description="The pods' namespace.")
    pod_selector: dict[str, str] = Field(
        min_length=1, description="Labels selecting the pods to cut off (label=value)."
    )


class BreachOptions(AlertOptions):
    """Options of a breach response (``dr drill breach-response --option k=v``).

    Severity, auto approve, declared at and the alert's fingerprint and labels are the
    options every scenario shares (set by an alert route, or by hand).
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
    credentials: list[DatabaseCredential] = Field(
        default_factory=list, description="Database passwords believed leaked: rotate each."
    )
    rotate_app_credentials: bool | None = Field(
        None,
        description="Treat the database credentials of the target's Docker services as "
        "leaked; default: yes in drills.",
    )
    isolate_pods: list[PodIsolation] = Field(
        default_factory=list, description="Pods cut off the network (deny-all NetworkPolicy)."
    )
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
    wait_snapshots: bool = Field(True, description="Wait until the EBS snapshots complete.")
    snapshot_timeout_seconds: float = Field(
        3600, gt=0, description="Longest to wait for the snapshots."
    )
    dump_tables: list[str] = Field(
        default_factory=list, description="'schema.table' to pg_dump as evidence."
    )
    dump_database: str | None = Field(None, description="Default: the heartbeat database.")
    event_namespaces: list[str] = Field(
        default_factory=list, description="Extra namespaces whose Kubernetes events to keep."
    )
    log_since: datetime | None = Field(None, description="Server log files modified since.")
    container_log_tail: int | None = Field(
        None, ge=1, description="Keep only this many last lines of each container log."
    )
    evidence_retain_days: int = Field(
        365, ge=1, description="Days the evidence is locked against deletion (Object Lock)."
    )
    evidence_required: bool = Field(
        True, description="Evidence that cannot be stored fails the run (after the rest)."
    )
    access_keys: list[AccessKeyRotation] = Field(
        default_factory=list, description="IAM access keys believed leaked: rotate each."
    )
    kubernetes_secrets: list[KubernetesSecretKey] = Field(
        default_factory=list, description="Kubernetes Secret keys to give new values."
    )
    tokens: list[TokenRotation] = Field(
        default_factory=list, description="API tokens re-issued by their provider."
    )
    restore_to: datetime | None = Field(
        None,
        description="Restore restore_tables as they were at this moment (before the "
        "intrusion), by point-in-time recovery; drills: just before the intruder is planted.",
    )
    restore_tables: list[str] = Field(
        default_factory=list, description="'schema.table' to restore clean (restore_to)."
    )
    restore_database: str | None = Field(None, description="Default: the heartbeat database.")
    restore_files: bool | None = Field(
        None,
        description="Restore the target's S3 files: prefixes to restore_to from object "
        "versions (every changed object kept as evidence first); default: yes when the "
        "target has S3 files and a moment to restore to is known (drills: always).",
    )
    recovery_timeout_seconds: float = Field(
        600, gt=0, description="Longest the point-in-time recovery of restore_tables may take."
    )
    resume: bool = Field(True, description="Bring the services back after the approval gate.")
    resume_timeout_seconds: float = Field(
        60, gt=0, description="Longest to wait for the application after resuming."
    )
    app_heartbeat_writer: str | None = Field(
        "app", description="The application's writer in dr_heartbeat; None: not checked."
    )
    inject: Literal["credential-survives", "object-survives"] | None = Field(
        None,
        description="Drills: the red twins. credential-survives: a pg_hba trust line for each "
        "leaked role stays open, so the 'old password rejected' proof must fail; "
        "object-survives: the restore of one damaged object is skipped, so the proof that "
        "the files are as before the intrusion must fail.",
    )
    drill_block_cidrs: list[str] = Field(
        default_factory=lambda: list(DRILL_BLOCK_CIDRS),
        description="Drills: the 'attacker' networks blocked, then unblocked at the end.",
    )

    @field_validator("dump_tables", "restore_tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for name in value:
            if len([p for p in name.split(".") if p]) != 2:
                raise ValueError(f"{name!r}: give tables as schema.table")
        return value


def files_to_restore(opts: BreachOptions, target: Target, mode: Mode) -> list[FileSource]:
    """The S3 ``files:`` entries a run restores to ``restore_to`` (see ``restore_files``).

    Why the default needs a moment: an incident without ``restore_to`` does not know where
    "before the intrusion" is, and guessing would roll back good objects or keep bad ones.
    """
    if opts.restore_files is False:
        return []
    if opts.restore_files is None and opts.restore_to is None and mode != Mode.drill:
        return []
    return [f for f in target.files if f.s3 is not None]
