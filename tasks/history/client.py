"""The history database's client: the one place a connection to it is made.

The database is the config's ``history.dsn`` (a libpq conninfo without a password) plus an
optional ``history.password`` secret reference, reached through
:func:`tasks.postgres.client.connect`, so its errors follow PostgreSQL's one transient rule
(a wrong password is not retried).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from dr.config import HistoryConfig
from dr.errors import ConfigError, PostgresError
from tasks.postgres import client as pg_client

CONNECT_TIMEOUT_SECONDS = 5


def connect(history: HistoryConfig) -> psycopg.Connection[Any]:
    """Open a connection to the history database.

    Args:
        history: the ``history`` section of dr.yaml.

    Returns:
        An autocommit connection returning rows as dicts.

    Raises:
        ConfigError: no ``history.dsn`` is configured.
        PostgresError: the database cannot be reached (transient) or refused the login.
    """
    if not history.dsn:
        raise ConfigError("no drill history configured (history.dsn)", [("history.dsn", "not set")])
    password = history.password.resolve() if history.password is not None else None
    try:
        return pg_client.connect(
            history.dsn,
            password=password,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            row_factory=dict_row,
        )
    except PostgresError as exc:
        raise PostgresError(f"drill history database: {exc}", transient=exc.transient) from exc
