"""Approval gates: policy auto-approves, or the flow run pauses for a person's answer."""

from __future__ import annotations

import math
from typing import Literal

from prefect.input import RunInput
from pydantic import Field

from dr.clock import utcnow
from dr.errors import ApprovalError, redact
from flows.lifecycle.base import RunBase
from flows.lifecycle.models import ApprovalRecord

__all__ = ["APPROVAL_POLL_SECONDS", "ApprovalGates", "ApprovalInput"]

#: How often a paused run checks whether it was resumed (pause_flow_run's poll_interval).
APPROVAL_POLL_SECONDS = 1


class ApprovalInput(RunInput):
    """The answer at an approval gate: the form the Prefect UI shows, and ``dr approve``."""

    # A choice with no default, not a toggle: an untouched toggle reads as "off", so a
    # first submit meant as approval was recorded as a rejection.
    approve: Literal["approve", "reject"] = Field(
        title="Decision",
        description="approve: go ahead; reject: stop the run here. Nothing is preselected.",
    )
    who: str = Field(min_length=1, description="Who decides (name or handle).")
    why: str = Field(min_length=1, description="Why: recorded in the report.")

    @property
    def approved(self) -> bool:
        return self.approve == "approve"


class ApprovalGates(RunBase):
    """The approval part of :class:`flows.lifecycle.context.RunContext`."""

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
                    step=step, approved=True, who="policy", why=reason, at=utcnow(), automatic=True
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
                    at=utcnow(),
                    timed_out=True,
                )
            )
            raise ApprovalError(
                f"approval before {step!r} timed out after {timeout} s; nothing further changed"
            ) from None
        finally:
            self._waiting_for = None
        record = ApprovalRecord(
            step=step, approved=answer.approved, who=answer.who, why=answer.why, at=utcnow()
        )
        self.approvals.append(record)
        verdict = "approved" if answer.approved else "rejected"
        self._log.info("approval for %s: %s by %s: %s", step, verdict, answer.who, answer.why)
        self.slack.reply(f"*{step}* {verdict} by {answer.who}: {answer.why}")
        if not answer.approved:
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
