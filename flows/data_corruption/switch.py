"""Switch: restore the damaged relations from the recovered cluster, or move the writers."""

from __future__ import annotations

from typing import Any

from dr.changes import Change
from flows.data_corruption.options import HEARTBEAT_TABLE, PROBE_PREFIX
from flows.data_corruption.run import CorruptionRun
from flows.data_corruption.writers import repoint_writers
from tasks.pitr import relation_restore
from tasks.pitr import relations as pitr_relations
from tasks.postgres import heartbeat as postgres_heartbeat

__all__ = ["heartbeat", "repair_old_primary", "switch"]


def heartbeat(conninfo: str) -> dict[str, dict[str, Any]]:
    """Each application writer's heartbeat state (the drill probe's rows left out)."""
    state = postgres_heartbeat.heartbeat_state_task(conninfo, HEARTBEAT_TABLE)
    return {w: s for w, s in state.items() if not w.startswith(PROBE_PREFIX)}


def switch(run: CorruptionRun) -> None:
    """After approval: restore the damaged relations in one transaction, or move the writers."""
    ctx = run.ctx
    whole = run.opts.whole_database or not run.damaged
    hb_db = run.pgc.heartbeat_db
    if run.recovered is not None:
        run.heartbeat_before_switch = heartbeat(run.conninfo(hb_db))
    if whole:
        step = f"switch the application to the recovered cluster (whole database {run.db})"
    else:
        step = f"replace {', '.join(run.damaged)} in the live {run.db} with the recovered rows"
    ctx.approve(step)
    with ctx.phase("switch", detail=step) as record:
        if run.recovered is None:
            ctx.plan("switch", step)
            return
        if whole:
            r = run.recovered
            repoint_writers(run, run.opts.recovered_host, r.port)
            run.switched_whole = True
            ctx.note(
                f"the application now uses the recovered cluster {run.opts.recovered_host}:"
                f"{r.port} ({r.data_dir}); update dr.yaml's primary. The old primary keeps the "
                "damaged database; nothing was dropped. The recovered cluster archives no WAL "
                "yet: give it its own archive folder before relying on point-in-time recovery."
            )
            record.detail = f"writers repointed to {run.opts.recovered_host}:{r.port}"
            return
        if not ctx.plan("restore", f"{run.damaged} from the recovered cluster in one transaction"):
            return
        # What the live tables hold before the restore: measure counts what it discards.
        run.rows_before_switch = pitr_relations.row_hashes_task(run.conninfo(), run.damaged)
        result = relation_restore.restore_relations_task(
            run.recovered_conninfo(), run.conninfo(), run.damaged
        )
        ctx.record_change(
            Change(
                system="postgres",
                action="restore-relations",
                object=f"{', '.join(run.damaged)} in {run.db}",
                outcome="updated",
                after={
                    rel: {"rows": d.rows, "digest": d.digest} for rel, d in result.relations.items()
                },
                undo="the previous (damaged) rows are in the evidence dump",
                compensable=False,
            )
        )
        run.details["relation_restore"] = result.model_dump(mode="json")
        record.detail = (
            f"{sum(d.rows for d in result.relations.values())} rows in one transaction in "
            f"{result.seconds:.2f} s; foreign keys re-validated: "
            f"{', '.join(result.constraints_recreated) or 'none'}"
        )


def repair_old_primary(run: CorruptionRun) -> None:
    """Drill after a whole-database switch: put the recovered rows back on the old primary.

    The switch itself stays (the application keeps writing to the recovered cluster); this
    only makes the lab's old primary whole again, so that moving the application back to it
    later (``dr lab heal``) finds the data as it was. The damage stays preserved in the
    kept database copy.
    """
    ctx = run.ctx
    with ctx.phase("repair drill damage on the old primary", detail=", ".join(run.damaged)):
        if not run.damaged or run.recovered is None:
            return
        # What the live tables hold before the restore: measure counts what it discards.
        run.rows_before_switch = pitr_relations.row_hashes_task(run.conninfo(), run.damaged)
        result = relation_restore.restore_relations_task(
            run.recovered_conninfo(), run.conninfo(), run.damaged
        )
        ctx.record_change(
            Change(
                system="postgres",
                action="repair-drill-damage",
                object=f"{', '.join(run.damaged)} in {run.db} on the old primary",
                outcome="updated",
                after={rel: d.rows for rel, d in result.relations.items()},
                undo="nothing to undo: the old primary holds the rows of the recovery point",
                compensable=False,
            )
        )
        ctx.note(
            f"drill: the old primary's {', '.join(run.damaged)} were reloaded from the recovered "
            "cluster, so the lab can be switched back (dr lab heal) without the damage"
        )
