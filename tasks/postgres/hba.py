"""Refuse source networks on a server on this machine: reject lines at the top of ``pg_hba.conf``.

Why ``pg_hba`` lines and not only the security group: security groups allow and never deny
(see :func:`tasks.cloud.block_cidrs`), so a narrow attacker range inside a broad allowed one
can only be refused by the server itself. The lines are ``host all all <cidr> reject``, put
*above* every other line (the first matching line decides), each under a marker comment, so
that undoing removes exactly what was added and nothing a person wrote. The reload is proven:
the server parses the file without error (``pg_hba_file_rules``) and reloads it
(``pg_conf_load_time()`` moves on).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from dr.changes import Change
from dr.errors import ConfigError, PostgresError, PreconditionError
from dr.tasking import dr_task
from tasks.postgres.client import describe_conninfo, session
from tasks.postgres.models import SYSTEM

log = logging.getLogger(__name__)


#: Comment line written above every line this module adds to pg_hba.conf.
HBA_MARKER = "# dr-pipelines breach block"


#: How long a configuration reload may take to show in new sessions.
RELOAD_WAIT_SECONDS = 10.0


POLL_SECONDS = 0.05


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
    with session(conninfo, "read pg_hba_file_rules", statement_timeout_seconds=None) as conn:
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
    with session(conninfo, "reload configuration", statement_timeout_seconds=None) as conn:
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while True:
        with session(
            conninfo, "read configuration load time", statement_timeout_seconds=None
        ) as conn:
            loaded = conn.execute("SELECT pg_catalog.pg_conf_load_time()").fetchone()[0]  # type: ignore[index]
        if loaded > before:
            return rules
        if time.monotonic() > deadline:
            raise PostgresError(
                f"{describe_conninfo(conninfo)} did not reload its configuration within "
                f"{RELOAD_WAIT_SECONDS:g} s",
                transient=True,
            )
        time.sleep(POLL_SECONDS)


def _load_time(conninfo: str) -> datetime:
    with session(conninfo, "read configuration load time", statement_timeout_seconds=None) as conn:
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
    with session(conninfo, "find pg_hba.conf", statement_timeout_seconds=None) as conn:
        path = _hba_path(conn, hba_file)
    obj = f"{path} ({describe_conninfo(conninfo)})"
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


#: Comment written at the end of every rule a drill injects (see :func:`inject_hba_rules`).
DRILL_MARKER = "# dr-pipelines drill injection"


def inject_hba_rules(conninfo: str, rules: Sequence[str], *, reason: str) -> Change:
    """Drills: put ``rules`` above every other line of the node's pg_hba.conf, and reload.

    Why: a red twin must break one path for real (refuse the application's role, or let an
    old credential in); each rule ends with :data:`DRILL_MARKER` as a comment, so
    :func:`remove_hba_rules` takes out exactly these lines.

    Args:
        conninfo: a superuser connection to the node.
        rules: pg_hba lines (``host all dr_app all reject``).
        reason: written in the marker comment.

    Returns:
        A compensable Change (``updated``) with ``after["added"]``: the lines added.

    Raises:
        PreconditionError: the file is not on this machine, or cannot be rewritten.
        PostgresError: the server cannot be reached, the new file does not parse (it is then
            put back), or the reload did not happen.
    """
    with session(conninfo, "find pg_hba.conf", statement_timeout_seconds=None) as conn:
        path = _hba_path(conn, None)
    original = path.read_text()
    lines = original.splitlines()
    top = _first_rule_index(lines)
    # The marker on the rule's own line: a block inserted later cannot come between them.
    insert = [f"{rule}    {DRILL_MARKER} ({reason})" for rule in rules]
    before = _load_time(conninfo)
    _write_like(path, "\n".join(lines[:top] + insert + lines[top:]) + "\n")
    try:
        _reload_and_prove(conninfo, before, path)
    except Exception:
        _write_like(path, original)
        raise
    change = Change(
        system=SYSTEM,
        action="inject-hba-rules",
        object=f"{path} ({describe_conninfo(conninfo)})",
        outcome="updated",
        before={"hba_file": str(path)},
        after={"hba_file": str(path), "added": list(rules)},
        undo=f"remove the lines ending '{DRILL_MARKER} ...' from {path}; SELECT pg_reload_conf()",
        compensable=True,
    )
    log.info("%s", change.summary())
    return change


def remove_hba_rules(conninfo: str, change: Change) -> Change:
    """Remove the rules :func:`inject_hba_rules` added (only those) and reload; idempotent.

    Raises:
        PreconditionError: not an inject-hba-rules change, or the file cannot be rewritten.
        PostgresError: the server cannot be reached or did not reload.
    """
    if change.system != SYSTEM or change.action != "inject-hba-rules":
        raise PreconditionError(f"expected an inject-hba-rules change, got {change.action}")
    path = Path(str(change.after["hba_file"]))
    added = [rule.split() for rule in change.after.get("added", [])]
    text = path.read_text()
    lines = text.splitlines()
    drop = {
        i
        for i, line in enumerate(lines)
        if DRILL_MARKER in line and line.split("#", 1)[0].split() in added
    }
    if not drop:
        log.info("pg_hba %s: no drill rule left: unchanged", change.object)
        return Change(
            system=SYSTEM, action="remove-hba-rules", object=change.object, outcome="unchanged"
        )
    before = _load_time(conninfo)
    _write_like(path, "\n".join(line for i, line in enumerate(lines) if i not in drop) + "\n")
    try:
        _reload_and_prove(conninfo, before, path)
    except Exception:
        _write_like(path, text)
        raise
    result = Change(
        system=SYSTEM,
        action="remove-hba-rules",
        object=change.object,
        outcome="updated",
        before={"hba_file": str(path), "rules": change.after.get("added", [])},
        after={"hba_file": str(path)},
        compensable=False,
    )
    log.info("%s", result.summary())
    return result


# --------------------------------------------------------------------------- Prefect tasks

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
inject_hba_rules_task = dr_task(
    inject_hba_rules, name="postgres-inject-hba-rules", timeout_seconds=120
)
remove_hba_rules_task = dr_task(
    remove_hba_rules, name="postgres-remove-hba-rules", timeout_seconds=120
)
