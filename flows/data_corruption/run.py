"""One data-corruption run: the state its phases share, connections and repositories."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config import PostgresConfig, PostgresNode, Target
from dr.errors import ConfigError, PreconditionError
from flows.common.backups import open_target_repository
from flows.common.systems import Systems
from flows.data_corruption.options import (
    DRILL_VICTIMS,
    EVIDENCE_FOLDER,
    RECOVERY_DIR_ENV,
    CorruptionOptions,
)
from flows.lifecycle import RunContext
from tasks.pitr import checksums, damage_finder
from tasks.pitr import recovery as pitr_recovery
from tasks.pitr import relations as pitr_relations
from tasks.postgres import client as postgres_client

__all__ = ["CorruptionRun", "as_utc", "db_conninfo", "iso", "mkdir_traversable"]


class CorruptionRun:
    """What the phases share (so the body reads like the runbook)."""

    def __init__(self, ctx: RunContext, opts: CorruptionOptions) -> None:
        self.ctx = ctx
        self.opts = opts
        self.target: Target = ctx.target
        self.pgc: PostgresConfig = ctx.target.postgres
        self.password = self.pgc.password.resolve() if self.pgc.password else None
        self.db = opts.database or self.pgc.databases[0]
        if self.db not in self.pgc.databases:
            raise ConfigError(
                f"database {self.db!r} is not one of the target's ({self.pgc.databases})",
                [("options.database", self.db)],
            )
        self.bin_dir = self.pgc.primary.bin_dir
        self.run_id = utcnow().strftime("%Y%m%dT%H%M%SZ")
        root = Path(
            opts.recovery_dir
            or os.environ.get(RECOVERY_DIR_ENV)
            or Path(tempfile.gettempdir()) / "dr-pipelines" / "recovery"
        )
        self.work = root / f"{ctx.target_name}-{self.run_id}"
        self.details: dict[str, Any] = ctx.details
        self.snapshot: dict[str, pitr_relations.RelationDigest] = {}
        # Drill: the table damaged and, for bad-update, the column set to 0.
        self.victim: str = DRILL_VICTIMS[opts.variant]
        self.victim_column: str | None = None
        self.stamp: dict[str, Any] | None = None
        # Certain knowledge of the damage (the drill's injection, or the operator's word):
        # a recovery point after it is refused.
        self.damage_at: datetime | None = opts.damage_at
        self.damage_lsn: str | None = None
        # What the WAL finder suspects: the default recovery point, advice otherwise.
        self.suspected_at: datetime | None = None
        self.suspected_lsn: str | None = None
        self.damaged: list[str] = []
        self.candidates: list[damage_finder.DamageCandidate] = []
        self.checksum_report: checksums.ChecksumReport | None = None
        self.damaged_copy: Path | None = None
        self.recovered: pitr_recovery.RecoveredCluster | None = None
        self.writer_changes: list[tuple[Any, Change]] = []
        self.writers_stopped_at: datetime | None = None
        self.writers_started_at: datetime | None = None
        self.safety_dump: Path | None = None
        self.switched_whole = False
        self.heartbeat_before_switch: dict[str, dict[str, Any]] = {}
        self.rows_before_switch: dict[str, set[str]] = {}
        self.systems = Systems(ctx.config)

    # ----------------------------------------------------------- connections

    def conninfo(self, dbname: str | None = None, node: PostgresNode | None = None) -> str:
        """A conninfo for a database of the primary (or ``node``), with the password."""
        return db_conninfo(self.pgc, self.password, dbname or self.db, node)

    def tool_conninfo(self, dbname: str | None = None, node: PostgresNode | None = None) -> str:
        """For command-line tools: the password goes in PGPASSWORD, never in argv."""
        return db_conninfo(self.pgc, None, dbname or self.db, node)

    def recovered_node(self) -> PostgresNode:
        """The recovered cluster as a node."""
        assert self.recovered is not None
        return PostgresNode(name="recovered", host="127.0.0.1", port=self.recovered.port)

    def recovered_conninfo(self, dbname: str | None = None) -> str:
        """A conninfo for a database of the recovered cluster."""
        return self.conninfo(dbname, self.recovered_node())

    # ----------------------------------------------------------- repositories

    def backup_repo(self) -> Any:
        """The target's backup repository."""
        return open_target_repository(self.ctx.config, self.target.backup.repository)

    def wal_repo(self) -> Any:
        """The target's WAL archive (PITR needs one)."""
        if not self.target.backup.wal_archive:
            raise PreconditionError(
                f"target {self.ctx.target_name} has no backup.wal_archive: point-in-time "
                "recovery needs archived WAL"
            )
        return open_target_repository(self.ctx.config, self.target.backup.wal_archive)

    def evidence(self) -> tuple[Any, str]:
        """The evidence repository and the key prefix of this run in it."""
        url = self.target.evidence_repository
        prefix = f"{self.ctx.target_name}/data-corruption/{self.run_id}"
        if url:
            return open_target_repository(self.ctx.config, url), prefix
        return self.backup_repo(), f"{EVIDENCE_FOLDER}/{prefix}"


def db_conninfo(
    pgc: PostgresConfig, password: str | None, dbname: str, node: PostgresNode | None = None
) -> str:
    """A conninfo for one database of the primary (or ``node``); no password: for tools.

    Args:
        pgc: the target's PostgreSQL section.
        password: the resolved password; None for command-line tools (PGPASSWORD instead).
        dbname: the database.
        node: another server (the recovered cluster); default the configured primary.

    Returns:
        A libpq conninfo.
    """
    return postgres_client.conninfo(
        node or pgc.primary,
        user=pgc.user,
        dbname=dbname,
        password=password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name="dr-data-corruption",
    )


def mkdir_traversable(path: Path) -> Path:
    """Create ``path`` and make it and its parents traversable (the server user reads it)."""
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents]:
        if p == Path("/") or p == Path(tempfile.gettempdir()):
            break
        with contextlib.suppress(PermissionError):
            p.chmod(p.stat().st_mode | 0o755)
    return path


def iso(value: datetime | None) -> str | None:
    """ISO 8601 text, or None."""
    return value.isoformat() if value else None


def as_utc(value: datetime) -> datetime:
    """An aware datetime (naive ones are taken as UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
