"""PostgreSQL security steps of a breach response: block sources, evidence, the drill's intruder.

What :mod:`tasks.postgres` does not: edit ``pg_hba.conf`` of a server on this machine to
refuse given source networks (:func:`block_cidrs_in_hba`, undone by
:func:`unblock_cidrs_in_hba`), take the volatile evidence an intrusion leaves (the sessions
open right now, :func:`session_snapshot`; the server's log files, :func:`collect_server_logs`),
prove who can log in (:func:`try_login`), and, for drills, create the intruder: a login role
(:func:`create_login_role`) with a session held open by a background thread
(:class:`HeldSession`), dropped again at the end (:func:`drop_role`).

Why ``pg_hba`` lines and not only the security group: security groups allow and never deny
(see :func:`tasks.cloud.block_cidrs`), so a narrow attacker range inside a broad allowed one
can only be refused by the server itself. The lines are ``host all all <cidr> reject``, put
*above* every other line (the first matching line decides), each under a marker comment, so
that undoing removes exactly what was added and nothing a person wrote. The reload is proven:
the server parses the file without error (``pg_hba_file_rules``) and reloads it
(``pg_conf_load_time()`` moves on).

Passwords never reach a statement in clear text (libpq computes the verifier, as in
:func:`tasks.postgres.set_role_password`), a log line or an error message (every value is
registered with :func:`dr.errors.register_secret`). SQL is parameterized, identifiers are
composed with :mod:`psycopg.sql`, system functions are ``pg_catalog``-qualified. Like
:mod:`tasks.measure`, this module talks to PostgreSQL with psycopg itself: a module in
``tasks/`` imports no other.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dr.changes import Change
from dr.errors import ConfigError, PostgresError, PreconditionError, redact, register_secret
from dr.tasking import dr_task

__all__ = [
    "HBA_MARKER",
    "HeldSession",
    "block_cidrs_in_hba",
    "block_cidrs_in_hba_task",
    "collect_server_logs",
    "collect_server_logs_task",
    "create_login_role",
    "delete_rows_bypassing_checks",
    "drop_role",
    "hba_rules",
    "newest_heartbeat",
    "normalize_cidrs",
    "role_can_login",
    "session_snapshot",
    "session_snapshot_task",
    "sessions_alive",
    "try_login",
    "unblock_cidrs_in_hba",
    "unblock_cidrs_in_hba_task",
]

log = logging.getLogger(__name__)

SYSTEM = "postgres"
#: Comment line written above every line this module adds to pg_hba.conf.
HBA_MARKER = "# dr-pipelines breach block"
#: How long a configuration reload may take to show in new sessions.
RELOAD_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05
#: Server logs larger than this (in all) are cut: the newest files are kept first.
DEFAULT_MAX_LOG_BYTES = 512 * 1024 * 1024
#: Bytes read per call when a log file is read through SQL (pg_read_binary_file).
LOG_READ_CHUNK_BYTES = 4 * 1024 * 1024
#: How often a held session shows it is alive, and how long a check may take.
HELD_SESSION_POLL_SECONDS = 0.1
#: pg_terminate_backend's wait for each backend to exit, milliseconds.
TERMINATE_WAIT_MILLISECONDS = 5000


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _where(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages (never the password)."""
    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<invalid conninfo>"
    return redact(
        f"{d.get('user', '')}@{d.get('host', 'localhost')}:{d.get('port', '5432')}"
        f"/{d.get('dbname', '')}"
    )


def _connect(conninfo: str, what: str) -> psycopg.Connection[Any]:
    with contextlib.suppress(psycopg.ProgrammingError):
        register_secret(conninfo_to_dict(conninfo).get("password"))
    try:
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        transient = not any(
            word in text.lower() for word in ("authentication", "does not exist", "permitted")
        )
        raise PostgresError(
            f"{what}: cannot connect to {_where(conninfo)}: {text}", transient=transient
        ) from exc


@contextlib.contextmanager
def _session(conninfo: str, what: str) -> Iterator[psycopg.Connection[Any]]:
    conn = _connect(conninfo, what)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        transient = isinstance(exc, psycopg.OperationalError)
        raise PostgresError(f"{what} on {_where(conninfo)}: {first}", transient=transient) from exc


# --------------------------------------------------------------------------- pg_hba


def normalize_cidrs(cidrs: Sequence[str]) -> list[str]:
    """Check and normalize source networks (``10.1.2.3`` -> ``10.1.2.3/32``), keeping order.

    Args:
        cidrs: addresses or networks, IPv4 or IPv6.

    Returns:
        The networks in CIDR form, duplicates removed.

    Raises:
        ConfigError: one is not an address or network.
    """
    out: list[str] = []
    problems: list[tuple[str, str]] = []
    for raw in cidrs:
        try:
            net = ipaddress.ip_network(str(raw).strip(), strict=False)
        except ValueError as exc:
            problems.append((f"block_cidrs: {raw!r}", str(exc)))
            continue
        if net.prefixlen == 0:
            problems.append((f"block_cidrs: {raw!r}", "refusing to block every address"))
            continue
        if str(net) not in out:
            out.append(str(net))
    if problems:
        raise ConfigError(
            "invalid source network(s) to block: " + "; ".join(f"{k} ({v})" for k, v in problems),
            problems,
        )
    return out


def _hba_line(cidr: str) -> str:
    return f"host    all    all    {cidr}    reject"


def _marker(cidr: str, reason: str) -> str:
    return f"{HBA_MARKER} {cidr}" + (f" ({reason})" if reason else "")


def _hba_path(conn: psycopg.Connection[Any], hba_file: Path | None) -> Path:
    if hba_file is not None:
        path = Path(hba_file)
    else:
        path = Path(
            str(conn.execute("SELECT pg_catalog.current_setting('hba_file')").fetchone()[0])
        )  # type: ignore[index]
    if not path.is_file():
        raise PreconditionError(
            f"{path} is not a file on this machine: block these addresses at the security "
            "group (block_cidrs_in_groups) or on the server's own host"
        )
    return path


def _first_rule_index(lines: list[str]) -> int:
    """Index of the first line that is a rule (not blank, not a comment)."""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return i
    return len(lines)


def _ours(lines: list[str]) -> dict[str, list[int]]:
    """cidr -> indexes of the marker and rule lines of every block this module wrote."""
    found: dict[str, list[int]] = {}
    for i, line in enumerate(lines[:-1]):
        if line.startswith(HBA_MARKER + " "):
            cidr = line[len(HBA_MARKER) + 1 :].split(" ", 1)[0]
            if lines[i + 1].split() == _hba_line(cidr).split():
                found.setdefault(cidr, []).extend([i, i + 1])
    return found


def _first_foreign_rule(lines: list[str], ours: dict[str, list[int]]) -> int:
    """Index of the first rule line not written by this module."""
    mine = {i for indexes in ours.values() for i in indexes}
    for i, line in enumerate(lines):
        stripped = line.strip()
        if i not in mine and stripped and not stripped.startswith("#"):
            return i
    return len(lines)


def _write_like(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, keeping its owner and mode."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.dr-tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o7777)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            os.fchmod(fh.fileno(), st.st_mode & 0o7777)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except PermissionError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PreconditionError(
            f"cannot rewrite {path}: run as root or as the server's OS user"
        ) from exc


def hba_rules(conninfo: str) -> list[dict[str, Any]]:
    """The rules of the server's ``pg_hba.conf`` as it parses the file now.

    Args:
        conninfo: a superuser connection to the node.

    Returns:
        ``[{"line", "type", "database", "user", "address", "netmask", "method", "error"}]``
        in file order.

    Raises:
        PostgresError: the server cannot be reached or refused.
    """
    with _session(conninfo, "read pg_hba_file_rules") as conn:
        rows = conn.execute(
            "SELECT line_number, type, database, user_name, address, netmask, auth_method, "
            "error FROM pg_catalog.pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
    return [
        {
            "line": r[0],
            "type": r[1],
            "database": list(r[2] or []),
            "user": list(r[3] or []),
            "address": r[4],
            "netmask": r[5],
            "method": r[6],
            "error": r[7],
        }
        for r in rows
    ]


def _reload_and_prove(conninfo: str, before: datetime, path: Path) -> list[dict[str, Any]]:
    rules = hba_rules(conninfo)
    errors = [r for r in rules if r["error"]]
    if errors:
        raise PostgresError(
            f"{path} does not parse ({errors[0]['error']} at line {errors[0]['line']}); "
            "the server keeps its previous rules"
        )
    with _session(conninfo, "reload configuration") as conn:
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while True:
        with _session(conninfo, "read configuration load time") as conn:
            loaded = conn.execute("SELECT pg_catalog.pg_conf_load_time()").fetchone()[0]  # type: ignore[index]
        if loaded > before:
            return rules
        if time.monotonic() > deadline:
            raise PostgresError(
                f"{_where(conninfo)} did not reload its configuration within "
                f"{RELOAD_WAIT_SECONDS:g} s",
                transient=True,
            )
        time.sleep(POLL_SECONDS)


def _load_time(conninfo: str) -> datetime:
    with _session(conninfo, "read configuration load time") as conn:
        return conn.execute("SELECT pg_catalog.pg_conf_load_time()").fetchone()[0]  # type: ignore[index,no-any-return]


def block_cidrs_in_hba(
    conninfo: str, cidrs: Sequence[str], *, hba_file: Path | None = None, reason: str = ""
) -> Change:
    """Refuse connections from ``cidrs`` on one server: reject lines at the top of pg_hba.

    Args:
        conninfo: a superuser connection to the node (to find the file, parse and reload).
        cidrs: source networks to refuse.
        hba_file: the file, when not the server's ``hba_file`` setting.
        reason: written in the marker comment (e.g. the incident's id).

    Returns:
        A Change (``updated``, or ``unchanged`` when every block is already at the top)
        with ``after["rules"]``: the first rules as the server parses them, proving the
        rejects come first; undone by :func:`unblock_cidrs_in_hba`.

    Raises:
        ConfigError: an invalid network.
        PreconditionError: the file is not on this machine, or cannot be rewritten.
        PostgresError: the server cannot be reached, the new file does not parse (it is then
            put back), or the reload did not happen.
    """
    nets = normalize_cidrs(cidrs)
    with _session(conninfo, "find pg_hba.conf") as conn:
        path = _hba_path(conn, hba_file)
    obj = f"{path} ({_where(conninfo)})"
    original = path.read_text()
    lines = original.splitlines()
    top = _first_rule_index(lines)
    ours = _ours(lines)
    foreign = _first_foreign_rule(lines, ours)
    # Already blocked: one of our rules for it comes before every other rule.
    missing = [c for c in nets if not any(i < foreign for i in ours.get(c, []))]
    if not missing:
        log.info("pg_hba %s already rejects %s: unchanged", obj, ", ".join(nets))
        return Change(
            system=SYSTEM,
            action="block-cidrs-in-hba",
            object=obj,
            outcome="unchanged",
            before={"hba_file": str(path), "blocked": nets},
            after={"hba_file": str(path), "blocked": nets},
            compensable=False,
        )
    insert: list[str] = []
    for cidr in missing:
        insert += [_marker(cidr, reason), _hba_line(cidr)]
    new_lines = lines[:top] + insert + lines[top:]
    before = _load_time(conninfo)
    _write_like(path, "\n".join(new_lines) + "\n")
    try:
        rules = _reload_and_prove(conninfo, before, path)
    except Exception:
        _write_like(path, original)
        raise
    head = [r for r in rules if r["method"] == "reject"][: len(nets)]
    change = Change(
        system=SYSTEM,
        action="block-cidrs-in-hba",
        object=obj,
        outcome="updated",
        before={"hba_file": str(path), "blocked": sorted(ours)},
        after={"hba_file": str(path), "blocked": nets, "added": missing, "rules": head},
        undo=(
            f"remove the lines after '{HBA_MARKER} <cidr>' for {', '.join(missing)} from "
            f"{path} and SELECT pg_reload_conf()"
        ),
        compensable=True,
    )
    log.info("%s", change.summary())
    return change


def unblock_cidrs_in_hba(conninfo: str, change: Change) -> Change:
    """Remove the reject lines :func:`block_cidrs_in_hba` added (only those) and reload.

    Args:
        conninfo: a superuser connection to the node.
        change: the Change returned when blocking.

    Returns:
        A Change (``updated``, or ``unchanged`` when the lines are already gone).

    Raises:
        PreconditionError: not a block change, or the file cannot be rewritten.
        PostgresError: the server cannot be reached or did not reload.
    """
    if change.system != SYSTEM or change.action != "block-cidrs-in-hba":
        raise PreconditionError(f"expected a block-cidrs-in-hba change, got {change.action}")
    path = Path(str(change.after["hba_file"]))
    added = list(change.after.get("added", []))
    obj = change.object
    text = path.read_text()
    lines = text.splitlines()
    ours = _ours(lines)
    drop = {i for c in added for i in ours.get(c, [])}
    if not drop:
        log.info("pg_hba %s: no block of ours for %s: unchanged", obj, ", ".join(added) or "-")
        return Change(system=SYSTEM, action="unblock-cidrs-in-hba", object=obj, outcome="unchanged")
    kept = [line for i, line in enumerate(lines) if i not in drop]
    before = _load_time(conninfo)
    _write_like(path, "\n".join(kept) + "\n")
    try:
        _reload_and_prove(conninfo, before, path)
    except Exception:
        _write_like(path, text)
        raise
    removed = [c for c in added if c in ours]
    result = Change(
        system=SYSTEM,
        action="unblock-cidrs-in-hba",
        object=obj,
        outcome="updated",
        before={"hba_file": str(path), "blocked": removed},
        after={"hba_file": str(path), "removed": removed},
        undo=f"block_cidrs_in_hba({removed})",
        compensable=False,
    )
    log.info("%s", result.summary())
    return result


# --------------------------------------------------------------------------- sessions


def session_snapshot(conninfo: str) -> list[dict[str, Any]]:
    """The client sessions open on a server right now: volatile evidence, taken first.

    Args:
        conninfo: a superuser (or ``pg_read_all_stats``) connection.

    Returns:
        One dict per client backend: ``pid``, ``user``, ``database``, ``client_addr``,
        ``client_port``, ``application_name``, ``backend_start``, ``state``,
        ``state_change``, ``query`` (registered secrets redacted), ``ssl``.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with _session(conninfo, "list sessions") as conn:
        rows = conn.execute(
            "SELECT a.pid, a.usename, a.datname, host(a.client_addr), a.client_port, "
            "a.application_name, a.backend_start, a.state, a.state_change, a.query, "
            "coalesce(s.ssl, false) "
            "FROM pg_catalog.pg_stat_activity a "
            "LEFT JOIN pg_catalog.pg_stat_ssl s ON s.pid = a.pid "
            "WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid() "
            "ORDER BY a.backend_start"
        ).fetchall()
    return [
        {
            "pid": r[0],
            "user": r[1],
            "database": r[2],
            "client_addr": r[3],
            "client_port": r[4],
            "application_name": r[5],
            "backend_start": r[6].isoformat() if r[6] else None,
            "state": r[7],
            "state_change": r[8].isoformat() if r[8] else None,
            "query": redact(r[9] or ""),
            "ssl": bool(r[10]),
        }
        for r in rows
    ]


def sessions_alive(conninfo: str, pids: Sequence[int]) -> list[int]:
    """Which of ``pids`` are still client sessions on the server.

    Args:
        conninfo: a superuser connection.
        pids: backend process ids (from :func:`session_snapshot` or ``pg_backend_pid()``).

    Returns:
        The pids still present.

    Raises:
        PostgresError: the server cannot be reached.
    """
    if not pids:
        return []
    with _session(conninfo, "look for sessions") as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


def try_login(conninfo: str) -> tuple[bool, str]:
    """Try to log in once, as a proof (a credential works, or is refused).

    Args:
        conninfo: the credential under test (user, password, database).

    Returns:
        ``(True, "logged in as <user>")`` or ``(False, <the server's reason>)`` for an
        authentication failure (wrong password, ``NOLOGIN``, unknown role, pg_hba reject).

    Raises:
        PostgresError: the server could not be reached at all (no proof either way).
    """
    with contextlib.suppress(psycopg.ProgrammingError):
        register_secret(conninfo_to_dict(conninfo).get("password"))
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        text = redact(" ".join(str(exc).split()))
        reason = text.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in text else text
        if any(word in text for word in _REFUSALS):
            return False, reason
        raise PostgresError(
            f"log in to {_where(conninfo)}: server unreachable: {reason}", transient=True
        ) from exc
    with conn:
        user = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    return True, f"logged in as {user}"


def role_can_login(conninfo: str, role: str) -> bool | None:
    """Whether a role may log in (``rolcanlogin``), or None when it does not exist.

    Args:
        conninfo: any connection to the server (a standby answers too).
        role: the role.

    Raises:
        PostgresError: the server cannot be reached.
    """
    with _session(conninfo, f"read role {role!r}") as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
        ).fetchone()
    return None if row is None else bool(row[0])


def newest_heartbeat(
    conninfo: str, writer: str, table: str = "public.dr_heartbeat"
) -> datetime | None:
    """The time of a writer's newest heartbeat row (``writer, seq, ts``), or None.

    Why: the application writing again is the end-to-end proof that it works with the
    credentials it was given.

    Args:
        conninfo: a connection to the heartbeat database.
        writer: the writer's name (``app`` for the lab application).
        table: the heartbeat table, schema-qualified.

    Raises:
        PostgresError: the server cannot be reached or the table does not exist.
    """
    schema, _, name = table.rpartition(".")
    query = sql.SQL("SELECT pg_catalog.max(ts) FROM {} WHERE writer = %s").format(
        sql.Identifier(schema or "public", name)
    )
    with _session(conninfo, "read newest heartbeat") as conn:
        row = conn.execute(query, [writer]).fetchone()
    return None if row is None else row[0]


#: Server answers that refuse a credential (as opposed to an unreachable server).
_REFUSALS = (
    "password authentication failed",
    "is not permitted to log in",
    "does not exist",
    "pg_hba.conf rejects",
    "no pg_hba.conf entry",
    "authentication failed",
)


# --------------------------------------------------------------------------- roles


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
    obj = f"role {role} on {_where(conninfo)}"
    with _session(conninfo, f"create role {role!r}") as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if exists:
            raise PreconditionError(f"role {role!r} already exists on {_where(conninfo)}")
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
    obj = f"role {role} on {_where(conninfo)}"
    with _session(conninfo, f"drop role {role!r}") as conn:
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
        with _session(make_conninfo(**params_db), f"drop owned by {role!r}") as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with _session(conninfo, f"drop role {role!r}") as conn:
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
    with _session(conninfo, f"delete rows of {relation}") as conn, conn.transaction():
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
    reconnection is a separate, explicit proof (:func:`try_login`).

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
        self._conn = _connect(self._conninfo, "open a session")
        row = self._conn.execute("SELECT pg_catalog.pg_backend_pid(), current_user").fetchone()
        self.pid, self.user = int(row[0]), str(row[1])  # type: ignore[index]
        self.started_at = _utcnow()
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
            self.ended_at = self.ended_at or _utcnow()
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


# --------------------------------------------------------------------------- logs


def _log_files_sql(conninfo: str) -> tuple[str, list[tuple[str, int, datetime]]]:
    with _session(conninfo, "list log files") as conn:
        directory = str(
            conn.execute("SELECT pg_catalog.current_setting('log_directory')").fetchone()[0]  # type: ignore[index]
        )
        rows = conn.execute(
            "SELECT name, size, modification FROM pg_catalog.pg_ls_logdir() ORDER BY modification"
        ).fetchall()
    return directory, [(str(n), int(s), m) for n, s, m in rows]


def collect_server_logs(
    conninfo: str | None,
    dest_dir: str | os.PathLike[str],
    *,
    local_log_dir: str | os.PathLike[str] | None = None,
    since: datetime | None = None,
    max_total_bytes: int = DEFAULT_MAX_LOG_BYTES,
) -> list[dict[str, Any]]:
    """Copy a server's log files into ``dest_dir`` as evidence.

    On this machine (``local_log_dir`` exists) the files are copied from the folder, which
    works even when the server is down; otherwise they are read through SQL
    (``pg_read_binary_file``, superuser). Newest files first until ``max_total_bytes``.

    Args:
        conninfo: a superuser connection (needed without a local folder).
        dest_dir: where to put the copies.
        local_log_dir: the server's log folder on this machine, if it is here.
        since: only files modified at or after this moment.
        max_total_bytes: stop adding older files beyond this size.

    Returns:
        ``[{"name", "path", "size_bytes", "modified_at", "via"}]``, oldest first; files left
        out for size are listed with ``"skipped": "size limit"`` and no path.

    Raises:
        PreconditionError: no local folder and no connection given.
        PostgresError: the server cannot be reached (SQL path).
        OSError: a local file cannot be read.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(local_log_dir) if local_log_dir else None
    files: list[tuple[str, int, datetime]]
    if local is not None and local.is_dir():
        via = "file"
        files = []
        for p in local.iterdir():
            if p.is_file():
                st = p.stat()
                files.append((p.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        directory = str(local)
    elif conninfo is not None:
        via = "sql"
        directory, files = _log_files_sql(conninfo)
    else:
        raise PreconditionError("no log folder on this machine and no connection to read logs")
    if since is not None:
        files = [f for f in files if f[2] >= since]
    files.sort(key=lambda f: f[2], reverse=True)
    out: list[dict[str, Any]] = []
    total = 0
    for name, size, modified in files:
        entry: dict[str, Any] = {
            "name": name,
            "size_bytes": size,
            "modified_at": modified.isoformat(),
            "via": via,
        }
        if total + size > max_total_bytes and out:
            entry["skipped"] = "size limit"
            out.append(entry)
            continue
        target = dest / name
        if via == "file":
            shutil.copyfile(Path(directory) / name, target)
        else:
            assert conninfo is not None
            _read_log_sql(conninfo, f"{directory}/{name}", target)
        entry["path"] = str(target)
        entry["size_bytes"] = target.stat().st_size
        total += entry["size_bytes"]
        out.append(entry)
    out.sort(key=lambda e: e["modified_at"])
    log.info(
        "server logs %s: %d file(s), %d bytes via %s",
        _where(conninfo) if conninfo else directory,
        sum(1 for e in out if "path" in e),
        total,
        via,
    )
    return out


def _read_log_sql(conninfo: str, relpath: str, target: Path) -> None:
    with _session(conninfo, f"read {relpath}") as conn, target.open("wb") as out:
        offset = 0
        while True:
            chunk = conn.execute(
                "SELECT pg_catalog.pg_read_binary_file(%s, %s, %s, true)",
                [relpath, offset, LOG_READ_CHUNK_BYTES],
            ).fetchone()[0]  # type: ignore[index]
            if not chunk:
                break
            out.write(chunk)
            offset += len(chunk)
            if len(chunk) < LOG_READ_CHUNK_BYTES:
                break


# --------------------------------------------------------------------------- tasks

session_snapshot_task = dr_task(
    session_snapshot, name="postgres-session-snapshot", timeout_seconds=60
)
collect_server_logs_task = dr_task(
    collect_server_logs,
    name="postgres-collect-server-logs",
    timeout_seconds=900,
)
block_cidrs_in_hba_task = dr_task(
    block_cidrs_in_hba,
    name="postgres-block-cidrs-in-hba",
    timeout_seconds=120,
)
unblock_cidrs_in_hba_task = dr_task(
    unblock_cidrs_in_hba,
    name="postgres-unblock-cidrs-in-hba",
    timeout_seconds=120,
)


# --- wrappers added for flows (lead: move on merge)


def disable_role(
    primary_conninfo: str, replica_conninfos: dict[str, str], role: str
) -> list[Change]:
    """NOLOGIN on the primary (its sessions ended), then the role's sessions ended on standbys.

    Why standbys too: ``NOLOGIN`` replicates, but a session already open on a standby stays
    open until it is terminated there. A standby that cannot be reached is logged, not fatal.

    Args:
        primary_conninfo: an admin connection to the primary.
        replica_conninfos: standby name -> an admin connection to it.
        role: the compromised role.

    Returns:
        The primary's change, then one per standby reached.
    """
    from tasks.postgres import set_role_login, terminate_sessions

    changes = [set_role_login(primary_conninfo, role, False)]
    for name, conninfo in replica_conninfos.items():
        try:
            ended = terminate_sessions(conninfo, role=role)
        except PostgresError as exc:
            log.warning("sessions of %s on %s not ended: %s", role, name, exc)
            continue
        changes.append(
            Change(
                system="postgres",
                action="terminate-sessions",
                object=f"role {role} on {name}",
                outcome="changed" if ended else "unchanged",
                after={"terminated_sessions": ended},
                compensable=False,
            )
        )
    return changes


def login_outcome_within(
    conninfo: str, *, expect: bool, wait_seconds: float, poll_seconds: float = 0.1
) -> tuple[bool | None, str]:
    """Try a login until it gives the expected outcome or the wait is over.

    Why wait: a standby replays a role change a moment after the primary made it.

    Returns:
        ``(logged_in, why)``; ``logged_in`` None when the server cannot be reached.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        result: bool | None
        try:
            result, why = try_login(conninfo)
        except PostgresError as exc:
            result, why = None, f"unreachable: {exc}"
        if result is expect or time.monotonic() > deadline:
            return result, why
        time.sleep(poll_seconds)


def role_disabled_within(
    conninfo: str, role: str, *, wait_seconds: float, poll_seconds: float = 0.1
) -> tuple[bool | None, list[int], str | None]:
    """Ask until the role cannot log in and has no session, or the wait is over.

    Returns:
        ``(rolcanlogin, pids of its open sessions, error)``; ``error`` is set (and the
        others None and empty) when the server could not be asked before the deadline.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            can = role_can_login(conninfo, role)
            pids = [s["pid"] for s in session_snapshot(conninfo) if s["user"] == role]
        except PostgresError as exc:
            if time.monotonic() > deadline:
                return None, [], str(exc)
        else:
            if (can is False and not pids) or time.monotonic() > deadline:
                return can, pids, None
        time.sleep(poll_seconds)


def heartbeat_after(
    conninfo: str,
    writer: str,
    after: datetime,
    *,
    timeout_seconds: float,
    poll_seconds: float = 0.1,
) -> tuple[datetime | None, datetime | None]:
    """Wait for a heartbeat of ``writer`` newer than ``after``.

    Returns:
        ``(the first heartbeat after, the newest seen)``; the first is None on timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    newest = None
    while time.monotonic() < deadline:
        with contextlib.suppress(PostgresError):
            newest = newest_heartbeat(conninfo, writer)
        if newest is not None and newest > after:
            return newest, newest
        time.sleep(poll_seconds)
    return None, newest


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
disable_role_task = dr_task(disable_role, name="postgres-disable-role", timeout_seconds=300)
# Proofs: never retried (a retry could turn a failed proof into a pass).
sessions_alive_task = dr_task(
    sessions_alive, name="postgres-sessions-alive", retries=0, timeout_seconds=60
)
login_outcome_within_task = dr_task(
    login_outcome_within, name="postgres-login-outcome", retries=0, timeout_seconds=120
)
role_disabled_within_task = dr_task(
    role_disabled_within, name="postgres-role-disabled", retries=0, timeout_seconds=120
)
# Bounded by its own timeout_seconds argument.
heartbeat_after_task = dr_task(heartbeat_after, name="postgres-heartbeat-after", retries=0)
