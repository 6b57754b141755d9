"""Beyond the tables: caches, files and the links between rows and objects.

The runbook (000 §3.2-3.3): after the database is back, flush the caches (they still serve
the damaged values), restore the uploads to just before the damage and check that every
row's object is there with its checksum. The damaged objects are kept as evidence, like
the damaged tables. In a drill, :func:`damage_state` first plants a stale cache value and
overwrites some linked objects, so the recovery has something to prove.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config_state import CacheConfig, FileSource
from flows.common.branches import Branches
from flows.common.state import check_target_links, files_entry, files_repository, recover_caches
from flows.data_corruption.run import CorruptionRun, iso
from tasks.cache.probe import plant_value_task, read_value_task
from tasks.files.client import split_s3_url
from tasks.files.drill import damage_objects_task
from tasks.files.restore import restore_from_backup_task, restore_prefix_to_time_task

__all__ = ["damage_state", "recover_state", "stale_key"]

#: What the drill plants in every cache before the damage (it must be gone afterwards).
STALE_VALUE = "stale: planted by the data-corruption drill before the damage"
#: S3 may report LastModified to the second: object damage waits this long after the rows'
#: damage, so no damaged version looks older than the point restored to.
VERSION_CLOCK_SLACK = timedelta(seconds=1.1)
#: The planted stale value expires by itself after this long (a drill is over by then).
STALE_TTL_SECONDS = 3600


def stale_key(cache: CacheConfig, run_id: str) -> str:
    """A key the cache's flush removes: under its first pattern when it flushes by pattern."""
    name = f"dr-drill-stale-{run_id.lower()}"
    if cache.after_recovery.flush == "patterns":
        return cache.after_recovery.patterns[0].replace("*", name, 1)
    return name


def _linked_s3_files(run: CorruptionRun) -> list[FileSource]:
    names = {link.files for link in run.target.links}
    return [f for f in run.target.files if f.name in names and f.s3 is not None]


def damage_state(run: CorruptionRun) -> None:
    """Drill: plant a stale value in every cache and overwrite some objects rows link to."""
    ctx = run.ctx
    caches, files = list(run.target.caches), _linked_s3_files(run)
    if not (caches or files):
        return
    with ctx.phase("damage caches and files", detail="stale cache values, overwritten objects"):
        if not ctx.plan("plant stale values and overwrite objects", f"{len(files)} entries"):
            return
        planted: dict[str, str] = {}
        for cache in caches:
            key = stale_key(cache, run.run_id)
            # A TTL: a drill that ends early leaves no stale value behind for long.
            plant_value_task(cache, key, STALE_VALUE, ttl_seconds=STALE_TTL_SECONDS)
            planted[cache.name] = key
        if files and run.damage_at is not None:
            time.sleep(max(0.0, (run.damage_at + VERSION_CLOCK_SLACK - utcnow()).total_seconds()))
        damaged = {f.name: _damage_objects(run, f) for f in files}
        run.details["drill_state"] = {"stale_cache_keys": planted, "damaged_objects": damaged}
        for name, keys in damaged.items():
            ctx.note(f"drill: overwrote {len(keys)} object(s) of files {name}: {', '.join(keys)}")


def _damage_objects(run: CorruptionRun, source: FileSource) -> list[str]:
    """Overwrite some objects, recorded as a change whose undo restores their versions.

    A drill that is refused or fails before its recovery must not leave the damage behind:
    the next drill would find it in every version before its own damage point and could not
    repair it.
    """
    ctx = run.ctx
    before = utcnow()
    time.sleep(VERSION_CLOCK_SLACK.total_seconds())  # S3 may stamp versions to the second
    keys = damage_objects_task(source, aws=ctx.config.aws)
    change = Change(
        system="s3",
        action="overwrite-objects",
        object=f"files {source.name}: {', '.join(keys)}",
        outcome="changed",
        before={"versions_before": before.isoformat()},
        undo=f"restore files {source.name} to its versions before {before.isoformat()}",
    )
    ctx.record_change(
        change,
        undo=lambda: restore_prefix_to_time_task(
            source, before, evidence=_evidence_url(run, source), aws=ctx.config.aws
        ),
    )
    return keys


def _evidence_url(run: CorruptionRun, source: FileSource) -> str:
    """Where replaced objects are kept: beside the source prefix, never inside it."""
    tail = f"dr-evidence/{run.ctx.target_name}/data-corruption/{run.run_id}/{source.name}/"
    if source.s3 is not None:
        bucket, prefix = split_s3_url(source.s3)
        evidence = run.target.evidence_repository
        if not prefix and evidence and str(evidence).startswith("s3://"):
            return f"{str(evidence).rstrip('/')}/{tail}"
        return f"s3://{bucket}/{tail}"
    return str(run.work / tail)


def _files_to_restore(run: CorruptionRun) -> list[FileSource]:
    """Drills restore what they damaged; incidents every entry."""
    if run.ctx.is_drill:
        damaged = (run.details.get("drill_state") or {}).get("damaged_objects") or {}
        return [files_entry(run.ctx, name) for name in damaged]
    return list(run.target.files)


def _submit_file_restores(run: CorruptionRun, before: datetime | None) -> Branches:
    branches = Branches()
    aws = run.ctx.config.aws
    for source in _files_to_restore(run):
        evidence = _evidence_url(run, source)
        if source.s3 is not None and before is not None:
            branches.submit(
                f"files-{source.name}", restore_prefix_to_time_task, source, before,
                evidence=evidence, aws=aws,
            )  # fmt: skip
        else:
            branches.submit(
                f"files-{source.name}", restore_from_backup_task, source,
                files_repository(run.ctx, source), evidence=evidence, aws=aws,
            )  # fmt: skip
    return branches


def _record_file_restores(run: CorruptionRun, branches: Branches) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for outcome in branches.collect():
        name = outcome.name.removeprefix("files-")
        if outcome.ok:
            run.ctx.record_check(f"files {name} restored", True, detail=outcome.value.sentence())
            out.append(outcome.value.model_dump(mode="json"))
        else:
            run.ctx.record_check(f"files {name} restored", False, detail=outcome.detail)
            out.append({"source": name, "error": outcome.detail})
    run.details["files"] = out
    return out


def _check_stale_gone(run: CorruptionRun) -> None:
    planted = (run.details.get("drill_state") or {}).get("stale_cache_keys") or {}
    for cache in run.target.caches:
        key = planted.get(cache.name)
        if key is None:
            continue
        value = read_value_task(cache, key)
        run.ctx.record_check(
            f"cache {cache.name}: stale value gone",
            value is None,
            detail=f"{key}: {'gone' if value is None else 'STILL SERVED'} after the recovery",
        )


def _files_point(run: CorruptionRun) -> datetime | None:
    """Objects go back to just before the damage: known, suspected, else the recovery time."""
    if run.damage_at is not None or run.suspected_at is not None:
        return run.damage_at or run.suspected_at
    at = ((run.details.get("recovery_plan") or {}).get("target") or {}).get("time")
    return datetime.fromisoformat(at) if at else None


def recover_state(run: CorruptionRun) -> None:
    """Files restored and caches recovered in parallel, then the links checked on the primary."""
    ctx = run.ctx
    target = run.target
    if not (target.caches or target.files or target.links):
        return
    before = _files_point(run)
    with ctx.phase("caches, files and links", detail=f"files to {iso(before) or 'a backup'}"):
        if not ctx.plan("restore files, flush and warm caches", f"{len(target.files)} entries"):
            return
        files = _submit_file_restores(run, before)
        recover_caches(ctx, run.conninfo, run.password)
        _record_file_restores(run, files)
        _check_stale_gone(run)
        check_target_links(ctx, run.conninfo, run.password, when="after recovery")
