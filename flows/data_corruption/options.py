"""Options of the data-corruption scenario, and what its drills damage."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from dr.errors import ConfigError
from tasks.pitr import lsn

__all__ = [
    "DRILL_COLUMN",
    "DRILL_STATEMENTS",
    "DRILL_VICTIMS",
    "EVIDENCE_FOLDER",
    "HEARTBEAT_TABLE",
    "PROBE_PREFIX",
    "RECOVERY_DIR_ENV",
    "ROW_DROP_SHARE",
    "CorruptionOptions",
    "Variant",
]


RECOVERY_DIR_ENV = "DR_RECOVERY_DIR"


HEARTBEAT_TABLE = "public.dr_heartbeat"


#: Writers whose heartbeat rows are the drill probe's, not the application's.
PROBE_PREFIX = "dr-probe-"


#: A table whose live row count fell below this share of the newest manifest's is suspect.
ROW_DROP_SHARE = 0.5


EVIDENCE_FOLDER = "evidence"


class Variant(StrEnum):
    """What a drill damages (always like a real bug or bit rot would)."""

    bad_update = "bad-update"
    mass_delete = "mass-delete"
    damaged_page = "damaged-page"


#: The table each drill variant damages (the lab's demo shop).
DRILL_VICTIMS: dict[Variant, str] = {
    Variant.bad_update: "shop.orders",
    Variant.mass_delete: "shop.order_items",
    Variant.damaged_page: "shop.orders",
}


#: The column the lab's bad-update zeroes, and the statements kept as the lab has them.
DRILL_COLUMN = "total"


DRILL_STATEMENTS: dict[tuple[str, str | None], str] = {
    ("shop.orders", DRILL_COLUMN): "UPDATE shop.orders SET total = 0",
    ("shop.order_items", None): "DELETE FROM shop.order_items",
}


class CorruptionOptions(BaseModel):
    """Options of the scenario (``--option key=value``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    variant: Variant = Field(
        Variant.bad_update,
        validation_alias=AliasChoices("variant", "inject"),
        description="Drill only: how the damage is injected.",
    )
    recovery_time: datetime | None = Field(
        None, description="Recover to just before this moment (with a time zone)."
    )
    recovery_lsn: str | None = Field(None, description="Recover to just before this WAL position.")
    damage_at: datetime | None = Field(
        None, description="Incident: when the damage began, if known (refuses later points)."
    )
    relations: list[str] = Field(
        default_factory=list,
        description="schema.table to restore from the recovered copy (default: those found).",
    )
    whole_database: bool = Field(
        False, description="Switch the application to the recovered cluster instead."
    )
    database: str | None = Field(None, description="Damaged database (default: the first).")
    drill_table: str | None = Field(
        None,
        description=(
            "Drill: schema.table to damage (default: the lab's shop table, else the largest "
            "suitable table of the damaged database)."
        ),
    )
    checksum_copy: bool = Field(
        False, description="Assess with pg_checksums on a stopped copy of the live server."
    )
    min_rows: int = Field(100, ge=1, description="Damage finder: rows one transaction changed.")
    base_backup_max_age_minutes: float = Field(
        60, gt=0, description="Drill: take a base backup first unless one is this recent."
    )
    recovery_dir: str | None = Field(
        None, description=f"Where recovered clusters live (default ${RECOVERY_DIR_ENV} or /tmp)."
    )
    staging_dir: str | None = Field(None, description="Drill base backup staging folder.")
    keep_recovered: bool = Field(
        False, description="Relation restore: keep the recovered cluster running afterwards."
    )
    recovery_timeout_seconds: float = Field(900, gt=0)
    heartbeat_wait_seconds: float = Field(60, gt=0)
    recovered_host: str = Field("127.0.0.1", description="How writers reach the new cluster.")
    db_host_env: str = "DB_HOST"
    db_port_env: str = "DB_PORT"
    auto_approve: bool = False
    declared_at: datetime | None = None
    # Alert-started runs also carry these (deployments/alerts.py: flow_parameters).
    severity: str | None = Field(None, description="Overrides the severity parameter.")
    alert_fingerprint: str | None = None
    alert_started_at: datetime | None = None
    alert_labels: dict[str, str] | None = None

    @field_validator("relations")
    @classmethod
    def _qualified(cls, value: list[str]) -> list[str]:
        for rel in value:
            schema, dot, table = rel.partition(".")
            if not dot or not schema or not table:
                raise ValueError(f"relation {rel!r} must be schema.table")
        return value

    @field_validator("drill_table")
    @classmethod
    def _drill_table(cls, value: str | None) -> str | None:
        if value is not None:
            schema, dot, table = value.partition(".")
            if not dot or not schema or not table:
                raise ValueError(f"drill_table {value!r} must be schema.table")
        return value

    @field_validator("recovery_lsn")
    @classmethod
    def _lsn(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                lsn.parse_lsn(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value
