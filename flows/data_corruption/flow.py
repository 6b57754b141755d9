"""Data corruption, the runbook: phases top to bottom."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from dr.config import Mode, Scenario
from flows.data_corruption.assess import assess
from flows.data_corruption.drill import inject
from flows.data_corruption.options import CorruptionOptions
from flows.data_corruption.pitr import recover, verify_recovered
from flows.data_corruption.plan import plan, validate
from flows.data_corruption.preserve import preserve
from flows.data_corruption.prove import clean_up, measure, verify_end_to_end
from flows.data_corruption.resume import finish_interrupted
from flows.data_corruption.run import CorruptionRun
from flows.data_corruption.state import damage_state, recover_state
from flows.data_corruption.switch import heartbeat, repair_old_primary, switch
from flows.data_corruption.writers import restart_writers, stop_writers
from flows.lifecycle import RunContext, run_scenario

__all__ = ["data_corruption_flow", "run_phases"]


def run_phases(ctx: RunContext, opts: CorruptionOptions) -> None:
    """The runbook, phase by phase (each step opens its own phase)."""
    run = CorruptionRun(ctx, opts)
    ctx.details.update(
        {"variant": opts.variant.value if ctx.is_drill else None, "database": run.db}
    )
    with ctx.phase("validate", detail="parameters and target"):
        validate(run)
    try:
        if ctx.is_drill:
            inject(run)  # phases "prepare drill", "inject damage"
            damage_state(run)  # phase "damage caches and files"
        assess(run)
        if finish_interrupted(run):  # an interrupted run repaired it, left the writers stopped
            return
        target, backup, wal = plan(run)
        stop_writers(run)
        preserve(run)
        recover(run, target, backup, wal)
        verify_recovered(run)
        if run.recovered is not None:
            run.details["recovered_heartbeat"] = {
                w: s["max_ts"].isoformat()
                for w, s in heartbeat(run.recovered_conninfo(run.pgc.heartbeat_db)).items()
            }
        switch(run)
        recover_state(run)  # phase "caches, files and links"
        restart_writers(run)
        healthy_at = verify_end_to_end(run)
        measure(run, healthy_at)
        if ctx.is_drill and run.switched_whole:
            repair_old_primary(run)
        clean_up(run)
    except Exception:
        # A failed run keeps its work folder (the recovered cluster and evidence) for people;
        # only the drill's stopped copy is removed by compensation.
        ctx.details["work_dir"] = str(run.work)
        raise
    finally:
        run.systems.close()


@flow(name="data-corruption")
def data_corruption_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: CorruptionOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV2",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Recover from data corruption or deletion by point-in-time recovery; measure it.

    Args:
        target: a target of the config.
        mode: ``drill`` (injects the damage on the lab), ``incident`` or ``dry-run``.
        options: the drill's damage, the recovery point, the relations to restore, ...
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: recorded in the report; may auto-approve gates by policy.
        fail_flow: end the flow run Failed when the outcome is not passed.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details`` holds the
        assessment, the recovery plan and timings, the evidence and the measurements.
    """
    opts = options or CorruptionOptions()
    result = run_scenario(
        Scenario.data_corruption,
        target,
        mode,
        lambda ctx: run_phases(ctx, opts),
        config_path=config_path,
        severity=opts.severity or severity,
        options=opts.model_dump(mode="json", exclude_none=True),
        fail_flow=fail_flow,
    )
    return json.loads(result.model_dump_json())
