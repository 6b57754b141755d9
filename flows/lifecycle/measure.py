"""RTO and RPO, measured never assumed: the one module every scenario takes them from.

- RTO: the scenario's own measurement if it made one, else ``restored_at - failure_at``
  (drills) or ``- declared_at`` (incidents); see :func:`derive_measurement`.
- RPO from the heartbeat: the newest row acknowledged before the failure against the rows
  present after recovery (:func:`probe_rpo`, :func:`heartbeat_rpo`): lost rows and seconds.
- :class:`Measuring`: the part of the run context that starts the probe, waits for health
  and records the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from dr.clock import utcnow
from dr.config import Mode, Objectives
from flows.lifecycle.base import RunBase
from flows.lifecycle.models import Measurement
from tasks.health.checks import HealthResult, wait_until_healthy
from tasks.postgres.heartbeat import (
    HEARTBEAT_TABLE,
    Ack,
    HeartbeatProbe,
    heartbeat_conninfo,
    heartbeat_seqs_present,
    newest_heartbeat_between,
)

__all__ = [
    "HeartbeatRPO",
    "Measuring",
    "derive_measurement",
    "heartbeat_rpo",
    "meets_objectives",
    "probe_rpo",
    "rpo_from_acks",
]


class HeartbeatRPO(NamedTuple):
    """Data lost at a failure, from the heartbeat.

    Attributes:
        lost_rows: acknowledged rows (before the failure) missing after recovery.
        seconds: newest acknowledged-before-failure row's ts minus the newest surviving
            one's ts; 0.0 when nothing was lost; None when it cannot be known.
        newest_acked_seq: the newest row acknowledged before the failure.
        newest_present_seq: the newest of those still present after recovery.
    """

    lost_rows: int
    seconds: float | None
    newest_acked_seq: int | None
    newest_present_seq: int | None


def rpo_from_acks(acks: Sequence[Ack], present: set[int], interval_seconds: float) -> HeartbeatRPO:
    """Heartbeat RPO from the rows acknowledged before the failure and the seqs present now.

    Args:
        acks: acknowledged rows up to the newest one before the failure, oldest first.
        present: which of their seqs are present after recovery.
        interval_seconds: the probe's pause between writes (bounds a total loss).

    Returns:
        A :class:`HeartbeatRPO`; no ``acks`` gives 0 rows, 0.0 seconds.
    """
    if not acks:
        return HeartbeatRPO(0, 0.0, None, None)
    last = acks[-1]
    lost = [a for a in acks if a.seq not in present]
    surviving = [a for a in acks if a.seq in present]
    if not lost:
        return HeartbeatRPO(0, 0.0, last.seq, last.seq)
    if surviving:
        newest = surviving[-1]
        seconds = (last.ts - newest.ts).total_seconds()
        return HeartbeatRPO(len(lost), seconds, last.seq, newest.seq)
    # Nothing of ours survived: the loss reaches back before the probe started; the
    # probe's own window is a lower bound.
    seconds = (last.ts - acks[0].ts).total_seconds() + interval_seconds
    return HeartbeatRPO(len(lost), seconds, last.seq, None)


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


class Measuring(RunBase):
    """The measuring part of :class:`flows.lifecycle.context.RunContext`."""

    @property
    def heartbeat(self) -> HeartbeatProbe | None:
        """The heartbeat probe started by :meth:`start_heartbeat`, if any."""
        return self._probe

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
    ) -> HeartbeatProbe | None:
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
        if not self.plan(
            "start", f"the heartbeat probe writing to {pg.heartbeat_db}.{HEARTBEAT_TABLE}"
        ):
            return None
        password = pg.password.resolve() if pg.password else None
        name = writer or f"dr-probe-{(self.flow_run_id or utcnow().strftime('%Y%m%d%H%M%S%f'))}"
        self._probe = HeartbeatProbe(
            heartbeat_conninfo(pg),
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
    ) -> HealthResult | None:
        """Wait for every end-to-end check to pass; stamp ``restored_at`` when they do.

        Checks: the target's HTTP and SQL health checks, its validation queries and, when
        the heartbeat probe runs, a heartbeat write acknowledged by the current primary after
        ``failure_at``. Each check's final answer is recorded.

        Args:
            timeout_seconds: give up after this long; defaults to the tier's RTO objective.
            interval_seconds: pause between rounds.
            critical: whether failing checks fail the run.

        Returns:
            The :class:`tasks.health.checks.HealthResult`; None in a dry run.
        """
        if not self.plan("poll", f"the end-to-end health checks of {self.target_name}"):
            return None
        pg = self.target.postgres
        result = wait_until_healthy(
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

    def measure_heartbeat_rpo(self) -> HeartbeatRPO | None:
        """Measure RPO from the heartbeat probe: acknowledged before ``failure_at`` vs present.

        Returns:
            The :class:`tasks.HeartbeatRPO`, also recorded as the run's RPO; None
            without a probe or ``failure_at``.
        """
        if self._probe is None or self.failure_at is None:
            return None
        conninfo = heartbeat_conninfo(self.target.postgres)
        pg = self.target.postgres
        password = pg.password.resolve() if pg.password else None
        rpo = probe_rpo(self._probe, conninfo, self.failure_at, password=password)
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
