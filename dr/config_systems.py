"""The config of the systems around the targets: Slack, AWS, Kubernetes, Docker, history,
approval and concurrency policies, scenarios and modes, alert routes, schedules."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
)

from dr.config_base import SecretRef, Strict
from dr.config_checks import DEFAULT_SEVERITY_MAP
from dr.config_file import (  # noqa: F401 - the resolver and its constants are dr.config's API
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    LAB_CONFIG_PATH,
    config_path,
    problems_from_validation,
    read_yaml_file,
)

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
    auto_approve_severities: list[str] = Field(
        default_factory=list, description="Severities (of `severities`) approved without asking."
    )


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
    severity_map: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_MAP),
        description="An alert's severity label -> one of `severities` (critical -> SEV1, ...).",
    )

    @field_validator("severity_map", mode="before")
    @classmethod
    def _merge_default_map(cls, value: Any) -> Any:
        # Mapping one label keeps the other defaults; keys are matched case-insensitively.
        if isinstance(value, dict):
            return {**DEFAULT_SEVERITY_MAP, **{str(k).lower(): v for k, v in value.items()}}
        return value


class Schedules(Strict):
    """Cron schedules for deployments (prefect.yaml reads them from here)."""

    backup: str = "0 * * * *"
    base_backup: str = "30 2 * * *"
    backup_verification: str = "0 3 1 * *"
    data_corruption: str = "0 4 2 * *"
    region_failover: str = "0 5 3 1,4,7,10 *"
    breach_response: str = "0 6 4 1,4,7,10 *"
    timezone: str = "UTC"
