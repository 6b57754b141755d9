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

Modules: :mod:`~flows.lifecycle.run` (run_scenario), :mod:`~flows.lifecycle.context`
(RunContext, assembled from timeline, approval, measure and compensation), locks, finish,
models. This package re-exports what scenarios import (``from flows.lifecycle import ...``).
"""

from __future__ import annotations

from flows.lifecycle.approval import ApprovalInput
from flows.lifecycle.context import RunContext
from flows.lifecycle.finish import result_for
from flows.lifecycle.locks import (
    cluster_lock_name,
    ensure_target_limit,
    lock_name,
    lock_names,
    target_lock,
)
from flows.lifecycle.measure import derive_measurement, meets_objectives
from flows.lifecycle.models import (
    ApprovalRecord,
    CheckRecord,
    Measurement,
    PhaseRecord,
    RunFailed,
    RunResult,
)
from flows.lifecycle.run import run_scenario

__all__ = [
    "ApprovalInput",
    "ApprovalRecord",
    "CheckRecord",
    "Measurement",
    "PhaseRecord",
    "RunContext",
    "RunFailed",
    "RunResult",
    "cluster_lock_name",
    "derive_measurement",
    "ensure_target_limit",
    "lock_name",
    "lock_names",
    "meets_objectives",
    "result_for",
    "run_scenario",
    "target_lock",
]
