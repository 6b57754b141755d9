"""The links between rows and objects, checked in the backups, not only on the live primary.

The live check (the primary's rows against the live objects) says nothing about whether a
restore would bring back a consistent pair: a dump whose rows name objects the files backup
does not hold loses those users' files, however healthy production is today. So each
database branch reads the linked rows from its restored scratch database while it exists
(:func:`read_scratch_link_rows`), and once the files backups are restored into the scratch
folder the two are compared (:func:`check_links_in_backups`): rows without their object and
checksum mismatches fail the check; objects without a row are reported only (``dr backup``
takes the files backup after the dumps, so it may hold objects uploaded since).

The red twin ``--inject missing-object`` leaves one linked object out of the restored copy
of the files backup (a file of the drill's scratch folder is removed; the real backup is
never written), so "link <name> consistent in the backups" must fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr.config import Target
from dr.errors import DRError, VerificationError
from flows.backup_verification.models import DatabaseVerification
from flows.common.state import files_entry, link_database
from flows.lifecycle import RunContext
from tasks.files.links import compare_restored_task, first_linked_object, read_link_rows_task
from tasks.postgres import client as postgres_client

__all__ = [
    "check_links_in_backups",
    "leave_out_one_object",
    "read_scratch_link_rows",
    "require_links",
]


def read_scratch_link_rows(
    target: Target, database: str, scratch: str, result: DatabaseVerification
) -> None:
    """Read every link's rows on ``database`` from its restored scratch copy into ``result``.

    A read that fails (the dump has no such table or column) is kept in
    ``result.link_errors``: the check in the backups then fails with it.
    """
    pgc = target.postgres
    first = pgc.databases[0]
    links = [link for link in target.links if (link.database or first) == database]
    if not links:
        return
    password = pgc.password.resolve() if pgc.password else None
    conn = postgres_client.conninfo(pgc.primary, user=pgc.user, dbname=scratch)
    for link in links:
        try:
            result.link_rows[link.name] = read_link_rows_task(
                link, conninfo=conn, password=password
            )
        except DRError as exc:
            result.link_errors[link.name] = str(exc)


def require_links(target: Target) -> None:
    """The missing-object twin needs a ``links:`` entry (refused before anything is done).

    Raises:
        VerificationError: the target declares no link between rows and objects.
    """
    if not target.links:
        raise VerificationError(
            "nothing to leave out: missing-object needs a links: entry (rows naming objects)"
        )


def leave_out_one_object(
    ctx: RunContext, rows: list[tuple[str, str | None]], link_name: str, folder: Path
) -> str | None:
    """The red twin: remove one linked object from the restored copy (never the backup)."""
    source = files_entry(ctx, _link(ctx, link_name).files)
    key = first_linked_object(rows, source, folder)
    if key is None:
        return None
    (folder / key).unlink()
    ctx.details["injection"] = {
        "injection": "missing-object",
        "link": link_name,
        "files": source.name,
        "key": key,
        "left_out_of": str(folder),
    }
    ctx.note(
        f"injected missing-object: {key} of files {source.name} left out of the restored "
        "copy of its backup (the real backup is untouched)"
    )
    return key


def _link(ctx: RunContext, name: str) -> Any:
    return next(link for link in ctx.target.links if link.name == name)


def _rows_for(
    ctx: RunContext, databases: list[DatabaseVerification], link_name: str
) -> tuple[list[tuple[str, str | None]] | None, str, bool]:
    """The rows of a link from its database's restored copy, else (None, why, critical)."""
    db = link_database(ctx, _link(ctx, link_name))
    own = [r for r in databases if r.source == "repository" and r.database == db]
    if not own:
        return None, f"not checked: no backup of ours of database {db} was restored", False
    found = own[0]
    if link_name in found.link_errors:
        return (
            None,
            f"rows not readable from the restored {db}: {found.link_errors[link_name]}",
            True,
        )
    if link_name not in found.link_rows:
        return None, f"not checked: the backup of {db} did not restore", False
    return found.link_rows[link_name], "", True


def check_links_in_backups(
    ctx: RunContext,
    databases: list[DatabaseVerification],
    restored: dict[str, Path],
    *,
    leave_out: bool = False,
) -> bool:
    """Check each link: rows of the restored database vs the restored files backup.

    Args:
        ctx: the run.
        databases: the database branches' results (their ``link_rows``).
        restored: files entry name -> the folder its backup was restored into (entries whose
            branch failed are absent).
        leave_out: the ``missing-object`` twin: one linked object removed first.

    Returns:
        False when a critical check failed (the files backups are then not marked verified).
    """
    ok = True
    out: list[dict[str, Any]] = []
    injected = not leave_out
    for link in ctx.target.links:
        label = f"link {link.name} consistent in the backups"
        rows, why, critical = _rows_for(ctx, databases, link.name)
        folder = restored.get(link.files)
        if rows is not None and folder is None:
            why, critical = f"not checked: files {link.files} backup did not restore", False
        if rows is None or folder is None:
            ctx.record_check(label, False, critical=critical, detail=why)
            out.append({"link": link.name, "error": why})
            ok = ok and not critical
            continue
        if not injected:
            injected = leave_out_one_object(ctx, rows, link.name, folder) is not None
        check = compare_restored_task(link, files_entry(ctx, link.files), rows, folder)
        ctx.record_check(label, check.passed, detail=check.sentence())
        out.append(check.model_dump(mode="json"))
        ok = ok and check.passed
    if not injected:
        ctx.record_check(
            "inject missing-object",
            False,
            detail="nothing to leave out: no restored row names an object of its files backup",
        )
        ok = False
    ctx.details["links_in_backups"] = out
    return ok
