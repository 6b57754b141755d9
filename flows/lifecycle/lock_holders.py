"""Who holds a target's lock, whether that run is still alive, and keeping our own lease alive.

Prefect's lease API does not say who holds a slot, so each holder records itself in a
Prefect variable next to the limit (``<limit>-holder``: lease id, flow run, host, pid, last
renewal). A run that finds the lock taken reads that record and may take the lock over once
the holder is dead: its flow run ended (Crashed/Failed/Cancelled/Completed), its process is
gone (same host), or it stopped renewing. Why: a ``kill -9`` leaves a lease that Prefect
only frees when it expires (60 s at the least, plus the server's sweep).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from dr.clock import utcnow
from flows.lifecycle.runlog import run_logger

__all__ = [
    "CRASH_AUTOMATION",
    "ENDED_STATES",
    "LEASE_SECONDS",
    "RENEW_SECONDS",
    "STALE_SECONDS",
    "Holder",
    "LeaseRenewer",
    "delete_holder",
    "ensure_crash_automation",
    "holder_of_flow_run",
    "holder_variable",
    "mark_crashed",
    "read_holder",
    "release_lease",
    "why_dead",
    "write_holder",
]

#: The lease's length: Prefect's minimum. The server frees a lease nobody renews after it.
LEASE_SECONDS = 60.0
#: How often the live run renews its lease and stamps its record.
RENEW_SECONDS = 3.0
#: A record not stamped for this long belongs to a process that is gone (any host).
STALE_SECONDS = 12.0
#: The automation that marks a flow run Crashed when its heartbeats stop (Prefect's way).
CRASH_AUTOMATION = "dr-mark-silent-flow-runs-crashed"
#: Heartbeats missing this long mean the run's process is gone: three of Prefect's default
#: periods (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 180 s), so a live run with the default
#: period is never marked. A backstop: the next run on the target takes over at once.
SILENT_RUN_SECONDS = 540
#: Flow run states after which a run holds nothing any more.
ENDED_STATES = frozenset({"CRASHED", "FAILED", "CANCELLED", "COMPLETED"})


@dataclass(frozen=True)
class Holder:
    """One run's claim on a lock, as recorded next to the limit."""

    lease_id: str
    flow_run_id: str | None
    host: str
    pid: int
    since: str
    renewed: str

    @classmethod
    def mine(cls, lease_id: str, flow_run_id: str | None) -> Holder:
        now = utcnow().isoformat()
        return cls(lease_id, flow_run_id, socket.gethostname(), os.getpid(), now, now)

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "a run outside Prefect"
        return f"{run} (pid {self.pid} on {self.host}, since {self.since})"


def holder_variable(limit_name: str) -> str:
    """The Prefect variable that records a limit's holder."""
    return f"{limit_name}-holder"


def read_holder(client: Any, limit_name: str) -> Holder | None:
    """The recorded holder of ``limit_name``, or None (none recorded, or unreadable)."""
    variable = client.read_variable_by_name(holder_variable(limit_name))
    if variable is None:
        return None
    try:
        value = variable.value if isinstance(variable.value, dict) else json.loads(variable.value)
        return Holder(**value)
    except (TypeError, ValueError):
        return None


def holder_of_flow_run(client: Any, flow_run_id: str) -> Holder | None:
    """The lock record of ``flow_run_id`` (a run holds a lock while its body runs), if any."""
    for variable in client.read_variables():
        if not (variable.name.startswith("dr-") and variable.name.endswith("-holder")):
            continue
        value = variable.value
        if isinstance(value, dict) and value.get("flow_run_id") == flow_run_id:
            try:
                return Holder(**value)
            except TypeError:
                return None
    return None


def write_holder(client: Any, limit_name: str, holder: Holder) -> None:
    """Record ``holder`` for ``limit_name`` (create or overwrite)."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = holder_variable(limit_name)
    try:
        client.create_variable(VariableCreate(name=name, value=asdict(holder)))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=name, value=asdict(holder)))


def delete_holder(client: Any, limit_name: str, lease_id: str) -> None:
    """Remove the record of ``limit_name`` if it is still ours (``lease_id``)."""
    from prefect.exceptions import ObjectNotFound

    current = read_holder(client, limit_name)
    if current is None or current.lease_id != lease_id:
        return
    with contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(holder_variable(limit_name))


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _flow_run_state(client: Any, flow_run_id: str) -> str | None:
    from prefect.exceptions import ObjectNotFound

    try:
        run = client.read_flow_run(UUID(flow_run_id))
    except ObjectNotFound:
        return "DELETED"
    return run.state.type.value if run.state is not None else None


def why_dead(client: Any, holder: Holder, now: datetime | None = None) -> str | None:
    """Why ``holder`` holds nothing any more, or None while it may still be alive."""
    if holder.flow_run_id:
        state = _flow_run_state(client, holder.flow_run_id)
        if state in ENDED_STATES or state == "DELETED":
            return f"its flow run is {state}"
    if holder.host == socket.gethostname() and _pid_gone(holder.pid):
        return f"its process {holder.pid} on {holder.host} is gone"
    silent = ((now or utcnow()) - datetime.fromisoformat(holder.renewed)).total_seconds()
    if silent > STALE_SECONDS:
        return f"it has not renewed its lease for {silent:.0f} s"
    return None


def mark_crashed(client: Any, holder: Holder, reason: str) -> bool:
    """Mark the dead holder's flow run Crashed if Prefect still thinks it runs."""
    from prefect.states import Crashed

    if not holder.flow_run_id:
        return False
    state = _flow_run_state(client, holder.flow_run_id)
    if state is None or state in ENDED_STATES or state == "DELETED":
        return False
    client.set_flow_run_state(
        UUID(holder.flow_run_id),
        Crashed(message=f"the run's process died without finishing: {reason}"),
        force=True,
    )
    run_logger().warning("flow run %s marked Crashed: %s", holder.flow_run_id, reason)
    return True


def release_lease(client: Any, lease_id: str) -> None:
    """Free a lease's slots (a no-op when the lease is already gone)."""
    client.release_concurrency_slots_with_lease(UUID(lease_id))


def ensure_crash_automation(client: Any) -> str:
    """Create the automation that marks silent flow runs Crashed, if missing.

    Why: a run killed while nobody waits for its lock would stay Running forever; with
    flow run heartbeats on, Prefect itself notices the silence and marks it Crashed.

    Returns:
        ``"created"`` or ``"unchanged"``.
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    if client.read_automations_by_name(CRASH_AUTOMATION):
        return "unchanged"
    ended = [f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")]
    client.create_automation(
        AutomationCore(
            name=CRASH_AUTOMATION,
            description="DR pipelines: a flow run whose heartbeats stop is marked Crashed",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *ended},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=SILENT_RUN_SECONDS),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {SILENT_RUN_SECONDS} s: the run's process is gone",
                )
            ],
        )
    )
    return "created"


class LeaseRenewer:
    """Renews our lease every :data:`RENEW_SECONDS` and stamps our records, in a thread.

    A failed renewal is logged once (and again once it recovers): the recovery goes on; the
    worst case is another run taking the lock over after :data:`STALE_SECONDS`.
    """

    def __init__(self, names: list[str], holder: Holder) -> None:
        self.names = names
        self.holder = holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dr-lock-lease", daemon=True)

    def __enter__(self) -> LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def renew_once(self, client: Any) -> None:
        client.renew_concurrency_lease(UUID(self.holder.lease_id), lease_duration=LEASE_SECONDS)
        stamped = replace(self.holder, renewed=utcnow().isoformat())
        for name in self.names:
            write_holder(client, name, stamped)

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self._renew_with_new_client()
            except Exception as exc:  # noqa: BLE001 - never kill the recovery over this
                if self._stop.is_set():
                    return  # released meanwhile: a renewal after the release is noise
                if not failing:
                    run_logger().warning("lock lease renewal failed (will retry): %s", exc)
                failing = True
            else:
                if failing:
                    run_logger().info("lock lease renewed again")
                failing = False

    def _renew_with_new_client(self) -> None:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            if not self._stop.is_set():
                self.renew_once(client)
