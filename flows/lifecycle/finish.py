"""The end of a run: measure, compare, notify, record history, publish the report."""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from dr.clock import utcnow
from dr.config import Objectives
from dr.errors import ApprovalError, RecoveryRefused, redact
from flows.lifecycle.context import RunContext
from flows.lifecycle.measure import derive_measurement, meets_objectives
from flows.lifecycle.models import RunOutcome, RunResult
from tasks.history import store as history_store
from tasks.notify import blocks as notify_blocks
from tasks.report import artifacts as report_artifacts
from tasks.report import markdown as report_markdown
from tasks.report import tables as report_tables

__all__ = ["SLACK_FLUSH_SECONDS", "finish_run", "result_for"]

#: Longest the end of a run waits for Slack to deliver what is queued.
SLACK_FLUSH_SECONDS = 5.0
#: Results kept in memory for the command line (by flow run id).
_RESULTS_KEPT = 50


_RESULTS: OrderedDict[str, RunResult] = OrderedDict()
_RESULTS_LOCK = threading.Lock()


def result_for(flow_run_id: str | Any) -> RunResult | None:
    """The result of a run that ran in this process (for the command line), if any."""
    with _RESULTS_LOCK:
        return _RESULTS.get(str(flow_run_id))


def _remember(result: RunResult) -> None:
    if result.flow_run_id is None:
        return
    with _RESULTS_LOCK:
        _RESULTS[result.flow_run_id] = result
        while len(_RESULTS) > _RESULTS_KEPT:
            _RESULTS.popitem(last=False)


def _alert_starts_at(options: dict[str, Any]) -> datetime | None:
    value = options.get("alert_starts_at")
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _outcome_of(ctx: RunContext, error: BaseException | None) -> tuple[RunOutcome, str]:
    """What the body's ending says: aborted (approval), refused (nothing changed), failed."""
    if isinstance(error, ApprovalError):
        return "aborted", str(error)
    if isinstance(error, RecoveryRefused) and not ctx.not_undone:
        reason = redact(str(error))
        if "nothing was changed" not in reason:
            reason += "; nothing was changed"
        return "refused", reason
    if error is not None:
        return "failed", redact(f"{type(error).__name__}: {error}")
    return "passed", ""


def finish_run(ctx: RunContext, error: BaseException | None) -> RunResult:
    """Measure, compare, notify, record and report; never raises."""
    logger = ctx._log
    outcome, reason = _outcome_of(ctx, error)
    failed_checks = [c.name for c in ctx.checks if c.critical and not c.ok]
    if outcome == "passed" and failed_checks:
        outcome, reason = "failed", "critical check(s) failed: " + ", ".join(failed_checks)
    m = derive_measurement(
        ctx.mode,
        declared_at=ctx.declared_at,
        failure_at=ctx.failure_at,
        restored_at=ctx.restored_at,
        explicit=ctx.measurement,
        alert_starts_at=_alert_starts_at(ctx.options),
        run_started_at=utcnow() - timedelta(seconds=ctx.elapsed_seconds),
    )
    objectives = ctx.objectives
    objectives_met = meets_objectives(m, objectives, ctx.mode)
    if ctx.not_undone:
        ctx.notes.append(f"{len(ctx.not_undone)} change(s) need undoing by hand (see the report)")
    result = RunResult(
        scenario=ctx.scenario.value,
        target=ctx.target_name,
        mode=ctx.mode.value,
        severity=ctx.severity,
        outcome=outcome,
        objectives_met=objectives_met,
        rto_seconds=m.rto_seconds,
        rpo_seconds=m.rpo_seconds,
        lost_rows=m.lost_rows,
        objectives=Objectives(
            rto_seconds=objectives.rto_seconds, rpo_seconds=objectives.rpo_seconds
        ),
        rto_basis=m.rto_basis,
        rpo_basis=m.rpo_basis,
        rpo_bound=m.rpo_bound,
        lost_rows_basis=m.lost_rows_basis,
        rto_phases=m.rto_phases,
        declared_at=ctx.declared_at,
        failure_at=m.failure_at if m.failure_at is not None else ctx.failure_at,
        failure_at_basis=m.failure_at_basis,
        restored_at=m.restored_at if m.restored_at is not None else ctx.restored_at,
        restored_at_basis=m.restored_at_basis,
        phases=ctx.phases,
        checks=ctx.checks,
        changes=ctx.changes,
        undone=ctx.undone,
        not_undone=ctx.not_undone,
        plan=ctx.plan_steps,
        approvals=ctx.approvals,
        notes=ctx.notes,
        reason=reason,
        flow_run_id=ctx.flow_run_id,
        flow_run_url=ctx.flow_run_url,
        details=ctx.details,
    )
    logger.info(
        "%s %s on %s: %s; RTO %s (objective %g s), RPO %s (objective %g s); objectives %s",
        result.mode,
        result.scenario,
        result.target,
        result.outcome,
        report_tables.format_duration(result.rto_seconds),
        objectives.rto_seconds,
        report_tables.format_duration(result.rpo_seconds),
        objectives.rpo_seconds,
        "met" if objectives_met else "not met",
    )
    _final_slack(ctx, result)
    _record_history(ctx, result)
    _publish(ctx, result)
    _remember(result)
    return result


def _final_slack(ctx: RunContext, result: RunResult) -> None:
    notes = [n for n in [result.reason, *result.not_undone] if n]
    if result.plan:
        notes.append(f"dry run: {len(result.plan)} planned step(s), nothing changed")
    final = notify_blocks.final_blocks(
        result.outcome,
        result.rto_seconds,
        result.rpo_seconds,
        result.objectives.rto_seconds,
        result.objectives.rpo_seconds,
        result.flow_run_url,
        notes,
    )
    summary = (
        f"{result.outcome.upper()}: RTO {report_tables.format_duration(result.rto_seconds)}"
        f" (objective {report_tables.format_duration(result.objectives.rto_seconds)}),"
        f" RPO {report_tables.rpo_bound_prefix(result.rpo_bound)}"
        f"{report_tables.format_duration(result.rpo_seconds)}"
        f" (objective {report_tables.format_duration(result.objectives.rpo_seconds)})"
    )
    opening = notify_blocks.incident_opening_blocks(
        result.scenario,
        result.target,
        result.mode,
        result.severity,
        result.flow_run_url,
        result.outcome,
    )
    ctx.slack.reply(f"Finished: {summary}", final)
    ctx.slack.update_opening(
        f"DR {result.mode}: {result.scenario} on {result.target}: {summary}",
        [b for b in opening if b.get("type") != "context"] + final[1:],
    )
    ctx.slack.close(SLACK_FLUSH_SECONDS)
    result.slack_failures = [
        redact(f"{f.get('at', '')} {f.get('action', '')} ({f.get('method', '')}): {f.get('error')}")
        for f in ctx.slack.failures
    ]
    if result.slack_failures:
        ctx._log.warning("Slack: %d message(s) not delivered", len(result.slack_failures))


def _record_history(ctx: RunContext, result: RunResult) -> None:
    if not ctx.config.history.dsn:
        result.notes.append("history not written: no history.dsn in the config")
        return
    try:
        history_store.record_run(ctx.config.history, result.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 - a run completes even if history is down
        result.notes.append(redact(f"history not written: {exc}"))
        ctx._log.error("history not written: %s", redact(str(exc)))
    else:
        result.history_written = True


def _publish(ctx: RunContext, result: RunResult) -> None:
    past: list[dict[str, Any]] | None = None
    note = ""
    if result.history_written:
        try:
            past = history_store.query_runs(
                ctx.config.history, target=result.target, scenario=result.scenario
            )
        except Exception as exc:  # noqa: BLE001 - the chart then shows this run only
            note = redact(f"Past runs could not be read ({exc}); the chart shows this run only.")
    else:
        note = "History was not written for this run; the chart shows this run only."
    keys = {
        "table": report_tables.artifact_key(result.scenario, result.target),
        "markdown": report_tables.artifact_key(result.scenario, result.target, "report"),
    }
    result.artifacts = keys
    if ctx.flow_run_id is None:
        return
    try:
        dump = result.model_dump(mode="json")
        markdown = report_markdown.render_markdown(dump, history=past, history_note=note)
        report_artifacts.publish_run_artifacts(dump, markdown)
    except Exception as exc:  # noqa: BLE001 - the result is still returned and recorded
        result.artifacts = {}
        ctx._log.error("artifacts not written: %s", redact(str(exc)))
