"""Files and objects of a breached target: kept as evidence, then back to before the intrusion.

The runbook (000 §6.1 "restore clean", 001 §4): what an intruder could write, the uploads
included, goes back to the moment before the intrusion (``restore_to``, the moment the
tables go back to). For each S3 ``files:`` entry (``restore_files``):

1. drills only, when the intruder is planted (:func:`damage_drill_objects`): one object
   overwritten, one deleted, one planted, after the point, as a recorded change whose undo
   puts them back (a drill that ends early leaves no damage);
2. with the evidence, before anything is remediated (:func:`files_evidence_step`): every
   object changed since the point, its current bytes saved into the evidence bundle
   (write-once, with its SHA-256) and its version ids listed;
3. after the tables are restored (:func:`restore_files`): each key back to its version
   before the point, from the bucket's versions; what it replaces, and every object created
   since, is first copied to an evidence prefix beside the source. Objects created since are
   taken out of the live prefix, except those a row of the (restored) tables still names:
   taking those away would lose users' files the database says exist;
4. the proof: the prefix compared with its state at the point again; only the objects kept
   for their rows may differ. In drills, the planted object must be gone from the live
   prefix and kept as evidence. The red twin ``object-survives`` skips the restore of the
   overwritten object, so this proof must fail.

Nothing is deleted for good: every replaced version stays in the bucket's history too.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from dr.changes import Change
from dr.clock import utcnow
from dr.config_state import FileSource
from dr.errors import DRError
from flows.breach_response.state import BreachRun, iso
from tasks.files.changes import changes_since_task, save_changed_objects_task
from tasks.files.client import split_s3_url
from tasks.files.drill import intrude_objects_task
from tasks.files.links import read_link_rows_task, relative_key, source_prefix
from tasks.files.restore import restore_prefix_to_time_task

__all__ = [
    "VERSION_CLOCK_SLACK",
    "damage_drill_objects",
    "files_evidence_step",
    "restore_files",
    "undo_drill_damage",
]

#: S3 may report LastModified to the second: the drill's damage waits this long after the
#: point, so no damaged version looks older than the point restored to.
VERSION_CLOCK_SLACK = timedelta(seconds=1.1)


def evidence_url(run: BreachRun, source: FileSource) -> str:
    """Where replaced objects are copied: beside the source prefix, never inside it."""
    assert source.s3 is not None
    tail = f"dr-evidence/{run.pf.target_name}/breach-response/{run.short}/{source.name}/"
    bucket, prefix = split_s3_url(source.s3)
    repo = run.target.evidence_repository
    if not prefix and repo and str(repo).startswith("s3://"):
        return f"{str(repo).rstrip('/')}/{tail}"
    return f"s3://{bucket}/{tail}"


def damage_drill_objects(run: BreachRun) -> None:
    """Drills: the intruder's writes to each entry, after the point (see the module, step 1)."""
    ctx = run.ctx
    if not run.pf.files or run.restore_to is None:
        return
    aws = ctx.config.aws
    wait = (run.restore_to + VERSION_CLOCK_SLACK - utcnow()).total_seconds()
    time.sleep(max(0.0, wait))
    for source in run.pf.files:
        if not ctx.plan("overwrite, delete and plant", f"objects of files {source.name} (drill)"):
            continue
        planted = f"dr-drill-planted-{run.short}.bin"
        damage = intrude_objects_task(source, planted, aws=aws)
        before = run.restore_to
        run.record(
            Change(
                system="s3",
                action="intruder-objects",
                object=f"files {source.name}: {', '.join(f'{k} {v}' for k, v in damage.items())}",
                outcome="changed",
                before={"versions_before": iso(before)},
                undo=f"restore files {source.name} to its versions before {iso(before)}",
            ),
            lambda source=source, damage=damage: _undo_damage(run, source, damage),
        )
        run.files_damage[source.name] = damage
    run.info["files_drill_damage"] = run.files_damage


def undo_drill_damage(run: BreachRun) -> None:
    """Drill cleanup: whatever of the drill's object damage is left is put back (the red
    twin leaves its skipped object damaged; a drill that failed early leaves it all)."""
    for name, damage in run.files_damage.items():
        source = next(s for s in run.pf.files if s.name == name)
        try:
            result = _undo_damage(run, source, damage)
        except DRError as exc:
            run.ctx.record_check(f"drill: files {name} damage undone", False, detail=str(exc))
            continue
        run.ctx.record_check(
            f"drill: files {name} damage undone",
            True,
            critical=False,
            detail=f"{len(result.restored)} put back, {len(result.removed)} taken out",
        )


def _undo_damage(run: BreachRun, source: FileSource, damage: dict[str, str]) -> Any:
    """The drill's damage undone: the objects it touched back, the planted one out (kept as
    evidence), no other key looked at (the application may be writing again)."""
    assert run.restore_to is not None
    return restore_prefix_to_time_task(
        source,
        run.restore_to,
        evidence=evidence_url(run, source),
        remove_newer=True,
        only=set(damage.values()),
        aws=run.ctx.config.aws,
    )


def files_evidence_step(run: BreachRun, scratch: Path) -> tuple[Any, Any]:
    """The evidence step for the files: every change since the point, bytes in the bundle."""
    assert run.restore_to is not None
    futures = {
        s.name: save_changed_objects_task.submit(
            s, run.restore_to, scratch / "files" / s.name, aws=run.ctx.config.aws
        )
        for s in run.pf.files
    }

    def file_result(found: dict[str, list[dict[str, Any]]]) -> int:
        assert run.bundle is not None
        count = 0
        for name, changes in found.items():
            source = next(s for s in run.pf.files if s.name == name)
            where = source.location.rstrip("/") + "/"
            for row in changes:
                local = row.pop("local", None)
                if local is not None:
                    row["bundle_path"] = f"files/{name}/objects/{row['key']}"
                    run.bundle.add_file(
                        row["bundle_path"], Path(local), kind="object",
                        source=f"{where}{row['key']} version {row['version_id']}",
                        description=f"{row['change']} since {iso(run.restore_to)}",
                    )  # fmt: skip
                    count += 1
            run.bundle.add_json(
                f"files/{name}/changes.json", changes, kind="object-changes", source=where,
                description=f"objects changed since {iso(run.restore_to)}, with version ids",
            )  # fmt: skip
            run.files_evidence[name] = {row["key"]: row for row in changes}
        run.info["files_evidence"] = run.files_evidence
        return count

    return _Together(futures), file_result


class _Together:
    """Several entries' futures as one evidence step (one result: name -> its changes)."""

    def __init__(self, futures: dict[str, Any]) -> None:
        self.futures = futures

    def result(self) -> dict[str, Any]:
        return {name: fut.result() for name, fut in self.futures.items()}


def _linked_keys(run: BreachRun, source: FileSource) -> set[str]:
    """Keys the rows of the (restored) tables name, for every link to this entry."""
    prefix = source_prefix(source)
    first = run.pgc.databases[0]
    keys: set[str] = set()
    for link in run.target.links:
        if link.files != source.name:
            continue
        conninfo = run.ci(run.pgc.primary, link.database or first)
        rows = read_link_rows_task(link, conninfo=conninfo)
        keys |= {relative_key(key, prefix) for key, _ in rows}
    return keys


def restore_files(run: BreachRun) -> None:
    """Each S3 entry back to ``restore_to`` from versions, then proven (module steps 3-4)."""
    ctx = run.ctx
    names = ", ".join(s.name for s in run.pf.files)
    if run.restore_to is None:  # a dry run of a drill: the point is stamped when planting
        ctx.approve(f"restore files {names} to just before the intrusion")
        ctx.plan("restore", f"files {names} from object versions (changed ones kept aside)")
        return
    ctx.approve(f"restore files {names} to {iso(run.restore_to)}")
    if not ctx.plan("restore", f"files {names} to {iso(run.restore_to)} from object versions"):
        return
    for source in run.pf.files:
        try:
            _restore_one(run, source)
        except DRError as exc:
            ctx.record_check(f"files {source.name} restored", False, detail=str(exc))
    run.info["files_restore"] = run.files_restored


def _restore_one(run: BreachRun, source: FileSource) -> None:
    ctx, aws = run.ctx, run.ctx.config.aws
    assert run.restore_to is not None
    keep = _linked_keys(run, source)
    damage = run.files_damage.get(source.name, {})
    skip = [damage["overwritten"]] if run.opts.inject == "object-survives" and damage else []
    if skip:
        ctx.note(f"injected object-survives: the restore of {skip[0]} is skipped")
    result = restore_prefix_to_time_task(
        source, run.restore_to, evidence=evidence_url(run, source), remove_newer=True,
        keep_newer=keep, skip=skip, aws=aws,
    )  # fmt: skip
    kept = [k for k in result.newer if k not in result.removed]
    run.record(
        Change(
            system="s3",
            action="restore-prefix",
            object=f"files {source.name} ({source.s3})",
            outcome="updated" if result.restored or result.removed else "unchanged",
            before={"restore_to": iso(run.restore_to)},
            after={"restored": result.restored, "removed": result.removed, "kept": kept},
            undo="every replaced object is kept at its evidence copy and in the bucket's "
            "version history",
            compensable=False,
        )
    )
    for key, url in result.evidence.items():
        run.files_evidence.setdefault(source.name, {}).setdefault(key, {"key": key})["kept_at"] = (
            url
        )
    run.info["files_evidence"] = run.files_evidence
    ctx.record_check(f"files {source.name} restored", True, detail=result.sentence())
    summary = result.model_dump(mode="json") | {"kept_for_rows": kept}
    run.files_restored.append(summary)
    _prove(run, source, keep, result)


def _prove(run: BreachRun, source: FileSource, keep: set[str], result: Any) -> None:
    """The prefix is as at the point, but for objects kept for their rows; drills: the
    planted object is out of the live prefix and kept as evidence."""
    ctx = run.ctx
    assert run.restore_to is not None
    left = changes_since_task(source, run.restore_to, aws=ctx.config.aws)
    differ = [c for c in left if not (c.change == "created" and c.key in keep)]
    if differ:
        listed = ", ".join(f"{c.key} ({c.change})" for c in differ[:10])
        detail = f"STILL CHANGED since {iso(run.restore_to)}: {listed}"
    else:
        detail = f"every object at its version before {iso(run.restore_to)}" + (
            f"; {len(left)} newer kept for their rows" if left else ""
        )
    ctx.record_check(f"files {source.name} as before the intrusion", not differ, detail=detail)
    planted = run.files_damage.get(source.name, {}).get("planted")
    if planted is None:
        return
    gone = planted in result.removed and planted not in {c.key for c in left}
    kept_at = result.evidence.get(planted)
    ctx.record_check(
        f"drill: files {source.name} planted object gone, kept as evidence",
        gone and kept_at is not None,
        detail=f"{planted}: {'gone from the live prefix' if gone else 'STILL LIVE'}; "
        f"evidence copy {kept_at or 'MISSING'}",
    )
