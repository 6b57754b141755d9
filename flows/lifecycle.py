"""The incident lifecycle every scenario flow shares, in one place.

A scenario flow validates its parameters and calls :func:`run_scenario` with a *body*: a
function that receives a :class:`RunContext` and performs the scenario's phases. Around
the body, ``run_scenario`` does what every run needs (DESIGN.md, "Lifecycle of every
scenario run"):

1. validate: the target exists; drills only on targets marked ``drills_allowed``;
2. take the per-target lock, a Prefect global concurrency limit ``dr-target-<name>``
   (created with limit 1 if missing, used with ``strict=True``: an unknown name with
   ``strict=False`` silently limits nothing); a busy target waits or is refused, per
   ``concurrency.on_busy``; dry runs change nothing and take no lock;
3. open the incident: the timeline, a Slack thread (never blocking: see ``tasks.notify``),
   a status update every ``slack.status_cadence_seconds`` while the run lasts;
4. run the body; the context records phases, the dry-run plan, checks, changes with their
   undo, approvals, ``failure_at`` and ``restored_at``;
5. on failure after changes, undo the compensable ones in reverse order;
6. measure: RTO = ``restored_at - failure_at`` (drills) or ``- declared_at`` (incidents),
   unless the body measured it itself; RPO as measured by the body (heartbeat or backup
   age); each compared with the target tier's objectives;
7. report: final Slack update, the history row, the table and markdown artifacts.

Three modes: ``incident`` (approval gates pause the flow unless policy auto-approves),
``drill`` (auto-approved by default, failure injected by the scenario, measured), and
``dry-run`` (every mutating step is guarded by :meth:`RunContext.plan`, which records
"would <action> <object>" and returns False, so nothing changes).

Why an explicit compensation stack rather than Prefect transactions: ``on_rollback`` hooks
attach only to tasks, run only for tasks completed inside the ``transaction()`` block, and
report nothing back; a DR run must undo changes made by any kind of step (a task, a plain
call, a sub-flow), in reverse order, and tell the report exactly what was and was not
undone. The stack lives in the :class:`RunContext`, so it is also testable without a server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import BaseModel, Field

from dr.changes import Change
from dr.config import DRConfig, Mode, Objectives, Scenario, Target, load_config
from dr.errors import (
    ApprovalError,
    ConfigError,
    DRError,
    PreconditionError,
    UnsafeTargetError,
    redact,
)
from flows.registry import find_config_path
from tasks import history, measure, notify, report

__all__ = [
    "ApprovalInput",
    "ApprovalRecord",
    "CheckRecord",
    "Measurement",
    "PhaseRecord",
    "RunContext",
    "RunFailed",
    "RunResult",
    "derive_measurement",
    "ensure_target_limit",
    "lock_name",
    "meets_objectives",
    "result_for",
    "run_scenario",
    "target_lock",
]

log = logging.getLogger(__name__)

#: Longest the end of a run waits for Slack to deliver what is queued.
SLACK_FLUSH_SECONDS = 5.0
#: How long one Slack message is retried in the background before it is given up.
SLACK_RETRY_BUDGET_SECONDS = 60.0
#: Pause between attempts to take a busy target's lock.
LOCK_POLL_SECONDS = 0.5
#: How often a paused run checks whether it was resumed (pause_flow_run's poll_interval).
APPROVAL_POLL_SECONDS = 1
#: Results kept in memory for the command line (by flow run id).
_RESULTS_KEPT = 50

PhaseOutcome = Literal["ok", "failed", "skipped", "planned", "aborted"]
RunOutcome = Literal["passed", "failed", "aborted"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------- models


class PhaseRecord(BaseModel):
    """One phase of the timeline (UTC)."""

    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: PhaseOutcome = "ok"
    detail: str = ""

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start to end, once ended."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class CheckRecord(BaseModel):
    """A check that ran, with its answer. Critical failures fail the run."""

    name: str
    ok: bool
    critical: bool = True
    detail: str = ""
    value: Any = None


class Measurement(BaseModel):
    """RTO and RPO as measured, and how."""

    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    lost_rows: int | None = None
    rto_basis: str = ""
    rpo_basis: str = ""


class ApprovalRecord(BaseModel):
    """The answer at an approval gate (by a person or by policy)."""

    step: str
    approved: bool
    who: str
    why: str
    at: datetime
    automatic: bool = False
    timed_out: bool = False


class RunResult(BaseModel):
    """What every scenario flow returns; ``dr ... --json`` prints it."""

    scenario: str
    target: str
    mode: str
    severity: str = ""
    outcome: RunOutcome
    objectives_met: bool
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    lost_rows: int | None = None
    objectives: Objectives
    rto_basis: str = ""
    rpo_basis: str = ""
    declared_at: datetime
    failure_at: datetime | None = None
    restored_at: datetime | None = None
    phases: list[PhaseRecord] = Field(default_factory=list)
    checks: list[CheckRecord] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)
    undone: list[str] = Field(default_factory=list)
    not_undone: list[str] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    slack_failures: list[str] = Field(default_factory=list)
    reason: str = ""
    history_written: bool = False
    artifacts: dict[str, str] = Field(default_factory=dict)
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when a CI pipeline should pass: outcome passed and objectives met.

        A dry run measures nothing, so it only needs to have passed.
        """
        if self.outcome != "passed":
            return False
        return self.mode == Mode.dry_run.value or self.objectives_met


class ApprovalInput(RunInput):
    """The answer at an approval gate: the form the Prefect UI shows, and ``dr approve``."""

    approve: bool = Field(description="True to go ahead, False to stop the run here.")
    who: str = Field(min_length=1, description="Who decides (name or handle).")
    why: str = Field(min_length=1, description="Why: recorded in the report.")


class RunFailed(DRError):
    """Raised by a scenario flow after reporting, when asked to end Failed (``fail_flow``)."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(
            f"{result.mode} {result.scenario} on {result.target}: {result.outcome}"
            + (f" ({result.reason})" if result.reason else "")
        )
        self.result = result


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


# ---------------------------------------------------------------------- helpers


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow run (shown in the UI), else this module's logger."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        return get_run_logger()
    return log


def lock_name(target: str) -> str:
    """The global concurrency limit's name for a target: ``dr-target-<name>``."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", target.lower()).strip("-")
    return f"dr-target-{clean}"


def cluster_lock_name(host: str, port: int) -> str:
    """The limit for a PostgreSQL cluster: ``dr-cluster-<host>-<port>``.

    Why: several targets may live on one cluster (the lab's seed systems do); a failover on
    one and a restore on another would act on the same servers at once.
    """
    clean = re.sub(r"[^a-z0-9_-]+", "-", host.lower()).strip("-")
    return f"dr-cluster-{clean}-{port}"


def lock_names(config: DRConfig, target: str) -> list[str]:
    """Every limit a run on ``target`` holds: the target's and its primary cluster's."""
    names = [lock_name(target)]
    primary = config.targets[target].postgres.primary if target in config.targets else None
    if primary is not None:
        names.append(cluster_lock_name(primary.host, primary.port))
    return names


def _flow_run_identity(config: DRConfig) -> tuple[str | None, str | None]:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id is None:
        return None, None
    if config.prefect_ui_url:
        return run_id, f"{config.prefect_ui_url.rstrip('/')}/runs/flow-run/{run_id}"
    try:
        return run_id, flow_run.get_flow_run_ui_url()
    except Exception:  # noqa: BLE001 - a link is a convenience, never a reason to fail
        return run_id, None


# ---------------------------------------------------------------------- per-target lock


def ensure_target_limit(name: str) -> str:
    """Create the global concurrency limit ``name`` with one slot if it does not exist.

    Args:
        name: from :func:`lock_name`.

    Returns:
        ``"created"`` or ``"unchanged"``.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        else:
            if existing.limit != 1 or not existing.active:
                _logger().warning(
                    "concurrency limit %s has limit %s (active: %s): runs on this target may"
                    " overlap; set it to 1 and active",
                    name,
                    existing.limit,
                    existing.active,
                )
            return "unchanged"
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            return "unchanged"
    _logger().info("concurrency limit %s created with 1 slot", name)
    return "created"


def _is_busy(exc: BaseException) -> bool:
    """True when a slot acquisition failed because the limit is full (HTTP 423)."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    return getattr(response, "status_code", None) == 423


@contextlib.contextmanager
def target_lock(config: DRConfig, target: str, flow_run_id: str | None = None) -> Iterator[str]:
    """Hold the target's one slot, and its primary cluster's, for the duration of the block.

    The slot is a lease that Prefect renews in the background; a run that dies without
    releasing it frees the target when the lease expires. Renewal failures are logged and
    do not kill the recovery.

    Args:
        config: the config (``concurrency.on_busy`` and ``wait_timeout_seconds``).
        target: the target's name.
        flow_run_id: recorded as the lease's holder.

    Yields:
        The limits' names, joined with " + ".

    Raises:
        PreconditionError: the target is busy and the policy is ``refuse``, or it stayed
            busy for ``wait_timeout_seconds``.
        DRError: the slot could not be taken for another reason (API unreachable).
    """
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    names = lock_names(config, target)
    for each in names:
        ensure_target_limit(each)
    name = " + ".join(names)
    policy = config.concurrency
    logger = _logger()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None
    started = time.monotonic()
    announced = False
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                concurrency(
                    names,
                    occupy=1,
                    max_retries=0,
                    strict=True,
                    holder=holder,
                    raise_on_lease_renewal_failure=False,
                )
            )
            break
        except ConcurrencySlotAcquisitionError as exc:
            if not _is_busy(exc):
                raise DRError(f"cannot take the lock {name}: {exc}", transient=True) from exc
            waited = time.monotonic() - started
            if policy.on_busy == "refuse":
                logger.error(
                    "target %s is busy: another DR run holds %s; refusing this run"
                    " (concurrency.on_busy=refuse)",
                    target,
                    name,
                )
                raise PreconditionError(
                    f"target {target!r} is busy: another DR run holds {name}"
                    " (concurrency.on_busy=refuse)"
                ) from None
            if waited >= policy.wait_timeout_seconds:
                logger.error("target %s still busy after %.0f s; giving up", target, waited)
                raise PreconditionError(
                    f"target {target!r} stayed busy for {policy.wait_timeout_seconds:g} s"
                    f" (another DR run holds {name})"
                ) from None
            if not announced:
                logger.warning(
                    "target %s is busy: another DR run holds %s; waiting up to %g s"
                    " (concurrency.on_busy=wait)",
                    target,
                    name,
                    policy.wait_timeout_seconds,
                )
                announced = True
            time.sleep(LOCK_POLL_SECONDS)
    waited = time.monotonic() - started
    logger.info("lock %s taken%s", name, f" after waiting {waited:.1f} s" if announced else "")
    with stack:
        yield name
    logger.info("lock %s released", name)


# ---------------------------------------------------------------------- status ticker


class _StatusTicker:
    """Posts "still running: phase X, elapsed N s" to the thread at a fixed cadence."""

    def __init__(self, ctx: RunContext, cadence_seconds: float) -> None:
        self._ctx = ctx
        self._cadence = cadence_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dr-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self._cadence):
            self._ctx._status_update()


# ---------------------------------------------------------------------- run context


class RunContext:
    """What a scenario body uses to act, record and measure.

    Created by :func:`run_scenario`; a body never builds one itself.
    """

    def __init__(
        self,
        *,
        config: DRConfig,
        target_name: str,
        scenario: Scenario,
        mode: Mode,
        severity: str,
        options: dict[str, Any],
        declared_at: datetime,
        flow_run_id: str | None,
        flow_run_url: str | None,
        slack: notify.SlackThread | notify.NullThread,
    ) -> None:
        self.config = config
        self.target_name = target_name
        self.target: Target = config.target(target_name)
        self.objectives: Objectives = config.objectives(target_name)
        self.scenario = scenario
        self.mode = mode
        self.severity = severity
        self.options = options
        self.declared_at = declared_at
        self.failure_at: datetime | None = None
        self.restored_at: datetime | None = None
        self.flow_run_id = flow_run_id
        self.flow_run_url = flow_run_url
        self.slack = slack
        self.phases: list[PhaseRecord] = []
        self.checks: list[CheckRecord] = []
        self.changes: list[Change] = []
        self.plan_steps: list[str] = []
        self.approvals: list[ApprovalRecord] = []
        self.notes: list[str] = []
        self.undone: list[str] = []
        self.not_undone: list[str] = []
        self.details: dict[str, Any] = {}
        self.measurement = Measurement()
        self._undo_stack: list[tuple[Change, Callable[[], Any]]] = []
        self._current_phase: str | None = None
        self._waiting_for: str | None = None
        self._started = time.monotonic()
        self._progress: report.ProgressArtifact | None = None
        self._probe: measure.HeartbeatProbe | None = None
        self._log = _logger()

    # ------------------------------------------------------------------ state

    @property
    def dry_run(self) -> bool:
        """True in dry-run mode: nothing may change."""
        return self.mode == Mode.dry_run

    @property
    def is_drill(self) -> bool:
        """True in drill mode."""
        return self.mode == Mode.drill

    @property
    def current_phase(self) -> str | None:
        """The phase running now, if any."""
        return self._current_phase

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    @property
    def heartbeat(self) -> measure.HeartbeatProbe | None:
        """The heartbeat probe started by :meth:`start_heartbeat`, if any."""
        return self._probe

    # ------------------------------------------------------------------ timeline

    @contextlib.contextmanager
    def phase(self, name: str, *, detail: str = "") -> Iterator[PhaseRecord]:
        """Record a phase: UTC start and end, outcome, detail; reply in the Slack thread.

        An exception inside marks the phase ``failed`` (``aborted`` for an approval that was
        rejected or timed out) and is re-raised. In a dry run a phase that completes is
        ``planned``. The body may set ``record.outcome = "skipped"`` or amend ``detail``.

        Args:
            name: the phase's name, as in the runbook ("promote replica").
            detail: what it is about to do.

        Yields:
            The :class:`PhaseRecord`.
        """
        record = PhaseRecord(name=name, started_at=_utcnow(), detail=detail)
        self.phases.append(record)
        previous, self._current_phase = self._current_phase, name
        self._log.info("phase %s: started", name)
        try:
            yield record
        except ApprovalError as exc:
            record.outcome = "aborted"
            record.detail = _join(record.detail, str(exc))
            raise
        except BaseException as exc:
            record.outcome = "failed"
            record.detail = _join(record.detail, f"{type(exc).__name__}: {exc}")
            raise
        else:
            if self.dry_run and record.outcome == "ok":
                record.outcome = "planned"
        finally:
            record.ended_at = _utcnow()
            record.detail = redact(record.detail)
            self._current_phase = previous
            duration = record.duration_seconds or 0.0
            self._log.info("phase %s: %s in %.2f s", name, record.outcome, duration)
            self.slack.reply(
                f"{name}: {record.outcome} in {duration:.1f} s"
                + (f" ({record.detail})" if record.detail else ""),
                notify.phase_reply_blocks(name, record.outcome, duration, record.detail or None),
            )

    def plan(self, action: str, obj: str) -> bool:
        """Guard a mutating step: in a dry run record "would <action> <obj>" and say no.

        Every mutating step of a scenario is written ``if ctx.plan("stop", "container app"):
        ...``, so a dry run lists the whole ordered plan and changes nothing.

        Args:
            action: the verb ("promote", "stop", "restore").
            obj: the object, named so a person can find it ("replica pg-2 (127.0.0.1:5433)").

        Returns:
            False in a dry run (skip the step), True otherwise.
        """
        if not self.dry_run:
            return True
        step = redact(f"would {action} {obj}")
        self.plan_steps.append(step)
        self._log.info("plan %d: %s", len(self.plan_steps), step)
        return False

    def stamp_failure(self, at: datetime | None = None) -> datetime:
        """Record when the failure happened (drills: the moment it was injected).

        A dry run injects nothing, so it records nothing.

        Args:
            at: the moment; now when omitted.

        Returns:
            ``failure_at`` (UTC).
        """
        moment = (at or _utcnow()).astimezone(UTC)
        if self.dry_run:
            return moment  # nothing was injected: a dry run has no failure time
        self.failure_at = moment
        self._log.info("failure_at %s", self.failure_at.isoformat())
        self.slack.reply(
            f"Failure {'injected' if self.is_drill else 'recorded'} at "
            f"{self.failure_at.isoformat(timespec='milliseconds')}"
        )
        return self.failure_at

    def stamp_restored(self, at: datetime | None = None) -> datetime:
        """Record when service was restored (the first moment every check passed).

        Args:
            at: the moment; now when omitted.

        Returns:
            ``restored_at`` (UTC).
        """
        self.restored_at = (at or _utcnow()).astimezone(UTC)
        self._log.info("restored_at %s", self.restored_at.isoformat())
        self.slack.reply(
            f"Service restored at {self.restored_at.isoformat(timespec='milliseconds')}"
        )
        return self.restored_at

    # ------------------------------------------------------------------ changes and checks

    def record_change(self, change: Change, undo: Callable[[], Any] | None = None) -> None:
        """Record what a step changed; push its undo on the compensation stack.

        Only a change that changed something, is marked compensable and comes with an
        ``undo`` callable is undone automatically if the run later fails; the others are
        listed in the report as "not undone" with their manual undo instruction.

        Args:
            change: from an ``ensure_*`` step.
            undo: undoes exactly this change (usually the adapter's ``restore_*``).
        """
        self.changes.append(change)
        if change.changed and change.compensable and undo is not None:
            self._undo_stack.append((change, undo))
        self._log.info("change: %s", redact(change.summary()))

    def record_check(
        self,
        name: str,
        ok: bool,
        *,
        critical: bool = True,
        detail: str = "",
        value: Any = None,
    ) -> CheckRecord:
        """Record a check's answer; a failed critical check fails the run.

        Args:
            name: what was checked.
            ok: the answer.
            critical: whether a failure fails the run.
            detail: what was seen.
            value: the raw value, if useful (must be JSON-able).

        Returns:
            The :class:`CheckRecord`.
        """
        record = CheckRecord(
            name=name, ok=ok, critical=critical, detail=redact(detail), value=value
        )
        self.checks.append(record)
        level = logging.INFO if ok or not critical else logging.WARNING
        self._log.log(level, "check %s: %s %s", name, "PASS" if ok else "FAIL", record.detail)
        return record

    # ------------------------------------------------------------------ approvals

    def _auto_approval(self, irreversible: bool) -> str | None:
        policy = self.config.approval
        if not irreversible:
            return "reversible step: no gate"
        if self.is_drill and policy.auto_approve_drills:
            return "drills are auto-approved (approval.auto_approve_drills)"
        if self.severity in policy.auto_approve_severities:
            return f"severity {self.severity} is auto-approved (approval.auto_approve_severities)"
        if self.options.get("auto_approve") is True:
            return "auto-approved by the alert route (auto_approve)"
        return None

    def approve(self, step: str, *, irreversible: bool = True, always_ask: bool = False) -> None:
        """Gate an irreversible step: pause for a person's decision unless policy approves.

        In incident mode the flow run pauses (``pause_flow_run`` with :class:`ApprovalInput`)
        until someone answers in the Prefect UI or with ``dr approve RUN_ID``, or until
        ``approval.timeout_seconds``. While paused the run keeps the target's lock.

        Args:
            step: the step about to happen ("promote replica pg-2").
            irreversible: False for a step that can be undone (no gate).
            always_ask: a person must decide whatever the auto-approval policy says (e.g.
                promoting while the old primary is not proven fenced); drills pause too.

        Raises:
            ApprovalError: rejected (with who and why), or nobody answered in time. Nothing
                further is changed; compensation undoes what was done.
        """
        if self.dry_run:
            self.plan_steps.append(redact(f"would ask for approval before: {step}"))
            return
        reason = None if always_ask else self._auto_approval(irreversible)
        if reason is not None:
            self.approvals.append(
                ApprovalRecord(
                    step=step, approved=True, who="policy", why=reason, at=_utcnow(), automatic=True
                )
            )
            self._log.info("approval for %s: %s", step, reason)
            return
        self._pause_for_approval(step)

    def _pause_for_approval(self, step: str) -> None:
        from prefect.exceptions import FlowPauseTimeout
        from prefect.flow_runs import pause_flow_run

        timeout = max(1, math.ceil(self.config.approval.timeout_seconds))
        how = (
            f"`dr approve {self.flow_run_id} --who NAME --why TEXT` (add `--reject` to stop),"
            " or Resume in the Prefect UI"
        )
        self._log.warning("approval needed before %s: %s; timeout %d s", step, how, timeout)
        self.slack.reply(f"Approval needed before *{step}*: {how}. Times out in {timeout} s.")
        form = ApprovalInput.with_initial_data(
            description=(
                f"**Approve before: {step}**\n\n{self.mode.value} {self.scenario.value} on "
                f"{self.target_name} ({self.severity}). Rejecting stops the run here; what "
                "was already done is undone where possible."
            )
        )
        self._waiting_for = step
        try:
            answer = pause_flow_run(
                wait_for_input=form, timeout=timeout, poll_interval=APPROVAL_POLL_SECONDS
            )
        except FlowPauseTimeout:
            self._resume_running_state()
            self.approvals.append(
                ApprovalRecord(
                    step=step,
                    approved=False,
                    who="nobody",
                    why=f"no answer within {timeout} s",
                    at=_utcnow(),
                    timed_out=True,
                )
            )
            raise ApprovalError(
                f"approval before {step!r} timed out after {timeout} s; nothing further changed"
            ) from None
        finally:
            self._waiting_for = None
        record = ApprovalRecord(
            step=step, approved=answer.approve, who=answer.who, why=answer.why, at=_utcnow()
        )
        self.approvals.append(record)
        verdict = "approved" if answer.approve else "rejected"
        self._log.info("approval for %s: %s by %s: %s", step, verdict, answer.who, answer.why)
        self.slack.reply(f"*{step}* {verdict} by {answer.who}: {answer.why}")
        if not answer.approve:
            raise ApprovalError(f"{step!r} rejected by {answer.who}: {answer.why}")

    def _resume_running_state(self) -> None:
        """After a pause timed out, put the flow run back in Running to finish cleanly."""
        if self.flow_run_id is None:
            return
        from prefect import get_client
        from prefect.states import Running

        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(self.flow_run_id, Running(), force=True)
        except Exception as exc:  # noqa: BLE001 - reporting must go on
            self._log.warning("could not set the timed-out run back to Running: %s", exc)

    # ------------------------------------------------------------------ measurement

    def measure(
        self,
        *,
        rto_seconds: float | None = None,
        rpo_seconds: float | None = None,
        lost_rows: int | None = None,
        rto_basis: str = "",
        rpo_basis: str = "",
    ) -> Measurement:
        """Record measurements made by the scenario itself (they win over the defaults).

        Args:
            rto_seconds: e.g. a restore's duration in a backup-verification drill.
            rpo_seconds: e.g. heartbeat loss, or backup age at ``failure_at``.
            lost_rows: acknowledged rows lost.
            rto_basis: how the RTO was measured.
            rpo_basis: how the RPO was measured.

        Returns:
            The run's measurement so far.
        """
        m = self.measurement
        if rto_seconds is not None:
            m.rto_seconds, m.rto_basis = float(rto_seconds), rto_basis or m.rto_basis
        if rpo_seconds is not None:
            m.rpo_seconds, m.rpo_basis = float(rpo_seconds), rpo_basis or m.rpo_basis
        if lost_rows is not None:
            m.lost_rows = int(lost_rows)
        return m

    def start_heartbeat(
        self, *, writer: str | None = None, interval_seconds: float = 0.05
    ) -> measure.HeartbeatProbe | None:
        """Start the heartbeat probe on the target's primary (drills, before the failure).

        Args:
            writer: the probe's writer name; defaults to ``dr-probe-<flow run id>``.
            interval_seconds: pause between writes.

        Returns:
            The running probe (stopped by :func:`run_scenario` at the end); None in a dry run.

        Raises:
            PostgresError: no primary reachable at the start.
        """
        pg = self.target.postgres
        if not self.plan("start", f"the heartbeat probe writing to {pg.heartbeat_db}.dr_heartbeat"):
            return None
        password = pg.password.resolve() if pg.password else None
        name = writer or f"dr-probe-{(self.flow_run_id or _utcnow().strftime('%Y%m%d%H%M%S%f'))}"
        self._probe = measure.HeartbeatProbe(
            measure.multi_host_conninfo(pg),
            writer=name,
            interval_seconds=interval_seconds,
            password=password,
        ).start()
        return self._probe

    def verify_health(
        self,
        *,
        timeout_seconds: float | None = None,
        interval_seconds: float = 0.25,
        critical: bool = True,
    ) -> measure.HealthResult | None:
        """Wait for every end-to-end check to pass; stamp ``restored_at`` when they do.

        Checks: the target's HTTP and SQL health checks, its validation queries and, when
        the heartbeat probe runs, a heartbeat write acknowledged by the current primary after
        ``failure_at``. Each check's final answer is recorded.

        Args:
            timeout_seconds: give up after this long; defaults to the tier's RTO objective.
            interval_seconds: pause between rounds.
            critical: whether failing checks fail the run.

        Returns:
            The :class:`tasks.measure.HealthResult`; None in a dry run.
        """
        if not self.plan("poll", f"the end-to-end health checks of {self.target_name}"):
            return None
        pg = self.target.postgres
        result = measure.wait_until_healthy(
            self.target,
            timeout_seconds=timeout_seconds or self.objectives.rto_seconds,
            interval_seconds=interval_seconds,
            password=pg.password.resolve() if pg.password else None,
            heartbeat=self._probe,
            since=self.failure_at,
        )
        for check in result.checks:
            self.record_check(
                f"{check.kind}: {check.name}",
                check.ok,
                critical=critical,
                detail=check.detail,
                value=check.value if isinstance(check.value, int | float | str | bool) else None,
            )
        if result.ok and result.restored_at is not None:
            self.stamp_restored(result.restored_at)
        return result

    def measure_heartbeat_rpo(self) -> measure.HeartbeatRPO | None:
        """Measure RPO from the heartbeat probe: acknowledged before ``failure_at`` vs present.

        Returns:
            The :class:`tasks.measure.HeartbeatRPO`, also recorded as the run's RPO; None
            without a probe or ``failure_at``.
        """
        if self._probe is None or self.failure_at is None:
            return None
        rpo = self._probe.rpo(measure.multi_host_conninfo(self.target.postgres), self.failure_at)
        self.measure(
            rpo_seconds=rpo.seconds,
            lost_rows=rpo.lost_rows,
            rpo_basis="heartbeat: newest write acknowledged before failure_at vs newest present"
            " after recovery",
        )
        return rpo

    def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.stop()

    # ------------------------------------------------------------------ people

    def progress(self, fraction: float, message: str = "") -> None:
        """Show progress: a progress artifact in the UI and a line on the terminal.

        Args:
            fraction: 0.0 to 1.0.
            message: what is happening.
        """
        percent = round(max(0.0, min(1.0, fraction)) * 100)
        sys.stderr.write(f"[{percent:3d}%] {redact(message)}\n")
        if self.flow_run_id is None:
            return
        try:
            if self._progress is None:
                key = report.artifact_key(self.scenario.value, self.target_name, "progress")
                self._progress = report.ProgressArtifact(key, f"{self.scenario.value} progress")
            self._progress.update(fraction, message)
        except Exception as exc:  # noqa: BLE001 - progress display never fails a recovery
            self._log.warning("progress artifact not updated: %s", exc)

    def note(self, text: str) -> None:
        """Add a remark to the report and the Slack thread.

        Args:
            text: one sentence for people.
        """
        text = redact(text)
        self.notes.append(text)
        self._log.info("note: %s", text)
        self.slack.reply(text)

    def _status_update(self) -> None:
        if self._waiting_for:
            where = f"waiting for approval before {self._waiting_for}"
        else:
            where = f"phase {self._current_phase or '(between phases)'}"
        self.slack.reply(f"still running: {where}, elapsed {self.elapsed_seconds:.0f}s")

    # ------------------------------------------------------------------ compensation

    def _compensate(self) -> None:
        """Undo compensable changes in reverse order; list what could not be undone."""
        changed = [c for c in self.changes if c.changed]
        if not changed:
            return
        stacked = {id(change) for change, _ in self._undo_stack}
        with self.phase(
            "compensate", detail=f"undoing {len(self._undo_stack)} change(s) in reverse order"
        ) as record:
            failures = 0
            for change, undo in reversed(self._undo_stack):
                what = f"{change.system} {change.action} {change.object}"
                try:
                    undo()
                except Exception as exc:  # noqa: BLE001 - every undo gets its chance
                    failures += 1
                    self.not_undone.append(
                        redact(
                            f"{what}: automatic undo failed ({type(exc).__name__}: {exc});"
                            f" by hand: {change.undo or 'see the change record'}"
                        )
                    )
                    self._log.error("compensation: %s failed: %s", what, redact(str(exc)))
                else:
                    self.undone.append(redact(f"{what} (undo: {change.undo or 'automatic'})"))
                    self._log.info("compensation: undid %s", what)
            for change in changed:
                if id(change) in stacked:
                    continue
                why = "not compensable" if not change.compensable else "no automatic undo"
                self.not_undone.append(
                    redact(
                        f"{change.system} {change.action} {change.object}: {why};"
                        f" by hand: {change.undo or 'nothing recorded'}"
                    )
                )
            if failures:
                record.outcome = "failed"
                record.detail = _join(record.detail, f"{failures} undo(s) failed")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ---------------------------------------------------------------------- run_scenario


def _check_mode(name: str, target: Target, mode: Mode) -> None:
    if mode == Mode.drill and not target.drills_allowed:
        kind = "a production target" if target.production else "this target"
        raise UnsafeTargetError(
            f"drill refused: {kind} {name!r} does not allow drills;"
            f" set targets.{name}.drills_allowed: true to rehearse on it"
        )


def _declared_at(options: dict[str, Any]) -> datetime:
    value = options.get("declared_at")
    if value is None:
        return _utcnow()
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_scenario(
    scenario: Scenario | str,
    target: str,
    mode: Mode | str,
    body: Callable[[RunContext], Any],
    *,
    config: DRConfig | None = None,
    config_path: str | None = None,
    severity: str = "SEV2",
    options: dict[str, Any] | None = None,
    fail_flow: bool = False,
) -> RunResult:
    """Run a scenario's body inside the shared lifecycle; call it from the scenario's flow.

    Args:
        scenario: which scenario this is.
        target: the target's name in dr.yaml.
        mode: ``incident``, ``drill`` or ``dry-run``.
        body: the scenario's phases; gets a :class:`RunContext`.
        config: an already-loaded config; else read from ``config_path`` (then ``$DR_CONFIG``,
            ``./dr.yaml``, ``./.lab/dr.yaml``).
        config_path: where the config is.
        severity: e.g. ``SEV1``; may auto-approve gates (``approval.auto_approve_severities``).
        options: scenario options; ``auto_approve`` (from an alert route) and ``declared_at``
            (ISO time the incident was declared) are read here.
        fail_flow: raise :class:`RunFailed` after reporting when the outcome is not passed, so
            the flow run ends Failed.

    Returns:
        The :class:`RunResult` (also kept for :func:`result_for`).

    Raises:
        ConfigError: bad config, unknown target, scenario or mode.
        UnsafeTargetError: a drill on a target that does not allow drills.
        PreconditionError: the target is busy (``refuse``, or waited too long).
        RunFailed: only with ``fail_flow``, when the outcome is not passed.
    """
    try:
        scenario = Scenario(scenario)
        mode = Mode(mode)
    except ValueError as exc:
        raise ConfigError(str(exc), [("parameters", str(exc))]) from None
    options = dict(options or {})
    cfg = config or load_config(find_config_path(config_path))
    tgt = cfg.target(target)
    _check_mode(target, tgt, mode)
    declared_at = _declared_at(options)
    flow_run_id, flow_run_url = _flow_run_identity(cfg)
    logger = _logger()
    logger.info(
        "%s %s on %s (%s) declared at %s",
        mode.value,
        scenario.value,
        target,
        severity,
        declared_at.isoformat(),
    )
    lock = (
        contextlib.nullcontext(None)
        if mode == Mode.dry_run
        else target_lock(cfg, target, flow_run_id)
    )
    with lock:
        slack = notify.slack_thread_for(
            cfg.slack, tgt.slack_channel, retry_budget_seconds=SLACK_RETRY_BUDGET_SECONDS
        )
        ctx = RunContext(
            config=cfg,
            target_name=target,
            scenario=scenario,
            mode=mode,
            severity=severity,
            options=options,
            declared_at=declared_at,
            flow_run_id=flow_run_id,
            flow_run_url=flow_run_url,
            slack=slack,
        )
        slack.open(
            f"DR {mode.value}: {scenario.value} on {target} ({severity}) started"
            + (f": {flow_run_url}" if flow_run_url else ""),
            notify.incident_opening_blocks(
                scenario.value, target, mode.value, severity, flow_run_url, "in_progress"
            ),
        )
        ticker = _StatusTicker(ctx, cfg.slack.status_cadence_seconds)
        ticker.start()
        error: BaseException | None = None
        try:
            body(ctx)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then compensated
            error = exc
            logger.error("%s %s on %s: %s", mode.value, scenario.value, target, redact(str(exc)))
        finally:
            ticker.stop()
            ctx._stop_probe()
        if error is not None:
            ctx._compensate()
    # The target is free again: reporting (Slack flush, history, artifacts) holds no lock.
    result = _finish(ctx, error)
    if fail_flow and result.outcome != "passed":
        raise RunFailed(result)
    return result


def derive_measurement(
    mode: Mode,
    *,
    declared_at: datetime,
    failure_at: datetime | None,
    restored_at: datetime | None,
    explicit: Measurement | None = None,
) -> Measurement:
    """RTO and RPO of a run, from what the scenario measured and the timeline.

    RTO: the scenario's own measurement if it made one, else ``restored_at - failure_at`` in
    a drill (``- declared_at`` in an incident, or in a drill without ``failure_at``). RPO
    only comes from the scenario (heartbeat or backup age). A dry run measures nothing.

    Args:
        mode: the run's mode.
        declared_at: when the run was declared.
        failure_at: when the failure happened (drills inject it).
        restored_at: the first moment every end-to-end check passed.
        explicit: what the scenario recorded with :meth:`RunContext.measure`.

    Returns:
        A new :class:`Measurement` with values and their bases.
    """
    out = Measurement(**(explicit.model_dump() if explicit else {}))
    if mode == Mode.dry_run:
        out.rto_basis = out.rto_basis or "dry run: nothing measured"
        out.rpo_basis = out.rpo_basis or "dry run: nothing measured"
        return out
    if out.rto_seconds is not None:
        out.rto_basis = out.rto_basis or "measured by the scenario"
    elif restored_at is not None:
        use_failure = mode == Mode.drill and failure_at is not None
        start = failure_at if use_failure and failure_at is not None else declared_at
        out.rto_seconds = (restored_at - start).total_seconds()
        out.rto_basis = (
            f"restored_at - {'failure_at' if use_failure else 'declared_at'}"
            " (restored_at: first moment every end-to-end check passed)"
        )
    else:
        out.rto_basis = "not measured: service was never verified restored"
    if out.rpo_seconds is None:
        out.rpo_basis = out.rpo_basis or "not measured"
    return out


def meets_objectives(measurement: Measurement, objectives: Objectives, mode: Mode) -> bool:
    """True when both RTO and RPO were measured and are within the objectives (<=).

    Args:
        measurement: from :func:`derive_measurement`.
        objectives: the target tier's objectives.
        mode: a dry run never meets objectives (it measures nothing).

    Returns:
        Whether the objectives were met.
    """
    m = measurement
    return (
        mode != Mode.dry_run
        and m.rto_seconds is not None
        and m.rpo_seconds is not None
        and m.rto_seconds <= objectives.rto_seconds
        and m.rpo_seconds <= objectives.rpo_seconds
    )


def _finish(ctx: RunContext, error: BaseException | None) -> RunResult:
    """Measure, compare, notify, record and report; never raises."""
    logger = ctx._log
    outcome: RunOutcome = "passed"
    reason = ""
    if isinstance(error, ApprovalError):
        outcome, reason = "aborted", str(error)
    elif error is not None:
        outcome, reason = "failed", redact(f"{type(error).__name__}: {error}")
    failed_checks = [c.name for c in ctx.checks if c.critical and not c.ok]
    if outcome == "passed" and failed_checks:
        outcome, reason = "failed", "critical check(s) failed: " + ", ".join(failed_checks)
    m = derive_measurement(
        ctx.mode,
        declared_at=ctx.declared_at,
        failure_at=ctx.failure_at,
        restored_at=ctx.restored_at,
        explicit=ctx.measurement,
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
        declared_at=ctx.declared_at,
        failure_at=ctx.failure_at,
        restored_at=ctx.restored_at,
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
        report.format_duration(result.rto_seconds),
        objectives.rto_seconds,
        report.format_duration(result.rpo_seconds),
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
    final = notify.final_blocks(
        result.outcome,
        result.rto_seconds,
        result.rpo_seconds,
        result.objectives.rto_seconds,
        result.objectives.rpo_seconds,
        result.flow_run_url,
        notes,
    )
    summary = (
        f"{result.outcome.upper()}: RTO {report.format_duration(result.rto_seconds)}"
        f" (objective {report.format_duration(result.objectives.rto_seconds)}),"
        f" RPO {report.format_duration(result.rpo_seconds)}"
        f" (objective {report.format_duration(result.objectives.rpo_seconds)})"
    )
    opening = notify.incident_opening_blocks(
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
        history.record_run(ctx.config.history, result.model_dump(mode="json"))
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
            past = history.query_runs(
                ctx.config.history, target=result.target, scenario=result.scenario
            )
        except Exception as exc:  # noqa: BLE001 - the chart then shows this run only
            note = redact(f"Past runs could not be read ({exc}); the chart shows this run only.")
    else:
        note = "History was not written for this run; the chart shows this run only."
    keys = {
        "table": report.artifact_key(result.scenario, result.target),
        "markdown": report.artifact_key(result.scenario, result.target, "report"),
    }
    result.artifacts = keys
    if ctx.flow_run_id is None:
        return
    try:
        dump = result.model_dump(mode="json")
        markdown = report.render_markdown(dump, history=past, history_note=note)
        report.publish_run_artifacts(dump, markdown)
    except Exception as exc:  # noqa: BLE001 - the result is still returned and recorded
        result.artifacts = {}
        ctx._log.error("artifacts not written: %s", redact(str(exc)))
