"""The lab's PostgreSQL clusters: primary, streaming replica, control; dataset and seeds."""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import UTC, datetime

from psycopg import sql

from dr.errors import PreconditionError
from lab import prefect_server, seeds
from lab.db import APP_DB, APP_ROLE, app_login_ok, connect, heartbeat_ts, in_recovery, is_streaming
from lab.host import ClusterError, port_open, run_as_server
from lab.pgcluster import Cluster
from lab.state import (
    CONTROL,
    CONTROL_DATABASES,
    DATASET_SQL,
    PRIMARY,
    REPLICA,
    SECRET_BLOCKS,
    STREAMING_WAIT_SECONDS,
    LabState,
    clusters,
    ensure_secrets,
    mark_done,
    read_secret,
    wal_archive_dir,
)

log = logging.getLogger(__name__)


#: ``pg_controldata`` states of a data directory last run as a standby.
STANDBY_STATES = frozenset({"shut down in recovery", "in archive recovery"})


def _control_state(cluster: Cluster) -> str:
    """The data directory's ``Database cluster state`` (empty when unreadable)."""
    proc = run_as_server([cluster.bin("pg_controldata"), "-D", cluster.data_dir], check=False)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Database cluster state":
            return value.strip()
    return ""


def _has_signal_file(cluster: Cluster) -> bool:
    return any((cluster.data_dir / f).exists() for f in ("standby.signal", "recovery.signal"))


def _why_not_start(cluster: Cluster, others: tuple[Cluster, ...]) -> str | None:
    """Why starting ``cluster`` could make a second primary, or None when it is safe.

    A node that was a standby starts only with its signal file (without it, it comes up
    as a primary: a crashed failback leaves exactly that) unless it is the only node; a
    node that was a primary does not start while another node runs as a primary.
    """
    if _has_signal_file(cluster) or not others:
        return None  # no other node to be the primary: this one may have to be it
    state = _control_state(cluster)
    if state in STANDBY_STATES:
        return f"it was a standby ({state}) and has no standby.signal"
    for other in others:
        if other.is_running() and in_recovery(other) is False:
            return f"{other.name} already runs as the primary"
    return None


def start_cluster(cluster: Cluster, others: tuple[Cluster, ...] = ()) -> bool:
    """Start a cluster if needed; False (logged) when it cannot, or must not, start.

    Args:
        cluster: the cluster to start.
        others: the other nodes of its replication group (never two primaries).

    Raises:
        PreconditionError: another server (not the lab's) listens on the cluster's port.
    """
    if cluster.is_running() and cluster.is_ready():
        return True
    if not cluster.is_running() and port_open(cluster.port):
        raise PreconditionError(
            f"port {cluster.port} of the lab's {cluster.name} is used by another process"
        )
    refusal = _why_not_start(cluster, others) if cluster.exists() else None
    if refusal is not None:
        log.warning("not starting %s: %s (it would be a second primary)", cluster.name, refusal)
        return False
    for attempt in (1, 2):
        try:
            cluster.start(timeout_seconds=30)
            return True
        except ClusterError as exc:
            log.warning("%s did not start (attempt %s): %s", cluster.name, attempt, exc)
            # A killed postmaster's children may still be exiting: give them a moment.
            time.sleep(1.0)
    return False


def _fresh_primary(state: LabState, primary: Cluster, replica: Cluster) -> None:
    """A new system: initdb the primary with an empty WAL archive (names repeat per initdb)."""
    mark_done(state, "primary-initdb", False)
    mark_done(state, "replica-basebackup", False)
    replica.destroy()
    primary.destroy()
    wal = wal_archive_dir(state)
    shutil.rmtree(wal, ignore_errors=True)
    primary.initdb()
    primary.set_archive_dir(wal)
    if not start_cluster(primary):
        raise ClusterError(f"the new primary did not start; see {primary.log_dir}")
    mark_done(state, "primary-initdb", True)


def _rebuild_replica(state: LabState, source: Cluster, target: Cluster) -> Cluster:
    """Make ``target``'s folder a fresh streaming standby of ``source`` (pg_basebackup)."""
    step = "replica-basebackup" if target.name == REPLICA else "primary-initdb"
    mark_done(state, step, False)
    target.destroy()
    rebuilt = source.create_replica(
        target.data_dir, target.port, name=target.name, archive_dir=wal_archive_dir(state)
    )
    mark_done(state, step, True)
    return rebuilt


def _switch_back(state: LabState, primary: Cluster, replica: Cluster) -> None:
    """After a failover (replica1 promoted): make ``primary`` the primary again.

    Rebuild ``primary`` as a standby of the promoted replica, stop the replica cleanly
    (its last WAL, shutdown checkpoint included, reaches the standby), promote ``primary``
    and rebuild the replica from it. Nothing written to the promoted replica is lost, and
    ``dr.yaml`` stays true.
    """
    log.info("replica1 is the primary: switching roles back")
    new_primary = _rebuild_replica(state, replica, primary)
    if not is_streaming(replica, new_primary, STREAMING_WAIT_SECONDS):
        raise ClusterError("the rebuilt primary does not stream from replica1")
    replica.stop("fast")
    new_primary.promote()
    new_primary.set_settings({"primary_conninfo": "''", "primary_slot_name": "''"})
    new_primary.psql("SELECT pg_catalog.pg_reload_conf()")
    _rebuild_replica(state, new_primary, replica)


def ensure_postgres(state: LabState) -> str:
    """Primary + streaming hot standby, whatever state they were left in.

    Decision table (``P`` = the primary cluster, ``R`` = replica1):

    - no complete ``P`` and no ``R`` to recover from: a new system (initdb, empty archive);
    - no complete ``P`` but ``R`` has the data: promote ``R`` if needed, switch back;
    - ``R`` promoted (a failover drill): ``P`` is stale, so it is not started as a primary
      (it would archive WAL of a dead timeline); roles are switched back
      (:func:`_switch_back`); if ``P`` also runs as a primary (split brain), the node with
      the newest heartbeat wins and the other is rebuilt;
    - ``P`` primary: ``R`` streaming is unchanged, ``R`` down is started, ``R`` not
      streaming after a restart, or half-built, is rebuilt from ``P``;
    - ``P`` cannot start while ``R`` is a standby: promote ``R``, switch back.
    """
    cl = clusters(state)
    p, r = cl[PRIMARY], cl[REPLICA]
    actions: list[str] = []
    p_complete = "primary-initdb" in state.completed and p.exists()
    r_complete = "replica-basebackup" in state.completed and r.exists()
    if not r_complete and r.exists():
        r.destroy()
    r_was_running = r.is_running()
    r_up = r_complete and start_cluster(r, (p,) if p_complete else ())
    r_rec = in_recovery(r) if r_up else None
    if not p_complete:
        if r_rec is None:
            _fresh_primary(state, p, r)
            actions.append("created primary")
            _rebuild_replica(state, p, r)
            actions.append("created replica")
        else:
            if r_rec:
                r.promote()
            _switch_back(state, p, r)
            actions.append("rebuilt primary from replica1")
    elif r_rec is False:
        p_rec = in_recovery(p) if p.is_running() else None
        if p_rec is False and (heartbeat_ts(p) or datetime.min.replace(tzinfo=UTC)) >= (
            heartbeat_ts(r) or datetime.min.replace(tzinfo=UTC)
        ):
            log.warning("both nodes are primaries; primary has the newest heartbeat")
            _rebuild_replica(state, p, r)
            actions.append("rebuilt diverged replica")
        else:
            p.stop("immediate")
            _switch_back(state, p, r)
            actions.append("switched roles back (replica1 was the primary)")
    else:
        p_was_running = p.is_running()
        p_up = start_cluster(p, (r,))
        p_rec = in_recovery(p) if p_up else None
        if p_up and not p_was_running:
            actions.append("started primary")
        if p_rec is None:
            if r_rec is not True:
                raise ClusterError(
                    f"neither primary nor replica1 can run; see {p.log_dir} and {r.log_dir}"
                )
            log.warning("primary cannot start and replica1 is a standby: promoting replica1")
            r.promote()
            _switch_back(state, p, r)
            actions.append("rebuilt primary from replica1")
        else:
            if p_rec is True:
                log.warning("primary is a standby without a primary: promoting it")
                p.promote()
                actions.append("promoted primary")
            if r_rec is not True or not is_streaming(p, r, STREAMING_WAIT_SECONDS):
                _rebuild_replica(state, p, r)
                actions.append("rebuilt replica" if r_complete else "created replica")
            elif not r_was_running:
                actions.append("started replica")
    outcome = ensure_dataset(state, p)
    if outcome != "unchanged":
        actions.append(outcome)
    detail = f"primary :{p.port}, replica1 :{r.port} streaming"
    return f"{', '.join(actions) or 'unchanged'} ({detail})"


def ensure_dataset(state: LabState, primary: Cluster) -> str:
    """Database ``app`` with the shop schema, ``dr_heartbeat`` and the ``dr_app`` role."""
    password = read_secret(state.base_dir, "app-password")
    actions = []
    with connect(primary) as conn:
        # A drill that fenced this node (tasks.postgres.fence_by_connections) and did not
        # undo it leaves it read-only and closed: the lab's baseline is open and writable.
        conn.execute("SET default_transaction_read_only = off")
        fenced_ro = conn.execute(
            "SELECT setting FROM pg_catalog.pg_file_settings "
            "WHERE name = 'default_transaction_read_only' AND applied "
            "AND sourcefile LIKE '%%postgresql.auto.conf'"
        ).fetchone()
        if fenced_ro is not None:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_catalog.pg_reload_conf()")
            actions.append("reset default_transaction_read_only")
        closed = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s AND NOT datallowconn",
            (APP_DB,),
        ).fetchone()
        if closed is not None:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(APP_DB)
                )
            )
            actions.append(f"reopened database {APP_DB}")
        if (
            conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (APP_ROLE,)
            ).fetchone()
            is None
        ):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(password)
                )
            )
            actions.append("created role dr_app")
        if (
            conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (APP_DB,)
            ).fetchone()
            is None
        ):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(APP_DB)))
    with connect(primary, APP_DB) as conn:
        loaded = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = 'public' "
            "AND tablename = 'dr_lab_meta'"
        ).fetchone()
        if loaded is None:
            started = time.monotonic()
            with conn.transaction():
                # Whatever a crashed load left cannot exist (one transaction), but a
                # hand-made partial schema might: start from nothing.
                conn.execute(
                    "DROP SCHEMA IF EXISTS shop CASCADE; DROP TABLE IF EXISTS public.dr_heartbeat"
                )
                conn.execute(DATASET_SQL.read_text())  # type: ignore[arg-type]
            conn.execute("ANALYZE")
            actions.append(f"loaded dataset in {time.monotonic() - started:.1f} s")
    if not app_login_ok(primary, password) and _adopt_rotated_app_password(state, primary):
        actions.append("adopted the rotated dr_app password from its Prefect Secret block")
    elif not app_login_ok(primary, password):
        with connect(primary) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(password)
                )
            )
        actions.append("reset dr_app password to the lab's")
    return ", ".join(actions) or "unchanged"


def _adopt_rotated_app_password(state: LabState, primary: Cluster) -> bool:
    """Follow a rotation: if the Prefect Secret block holds a newer password that logs in.

    A breach drill (or a real rotation) writes the new password into the Secret block the
    lab's dr.yaml names. The block is then the source of truth: the lab's own copy in
    ``<dir>/secrets`` follows it, instead of resetting the role to the leaked password.
    """
    if not state.prefect_api_url or not prefect_server.is_up(state.prefect_api_url):
        return False
    block = next(b for b, n in SECRET_BLOCKS.items() if n == "app-password")
    rotated = prefect_server.read_secret_block(state.prefect_api_url, block)
    if not rotated or not app_login_ok(primary, rotated):
        return False
    path = state.base_dir / "secrets" / "app-password"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(rotated + "\n")
    os.replace(tmp, path)
    ensure_secrets(state.base_dir)  # rewrite secrets/env with the new value
    return True


def ensure_seeds(state: LabState) -> str:
    """The seed runbooks' databases on the primary and seed 001's foreign dump (lab.seeds)."""
    return seeds.ensure(clusters(state)[PRIMARY], state.base_dir)


def ensure_control(state: LabState, databases: tuple[str, ...] = CONTROL_DATABASES) -> str:
    """The control cluster, with ``databases`` (by default ``prefect`` and ``dr_history``)."""
    control = clusters(state)[CONTROL]
    actions = []
    if "control-initdb" not in state.completed or not control.exists():
        control.destroy()
        control.initdb({"archive_mode": "off", "max_connections": "100"})
        mark_done(state, "control-initdb", True)
        actions.append("created")
    was_running = control.is_running()
    if not start_cluster(control):
        raise ClusterError(f"the control cluster did not start; see {control.log_dir}")
    if not was_running and not actions:
        actions.append("started")
    with connect(control) as conn:
        for db in databases:
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (db,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
                actions.append(f"created database {db}")
    return f"{', '.join(actions) or 'unchanged'} (:{control.port})"
