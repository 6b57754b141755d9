"""``dr drill region-failover --via-alert``: kill the primary, then only watch the chain.

The drill injects the same fault as the region-failover drill (every process of the
primary frozen, then killed: :func:`tasks.faults.kill_local_server`) and does nothing else
to recover: Prometheus must see it, Alertmanager deliver it, ``dr serve-alerts`` create the
incident run, the worker start it and the flow fail over. The drill waits for that run to
end and measures, from the application's acknowledgement log, its heartbeat rows on the
new primary, the alert's ``startsAt`` and the run's timeline, each stage of the outage
(:func:`flows.lifecycle.measure.alert_chain_stages`). Meanwhile it asks both servers every
0.1 s which is primary: two at one moment fails the drill. Lost rows: acknowledged
application writes before the kill missing on the new primary (set membership,
:func:`flows.lifecycle.measure.lost_app_acks`).

Then it puts the lab back (the ``failback`` deployment, run by the same worker) under an
Alertmanager silence, so the planned switch-back starts no second incident.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dr.errors import PreconditionError
from flows.lifecycle.measure import alert_chain_stages, lost_app_acks
from lab import monitoring, monitoring_runs
from lab.db import APP_DB, in_recovery, query_one
from lab.monitoring_status import monitoring_status
from lab.pgcluster import Cluster
from lab.state import CONTROL, LabState, ack_log_path, clusters, load_state
from tasks import faults
from tasks.postgres.ack_log import read_ack_log
from tasks.postgres.heartbeat import Ack

__all__ = [
    "PrimarySampler",
    "check_ready",
    "drill_via_alert",
    "kill_primary",
    "known_runs",
    "measure_recovery",
    "put_back",
]

FLOW = "region-failover"
RUN_CREATED_TIMEOUT_SECONDS = 90.0
RUN_TIMEOUT_SECONDS = 180.0
PUT_BACK_TIMEOUT_SECONDS = 240.0
SAMPLE_SECONDS = 0.1


class PrimarySampler(threading.Thread):
    """Asks every server which role it has, every :data:`SAMPLE_SECONDS`, until stopped."""

    def __init__(self, nodes: dict[str, Cluster]) -> None:
        super().__init__(name="primary-sampler", daemon=True)
        self.nodes = nodes
        self.samples = 0
        self.max_primaries = 0
        self.two_primaries_at: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            at = datetime.now().astimezone()
            primaries = [n for n, c in self.nodes.items() if in_recovery(c) is False]
            self.samples += 1
            self.max_primaries = max(self.max_primaries, len(primaries))
            if len(primaries) > 1:
                self.two_primaries_at.append(f"{at.isoformat()}: {', '.join(primaries)}")
            self._halt.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def check_ready(state: LabState) -> None:
    """The chain must be up and the lab healthy before anything is killed."""
    mon = monitoring_status(state)
    if not mon["enabled"]:
        raise PreconditionError("the lab has no monitoring: run `dr lab up --monitoring` first")
    down = [
        name for name in ("prometheus", "alertmanager", "receiver", "worker") if not mon[name]["up"]
    ] + [f"exporter {n}" for n, e in mon["exporters"].items() if not e["up"]]
    if down:
        raise PreconditionError(f"drill not started, nothing changed: down: {', '.join(down)}")
    if mon["prometheus"]["firing"]:
        raise PreconditionError(
            f"drill not started: DR alerts already firing: {mon['prometheus']['firing']}"
        )
    cl = clusters(state)
    if in_recovery(cl[state.primary.name]) is not False:
        raise PreconditionError(f"drill not started: {state.primary.name} is not the primary")
    if in_recovery(cl[state.replica.name]) is not True:
        raise PreconditionError(f"drill not started: {state.replica.name} is not a standby")


def _history(state: LabState, run_id: str) -> dict[str, Any]:
    """The run's summary as the lifecycle recorded it in the drill history ({} if none)."""
    row = query_one(
        clusters(state)[CONTROL],
        "SELECT summary FROM public.dr_history WHERE flow_run_id = %s",
        "dr_history",
        (run_id,),
    )
    return dict(row["summary"]) if row else {}


def _promoted_at(summary: dict[str, Any]) -> datetime | None:
    """The end of the run's ``promote`` phase."""
    for phase in summary.get("phases") or []:
        if phase.get("name") == "promote" and phase.get("ended_at"):
            return monitoring_runs.parse_time(phase["ended_at"])
    return None


def _app_rows(node: Cluster, first: int, last: int) -> dict[int, datetime]:
    """``seq -> ts`` of the application's heartbeat rows on ``node``."""
    from lab.db import connect

    with connect(node, APP_DB) as conn:
        rows = conn.execute(
            "SELECT seq, ts FROM public.dr_heartbeat WHERE writer = 'app' "
            "AND seq BETWEEN %s AND %s",
            (first, last),
        ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def _writes(state: LabState, killed_at: datetime, new_primary: Cluster) -> dict[str, Any]:
    """Last acknowledged write before the kill, first on the new primary, lost rows."""
    acks = read_ack_log(ack_log_path(state))
    before = [a for a in acks if a.ts < killed_at]
    server = f"127.0.0.1:{new_primary.port}"
    after: list[Ack] = [a for a in acks if a.ts >= killed_at and a.server.endswith(server)]
    lost: list[Ack] = []
    if before:
        present = _app_rows(new_primary, min(a.seq for a in before), max(a.seq for a in before))
        lost, _kept = lost_app_acks(before, present)
    return {
        "last_write_before": before[-1].ts if before else None,
        "first_write_after": after[0].ts if after else None,
        "lost_rows": len(lost),
        "acknowledged_before": len(before),
        "lost_basis": f"application acknowledgements before the kill missing on {new_primary.name}"
        " (same seq and ts)",
    }


def kill_primary(state: LabState) -> datetime:
    """The region-failover drill's fault: freeze then kill every process of the primary.

    Returns:
        The moment the first process was frozen.

    Raises:
        PreconditionError: the primary was not running.
    """
    change = faults.kill_local_server(str(state.primary.data_dir))
    if not change.changed:
        raise PreconditionError(f"{state.primary.name} was not running: nothing injected")
    return datetime.fromisoformat(change.after["killed_at"])


def known_runs(state: LabState) -> set[str]:
    """The ids of the region-failover runs that exist now."""
    assert state.prefect_api_url is not None
    return {r["id"] for r in monitoring_runs.runs_of_flow(state.prefect_api_url, FLOW)}


def measure_recovery(
    state: LabState,
    killed_at: datetime,
    run: dict[str, Any],
    sampler: PrimarySampler,
    *,
    declared_at: datetime | None = None,
) -> dict[str, Any]:
    """Stages, RTO, lost rows and verdict of a recovery run that has ended.

    Args:
        state: the lab.
        killed_at: when the primary was killed.
        run: the ended flow run (Prefect API form); an alert's carries ``alert_starts_at``.
        sampler: the (stopped) primary sampler of the outage.
        declared_at: for a run no alert started: when a person declared the incident (it
            stands where the alert's ``startsAt`` would).

    Returns:
        The drill's result (see :func:`drill_via_alert`), without ``put_back``.
    """
    options = (run.get("parameters") or {}).get("options") or {}
    summary = _history(state, run["id"])
    new_name = (summary.get("details") or {}).get("new_primary") or state.replica.name
    writes = _writes(state, killed_at, clusters(state)[new_name])
    moments = {
        "failure_at": killed_at,
        "alert_starts_at": monitoring_runs.parse_time(options.get("alert_starts_at"))
        or declared_at,
        "run_created_at": monitoring_runs.parse_time(run.get("created")),
        "run_started_at": monitoring_runs.parse_time(run.get("start_time")),
        "promoted_at": _promoted_at(summary),
        "first_write_at": writes["first_write_after"],
    }
    last, first = writes["last_write_before"], writes["first_write_after"]
    result: dict[str, Any] = {
        "scenario": FLOW,
        "target": monitoring.LAB_TARGET,
        "mode": "drill-via-alert",
        "stages": alert_chain_stages(moments),
        "rto_seconds": round((first - last).total_seconds(), 3) if first and last else None,
        "rto_basis": "last acknowledged application write before the kill -> first on the "
        "new primary (the application's acknowledgement log)",
        "lost_rows": writes["lost_rows"],
        "lost_rows_basis": writes["lost_basis"],
        "acknowledged_before_kill": writes["acknowledged_before"],
        "moments": {k: v.isoformat() if v else None for k, v in moments.items()},
        "new_primary": new_name,
        "flow_run_id": run["id"],
        "run_state": run.get("state_type"),
        "run_outcome": summary.get("outcome"),
        "run_reason": summary.get("reason", ""),
        "run_rto_seconds": summary.get("rto_seconds"),
        "alert": options.get("alert_labels"),
        "samples": sampler.samples,
        "max_primaries": sampler.max_primaries,
        "two_primaries_at": sampler.two_primaries_at,
    }
    result["outcome"], result["reason"] = _verdict(result)
    return result


def _verdict(result: dict[str, Any]) -> tuple[str, str]:
    problems = []
    if result["run_state"] != "COMPLETED" or result["run_outcome"] != "passed":
        problems.append(
            f"the incident run ended {result['run_state']} ({result['run_outcome']}): "
            f"{result.get('run_reason') or ''}".rstrip(": ")
        )
    if result["max_primaries"] > 1:
        problems.append(f"two primaries at once: {result['two_primaries_at'][:3]}")
    if result["stages"]["total"] is None:
        problems.append("no acknowledged application write on the new primary")
    return ("failed", "; ".join(problems)) if problems else ("passed", "")


def drill_via_alert(base_dir: Path, *, failback: bool = True) -> dict[str, Any]:
    """Kill the lab's primary and measure its recovery by the monitoring chain alone.

    Args:
        base_dir: the lab folder (brought up with ``--monitoring``).
        failback: put the lab back afterwards (:func:`put_back`).

    Returns:
        A JSON-ready dict: ``outcome`` (``passed`` when the incident run passed, one
        primary at every sample and the application wrote on the new primary), ``reason``,
        ``stages`` (seconds: detection, alert, dispatch, recovery, first_write, total =
        kill -> first write), ``rto_seconds`` (last acknowledged write before the kill ->
        first after), ``lost_rows``, the moments, the run, the samples, ``put_back``.

    Raises:
        PreconditionError: the chain or the lab is not ready (nothing was changed), or the
            alert's run never came.
    """
    state = load_state(base_dir)
    if state is None:
        raise PreconditionError(f"no lab in {base_dir}: run `dr lab up --monitoring` first")
    check_ready(state)
    api = state.prefect_api_url
    assert api is not None
    known = known_runs(state)
    sampler = PrimarySampler({n: clusters(state)[n] for n in monitoring.MONITORED})
    sampler.start()
    try:
        killed_at = kill_primary(state)
        created = monitoring_runs.wait_new_run(
            api, FLOW, known=known, tags=("alert",), timeout_seconds=RUN_CREATED_TIMEOUT_SECONDS
        )
        run = monitoring_runs.wait_final(api, created["id"], timeout_seconds=RUN_TIMEOUT_SECONDS)
    finally:
        sampler.stop()
    result = measure_recovery(state, killed_at, run, sampler)
    result["put_back"] = put_back(state) if failback else "left failed over (--no-failback)"
    return result


def put_back(state: LabState) -> str:
    """Fail back (the ``failback`` deployment, through the worker) under a silence.

    The silence keeps the planned switch-back (the promoted node stops for a moment) from
    starting a second incident; it is lifted once Prometheus fires no DR alert any more.

    Returns:
        What was done.

    Raises:
        PreconditionError: the lab did not come back to primary + standby.
    """
    api = state.prefect_api_url
    assert api is not None
    silence_id = monitoring.silence(
        state, minutes=PUT_BACK_TIMEOUT_SECONDS / 60 + 5, comment="dr drill: failback"
    )
    try:
        run_id = monitoring_runs.create_run(api, "failback/failback", {"target": "lab"})
        run = monitoring_runs.wait_final(api, run_id, timeout_seconds=PUT_BACK_TIMEOUT_SECONDS)
        cl = clusters(state)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            roles = (in_recovery(cl[state.primary.name]), in_recovery(cl[state.replica.name]))
            if roles == (False, True) and not monitoring.firing_alerts(state):
                break
            time.sleep(0.5)
        else:
            raise PreconditionError(
                f"after the failback run ({run.get('state_type')}): primary/standby roles "
                f"{roles}, DR alerts {monitoring.firing_alerts(state)}"
            )
    finally:
        monitoring.expire_silence(state, silence_id)
    return f"failback run {run_id} {run.get('state_type')}; roles as configured; alerts resolved"
