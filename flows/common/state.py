"""The target's state beyond PostgreSQL, as every scenario handles it after a recovery.

A recovered database is not a recovered application: its caches still serve the values of
before (flush and warm them), and its rows name objects that may be gone (check the links).
Each cache and each link is a named parallel branch; each is recorded as a check, so the
run's report lists caches and files next to the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dr.config_state import CacheConfig, FileLink, FileSource
from flows.common.branches import Branches
from flows.lifecycle import RunContext
from tasks.cache.recover import recover_cache_task
from tasks.files.links import check_links_task

__all__ = [
    "check_target_links",
    "files_entry",
    "files_repository",
    "link_database",
    "recover_caches",
]


def files_entry(ctx: RunContext, name: str) -> FileSource:
    """The target's ``files:`` entry of that name (config validation guarantees it)."""
    return next(f for f in ctx.target.files if f.name == name)


def files_repository(ctx: RunContext, source: FileSource) -> str:
    """Where a ``files:`` entry's backups live: its own repository, else the target's."""
    return source.repository or str(ctx.target.backup.repository)


def link_database(ctx: RunContext, link: FileLink) -> str:
    """The database holding a link's table: its own, else the target's first."""
    return link.database or ctx.target.postgres.databases[0]


def _cache_database(ctx: RunContext, cache: CacheConfig) -> str:
    warm = cache.warm
    return (warm.database if warm is not None else None) or ctx.target.postgres.databases[0]


def recover_caches(
    ctx: RunContext, conninfo_for: Callable[[str], str], password: str | None
) -> list[dict[str, Any]]:
    """Flush, warm and sample every cache of the target, one parallel branch each.

    Args:
        ctx: the run.
        conninfo_for: a database name -> the recovered primary's conninfo for it.
        password: the PostgreSQL password for SQL warm-ups.

    Returns:
        One JSON-ready :class:`~tasks.cache.models.CacheRecovery` (or error) per cache,
        also kept in ``ctx.details["caches"]``.
    """
    caches = list(ctx.target.caches)
    if not caches:
        return []
    names = ", ".join(c.name for c in caches)
    if not ctx.plan("flush and warm caches", names):
        return []
    branches = Branches()
    for cache in caches:
        ci = conninfo_for(_cache_database(ctx, cache))
        branches.submit(
            f"cache-{cache.name}", recover_cache_task, cache, conninfo=ci, password=password
        )
    out: list[dict[str, Any]] = []
    for outcome in branches.collect():
        name = outcome.name.removeprefix("cache-")
        if outcome.ok:
            rec = outcome.value
            ctx.record_check(f"cache {name} recovered", rec.passed, detail=rec.sentence())
            out.append(rec.model_dump(mode="json"))
        else:
            ctx.record_check(f"cache {name} recovered", False, detail=outcome.detail)
            out.append({"cache": name, "error": outcome.detail})
    ctx.details["caches"] = out
    return out


def check_target_links(
    ctx: RunContext,
    conninfo_for: Callable[[str], str],
    password: str | None,
    *,
    when: str,
) -> list[dict[str, Any]]:
    """Check every ``links:`` entry (rows against objects, both ways), in parallel.

    Args:
        ctx: the run.
        conninfo_for: a database name -> the conninfo of the database to check.
        password: its PostgreSQL password.
        when: what the check follows (``after recovery``, ``after failover``, ...), for the
            check's name.

    Returns:
        One JSON-ready :class:`~tasks.files.links.LinkCheck` (or error) per link, also kept
        in ``ctx.details["links"]``.
    """
    links = list(ctx.target.links)
    if not links:
        return []
    if not ctx.plan("check links between rows and objects", ", ".join(x.name for x in links)):
        return []
    branches = Branches()
    for link in links:
        branches.submit(
            f"link-{link.name}",
            check_links_task,
            link,
            files_entry(ctx, link.files),
            conninfo=conninfo_for(link_database(ctx, link)),
            password=password,
            aws=ctx.config.aws,
        )
    out: list[dict[str, Any]] = []
    for outcome in branches.collect():
        name = outcome.name.removeprefix("link-")
        label = f"link {name} consistent {when}"
        if outcome.ok:
            ctx.record_check(label, outcome.value.passed, detail=outcome.value.sentence())
            out.append(outcome.value.model_dump(mode="json"))
        else:
            ctx.record_check(label, False, detail=outcome.detail)
            out.append({"link": name, "error": outcome.detail})
    ctx.details.setdefault("links", []).extend(out)
    return out
