"""Administer a PostgreSQL server: databases, client sessions, roles and their privileges.

Every change is idempotent (``unchanged`` when already so) and says how to undo it;
identifiers are composed with :mod:`psycopg.sql`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Literal

import psycopg
from psycopg import sql

from dr.changes import Change
from dr.errors import PreconditionError, UnsafeTargetError, register_secret
from dr.tasking import dr_task
from tasks.postgres.checks import USER_SCHEMA
from tasks.postgres.client import (
    describe_conninfo,
    one,
    session,
)
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)


#: Databases that :func:`drop_database` refuses whatever the caller says.
PROTECTED_DATABASES: frozenset[str] = frozenset({"postgres", "template0", "template1"})


#: How long ``pg_terminate_backend`` waits for each backend to exit (PostgreSQL 14+).
TERMINATE_WAIT_MILLISECONDS = 5000


def database_exists(conninfo: str, name: str) -> bool:
    """Tell whether a database exists on the server.

    Args:
        conninfo: any database on the server.
        name: the database name (exact, case-sensitive).

    Returns:
        True when it exists.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with session(conninfo, "database exists") as conn:
        return bool(
            one(
                conn,
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)",
                [name],
            )
        )


def create_database(
    conninfo_maintenance: str,
    name: str,
    *,
    owner: str | None = None,
    template: str | None = None,
) -> Change:
    """Create a database unless it exists (the name is quoted as an identifier).

    Args:
        conninfo_maintenance: a connection to another database on the server.
        name: the new database.
        owner: its owner role; default the connecting role.
        template: template database; default ``template1``.

    Returns:
        A :class:`~dr.changes.Change`: ``created`` or ``unchanged``; undo is
        :func:`drop_database`.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo_maintenance)
    obj = f"database {name} on {target}"
    with session(conninfo_maintenance, f"create database {name!r}") as conn:
        exists = one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [name]
        )
        outcome: Literal["created", "unchanged"] = "unchanged"
        if not exists:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            try:
                conn.execute(query)
                outcome = "created"
            except psycopg.errors.DuplicateDatabase:
                log.info("postgres create %s: created concurrently by someone else", obj)
    change = Change(
        system=SYSTEM,
        action="create-database",
        object=obj,
        outcome=outcome,
        before={"exists": bool(exists)},
        after={"exists": True},
        undo=f"drop_database({name!r})" if outcome == "created" else "",
        compensable=outcome == "created",
    )
    log.info("%s", change.summary())
    return change


def drop_database(
    conninfo_maintenance: str,
    name: str,
    *,
    must_not_be: Collection[str] = (),
    force: bool = False,
) -> Change:
    """Drop a database (a restore drill's scratch copy), refusing protected names.

    Why a refusal list: a drill restores into a scratch database and drops it afterwards;
    a wrong name must never drop production. ``postgres``, ``template0`` and ``template1``
    are always protected; add the target's databases in ``must_not_be``.

    Args:
        conninfo_maintenance: a connection to another database on the server.
        name: the database to drop.
        must_not_be: more names that must never be dropped (the target's databases).
        force: terminate its sessions first (``DROP DATABASE ... WITH (FORCE)``).

    Returns:
        A :class:`~dr.changes.Change`: ``deleted`` or ``unchanged`` (it did not exist).
        Not compensable.

    Raises:
        UnsafeTargetError: the name is protected; nothing was done.
        PostgresError: the server cannot be reached or refused.
    """
    protected = PROTECTED_DATABASES | frozenset(must_not_be)
    if name in protected:
        raise UnsafeTargetError(f"refusing to drop protected database {name!r}")
    target = describe_conninfo(conninfo_maintenance)
    obj = f"database {name} on {target}"
    with session(
        conninfo_maintenance, f"drop database {name!r}", statement_timeout_seconds=None
    ) as conn:
        if one(conn, "SELECT pg_catalog.current_database()") == name:
            raise UnsafeTargetError(f"refusing to drop {name!r}: it is the connected database")
        exists = one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s)", [name]
        )
        if exists:
            query = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            if force:
                query += sql.SQL(" WITH (FORCE)")
            conn.execute(query)
    change = Change(
        system=SYSTEM,
        action="drop-database",
        object=obj,
        outcome="deleted" if exists else "unchanged",
        before={"exists": bool(exists)},
        after={"exists": False},
        undo="restore it from a backup" if exists else "",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


def terminate_backends(
    conn: psycopg.Connection[Any], *, role: str | None, dbname: str | None
) -> int:
    """End matching client sessions but ours, waiting for each; return how many ended."""
    rows = conn.execute(
        "SELECT pid, pg_catalog.pg_terminate_backend(pid, %(wait)s) "
        "FROM pg_catalog.pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() "
        "AND (%(role)s::text IS NULL OR usename = %(role)s) "
        "AND (%(db)s::text IS NULL OR datname = %(db)s)",
        {"wait": TERMINATE_WAIT_MILLISECONDS, "role": role, "db": dbname},
    ).fetchall()
    return sum(1 for _pid, ok in rows if ok)


def terminate_sessions(conninfo: str, *, role: str | None = None, dbname: str | None = None) -> int:
    """End client sessions (all, or one role's, or one database's), except our own.

    Waits for each backend to exit, so a following check sees them gone.

    Args:
        conninfo: a superuser (or ``pg_signal_backend``) connection.
        role: only sessions of this role.
        dbname: only sessions on this database.

    Returns:
        How many sessions were terminated.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    with session(conninfo, "terminate sessions") as conn:
        count = terminate_backends(conn, role=role, dbname=dbname)
    log.info(
        "postgres terminate sessions %s (role=%s, db=%s): %d terminated",
        describe_conninfo(conninfo),
        role or "*",
        dbname or "*",
        count,
    )
    return count


def role_exists(conninfo: str, role: str) -> bool:
    """Tell whether a role exists.

    Args:
        conninfo: any database on the server.
        role: the role name (exact).

    Returns:
        True when it exists.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with session(conninfo, "role exists") as conn:
        return bool(
            one(
                conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s)", [role]
            )
        )


def set_role_login(conninfo: str, role: str, login: bool) -> Change:
    """Allow or forbid a role to log in; forbidding also ends its open sessions.

    Why terminate: ``NOLOGIN`` only stops new logins; in a breach the attacker's open
    sessions must end too.

    Args:
        conninfo: a superuser (or CREATEROLE) connection.
        role: the role.
        login: True to allow logins, False to forbid them.

    Returns:
        A :class:`~dr.changes.Change` (``unchanged`` when the role already was so; sessions
        ended are counted in ``after["terminated_sessions"]``); undo is the opposite call.

    Raises:
        PreconditionError: the role does not exist.
        UnsafeTargetError: forbidding the role this connection uses.
        PostgresError: the server cannot be reached or refused.
    """
    target = describe_conninfo(conninfo)
    obj = f"role {role} on {target}"
    with session(conninfo, f"set login of role {role!r}") as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolname = current_user FROM pg_catalog.pg_roles "
            "WHERE rolname = %s",
            [role],
        ).fetchone()
        if row is None:
            raise PreconditionError(f"role {role!r} does not exist on {target}")
        before, is_me = bool(row[0]), bool(row[1])
        if not login and is_me:
            raise UnsafeTargetError(f"refusing to forbid logins for {role!r}: this session uses it")
        if before != login:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH {}").format(
                    sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN")
                )
            )
        terminated = 0 if login else terminate_backends(conn, role=role, dbname=None)
    changed = before != login
    change = Change(
        system=SYSTEM,
        action="allow-login" if login else "forbid-login",
        object=obj,
        outcome="changed" if changed else "unchanged",
        before={"login": before},
        after={"login": login, "terminated_sessions": terminated},
        undo=f"set_role_login({role!r}, {before})" if before != login else "",
        compensable=before != login,
    )
    log.info("%s", change.summary())
    return change


def set_role_password(conninfo: str, role: str, new_password: str) -> Change:
    """Rotate a role's password; the new one never leaves this process in clear text.

    Why hash here: ``ALTER ROLE ... PASSWORD`` cannot take a bind parameter, and a clear
    text password in a statement can land in the server log (``log_statement``). The
    verifier is computed by libpq (``PQencryptPasswordConn``, the server's
    ``password_encryption`` algorithm) and sent as a quoted literal (``sql.Literal``).

    Args:
        conninfo: a superuser (or CREATEROLE) connection.
        role: the role.
        new_password: the new password (registered for redaction; never logged).

    Returns:
        A :class:`~dr.changes.Change` (``updated``) without the password. Not compensable:
        the old password is not kept; rotate again instead.

    Raises:
        PreconditionError: the role does not exist.
        PostgresError: the server cannot be reached or refused.
    """
    register_secret(new_password)
    target = describe_conninfo(conninfo)
    obj = f"role {role} on {target}"
    with session(conninfo, f"set password of role {role!r}") as conn:
        if not one(
            conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s)", [role]
        ):
            raise PreconditionError(f"role {role!r} does not exist on {target}")
        algorithm = one(conn, "SELECT pg_catalog.current_setting('password_encryption')")
        verifier = conn.pgconn.encrypt_password(new_password.encode(), role.encode())
        register_secret(verifier.decode())
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode())
            )
        )
    change = Change(
        system=SYSTEM,
        action="rotate-password",
        object=obj,
        outcome="updated",
        before={"role": role},
        after={"role": role, "algorithm": algorithm},
        undo="the previous password is not kept: rotate again with set_role_password",
        compensable=False,
    )
    log.info("%s", change.summary())
    return change


_ROLES_SQL = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil,
       ARRAY(SELECT g.rolname FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       ARRAY(SELECT d.datname FROM pg_catalog.pg_database d
             WHERE pg_catalog.has_database_privilege(r.oid, d.oid, 'CONNECT')
             AND d.datallowconn ORDER BY 1) AS can_connect,
       ARRAY(SELECT d.datname FROM pg_catalog.pg_database d
             WHERE pg_catalog.has_database_privilege(r.oid, d.oid, 'CREATE') ORDER BY 1)
             AS can_create_in
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY r.rolname
"""


_GRANTS_SQL = f"""
SELECT coalesce(g.rolname, 'PUBLIC'), n.nspname || '.' || c.relname,
       pg_catalog.array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {USER_SCHEMA}
GROUP BY 1, 2
ORDER BY 1, 2
"""


def list_roles_and_privileges(conninfo: str) -> list[dict[str, Any]]:
    """Every role with its attributes, memberships and grants, as evidence.

    Table grants are those of the connected database (grants are per database).

    Args:
        conninfo: a database on the server.

    Returns:
        One dict per role (built-in ``pg_*`` roles left out): ``name``, ``superuser``,
        ``login``, ..., ``member_of``, ``can_connect``, ``can_create_in``,
        ``table_privileges`` (``{"schema.table": ["SELECT", ...]}``). ``PUBLIC`` grants
        come as a pseudo-role when there are any.

    Raises:
        PostgresError: the server cannot be reached or a query failed.
    """
    with session(conninfo, "list roles") as conn:
        roles = conn.execute(_ROLES_SQL).fetchall()
        grants = conn.execute(_GRANTS_SQL).fetchall()
    by_role: dict[str, dict[str, list[str]]] = {}
    for grantee, table, privileges in grants:
        by_role.setdefault(grantee, {})[table] = list(privileges)
    out: list[dict[str, Any]] = []
    for r in roles:
        out.append(
            {
                "name": r[0],
                "superuser": r[1],
                "inherit": r[2],
                "create_role": r[3],
                "create_db": r[4],
                "login": r[5],
                "replication": r[6],
                "bypass_rls": r[7],
                "connection_limit": r[8],
                "valid_until": r[9].isoformat() if r[9] else None,
                "member_of": list(r[10]),
                "can_connect": list(r[11]),
                "can_create_in": list(r[12]),
                "table_privileges": by_role.get(r[0], {}),
            }
        )
    if "PUBLIC" in by_role:
        out.append({"name": "PUBLIC", "table_privileges": by_role["PUBLIC"]})
    return out


# --------------------------------------------------------------------------- Prefect tasks

create_database_task = dr_task(
    create_database, name="postgres-create-database", timeout_seconds=300
)
drop_database_task = dr_task(drop_database, name="postgres-drop-database", timeout_seconds=300)
terminate_sessions_task = dr_task(
    terminate_sessions,
    name="postgres-terminate-sessions",
    timeout_seconds=120,
)
set_role_login_task = dr_task(set_role_login, name="postgres-set-role-login", timeout_seconds=120)
set_role_password_task = dr_task(
    set_role_password,
    name="postgres-set-role-password",
    timeout_seconds=120,
)
list_roles_and_privileges_task = dr_task(
    list_roles_and_privileges,
    name="postgres-list-roles",
    timeout_seconds=120,
)
database_exists_task = dr_task(database_exists, name="postgres-database-exists", timeout_seconds=60)
role_exists_task = dr_task(role_exists, name="postgres-role-exists", retries=0, timeout_seconds=60)
