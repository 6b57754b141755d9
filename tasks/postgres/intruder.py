"""The breach drill's intruder: a login role, a session it holds open, the damage it does.

Created for drills only (:func:`create_login_role`, :class:`HeldSession`,
:func:`delete_rows_bypassing_checks`) and dropped again at the end (:func:`drop_role`). The
password is sent as libpq's verifier, never in clear text.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dr.changes import Change
from dr.clock import utcnow
from dr.errors import ConfigError, PreconditionError, redact, register_secret
from dr.tasking import dr_task
from tasks.postgres.client import connect, describe_conninfo, session
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)


#: How often a held session shows it is alive, and how long a check may take.
HELD_SESSION_POLL_SECONDS = 0.1


#: pg_terminate_backend's wait for each backend to exit, milliseconds.
TERMINATE_WAIT_MILLISECONDS = 5000


def create_login_role(conninfo: str, role: str, password: str) -> Change:
    """Create a login role with a password (drills: the intruder's account).

    The password is sent as libpq's verifier, never in clear text.

    Args:
        conninfo: a superuser (or CREATEROLE) connection.
        role: the new role's name.
        password: its password (registered for redaction).

    Returns:
        A Change (``created``); undone by :func:`drop_role`.

    Raises:
        PreconditionError: the role exists already.
        PostgresError: the server cannot be reached or refused.
    """
    register_secret(password)
    obj = f"role {role} on {describe_conninfo(conninfo)}"
    with session(conninfo, f"create role {role!r}", statement_timeout_seconds=None) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if exists:
            raise PreconditionError(
                f"role {role!r} already exists on {describe_conninfo(conninfo)}"
            )
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
        register_secret(verifier)
        conn.execute(
            sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier)
            )
        )
    change = Change(
        system=SYSTEM,
        action="create-role",
        object=obj,
        outcome="created",
        after={"role": role, "login": True},
        undo=f"DROP ROLE {role}",
    )
    log.info("%s", change.summary())
    return change


def drop_role(conninfo: str, role: str, *, dbnames: Sequence[str] = ()) -> Change:
    """Drop a role: end its sessions, drop what it owns and its grants, then the role.

    Args:
        conninfo: a superuser connection (to the maintenance database).
        role: the role.
        dbnames: databases where it may own objects or hold grants (``DROP OWNED`` is per
            database).

    Returns:
        A Change (``deleted``, or ``unchanged`` when it does not exist); not compensable.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    obj = f"role {role} on {describe_conninfo(conninfo)}"
    with session(conninfo, f"drop role {role!r}", statement_timeout_seconds=None) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if not exists:
            log.info("role %s does not exist: unchanged", role)
            return Change(system=SYSTEM, action="drop-role", object=obj, outcome="unchanged")
        conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid, %s) FROM pg_catalog.pg_stat_activity "
            "WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()",
            [TERMINATE_WAIT_MILLISECONDS, role],
        )
        current = conn.info.dbname
    params = conninfo_to_dict(conninfo)
    for db in dict.fromkeys([current, *dbnames]):
        params_db = {**params, "dbname": db}
        with session(
            make_conninfo(**params_db), f"drop owned by {role!r}", statement_timeout_seconds=None
        ) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with session(conninfo, f"drop role {role!r}", statement_timeout_seconds=None) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    change = Change(
        system=SYSTEM,
        action="drop-role",
        object=obj,
        outcome="deleted",
        before={"role": role},
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def delete_rows_bypassing_checks(conninfo: str, relation: str, rows: int = 1) -> int:
    """Drills: the intruder's damage: delete ``rows`` rows of a table, as a superuser would.

    Triggers and foreign keys are bypassed (``session_replication_role = replica``), as an
    attacker holding a superuser session could; the "restore clean" step must bring the
    rows back.

    Args:
        conninfo: a superuser connection to the table's database.
        relation: ``schema.table``.
        rows: how many rows to delete (any ones).

    Returns:
        How many rows were deleted.

    Raises:
        ConfigError: the relation is not ``schema.table``.
        PostgresError: the server cannot be reached or refused.
    """
    schema, _, table = relation.partition(".")
    if not schema or not table:
        raise ConfigError(f"{relation!r}: give tables as schema.table")
    ident = sql.Identifier(schema, table)
    with (
        session(conninfo, f"delete rows of {relation}", statement_timeout_seconds=None) as conn,
        conn.transaction(),
    ):
        conn.execute("SET LOCAL session_replication_role = replica")
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE ctid IN (SELECT ctid FROM {} LIMIT %s)").format(
                ident, ident
            ),
            [rows],
        )
        deleted = cur.rowcount
    log.warning("drill: deleted %d row(s) of %s as the intruder", deleted, relation)
    return deleted


class HeldSession:
    """A session kept open by a background thread until the server ends it (drills).

    It runs ``SELECT 1`` every :data:`HELD_SESSION_POLL_SECONDS`; when the server terminates
    it, :attr:`ended_at` and :attr:`error` record when and how. It never reconnects: a
    reconnection is a separate, explicit proof (:func:`~tasks.postgres.security.try_login`).

    Args:
        conninfo: the credential of the session (its password is registered as a secret).
        name: the thread's name.
    """

    def __init__(self, conninfo: str, *, name: str = "dr-held-session") -> None:
        self._conninfo = conninfo
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self.pid: int | None = None
        self.user: str | None = None
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.error: str | None = None
        self.queries = 0
        self._conn: psycopg.Connection[Any] | None = None

    def start(self, timeout_seconds: float = 10.0) -> HeldSession:
        """Connect and start holding the session.

        Raises:
            PostgresError: the session could not be opened.
        """
        self._conn = connect(self._conninfo)
        row = self._conn.execute("SELECT pg_catalog.pg_backend_pid(), current_user").fetchone()
        self.pid, self.user = int(row[0]), str(row[1])  # type: ignore[index]
        self.started_at = utcnow()
        self._thread.start()
        self._ready.wait(timeout_seconds)
        return self

    @property
    def alive(self) -> bool:
        """True while the session is open."""
        return self.ended_at is None and self._thread.is_alive()

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        self._ready.set()
        try:
            while not self._stop.wait(HELD_SESSION_POLL_SECONDS):
                conn.execute("SELECT 1")
                self.queries += 1
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()
            self.error = redact(text[0] if text else type(exc).__name__)
        finally:
            self.ended_at = self.ended_at or utcnow()
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def wait_ended(self, timeout_seconds: float) -> bool:
        """Wait until the session has ended; True when it did."""
        self._thread.join(timeout_seconds)
        return not self._thread.is_alive()

    def close(self) -> None:
        """End the session from our side (cleanup)."""
        self._stop.set()
        self._thread.join(5)


create_login_role_task = dr_task(
    create_login_role, name="postgres-create-login-role", timeout_seconds=120
)
drop_role_task = dr_task(drop_role, name="postgres-drop-role", timeout_seconds=300)
# Drill damage: never repeated (a retry would delete more rows than planned).
delete_rows_bypassing_checks_task = dr_task(
    delete_rows_bypassing_checks,
    name="postgres-delete-rows-bypassing-checks",
    retries=0,
    timeout_seconds=120,
)
