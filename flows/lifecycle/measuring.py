"""The measuring part of the run context: the probe, the health wait, the recorded figures.

The arithmetic (outage, phases, lost rows, RPO and its bound) is in
:mod:`flows.lifecycle.measure`; this records what a scenario measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dr.clock import utcnow
from flows.lifecycle.base import RunBase
from flows.lifecycle.measure import (
    HeartbeatRPO,
    combine_rpo,
    lost_app_acks,
    lost_rows_basis,
    rpo_from_acks,
)
from flows.lifecycle.models import Measurement
from tasks.health.checks import HealthResult, wait_until_healthy
from tasks.postgres.heartbeat import (
    HEARTBEAT_TABLE,
    Ack,
    HeartbeatProbe,
    heartbeat_conninfo,
    heartbeat_rows_present,
    heartbeat_seqs_present,
)

__all__ = ["Measuring"]


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
        **fields: Any,
    ) -> Measurement:
        """Record measurements made by the scenario itself.

        Args:
            rto_seconds: used only when the run is never stamped restored.
            rpo_seconds: e.g. heartbeat loss, or backup age at ``failure_at``.
            lost_rows: acknowledged rows lost.
            rto_basis: how the RTO was measured.
            rpo_basis: how the RPO was measured.
            fields: any other :class:`Measurement` field (``rpo_bound``, ``failure_at``
                (the last acknowledged write before the failure), ``detected_at``,
                ``rto_phases`` (merged), their ``*_basis``, ``lost_rows_basis``).

        Returns:
            The run's measurement so far.
        """
        m = self.measurement
        if rto_seconds is not None:
            m.rto_seconds, m.rto_basis = float(rto_seconds), rto_basis or m.rto_basis
        if rpo_seconds is not None:
            m.rpo_seconds, m.rpo_basis = float(rpo_seconds), rpo_basis or m.rpo_basis
        elif rpo_basis:
            m.rpo_basis = rpo_basis
        if lost_rows is not None:
            m.lost_rows = int(lost_rows)
        for name, value in fields.items():
            if name not in Measurement.model_fields:
                raise TypeError(f"measure() got an unknown field {name!r}")
            if name == "rto_phases":
                m.rto_phases.update(value)
            else:
                setattr(m, name, value)
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

    def measure_heartbeat_rpo(
        self,
        *,
        app_writer: str | None = None,
        app_acks: Sequence[Ack] = (),
        survived_at: datetime | None = None,
        survived_basis: str = "",
    ) -> HeartbeatRPO | None:
        """Lost rows and RPO from every acknowledged write before ``failure_at``, by membership.

        The probe's rows and the application's acknowledgement log (``app_acks``) are
        checked against the rows present after recovery. When every probe row was lost, the
        newest surviving application write, else ``survived_at`` (the new primary's last
        replayed commit: its WAL position) says how far back the loss reaches; failing both,
        the figure is marked ``rpo_bound: "lower"``. Also records the last acknowledged
        write before the failure (the outage's start).

        Returns:
            The :class:`HeartbeatRPO`, also recorded as the run's RPO; None without a probe
            or ``failure_at``.
        """
        if self._probe is None or self.failure_at is None:
            return None
        failure_at = self.failure_at
        pg = self.target.postgres
        conninfo = heartbeat_conninfo(pg)
        password = pg.password.resolve() if pg.password else None
        last = self._probe.last_acked_before(failure_at)
        acks = [a for a in self._probe.acked if last is not None and a.seq <= last.seq]
        # Late acknowledgements (at or after failure_at) count when missing; present ones
        # (the new primary's) change nothing.
        late_probe = [a for a in self._probe.acked if last is None or a.seq > last.seq]
        app_before = [a for a in app_acks if a.acked_at < failure_at]
        lost_app, kept_app, late_lost = (
            _app_loss(conninfo, app_writer, app_acks, failure_at, password)
            if app_writer and app_acks
            else ([], [], [])
        )
        if kept_app:
            survived_at, survived_basis = kept_app[-1].ts, "the application's acknowledgements"
        probe_acks = [*acks, *late_probe]
        present = (
            heartbeat_seqs_present(
                conninfo,
                self._probe.writer,
                probe_acks[0].seq,
                probe_acks[-1].seq,
                password=password,
            )
            if probe_acks
            else set()
        )
        late_probe_lost = [a for a in late_probe if a.seq not in present]
        probe = rpo_from_acks(
            acks,
            present,
            self._probe.interval_seconds,
            survived_at=survived_at,
            survived_basis=survived_basis,
        )
        app_lost_count = len(lost_app) + len(late_lost)
        late_count = len(late_lost) + len(late_probe_lost)
        lost_app = sorted([*lost_app, *late_lost, *late_probe_lost], key=lambda a: a.ts)
        rpo = combine_rpo(probe, lost_app, kept_app, acks)
        writes = [a.acked_at for a in (*acks, *app_before)]  # the outage starts before it
        self.measure(
            rpo_seconds=rpo.seconds,
            lost_rows=rpo.lost_rows,
            rpo_basis=f"heartbeat: {rpo.basis}",
            rpo_bound=rpo.bound,
            lost_rows_basis=lost_rows_basis(
                probe.lost_rows + len(late_probe_lost), app_lost_count, len(app_acks), late_count
            ),
            **(
                {"failure_at": max(writes)}
                if writes and self.measurement.failure_at is None
                else {}
            ),
        )
        return rpo._replace(basis=f"{rpo.basis}; app lost {len(lost_app)}")

    def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.stop()


def _app_loss(
    conninfo: str, writer: str, acks: Sequence[Ack], failure_at: datetime, password: str | None
) -> tuple[list[Ack], list[Ack], list[Ack]]:
    """The application's writes: (lost before ``failure_at``, kept before it, lost after it).

    Every acknowledged write counts, also one acknowledged just after ``failure_at`` (its
    commit's answer was on the wire when the server died): missing, it is lost.
    """
    present = heartbeat_rows_present(
        conninfo, writer, min(a.seq for a in acks), max(a.seq for a in acks), password=password
    )
    lost, kept = lost_app_acks([a for a in acks if a.acked_at < failure_at], present)
    late_lost = lost_app_acks([a for a in acks if a.acked_at >= failure_at], present)[0]
    return lost, kept, late_lost
