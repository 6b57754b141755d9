"""Region failover, the runbook: phases top to bottom."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from prefect import flow

from dr.config import Mode, Scenario
from dr.errors import PreconditionError
from flows.lifecycle import RunContext, run_scenario
from flows.region_failover import fence as fencing
from flows.region_failover.assess import assess, record_assessment
from flows.region_failover.choose import choose, lag_gate
from flows.region_failover.drill import inject, lift_injection, preflight
from flows.region_failover.fail_back import fail_back
from flows.region_failover.measure import measure
from flows.region_failover.options import FailoverOptions
from flows.region_failover.promote import promote
from flows.region_failover.repoint import repoint
from flows.region_failover.run import Failover
from flows.region_failover.state import recover_state
from flows.region_failover.verify import verify

__all__ = ["region_failover_flow", "run_runbook"]


def run_runbook(run: Failover) -> None:
    """The runbook, phase by phase."""
    ctx = run.ctx
    if ctx.is_drill:
        with ctx.phase("preflight", detail="a healthy replica exists before anything breaks"):
            preflight(run)
        with ctx.phase("inject failure", detail=f"{run.opts.inject} the primary"):
            inject(run)
    with ctx.phase("assess", detail="nodes, replicas, application and DR region, in parallel"):
        a = assess(run)
        run.assessment = a
        record_assessment(run, a)
        run.mark("assessed")
        ctx.severity = run.opts.severity or a.severity
        ctx.note(f"severity {ctx.severity}: {a.severity_reason}")
    run.old = run.node(a.old_primary)
    with ctx.phase("choose replica", detail="least data loss, then region"):
        choice = choose(run, a)
        run.details["choice"] = choice.model_dump(mode="json")
        if choice.chosen is None:
            raise PreconditionError(f"nothing changed: {choice.reason}")
        run.choice = choice
        ctx.record_check("replica chosen", True, detail=choice.reason, value=choice.chosen)
        lag_gate(run, choice)
    with ctx.phase("fence old primary", detail=f"{run.old.name} must take no writes"):
        fencing.fence(run, run.old)
        run.mark("fenced")
        if a.nodes[a.old_primary].state == "primary" and not ctx.dry_run:
            # It was alive: replicas may have received more until it stopped. Choose again.
            run.assessment = assess(run, a.old_primary)
            choice = choose(run, run.assessment)
            if choice.chosen is None:
                raise PreconditionError(f"after fencing: {choice.reason}")
            run.choice = choice
            run.details["choice"] = choice.model_dump(mode="json")
    run.new = run.node(run.choice.chosen)  # type: ignore[arg-type]
    with ctx.phase("promote", detail=f"{run.new.name} becomes the primary"):
        promote(run, run.new)
    with ctx.phase("repoint", detail="application, DNS and DR-region services, in parallel"):
        repoint(run, run.new)
    with ctx.phase("verify", detail=f"the application writes to {run.new.name}"):
        verify(run, run.new)
    recover_state(run, run.new)  # phase "caches and links"
    with ctx.phase("measure", detail="RTO, RPO and their breakdown"):
        measure(run, run.new)
    run.details["old_primary"] = run.old.name
    run.details["new_primary"] = run.new.name


def _runbook_then_lift(run: Failover) -> None:
    """The runbook; a red twin's injection is lifted before any failback, even when red."""
    try:
        run_runbook(run)
    finally:
        lift_injection(run)


def _make_body(opts: FailoverOptions) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        run = Failover(ctx, opts)
        try:
            try:
                _runbook_then_lift(run)
            except Exception:
                if ctx.is_drill and run.promoted and run.wants_failback:
                    # Leave the lab usable even after a failed drill: rejoin and switch back.
                    ctx.note("the drill failed after promotion: failing back anyway")
                    with (
                        contextlib.suppress(Exception),
                        ctx.phase("failback", detail="after a failure"),
                    ):
                        fail_back(run)
                raise
            if run.wants_failback and not ctx.dry_run:
                with ctx.phase("failback", detail="rejoin the old primary, switch roles back"):
                    fail_back(run)
            elif ctx.dry_run and run.wants_failback:
                ctx.plan("fail back", "rejoin the old primary as a standby and switch back")
        finally:
            run.systems.close()

    return body


@flow(name="region-failover")
def region_failover_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: FailoverOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV1",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Fail a target over to its best replica, verify the application, measure RTO and RPO.

    Args:
        target: a target of the config.
        mode: ``drill`` (inject the failure, recover, fail back), ``incident`` (recover from a
            real failure; approval gates apply) or ``dry-run`` (assess and print the plan).
        options: how to inject, fence, choose, promote and verify (each field says).
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: the initial severity (the flow declares its own after assessing, unless
            ``options.severity`` is given).
        fail_flow: end the flow run Failed when the outcome is not ``passed``.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details.failover`` holds the
        assessment, the choice, the fence proofs, ``rto_breakdown`` and ``rpo``;
        ``details.failback`` the failback report.
    """
    opts = options or FailoverOptions()
    result = run_scenario(
        Scenario.region_failover,
        target,
        mode,
        _make_body(opts),
        config_path=config_path,
        severity=opts.severity or severity,
        options=opts.model_dump(mode="json"),
        fail_flow=fail_flow,
    )
    return result.model_dump(mode="json")
