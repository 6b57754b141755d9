"""RTO and RPO, measured never assumed: the one module every scenario takes them from.

- RTO: the scenario's own measurement if it made one, else ``restored_at - failure_at``
  (drills) or ``- declared_at`` (incidents); see :func:`derive_measurement`.
- RPO from the heartbeat: the newest row acknowledged before the failure against the rows
  present after recovery (:func:`probe_rpo`, :func:`heartbeat_rpo`): lost rows and seconds.
- :class:`flows.lifecycle.measuring.Measuring` (the run context's part that starts the probe,
  waits for health and records what the scenario measured) calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from dr.config import Mode, Objectives
from flows.lifecycle.models import Measurement, RpoBound
from tasks.postgres.heartbeat import (
    Ack,
    HeartbeatProbe,
    heartbeat_seqs_present,
    newest_heartbeat_between,
)

__all__ = [
    "CHAIN_STAGES",
    "HeartbeatRPO",
    "alert_chain_stages",
    "combine_rpo",
    "derive_measurement",
    "heartbeat_rpo",
    "lost_app_acks",
    "meets_objectives",
    "outage_start",
    "probe_rpo",
    "rpo_from_acks",
    "rto_phases",
]


class HeartbeatRPO(NamedTuple):
    """Data lost at a failure, from the heartbeat.

    Attributes:
        lost_rows: acknowledged rows (before the failure) missing after recovery.
        seconds: the time span the lost rows cover (newest lost row's ts minus the newest
            surviving write's ts); 0.0 when nothing was lost; None when it cannot be known.
        newest_acked_seq: the newest row acknowledged before the failure.
        newest_present_seq: the newest of those still present after recovery.
        bound: ``"exact"``, or ``"lower"`` when the loss reaches back past every write seen.
        basis: how ``seconds`` was found.
    """

    lost_rows: int
    seconds: float | None
    newest_acked_seq: int | None
    newest_present_seq: int | None
    bound: RpoBound | None = "exact"
    basis: str = ""


def rpo_from_acks(
    acks: Sequence[Ack],
    present: set[int],
    interval_seconds: float,
    *,
    survived_at: datetime | None = None,
    survived_basis: str = "",
) -> HeartbeatRPO:
    """Heartbeat RPO from the rows acknowledged before the failure and the seqs present now.

    Args:
        acks: acknowledged rows up to the newest one before the failure, oldest first.
        present: which of their seqs are present after recovery.
        interval_seconds: the probe's pause between writes (bounds a total loss).
        survived_at: the newest write known to have survived from another source (the
            application's acknowledgements, the new primary's WAL position); used when
            every row in ``acks`` was lost.
        survived_basis: what ``survived_at`` came from (for the basis).

    Returns:
        A :class:`HeartbeatRPO`; no ``acks`` gives 0 rows, 0.0 seconds.
    """
    if not acks:
        return HeartbeatRPO(0, 0.0, None, None, "exact", "nothing acknowledged before the failure")
    last = acks[-1]
    lost = [a for a in acks if a.seq not in present]
    surviving = [a for a in acks if a.seq in present]
    if not lost:
        return HeartbeatRPO(0, 0.0, last.seq, last.seq, "exact", "every acknowledged row present")
    if surviving:
        newest = surviving[-1]
        seconds = (last.ts - newest.ts).total_seconds()
        return HeartbeatRPO(
            len(lost), seconds, last.seq, newest.seq, "exact", "newest lost - newest surviving"
        )
    if survived_at is not None and survived_at <= acks[0].ts:
        seconds = (last.ts - survived_at).total_seconds()
        basis = f"every probe row lost: newest lost - newest surviving write ({survived_basis})"
        return HeartbeatRPO(len(lost), seconds, last.seq, None, "exact", basis)
    # Nothing survived and nothing else says how far back the loss reaches: the probe's own
    # window is only a lower bound, and says so.
    seconds = (last.ts - acks[0].ts).total_seconds() + interval_seconds
    basis = "lower bound: every probe row lost, the loss reaches back past the probe's window"
    return HeartbeatRPO(len(lost), seconds, last.seq, None, "lower", basis)


def lost_app_acks(acks: Sequence[Ack], present: dict[int, datetime]) -> tuple[list[Ack], list[Ack]]:
    """The application's acknowledged writes split into (lost, surviving), by set membership.

    The application numbers on from ``max(seq) + 1`` of the server it reaches, so after a
    loss it reuses seqs: a row counts as surviving only with the same ``seq`` *and* ``ts``.

    Args:
        acks: the application's acknowledgement log (``server ts`` in ``Ack.ts``).
        present: ``seq -> ts`` of the application's rows on the recovered primary.

    Returns:
        ``(lost, surviving)``, each oldest first.
    """
    lost: list[Ack] = []
    surviving: list[Ack] = []
    for ack in acks:
        ts = present.get(ack.seq)
        same = ts is not None and abs((ts - ack.ts).total_seconds()) < 1e-3
        (surviving if same else lost).append(ack)
    return lost, surviving


def lost_rows_basis(probe_lost: int, app_lost: int, app_acked: int, late_lost: int) -> str:
    """How ``lost_rows`` was counted, in words (the run's ``lost_rows_basis``).

    Args:
        probe_lost: the probe's acknowledged rows missing after recovery.
        app_lost: the application's acknowledged writes missing after recovery.
        app_acked: how many writes the application's acknowledgement log holds.
        late_lost: of those lost, how many were acknowledged at or after ``failure_at``.
    """
    text = f"acknowledged writes missing after recovery: {probe_lost} probe row(s)"
    if app_acked:
        text += f", {app_lost} of {app_acked} application write(s)"
    if late_lost:
        text += f" ({late_lost} of them acknowledged at or after failure_at)"
    return text


def combine_rpo(
    probe: HeartbeatRPO,
    app_lost: Sequence[Ack],
    app_surviving: Sequence[Ack],
    probe_acks: Sequence[Ack],
) -> HeartbeatRPO:
    """One RPO from the probe's and the application's acknowledged writes.

    Lost rows add up; the span runs from the newest surviving write of either writer to the
    newest lost one. The application's log can turn a probe-only lower bound exact.

    Args:
        probe: :func:`rpo_from_acks` of the probe.
        app_lost: the application's lost acknowledged writes (:func:`lost_app_acks`).
        app_surviving: its surviving ones.
        probe_acks: the probe's acknowledged writes before the failure.

    Returns:
        A :class:`HeartbeatRPO` over both writers.
    """
    if not app_lost and not app_surviving:
        return probe
    lost_rows = probe.lost_rows + len(app_lost)
    if lost_rows == 0:
        return probe._replace(basis="every acknowledged row present (probe and application)")
    probe_present = probe.newest_present_seq
    probe_lost_ts = [a.ts for a in probe_acks if probe_present is None or a.seq > probe_present]
    probe_lost_ts = probe_lost_ts if probe.lost_rows else []
    lost_ts = [a.ts for a in app_lost] + probe_lost_ts
    newest_lost, oldest_lost = max(lost_ts), min(lost_ts)
    kept = [a.ts for a in app_surviving if a.ts <= oldest_lost]
    kept += [a.ts for a in probe_acks if probe_present is not None and a.seq <= probe_present]
    kept = [t for t in kept if t <= oldest_lost]
    if kept:
        seconds = (newest_lost - max(kept)).total_seconds()
        basis = "newest lost acknowledged write - newest surviving one (probe and application)"
        return HeartbeatRPO(
            lost_rows, seconds, probe.newest_acked_seq, probe_present, "exact", basis
        )
    seconds = max((newest_lost - oldest_lost).total_seconds(), probe.seconds or 0.0)
    basis = "lower bound: every acknowledged write seen was lost (probe and application)"
    return HeartbeatRPO(lost_rows, seconds, probe.newest_acked_seq, None, "lower", basis)


def probe_rpo(
    probe: HeartbeatProbe,
    conninfo_new_primary: str,
    failure_at: datetime,
    *,
    password: str | None = None,
) -> HeartbeatRPO:
    """Heartbeat RPO of a probe: acknowledged-before-failure rows against rows present now.

    Args:
        probe: the probe that wrote during the drill.
        conninfo_new_primary: where to read after recovery (multi-host is fine).
        failure_at: when the failure was injected or detected.
        password: database password, if the role needs one.

    Returns:
        A :class:`HeartbeatRPO`; nothing acknowledged before the failure gives 0 rows,
        0.0 seconds.

    Raises:
        PostgresError: the rows could not be read.
    """
    last = probe.last_acked_before(failure_at)
    if last is None:
        return HeartbeatRPO(0, 0.0, None, None)
    acks = [a for a in probe.acked if a.seq <= last.seq]
    present = heartbeat_seqs_present(
        conninfo_new_primary, probe.writer, acks[0].seq, last.seq, password=password
    )
    return rpo_from_acks(acks, present, probe.interval_seconds)


def heartbeat_rpo(
    conninfo_new_primary: str,
    writer: str,
    acked_before_failure_seq: int,
    acked_before_failure_ts: datetime | None = None,
    *,
    first_seq: int = 1,
    password: str | None = None,
) -> HeartbeatRPO:
    """Heartbeat RPO from the newest sequence acknowledged before the failure.

    The writer is sequential (a seq is sent only after the previous one was acknowledged),
    and replication applies WAL in order, so what survives is a prefix: lost rows are the
    acknowledged seqs above the newest one present.

    Args:
        conninfo_new_primary: the recovered primary (multi-host is fine).
        writer: the writer's name.
        acked_before_failure_seq: newest seq acknowledged before the failure.
        acked_before_failure_ts: its ``ts``; needed for seconds when rows were lost.
        first_seq: the first seq this writer wrote in the measured window.
        password: database password, if needed.

    Returns:
        A :class:`HeartbeatRPO`.

    Raises:
        PostgresError: the rows could not be read.
    """
    newest = newest_heartbeat_between(
        conninfo_new_primary, writer, first_seq, acked_before_failure_seq, password=password
    )
    newest_seq = newest[0] if newest else None
    lost = acked_before_failure_seq - (newest_seq if newest_seq is not None else first_seq - 1)
    if lost <= 0:
        return HeartbeatRPO(0, 0.0, acked_before_failure_seq, newest_seq)
    seconds = None
    if acked_before_failure_ts is not None and newest is not None:
        seconds = (acked_before_failure_ts - newest[1]).total_seconds()
    return HeartbeatRPO(lost, seconds, acked_before_failure_seq, newest_seq)


def outage_start(
    mode: Mode,
    *,
    declared_at: datetime,
    failure_at: datetime | None,
    alert_starts_at: datetime | None = None,
    last_write_before: datetime | None = None,
) -> tuple[datetime, str]:
    """When the outage began: the last acknowledged write before the failure.

    Drills: the stamped ``failure_at``, never later than the last write seen before it.
    Incidents: the earliest of the known failure, the alert's ``startsAt`` and the
    declaration, moved back to the last acknowledged write before it (so a run resuming
    after a crashed run still starts at the real failure: the heartbeat gap).

    Returns:
        ``(moment, basis)``.
    """
    if mode == Mode.drill and failure_at is None and last_write_before is not None:
        return last_write_before, "the scenario's outage start"
    if mode == Mode.drill and failure_at is not None:
        if last_write_before is not None and last_write_before < failure_at:
            return last_write_before, "last acknowledged write before the stamped failure_at"
        return failure_at, "stamped failure_at"
    known = [
        (at, name)
        for at, name in (
            (failure_at, "failure_at"),
            (alert_starts_at, "the alert's startsAt"),
            (declared_at, "declared_at"),
        )
        if at is not None
    ]
    ref, name = min(known, key=lambda pair: pair[0])
    if last_write_before is not None and last_write_before <= ref:
        return last_write_before, f"last acknowledged application write before {name}"
    return ref, name


def rto_phases(
    start: datetime,
    *,
    declared_at: datetime,
    run_started_at: datetime | None,
    detected_at: datetime | None,
    restored_at: datetime | None,
    alert_starts_at: datetime | None = None,
) -> dict[str, float | None]:
    """The outage split: detection, dispatch and recovery (seconds, None: not known).

    detection: failure -> alert or declaration (drills: when the run observed it);
    dispatch: declaration -> run start; recovery: run start (or detection) -> restored.
    """

    def span(a: datetime | None, b: datetime | None) -> float | None:
        return None if a is None or b is None else round(max(0.0, (b - a).total_seconds()), 3)

    detected = detected_at or max(min(alert_starts_at or declared_at, declared_at), start)
    began = run_started_at or declared_at
    return {
        "detection": span(start, detected),
        "dispatch": span(max(declared_at, start), max(began, start)),
        "recovery": span(max(began, detected), restored_at),
    }


#: The stages of an outage recovered through monitoring: (name, from, to).
CHAIN_STAGES = (
    ("detection", "failure_at", "alert_starts_at"),
    ("alert", "alert_starts_at", "run_created_at"),
    ("dispatch", "run_created_at", "run_started_at"),
    ("recovery", "run_started_at", "promoted_at"),
    ("first_write", "promoted_at", "first_write_at"),
)


def alert_chain_stages(moments: dict[str, datetime | None]) -> dict[str, float | None]:
    """The outage through the alert chain, stage by stage, in seconds.

    detection: the failure -> the alert's ``startsAt``; alert: -> the flow run created;
    dispatch: -> the run's flow code running; recovery: -> the new primary promoted;
    first_write: -> the first acknowledged application write on it; ``total``: the
    failure -> that write. Spans are not clamped: a negative one shows clocks disagreeing.

    Args:
        moments: ``failure_at``, ``alert_starts_at``, ``run_created_at``,
            ``run_started_at``, ``promoted_at``, ``first_write_at`` (None: not reached).

    Returns:
        ``stage -> seconds`` (None when either end is unknown), plus ``total``.
    """

    def span(a: str, b: str) -> float | None:
        start, end = moments.get(a), moments.get(b)
        return None if start is None or end is None else round((end - start).total_seconds(), 3)

    stages = {name: span(a, b) for name, a, b in CHAIN_STAGES}
    stages["total"] = span("failure_at", "first_write_at")
    return stages


def derive_measurement(
    mode: Mode,
    *,
    declared_at: datetime,
    failure_at: datetime | None,
    restored_at: datetime | None,
    explicit: Measurement | None = None,
    alert_starts_at: datetime | None = None,
    run_started_at: datetime | None = None,
) -> Measurement:
    """RTO = the observed outage, and RPO, from what the scenario measured and the timeline.

    RTO runs from :func:`outage_start` (``explicit.failure_at`` is the last acknowledged
    write the scenario saw before the failure) to ``restored_at`` (the first acknowledged
    write after recovery), split by :func:`rto_phases` plus the scenario's own phases. A
    scenario's own ``rto_seconds`` is used only when nothing was stamped restored. RPO only
    comes from the scenario. A dry run measures nothing.

    Args:
        mode: the run's mode.
        declared_at: when the run was declared.
        failure_at: the stamped failure (drills inject it; incidents may know it).
        restored_at: the first moment every end-to-end check passed.
        explicit: what the scenario recorded with :meth:`RunContext.measure`.
        alert_starts_at: the alert's ``startsAt`` for alert-started runs.
        run_started_at: when this run started (dispatch ends).

    Returns:
        A new :class:`Measurement` with values and their bases.
    """
    out = Measurement(**(explicit.model_dump() if explicit else {}))
    if mode == Mode.dry_run:
        out.rto_basis = out.rto_basis or "dry run: nothing measured"
        out.rpo_basis = out.rpo_basis or "dry run: nothing measured"
        return out
    start, start_basis = outage_start(
        mode,
        declared_at=declared_at,
        failure_at=failure_at,
        alert_starts_at=alert_starts_at,
        last_write_before=out.failure_at,
    )
    if out.failure_at is not None and start == out.failure_at and out.failure_at_basis:
        start_basis = out.failure_at_basis
    out.failure_at, out.failure_at_basis = start, start_basis
    end = restored_at or out.restored_at
    out.restored_at = end
    if end is not None:
        out.restored_at_basis = (
            out.restored_at_basis or "first moment every end-to-end check passed"
        )
        out.rto_seconds = (end - start).total_seconds()
        out.rto_basis = f"restored_at - failure_at ({start_basis} -> {out.restored_at_basis})"
    elif out.rto_seconds is not None:
        out.rto_basis = out.rto_basis or "measured by the scenario"
    else:
        out.rto_basis = "not measured: service was never verified restored"
    phases = rto_phases(
        start,
        declared_at=declared_at,
        run_started_at=run_started_at,
        detected_at=out.detected_at,
        restored_at=end,
        alert_starts_at=alert_starts_at,
    )
    out.rto_phases = {**phases, **out.rto_phases}
    if out.rpo_seconds is None:
        out.rpo_basis = out.rpo_basis or "not measured"
        out.rpo_bound = None
    elif out.rpo_bound is None:
        out.rpo_bound = "exact"
    return out


def meets_objectives(measurement: Measurement, objectives: Objectives, mode: Mode) -> bool:
    """True when both RTO and RPO were measured and are within the objectives (<=).

    An RPO that is only a lower bound never meets them: the loss may be larger.

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
        and m.rpo_bound != "lower"
        and m.rto_seconds is not None
        and m.rpo_seconds is not None
        and m.rto_seconds <= objectives.rto_seconds
        and m.rpo_seconds <= objectives.rpo_seconds
    )
