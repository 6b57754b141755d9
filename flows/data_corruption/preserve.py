"""Preserve the damaged state as evidence (dump or database copy) before recovering."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dr.changes import Change
from dr.errors import PostgresError
from flows.data_corruption.run import CorruptionRun, iso, mkdir_traversable
from tasks.pitr import relation_restore
from tasks.postgres import admin as postgres_admin
from tasks.postgres import client as postgres_client

__all__ = ["preserve"]


def preserve(run: CorruptionRun) -> None:
    """Keep the damaged state (dump, or a copy of the database) in the evidence repository."""
    ctx = run.ctx
    repo, prefix = run.evidence()
    with ctx.phase("preserve evidence", detail=repo.url_for(prefix)) as record:
        items: dict[str, Any] = {}
        local = run.work / "evidence"
        if (
            run.damaged
            and not run.opts.whole_database
            and ctx.plan("dump", f"damaged relations {run.damaged} of {run.db}")
        ):
            mkdir_traversable(local)
            try:
                dump = relation_restore.dump_relations_task(
                    run.tool_conninfo(),
                    run.damaged,
                    local / f"{run.db}-damaged-relations.dump",
                    bin_dir=run.bin_dir,
                    password=run.password,
                )
                items["dump"] = _put_evidence(
                    run, repo, f"{prefix}/{Path(dump['path']).name}", Path(dump["path"])
                )
            except PostgresError as exc:
                ctx.note(f"pg_dump of the damaged relations failed ({exc}); keeping the database")
                items["database_copy"] = _keep_database(run)
        elif (run.opts.whole_database or not run.damaged) and ctx.plan(
            "keep", f"database {run.db} as {run.db}_damaged_{run.run_id.lower()}"
        ):
            items["database_copy"] = _keep_database(run)
        if run.damaged_copy is not None and run.checksum_report is not None:
            for bad in run.checksum_report.bad_blocks[:3]:
                path = Path(bad.path)
                items.setdefault("damaged_files", []).append(
                    _put_evidence(run, repo, f"{prefix}/files/{bad.relpath}", path)
                )
        if ctx.dry_run:
            return
        report = {
            "run": run.run_id,
            "target": ctx.target_name,
            "database": run.db,
            "damaged_relations": run.damaged,
            "damage_began_at": iso(run.damage_at or run.suspected_at),
            "damage_commit_lsn": run.damage_lsn or run.suspected_lsn,
            "candidates": [c.model_dump(mode="json") for c in run.candidates[:10]],
            "pg_checksums": run.checksum_report.model_dump(mode="json")
            if run.checksum_report
            else None,
            "items": items,
        }
        path = mkdir_traversable(local) / "assessment.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        items["assessment"] = _put_evidence(run, repo, f"{prefix}/assessment.json", path)
        run.details["evidence"] = {"location": repo.url_for(prefix), **items}
        record.detail = f"{len(items)} item(s) in {repo.url_for(prefix)}"


def _put_evidence(run: CorruptionRun, repo: Any, key: str, path: Path) -> dict[str, Any]:
    result = repo.put_file(key, path, write_once=True)
    run.ctx.record_change(
        Change(
            system="storage",
            action="put-evidence",
            object=result.url,
            outcome="created" if result.outcome == "created" else "unchanged",
            after={"sha256": result.sha256, "bytes": result.size, "lock": result.lock_mode},
            undo="evidence is kept on purpose",
            compensable=False,
        )
    )
    return {"url": result.url, "sha256": result.sha256, "bytes": result.size}


def _keep_database(run: CorruptionRun) -> dict[str, Any]:
    name = f"{run.db}_damaged_{run.run_id.lower()}"[:63]
    maintenance = run.conninfo(run.pgc.maintenance_db)
    last: Exception | None = None
    for _ in range(5):
        postgres_admin.terminate_sessions_task(maintenance, dbname=run.db)
        try:
            change = relation_restore.preserve_database_copy_task(maintenance, run.db, name)
            break
        except PostgresError as exc:  # a session slipped in between: try again
            last = exc
            time.sleep(0.5)
    else:
        raise PostgresError(f"could not keep {run.db} as {name}: {last}")
    run.ctx.record_change(change)
    return {"database": name, "server": postgres_client.describe_conninfo(maintenance)}
