"""The breach-response flow: the runbook's phases, top to bottom (see the package docstring)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from prefect import flow

from dr.config import Mode, Scenario, load_config
from flows.breach_response.assess import Preflight, preflight
from flows.breach_response.clock import measure, remind_clock, start_clock
from flows.breach_response.evidence import capture_volatile
from flows.breach_response.files import restore_files
from flows.breach_response.intruder import drill_cleanup, plant_intruder
from flows.breach_response.isolate import contain_and_preserve
from flows.breach_response.options import BreachOptions
from flows.breach_response.prove import prove
from flows.breach_response.restore import restore_clean
from flows.breach_response.resume import resume, verify
from flows.breach_response.rotate import rotate
from flows.breach_response.state import BreachRun
from flows.breach_response.systems import Systems
from flows.lifecycle import RunContext, run_scenario
from flows.registry import find_config_path
from tasks.evidence import bundle as evidence_bundle


def respond(run: BreachRun) -> None:
    """The runbook, phase by phase (each phase a step of the timeline and the report)."""
    ctx = run.ctx
    for note in run.pf.notes:
        ctx.note(note)
    if ctx.is_drill:
        with ctx.phase(
            "plant intruder", detail="drill: rogue role with a session, leaked password"
        ):
            plant_intruder(run)
    start_clock(run)
    if not ctx.dry_run:
        run.bundle = evidence_bundle.EvidenceBundle(f"{run.detected_at:%Y%m%dT%H%M%SZ}-{run.short}")
        run.info["bundle_id"] = run.bundle.bundle_id
        with ctx.phase("capture volatile evidence", detail="sessions, roles, states, rules"):
            capture_volatile(run)
    with ctx.phase("contain and preserve evidence", detail="isolation and evidence, in parallel"):
        contain_and_preserve(run)
    with ctx.phase("rotate credentials", detail="after evidence is preserved, in parallel"):
        rotate(run)
    if not ctx.dry_run:
        with ctx.phase("prove", detail="old credentials rejected, new ones work, intruder out"):
            prove(run)
    if run.opts.restore_tables and (run.restore_to is not None or ctx.dry_run):
        with ctx.phase("restore clean", detail="point-in-time recovery of the tables"):
            restore_clean(run)
    if run.pf.files and (run.restore_to is not None or ctx.dry_run):
        with ctx.phase("restore files", detail="S3 prefixes to restore_to, from versions"):
            restore_files(run)
    if run.opts.resume:
        step = "resume services with the new credentials"
        if run.failed_rotations:
            step += f" (NOT rotated: {', '.join(run.failed_rotations)})"
        with ctx.phase("approve resume", detail=step):
            ctx.approve(step)
            run.info["approval"] = [a.model_dump(mode="json") for a in ctx.approvals]
        with ctx.phase("resume services", detail="recorded state restored"):
            resume(run)
        with ctx.phase("verify", detail="the application works with the new credentials"):
            verify(run)
    else:
        ctx.note("services stay isolated (resume=false): bring them back by hand after review")
    if not ctx.dry_run:
        with ctx.phase("measure", detail="detected -> contained, detected -> resumed"):
            measure(run)
    remind_clock(run)


def _make_body(
    opts: BreachOptions, pf: Preflight, systems: Systems
) -> Callable[[RunContext], None]:
    def body(ctx: RunContext) -> None:
        run = BreachRun(ctx, opts, pf, systems)
        try:
            try:
                respond(run)
            finally:
                if ctx.is_drill and not ctx.dry_run:
                    with ctx.phase(
                        "drill cleanup", detail="rogue role dropped, drill blocks lifted"
                    ):
                        drill_cleanup(run)
            if not ctx.is_drill and not ctx.dry_run:
                ctx.note(
                    "incident: compromised roles stay NOLOGIN and blocked networks stay blocked"
                )
        except Exception:
            if not ctx.is_drill:
                ctx.note(
                    "the run failed: isolation is left in place (fail closed); the report lists "
                    "how to undo each change by hand once it is safe"
                )
            raise
        finally:
            for session in run.held.values():
                session.close()
            for scratch in run.scratch_dirs:
                shutil.rmtree(scratch, ignore_errors=True)

    return body


@flow(name="breach-response")
def breach_response_flow(
    target: str,
    mode: Mode = Mode.drill,
    options: BreachOptions | None = None,
    config_path: str | None = None,
    severity: str = "SEV1",
    fail_flow: bool = False,
) -> dict[str, Any]:
    """Respond to a security breach: contain, preserve evidence, rotate and prove, resume.

    Args:
        target: a target of the config.
        mode: ``drill`` (plant an intruder, respond, clean up), ``incident`` (respond to a
            real breach: approval gate before resuming) or ``dry-run`` (print the plan).
        options: what to isolate, collect as evidence, rotate and restore (each field says).
        config_path: the config file (default: $DR_CONFIG, ./dr.yaml, the lab's).
        severity: the incident's severity (seed 002: a breach is SEV1).
        fail_flow: end the flow run Failed when the outcome is not ``passed``.

    Returns:
        The lifecycle's ``RunResult`` as a JSON-ready dict; ``details.breach`` holds the
        regulatory clock, the timeline, the evidence bundle (URL, manifest SHA-256, the
        ``dr evidence verify`` command), the rotations, the proofs and both measurements.

    Raises:
        ConfigError: unknown target, service or role, invalid options: nothing changed.
        UnsafeTargetError: a drill on a target that does not allow drills.
    """
    opts = options or BreachOptions()
    mode = Mode(mode)
    cfg = load_config(find_config_path(config_path))
    # One set of clients for the whole run: the preflight's are warm (building a Docker
    # client negotiates the API version, which costs about a second on the response's clock).
    systems = Systems(cfg)
    try:
        pf = preflight(cfg, target, mode, opts, systems)
        result = run_scenario(
            Scenario.breach_response,
            target,
            mode,
            _make_body(opts, pf, systems),
            config=cfg,
            severity=opts.severity or severity,
            options=opts.model_dump(mode="json"),
            fail_flow=fail_flow,
        )
    finally:
        systems.close()
    return result.model_dump(mode="json")
