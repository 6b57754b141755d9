"""The isolated scratch database a backup is restored into: created fresh, always dropped."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from dr.changes import Change
from dr.config import PostgresConfig, Target
from dr.errors import DRError, UnsafeTargetError
from flows.backup_verification.models import DatabaseVerification
from tasks.backups import manifest as backups_manifest
from tasks.postgres import admin as postgres_admin
from tasks.postgres import client as postgres_client

__all__ = ["drop_scratch_database", "maintenance_conninfo", "protected", "scratch_database"]

log = logging.getLogger(__name__)


def maintenance_conninfo(pgc: PostgresConfig, password: str | None) -> str:
    return postgres_client.conninfo(
        pgc.primary,
        user=pgc.user,
        dbname=pgc.maintenance_db,
        password=password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
    )


def protected(target: Target) -> set[str]:
    pgc = target.postgres
    return set(pgc.databases) | {pgc.maintenance_db}


@contextlib.contextmanager
def scratch_database(
    target: Target, database: str, short_id: str, result: DatabaseVerification
) -> Iterator[str]:
    """Create the isolated scratch database, yield its name, and always drop it.

    Raises:
        UnsafeTargetError: the name is one of the target's databases, or already exists
            (a leftover or someone else's): nothing is created or restored then.
    """
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    maint = maintenance_conninfo(pgc, password)
    name = backups_manifest.scratch_database_name(database, short_id)
    if name in protected(target):
        raise UnsafeTargetError(f"scratch name {name!r} is a database of the target; refusing")
    if postgres_admin.database_exists_task(maint, name):
        raise UnsafeTargetError(
            f"scratch database {name!r} already exists on {postgres_client.describe_conninfo(maint)}; "
            "refusing to restore over it (drop it by hand if it is a leftover of a drill)"
        )
    change = postgres_admin.create_database_task(maint, name, template="template0")
    if change.outcome != "created":
        # Created by someone else between the check and the CREATE: not ours to use or drop.
        raise UnsafeTargetError(f"scratch database {name!r} appeared concurrently; refusing")
    result.scratch_database = name
    try:
        yield name
    finally:
        try:
            postgres_admin.drop_database_task(
                maint, name, must_not_be=protected(target), force=True
            )
            result.scratch_dropped = True
        except DRError as exc:
            result.error = result.error or f"scratch database {name} not dropped: {exc}"
            result.check("scratch dropped", False, f"{name} not dropped: {exc}")
            log.error("scratch database %s not dropped: %s", name, exc)


def drop_scratch_database(target: Target, name: str) -> Change:
    """Drop a scratch database left behind (the run's undo), never a protected one."""
    pgc = target.postgres
    password = pgc.password.resolve() if pgc.password else None
    return postgres_admin.drop_database_task(
        maintenance_conninfo(pgc, password), name, must_not_be=protected(target), force=True
    )
