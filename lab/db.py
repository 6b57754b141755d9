"""The lab's own connections to the servers it started (the one lab module that connects).

The flows reach PostgreSQL through ``tasks.postgres.client``; the lab builds its servers
before any config exists, so it keeps this small connection helper of its own.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg

from lab.pgcluster import Cluster

#: The application's database and role (what the heartbeat app writes with).
APP_DB = "app"
APP_ROLE = "dr_app"


def connect(
    cluster: Cluster, dbname: str = "postgres", *, timeout_seconds: int = 3, **kw: Any
) -> psycopg.Connection[Any]:
    """An autocommit connection to a lab server, as its superuser over loopback."""
    return psycopg.connect(
        cluster.conninfo(dbname), connect_timeout=timeout_seconds, autocommit=True, **kw
    )


def in_recovery(cluster: Cluster) -> bool | None:
    """True for a standby, False for a primary, None when unreachable."""
    try:
        with connect(cluster) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            return bool(row[0]) if row else None
    except psycopg.Error:
        return None


def heartbeat_ts(cluster: Cluster) -> datetime | None:
    """The newest heartbeat the app wrote on ``cluster``; None when unreachable."""
    try:
        with connect(cluster, APP_DB) as conn:
            row = conn.execute(
                "SELECT max(ts) FROM public.dr_heartbeat WHERE writer = 'app'"
            ).fetchone()
            return row[0] if row else None
    except psycopg.Error:
        return None


def is_streaming(primary: Cluster, replica: Cluster, timeout_seconds: float) -> bool:
    """Wait up to ``timeout_seconds`` for ``replica`` to stream from ``primary``."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with connect(primary) as conn:
                row = conn.execute(
                    "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
                    (replica.name,),
                ).fetchone()
            if row and row[0] == "streaming":
                return True
        except psycopg.Error:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def app_login_ok(primary: Cluster, password: str) -> bool:
    """Whether the app's role logs in with ``password`` (over TCP, as the app does)."""
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=primary.port,
            dbname=APP_DB,
            user=APP_ROLE,
            password=password,
            connect_timeout=3,
        ):
            return True
    except psycopg.Error:
        return False


def heartbeat_age(primary: Cluster) -> float | None:
    """Seconds since the app's last heartbeat on ``primary``; None when unknown."""
    try:
        with connect(primary, APP_DB) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM pg_catalog.clock_timestamp() - ts)::float8 "
                "FROM public.dr_heartbeat WHERE writer = 'app' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return float(row[0]) if row else None
    except psycopg.Error:
        return None


def query_one(
    cluster: Cluster, query: str, dbname: str = "postgres", params: tuple[Any, ...] = ()
) -> dict[str, Any] | None:
    """The first row of ``query`` as a dict; None when no row or the server is unreachable."""
    try:
        with connect(cluster, dbname) as conn:
            cur = conn.execute(query, params or None)  # type: ignore[arg-type]
            row = cur.fetchone()
            if row is None:
                return None
            names = [d.name for d in cur.description or []]
            return dict(zip(names, row, strict=True))
    except psycopg.Error:
        return None
