"""The lab: a real DR environment on one machine, behind ``dr lab up | status | down``.

What :func:`up` brings up in its folder (default ``./.lab`` or ``$DR_LAB_DIR``)::

    <dir>/state.json        ports, PIDs, paths (:class:`LabState`)
    <dir>/dr.yaml           targets ``lab`` (file:// repository) and ``lab-s3`` (s3://),
                            plus one per runbook of shared/seeds (:mod:`lab.seeds`)
    <dir>/pg/primary        PostgreSQL primary  (region primary-region), WAL -> <dir>/wal
    <dir>/pg/replica1       streaming hot standby (region dr-region) with a slot
    <dir>/pg/control        small cluster: databases ``prefect`` and ``dr_history``
    <dir>/wal, <dir>/repo   WAL archive and file backup repository
    <dir>/seed-backups/     seed 001's cron-made dumps, played by ``up`` (db_backup_*.sql.gz)
    <dir>/secrets/          generated credentials, mode 600 (never printed)
    <dir>/podman/           the lab's own Podman service (Docker API) running dr-lab-app
    <dir>/prefect-home/     the lab's Prefect server (database on the control cluster)
    <dir>/logs/             logs of the processes the lab started

plus moto (S3 on loopback, buckets ``dr-lab`` and ``dr-lab-evidence`` with Object Lock) and
the Slack stand-in, each a background process on a free loopback port (never 5432).

Every component is an idempotent ``_ensure_*`` step: it reads what is there, repairs or
starts only what is missing or down, and says what it did (``created``, ``started``,
``unchanged``, ``rebuilt``...). So ``up`` twice is harmless and ``up`` after a crash or a
half-finished run repairs. The lab never touches what it did not start: processes are
stopped by the PIDs in ``state.json`` only after their start time and command line still
match, containers only on the lab's own Podman service, servers only in its own folder.

Helpers it orchestrates: :mod:`lab.pgcluster` (PostgreSQL clusters), :mod:`lab.podman`
(the Podman service), :mod:`lab.s3server` (moto), :mod:`lab.prefect_server`,
:mod:`lab.slack_standin`, :mod:`lab.procs` (background processes and their PIDs),
:mod:`lab.heartbeat_app` (the application), ``lab/dataset.sql`` and :mod:`lab.seeds` (the
seed runbooks' targets and databases).

Public API (stable; other modules and tests rely on it):

- :func:`up` ``(base_dir, *, prefect=True, engine="auto", console=None) -> LabState``
- :func:`status` ``(base_dir) -> dict`` (JSON-able)
- :func:`down` ``(base_dir) -> None``
- :func:`heal` ``(base_dir) -> LabState``: back to "primary + streaming replica + app
  writing" after a drill (switches roles back after a failover)
- :func:`clusters` ``(state) -> dict[str, Cluster]``, :func:`app_env` ``(state) -> dict``,
  :func:`lab_env` ``(state) -> dict``, :func:`load_state` ``(base_dir) -> LabState | None``,
  :func:`default_base_dir` ``() -> Path``
- constants ``SECRET_BLOCKS`` (Prefect Secret block name -> file in ``<dir>/secrets``) and
  ``SECRET_ENV`` (block name -> the environment variable ``dr.yaml`` names without Prefect)
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import getpass
import hashlib
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import yaml
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from dr.config import parse_config
from dr.errors import ConfigError, PreconditionError
from lab import prefect_server, procs, s3server, seeds
from lab.pgcluster import (
    Cluster,
    ClusterError,
    free_port,
    pg_bin_dir,
    port_open,
    run_as_server,
    server_user,
)
from lab.procs import ProcessInfo

__all__ = [
    "APP_CONTAINER",
    "ClusterInfo",
    "LabState",
    "ProcessInfo",
    "app_env",
    "clusters",
    "default_base_dir",
    "down",
    "heal",
    "lab_env",
    "load_state",
    "status",
    "up",
]

log = logging.getLogger(__name__)

LAB_DIR_ENV = "DR_LAB_DIR"
ENGINE_ENV = "DR_LAB_ENGINE"

PRIMARY = "primary"
REPLICA = "replica1"
CONTROL = "control"
REGIONS = {PRIMARY: "primary-region", REPLICA: "dr-region", CONTROL: "control"}

APP_CONTAINER = "dr-lab-app"
APP_LABELS = {"dr-lab": "1"}
APP_DB = "app"
APP_ROLE = "dr_app"
APP_SCRIPT = Path(__file__).with_name("heartbeat_app.py")
DATASET_SQL = Path(__file__).with_name("dataset.sql")
DATASET_VERSION = "shop-v1"
CONTROL_DATABASES = ("prefect", "dr_history")

BUCKET = "dr-lab"
EVIDENCE_BUCKET = "dr-lab-evidence"
AWS_REGION = "us-east-1"
SLACK_CHANNEL = "#dr-lab"

#: Prefect Secret block name -> file in <dir>/secrets holding the value.
SECRET_BLOCKS = {
    "lab-app-password": "app-password",
    "lab-slack-token": "slack-token",
    "lab-aws-access-key-id": "aws-access-key-id",
    "lab-aws-secret-access-key": "aws-secret-access-key",
}
#: Environment variable names used in dr.yaml instead of the blocks when Prefect is off.
SECRET_ENV = {
    "lab-app-password": "DR_LAB_APP_PASSWORD",
    "lab-slack-token": "DR_LAB_SLACK_TOKEN",
    "lab-aws-access-key-id": "DR_LAB_AWS_ACCESS_KEY_ID",
    "lab-aws-secret-access-key": "DR_LAB_AWS_SECRET_ACCESS_KEY",
}

HEARTBEAT_FRESH_SECONDS = 1.0
HEARTBEAT_WAIT_SECONDS = 60.0
STREAMING_WAIT_SECONDS = 30.0
PREFECT_WAIT_SECONDS = 90.0
PROCESS_WAIT_SECONDS = 60.0
#: What a lab folder may hold; down refuses to remove a folder with anything else in it
#: unless it has a state.json.
LAB_ENTRIES = frozenset(
    {".lock", "state.json", "state.json.tmp", "dr.yaml", "dr.yaml.tmp", "pg", "wal", "repo",
     "secrets", "logs", "podman", "prefect-home", "slack-state.json", "slack-state.json.tmp",
     seeds.FOREIGN_FOLDER}
)  # fmt: skip


# --------------------------------------------------------------------------- models


class ClusterInfo(BaseModel):
    """One of the lab's PostgreSQL clusters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    port: int
    data_dir: Path
    region: str


class LabState(BaseModel):
    """Everything ``up`` made, as written to ``<dir>/state.json``.

    Attributes:
        base_dir: the lab's folder.
        config_path: the generated ``dr.yaml``.
        primary / replica / control: the clusters (name, port, data_dir, region).
        moto_url: the S3-compatible endpoint.
        podman_base_url: the Docker API address of the lab's Podman service, or None.
        engine: where the app runs: ``podman`` (container) or ``process``.
        engine_reason: why the fallback was taken, when it was.
        app_container: the app's container name (also the config's docker service).
        prefect_api_url / prefect_ui_url: the lab's Prefect server, or None.
        slack_url: the Slack stand-in's Web API base URL (``.../api/``).
        slack_state_file: where the stand-in writes every message.
    """

    model_config = ConfigDict(extra="forbid")

    base_dir: Path
    config_path: Path
    primary: ClusterInfo
    replica: ClusterInfo
    control: ClusterInfo
    moto_url: str
    podman_base_url: str | None = None
    engine: Literal["podman", "process"] = "process"
    engine_reason: str = ""
    app_container: str = APP_CONTAINER
    prefect_api_url: str | None = None
    prefect_ui_url: str | None = None
    slack_url: str
    slack_state_file: Path
    file_repository: str
    s3_repository: str
    evidence_repository: str
    wal_archive: str
    ports: dict[str, int] = Field(default_factory=dict)
    completed: list[str] = Field(
        default_factory=list, description="Build steps that finished (half-done ones redo)."
    )
    processes: dict[str, ProcessInfo] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


# --------------------------------------------------------------------------- paths, state


def default_base_dir() -> Path:
    """The lab folder: ``$DR_LAB_DIR``, else ``.lab`` in the current directory."""
    return Path(os.environ.get(LAB_DIR_ENV) or ".lab").absolute()


def _state_path(base_dir: Path) -> Path:
    return base_dir / "state.json"


def load_state(base_dir: Path) -> LabState | None:
    """Read ``<dir>/state.json``; None when the lab was never brought up there."""
    path = _state_path(Path(base_dir).absolute())
    try:
        return LabState.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None


# Held while saving and while a worker thread changes a shared field of the state.
_save_lock = threading.RLock()


def _save_state(state: LabState) -> None:
    with _save_lock:
        state.updated_at = datetime.now(UTC)
        path = _state_path(state.base_dir)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(state.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)


def _new_state(base_dir: Path) -> LabState:
    taken: list[int] = []

    def port() -> int:
        p = free_port(avoid=taken)
        taken.append(p)
        return p

    ports = {name: port() for name in (PRIMARY, REPLICA, CONTROL, "moto", "prefect", "slack")}
    now = datetime.now(UTC)
    pg = base_dir / "pg"
    return LabState(
        base_dir=base_dir,
        config_path=base_dir / "dr.yaml",
        primary=ClusterInfo(
            name=PRIMARY, port=ports[PRIMARY], data_dir=pg / PRIMARY, region=REGIONS[PRIMARY]
        ),
        replica=ClusterInfo(
            name=REPLICA, port=ports[REPLICA], data_dir=pg / REPLICA, region=REGIONS[REPLICA]
        ),
        control=ClusterInfo(
            name=CONTROL, port=ports[CONTROL], data_dir=pg / CONTROL, region=REGIONS[CONTROL]
        ),
        moto_url=f"http://127.0.0.1:{ports['moto']}",
        slack_url=f"http://127.0.0.1:{ports['slack']}/api/",
        slack_state_file=base_dir / "slack-state.json",
        file_repository=f"file://{base_dir / 'repo'}",
        s3_repository=f"s3://{BUCKET}/lab",
        evidence_repository=f"s3://{EVIDENCE_BUCKET}/lab",
        wal_archive=f"file://{base_dir / 'wal'}",
        ports=ports,
        created_at=now,
        updated_at=now,
    )


@contextlib.contextmanager
def _locked(base_dir: Path) -> Iterator[None]:
    """One ``up``/``heal``/``down`` at a time per lab folder."""
    with (base_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare_base_dir(base_dir: Path) -> None:
    base_dir.mkdir(parents=True, exist_ok=True)
    base_dir.chmod(0o755)
    for sub in ("logs", "repo"):
        (base_dir / sub).mkdir(exist_ok=True)
    secrets_dir = base_dir / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    secrets_dir.chmod(0o700)
    user = server_user()
    if user is not None:
        # PostgreSQL runs as `postgres`: every folder above the lab must be traversable.
        probe = run_as_server(["test", "-x", base_dir], check=False)
        if probe.returncode != 0:
            raise PreconditionError(
                f"the {user} user cannot traverse {base_dir}: choose a lab folder whose "
                f"parents are world-executable (chmod o+x), e.g. with --dir or ${LAB_DIR_ENV}"
            )


# --------------------------------------------------------------------------- secrets


def _secret(base_dir: Path, name: str) -> str:
    """Read a generated credential from ``<dir>/secrets/NAME``, creating it (mode 600)."""
    path = base_dir / "secrets" / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    prefix = {"slack-token": "xoxb-lab-", "aws-access-key-id": "AKIALAB"}.get(name, "")
    value = prefix + secrets.token_urlsafe(24 if name != "aws-access-key-id" else 9)
    if name == "aws-access-key-id":
        value = prefix + secrets.token_hex(6).upper()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _ensure_secrets(base_dir: Path) -> None:
    for name in SECRET_BLOCKS.values():
        _secret(base_dir, name)
    env_file = base_dir / "secrets" / "env"
    body = "".join(
        f"export {SECRET_ENV[block]}={_secret(base_dir, name)}\n"
        for block, name in SECRET_BLOCKS.items()
    )
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)


def lab_env(state: LabState) -> dict[str, str]:
    """The lab's credentials as the environment variables ``dr.yaml`` names without Prefect.

    With ``up(prefect=False)`` the config refers to ``DR_LAB_*`` environment variables
    instead of Prefect Secret blocks; export these (or ``source <dir>/secrets/env``).
    """
    return {
        SECRET_ENV[block]: _secret(state.base_dir, name) for block, name in SECRET_BLOCKS.items()
    }


def app_env(state: LabState) -> dict[str, str]:
    """The lab application's environment: it writes through the ``primary`` cluster.

    Args:
        state: the lab.

    Returns:
        ``DB_HOST``, ``DB_PORT``, ``DB_NAME``, ``DB_USER``, ``DB_PASSWORD`` and the
        heartbeat settings. Holds a password: never log the values.
    """
    return {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(state.primary.port),
        "DB_NAME": APP_DB,
        "DB_USER": APP_ROLE,
        "DB_PASSWORD": _secret(state.base_dir, "app-password"),
        "HEARTBEAT_INTERVAL_MS": "50",
        "HEARTBEAT_WRITER": "app",
    }


def _fingerprint(env: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- processes


def _spawn(
    state: LabState,
    name: str,
    argv: list[str],
    *,
    marker: str,
    env: Mapping[str, str],
    fingerprint: str = "",
) -> ProcessInfo:
    """Start a background process logging to ``<dir>/logs/NAME.log``; record it at once."""
    rec = procs.spawn(
        argv,
        cwd=state.base_dir,
        log_file=_log_file(state, name),
        marker=marker,
        env=env,
        fingerprint=fingerprint,
    )
    _record(state, name, rec)
    return rec


def _record(state: LabState, name: str, rec: ProcessInfo) -> None:
    with _save_lock:
        state.processes[name] = rec
        _save_state(state)


def _log_file(state: LabState, name: str) -> Path:
    return state.base_dir / "logs" / f"{name}.log"


def _free_or_ours(state: LabState, key: str, rec: ProcessInfo | None) -> int:
    """The component's port; a new one if a process the lab did not start holds it."""
    port = state.ports[key]
    if port_open(port) and not procs.owned(rec):
        new = free_port(avoid=list(state.ports.values()))
        log.warning("port %s for %s is taken by another process: using %s", port, key, new)
        with _save_lock:
            state.ports[key] = port = new
    return port


# --------------------------------------------------------------------------- progress


class _Progress:
    """One line per component as it finishes, then a table of timings."""

    def __init__(self, console: Console | None) -> None:
        self.console = console or Console(stderr=True)
        self.timings: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(self, name: str, fn: Callable[..., str], *args: Any, **kwargs: Any) -> str:
        started = time.monotonic()
        try:
            outcome = fn(*args, **kwargs)
        except BaseException as exc:
            elapsed = time.monotonic() - started
            with self._lock:
                self.timings[name] = round(elapsed, 2)
                self.outcomes[name] = f"failed: {exc}"
                self.console.print(f"[red]✗[/] {name:<10} failed after {elapsed:.1f} s: {exc}")
            raise
        elapsed = time.monotonic() - started
        with self._lock:
            self.timings[name] = round(elapsed, 2)
            self.outcomes[name] = outcome
            self.console.print(f"[green]✓[/] {name:<10} {outcome} [dim]({elapsed:.1f} s)[/]")
        log.info("lab %s: %s in %.2f s", name, outcome, elapsed)
        return outcome

    def summary(self, total: float) -> None:
        table = Table(title=f"dr lab up: {total:.1f} s", show_edge=False)
        table.add_column("component")
        table.add_column("outcome")
        table.add_column("seconds", justify="right")
        for name, seconds in self.timings.items():
            table.add_row(name, self.outcomes.get(name, ""), f"{seconds:.1f}")
        self.console.print(table)


# --------------------------------------------------------------------------- postgres


def clusters(state: LabState) -> dict[str, Cluster]:
    """The lab's clusters as :class:`~lab.pgcluster.Cluster` objects.

    Returns:
        ``{"primary": ..., "replica1": ..., "control": ...}``.
    """
    return {
        info.name: Cluster(info.data_dir, info.port, name=info.name)
        for info in (state.primary, state.replica, state.control)
    }


def _conn(cluster: Cluster, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.conninfo(dbname), connect_timeout=3, autocommit=True, **kw)


def _in_recovery(cluster: Cluster) -> bool | None:
    """True for a standby, False for a primary, None when unreachable."""
    try:
        with _conn(cluster) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            return bool(row[0]) if row else None
    except psycopg.Error:
        return None


def _start(cluster: Cluster) -> bool:
    """Start a cluster if needed; False (logged) when it cannot start.

    Raises:
        PreconditionError: another server (not the lab's) listens on the cluster's port.
    """
    if cluster.is_running() and cluster.is_ready():
        return True
    if not cluster.is_running() and port_open(cluster.port):
        raise PreconditionError(
            f"port {cluster.port} of the lab's {cluster.name} is used by another process"
        )
    for attempt in (1, 2):
        try:
            cluster.start(timeout_seconds=30)
            return True
        except ClusterError as exc:
            log.warning("%s did not start (attempt %s): %s", cluster.name, attempt, exc)
            # A killed postmaster's children may still be exiting: give them a moment.
            time.sleep(1.0)
    return False


def _mark(state: LabState, step: str, done: bool) -> None:
    """Record that a build step finished (or is being redone) before moving on."""
    with _save_lock:
        if done and step not in state.completed:
            state.completed.append(step)
        if not done and step in state.completed:
            state.completed.remove(step)
        _save_state(state)


def _wal_dir(state: LabState) -> Path:
    return state.base_dir / "wal"


def _heartbeat_ts(cluster: Cluster) -> datetime | None:
    try:
        with _conn(cluster, APP_DB) as conn:
            row = conn.execute(
                "SELECT max(ts) FROM public.dr_heartbeat WHERE writer = 'app'"
            ).fetchone()
            return row[0] if row else None
    except psycopg.Error:
        return None


def _streaming(primary: Cluster, replica: Cluster, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with _conn(primary) as conn:
                row = conn.execute(
                    "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
                    (replica.name,),
                ).fetchone()
            if row and row[0] == "streaming":
                return True
        except psycopg.Error:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _fresh_primary(state: LabState, primary: Cluster, replica: Cluster) -> None:
    """A new system: initdb the primary with an empty WAL archive (names repeat per initdb)."""
    _mark(state, "primary-initdb", False)
    _mark(state, "replica-basebackup", False)
    replica.destroy()
    primary.destroy()
    wal = _wal_dir(state)
    shutil.rmtree(wal, ignore_errors=True)
    primary.initdb()
    primary.set_archive_dir(wal)
    if not _start(primary):
        raise ClusterError(f"the new primary did not start; see {primary.log_dir}")
    _mark(state, "primary-initdb", True)


def _rebuild_replica(state: LabState, source: Cluster, target: Cluster) -> Cluster:
    """Make ``target``'s folder a fresh streaming standby of ``source`` (pg_basebackup)."""
    step = "replica-basebackup" if target.name == REPLICA else "primary-initdb"
    _mark(state, step, False)
    target.destroy()
    rebuilt = source.create_replica(
        target.data_dir, target.port, name=target.name, archive_dir=_wal_dir(state)
    )
    _mark(state, step, True)
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
    if not _streaming(replica, new_primary, STREAMING_WAIT_SECONDS):
        raise ClusterError("the rebuilt primary does not stream from replica1")
    replica.stop("fast")
    new_primary.promote()
    new_primary.set_settings({"primary_conninfo": "''", "primary_slot_name": "''"})
    new_primary.psql("SELECT pg_catalog.pg_reload_conf()")
    _rebuild_replica(state, new_primary, replica)


def _ensure_postgres(state: LabState) -> str:
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
    r_up = r_complete and _start(r)
    r_rec = _in_recovery(r) if r_up else None
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
        p_rec = _in_recovery(p) if p.is_running() else None
        if p_rec is False and (_heartbeat_ts(p) or datetime.min.replace(tzinfo=UTC)) >= (
            _heartbeat_ts(r) or datetime.min.replace(tzinfo=UTC)
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
        p_up = _start(p)
        p_rec = _in_recovery(p) if p_up else None
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
            if r_rec is not True or not _streaming(p, r, STREAMING_WAIT_SECONDS):
                _rebuild_replica(state, p, r)
                actions.append("rebuilt replica" if r_complete else "created replica")
            elif not r_was_running:
                actions.append("started replica")
    outcome = _ensure_dataset(state, p)
    if outcome != "unchanged":
        actions.append(outcome)
    detail = f"primary :{p.port}, replica1 :{r.port} streaming"
    return f"{', '.join(actions) or 'unchanged'} ({detail})"


def _ensure_dataset(state: LabState, primary: Cluster) -> str:
    """Database ``app`` with the shop schema, ``dr_heartbeat`` and the ``dr_app`` role."""
    password = _secret(state.base_dir, "app-password")
    actions = []
    with _conn(primary) as conn:
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
    with _conn(primary, APP_DB) as conn:
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
    if not _app_login_ok(primary, password) and _adopt_rotated_app_password(state, primary):
        actions.append("adopted the rotated dr_app password from its Prefect Secret block")
    elif not _app_login_ok(primary, password):
        with _conn(primary) as conn:
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
    if not rotated or not _app_login_ok(primary, rotated):
        return False
    path = state.base_dir / "secrets" / "app-password"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(rotated + "\n")
    os.replace(tmp, path)
    _ensure_secrets(state.base_dir)  # rewrite secrets/env with the new value
    return True


def _app_login_ok(primary: Cluster, password: str) -> bool:
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=primary.port,
            dbname=APP_DB,
            user=APP_ROLE,
            password=password,
            connect_timeout=3,
        ):
            return True
    except psycopg.Error:
        return False


def _ensure_seeds(state: LabState) -> str:
    """The seed runbooks' databases on the primary and seed 001's foreign dump (lab.seeds)."""
    return seeds.ensure(clusters(state)[PRIMARY], state.base_dir)


def _ensure_control(state: LabState, databases: tuple[str, ...] = CONTROL_DATABASES) -> str:
    """The control cluster, with ``databases`` (by default ``prefect`` and ``dr_history``)."""
    control = clusters(state)[CONTROL]
    actions = []
    if "control-initdb" not in state.completed or not control.exists():
        control.destroy()
        control.initdb({"archive_mode": "off", "max_connections": "100"})
        _mark(state, "control-initdb", True)
        actions.append("created")
    was_running = control.is_running()
    if not _start(control):
        raise ClusterError(f"the control cluster did not start; see {control.log_dir}")
    if not was_running and not actions:
        actions.append("started")
    with _conn(control) as conn:
        for db in databases:
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (db,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
                actions.append(f"created database {db}")
    return f"{', '.join(actions) or 'unchanged'} (:{control.port})"


# --------------------------------------------------------------------------- moto, slack


def _ensure_moto(state: LabState) -> str:
    """moto's S3 server on loopback, with the lab's buckets (recreated after a restart)."""
    rec = state.processes.get("moto")
    actions = []
    if not procs.owned(rec):
        port = _free_or_ours(state, "moto", rec)
        state.moto_url = f"http://127.0.0.1:{port}"
        rec = s3server.start(state.base_dir, port, log_file=_log_file(state, "moto"))
        _record(state, "moto", rec)
        actions.append("started")
    assert rec is not None
    url = state.moto_url
    procs.wait_until(
        "moto", lambda: procs.owned(rec) and s3server.is_up(url), PROCESS_WAIT_SECONDS, rec.log_file
    )
    actions += s3server.ensure_buckets(
        url,
        access_key_id=_secret(state.base_dir, "aws-access-key-id"),
        secret_access_key=_secret(state.base_dir, "aws-secret-access-key"),
        buckets=(BUCKET,),
        object_lock_buckets=(EVIDENCE_BUCKET,),
    )
    return f"{', '.join(actions) or 'unchanged'} ({url}; in memory)"


def _slack_ok(state: LabState) -> bool:
    token = _secret(state.base_dir, "slack-token")
    try:
        resp = httpx.post(
            f"{state.slack_url}auth.test",
            headers={"Authorization": f"Bearer {token}"},
            timeout=1.0,
        )
        return resp.status_code == 200 and bool(resp.json().get("ok"))
    except (httpx.HTTPError, ValueError):
        return False


def _ensure_slack(state: LabState) -> str:
    """The Slack stand-in (lab/slack_standin.py) as a process, with the lab's token."""
    rec = state.processes.get("slack")
    outcome = "unchanged"
    if not procs.owned(rec):
        port = _free_or_ours(state, "slack", rec)
        state.slack_url = f"http://127.0.0.1:{port}/api/"
        env = procs.child_env(
            state.base_dir, {"SLACK_STANDIN_TOKEN": _secret(state.base_dir, "slack-token")}
        )
        argv = [
            sys.executable, "-m", "lab.slack_standin",
            "--port", str(port), "--state-file", str(state.slack_state_file),
        ]  # fmt: skip
        rec = _spawn(state, "slack", argv, marker=f"lab.slack_standin --port {port}", env=env)
        outcome = "started"
    assert rec is not None
    procs.wait_until(
        "the Slack stand-in",
        lambda: procs.owned(rec) and _slack_ok(state),
        PROCESS_WAIT_SECONDS,
        rec.log_file,
    )
    return f"{outcome} ({state.slack_url})"


# --------------------------------------------------------------------------- prefect


def _start_prefect(state: LabState) -> str:
    """Start the lab's Prefect server in the background (its database: control/prefect)."""
    rec = state.processes.get("prefect")
    if procs.owned(rec):
        return "already running"
    port = _free_or_ours(state, "prefect", rec)
    base = f"http://127.0.0.1:{port}"
    state.prefect_api_url, state.prefect_ui_url = f"{base}/api", base
    rec = prefect_server.start(
        state.base_dir,
        port,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{state.control.port}/prefect",
        home=state.base_dir / "prefect-home",
        log_file=_log_file(state, "prefect"),
    )
    _record(state, "prefect", rec)
    return "starting"


def _ensure_prefect(state: LabState, *, started_now: bool = False) -> str:
    """Wait for the Prefect server's health, restart it if it is stuck, then the blocks."""
    outcome = "started" if started_now else "unchanged"
    if not procs.owned(state.processes.get("prefect")) or state.prefect_api_url is None:
        _start_prefect(state)
        outcome = "started"
    rec, api = state.processes["prefect"], state.prefect_api_url
    assert api is not None
    try:
        procs.wait_until(
            "the Prefect server",
            lambda: procs.owned(rec) and prefect_server.is_up(api),
            PREFECT_WAIT_SECONDS,
            rec.log_file,
        )
    except PreconditionError:
        if not procs.owned(rec):
            raise
        log.warning("Prefect server pid %s does not answer: restarting it", rec.pid)
        procs.kill(rec)
        _start_prefect(state)
        rec = state.processes["prefect"]
        procs.wait_until(
            "the Prefect server",
            lambda: procs.owned(rec) and prefect_server.is_up(api),
            PREFECT_WAIT_SECONDS,
            rec.log_file,
        )
        outcome = "restarted"
    values = {block: _secret(state.base_dir, name) for block, name in SECRET_BLOCKS.items()}
    counts = prefect_server.ensure_secret_blocks(api, values)
    blocks = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"{outcome}, secret blocks {blocks} ({state.prefect_ui_url})"


# --------------------------------------------------------------------------- engine, app


def _choose_engine(requested: str) -> tuple[Literal["podman", "process"], str]:
    """Podman when it is installed, unless ``process`` is asked for (or forced by env).

    A lab switching engines (e.g. ``DR_LAB_ENGINE=process`` on a podman lab) has its old
    app removed by :func:`_ensure_app`.
    """
    from lab import podman

    forced = os.environ.get(ENGINE_ENV, "").strip()
    if requested == "auto" and forced:
        requested = forced
    if requested not in ("auto", "podman", "process"):
        raise ConfigError(
            f"engine must be auto, podman or process, not {requested!r}",
            [("engine", f"unknown engine {requested!r}")],
        )
    if requested == "process":
        reason = f"{ENGINE_ENV}=process" if forced == "process" else "engine=process requested"
        return "process", reason
    ok, reason = podman.available()
    if requested == "podman" and not ok:
        raise PreconditionError(f"the podman engine was requested but {reason}")
    if ok:
        return "podman", ""
    return "process", f"podman unavailable: {reason}"


def _podman_service(state: LabState) -> Any:
    from lab import podman

    return podman.PodmanService(state.base_dir / "podman")


def _ensure_podman(state: LabState) -> str:
    """The lab's own Podman service (Docker API) and the busybox image the app runs on."""
    from lab import podman

    service = _podman_service(state)
    outcome = "unchanged" if service.running() else "started"
    state.podman_base_url = service.start()
    if podman.ensure_busybox_image(service):
        outcome += ", imported image"
    return f"{outcome} ({state.podman_base_url})"


def _ensure_podman_or_fallback(state: LabState, requested: str) -> str:
    """Start Podman; with ``engine="auto"`` a failure falls back to a local process."""
    try:
        return _ensure_podman(state)
    except Exception as exc:
        if requested != "auto":
            raise
        log.warning("podman could not start, running the app as a local process: %s", exc)
        state.engine, state.engine_reason = "process", f"podman failed to start: {exc}"
        state.podman_base_url = None
        return f"failed, falling back to a local process ({exc})"


def _docker_client(state: LabState) -> Any:
    from tasks.containers import make_client

    return make_client(state.podman_base_url, timeout_seconds=30)


def _find_app_container(client: Any, name: str) -> Any | None:
    for container in client.containers.list(all=True, filters={"name": name}):
        if container.name == name:
            return container
    return None


def _container_env(container: Any) -> dict[str, str]:
    env = (container.attrs.get("Config") or {}).get("Env") or []
    return dict(item.split("=", 1) for item in env if "=" in item)


def _app_argv() -> list[str]:
    return [sys.executable, str(APP_SCRIPT)]


def _ensure_app(state: LabState) -> str:
    """The heartbeat writer, pointed at the primary: a container, or a local process."""
    env = app_env(state)
    if state.engine == "podman":
        if procs.kill(state.processes.get("app")):
            state.processes.pop("app", None)
            _save_state(state)
        return _ensure_app_container(state, env)
    if state.podman_base_url and _podman_service(state).running():
        client = _docker_client(state)
        old = _find_app_container(client, state.app_container)
        if old is not None:
            old.remove(force=True)
    return _ensure_app_process(state, env)


def _ensure_app_container(state: LabState, env: dict[str, str]) -> str:
    from lab import podman

    client = _docker_client(state)
    container = _find_app_container(client, state.app_container)
    action = "created"
    if container is not None:
        current = _container_env(container)
        if all(current.get(k) == v for k, v in env.items()):
            if container.status == "running":
                return f"unchanged (container {state.app_container})"
            container.start()
            return f"started (container {state.app_container})"
        # Pointed elsewhere (e.g. by a failover drill) or stale credentials: recreate.
        container.remove(force=True)
        action = "recreated"
    podman.run_python_container(
        client,
        state.app_container,
        _app_argv(),
        mounts_extra=[podman.BindMount(APP_SCRIPT.parent, APP_SCRIPT.parent)],
        env={**env, "PYTHONUNBUFFERED": "1", procs.OWNER_ENV: str(state.base_dir)},
        labels=APP_LABELS,
    )
    return f"{action} (container {state.app_container})"


def _ensure_app_process(state: LabState, env: dict[str, str]) -> str:
    rec = state.processes.get("app")
    fingerprint = _fingerprint(env)
    if procs.owned(rec) and rec is not None and rec.fingerprint == fingerprint:
        return f"unchanged (process {rec.pid})"
    action = "restarted" if procs.kill(rec) else "started"
    argv = [*_app_argv(), f"--lab={state.base_dir}"]
    rec = _spawn(
        state,
        "app",
        argv,
        marker=f"{APP_SCRIPT} --lab={state.base_dir}",
        env=procs.child_env(state.base_dir, {**env, "PYTHONUNBUFFERED": "1"}),
        fingerprint=fingerprint,
    )
    return f"{action} (process {rec.pid})"


def _wait_heartbeat(state: LabState) -> str:
    """Wait until the app's newest heartbeat on the primary is younger than a second."""
    primary = clusters(state)[PRIMARY]
    deadline = time.monotonic() + HEARTBEAT_WAIT_SECONDS
    age: float | None = None
    while time.monotonic() < deadline:
        age = _heartbeat_age(primary)
        if age is not None and age < HEARTBEAT_FRESH_SECONDS:
            return f"fresh ({age * 1000:.0f} ms old)"
        time.sleep(0.1)
    where = (
        f"container {state.app_container} logs"
        if state.engine == "podman"
        else str(state.base_dir / "logs" / "app.log")
    )
    raise PreconditionError(
        f"the lab app is not writing heartbeats (newest is {age} s old); see {where}"
    )


def _heartbeat_age(primary: Cluster) -> float | None:
    try:
        with _conn(primary, APP_DB) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM pg_catalog.clock_timestamp() - ts)::float8 "
                "FROM public.dr_heartbeat WHERE writer = 'app' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return float(row[0]) if row else None
    except psycopg.Error:
        return None


# --------------------------------------------------------------------------- dr.yaml


def _lab_config(state: LabState, *, prefect_on: bool) -> dict[str, Any]:
    """The lab's ``dr.yaml`` as a mapping (validated by :func:`dr.config.parse_config`)."""

    def ref(block: str) -> dict[str, str]:
        return {"prefect_secret": block} if prefect_on else {"env": SECRET_ENV[block]}

    os_user = server_user() or getpass.getuser()
    bin_dir = str(pg_bin_dir())

    def node(info: ClusterInfo) -> dict[str, Any]:
        return {
            "name": info.name,
            "host": "127.0.0.1",
            "port": info.port,
            "region": info.region,
            "data_directory": str(info.data_dir),
            "bin_dir": bin_dir,
            "os_user": os_user,
            "log_directory": str(info.data_dir / "log"),
        }

    services = (
        [{"kind": "docker", "name": state.app_container, "role": "writer",
          "region": REGIONS[PRIMARY]}]
        if state.engine == "podman"
        else []
    )  # fmt: skip
    target: dict[str, Any] = {
        "tier": "critical",
        "description": "The local lab: PostgreSQL primary + streaming replica, heartbeat app.",
        "production": False,
        "drills_allowed": True,
        "postgres": {
            "primary": node(state.primary),
            "replicas": [node(state.replica)],
            "user": "postgres",
            "databases": [APP_DB],
            "heartbeat_database": APP_DB,
        },
        "backup": {"repository": state.file_repository, "wal_archive": state.wal_archive},
        "services": services,
        "health_checks": {
            "sql": [
                {"name": "customers-present", "sql": "SELECT count(*) > 0 FROM shop.customers",
                 "database": APP_DB},
                {"name": "orders-present", "sql": "SELECT count(*) > 0 FROM shop.orders",
                 "database": APP_DB},
            ]
        },
        "validation_queries": [
            {
                "name": "no-orphan-order-items",
                "sql": "SELECT i.order_id FROM shop.order_items i LEFT JOIN shop.orders o "
                "ON o.order_id = i.order_id WHERE o.order_id IS NULL LIMIT 1",
                "database": APP_DB,
                "expect": "no_rows",
            },
            {
                "name": "order-totals-match-lines",
                "sql": "SELECT o.order_id FROM shop.orders o JOIN (SELECT order_id, "
                "sum(quantity * unit_price) AS total FROM shop.order_items GROUP BY order_id) s "
                "ON s.order_id = o.order_id WHERE o.total <> s.total LIMIT 1",
                "database": APP_DB,
                "expect": "no_rows",
            },
            {
                "name": "every-customer-has-an-account",
                "sql": "SELECT NOT EXISTS (SELECT 1 FROM shop.customers c WHERE NOT EXISTS "
                "(SELECT 1 FROM shop.accounts a WHERE a.customer_id = c.customer_id))",
                "database": APP_DB,
                "expect": "true",
            },
        ],
        "slack_channel": SLACK_CHANNEL,
        "evidence_repository": state.evidence_repository,
    }  # fmt: skip
    target_s3 = copy.deepcopy(target)
    target_s3["description"] = "The same lab, backed up to the S3-compatible endpoint (moto)."
    target_s3["backup"]["repository"] = state.s3_repository
    seed_targets = seeds.targets(
        target,
        file_repository=state.file_repository,
        s3_bucket=BUCKET,
        evidence_bucket=EVIDENCE_BUCKET,
        base_dir=state.base_dir,
    )
    data: dict[str, Any] = {
        "version": 1,
        "tiers": seeds.tiers(),
        "targets": {"lab": target, "lab-s3": target_s3, **seed_targets},
        "slack": {
            "token": ref("lab-slack-token"),
            "base_url": state.slack_url,
            "default_channel": SLACK_CHANNEL,
        },
        "aws": {
            "region": AWS_REGION,
            "endpoint_url": state.moto_url,
            "access_key_id": ref("lab-aws-access-key-id"),
            "secret_access_key": ref("lab-aws-secret-access-key"),
        },
        "history": {
            "dsn": f"host=127.0.0.1 port={state.control.port} dbname=dr_history user=postgres"
        },
    }
    if state.engine == "podman" and state.podman_base_url:
        data["docker"] = {"base_url": state.podman_base_url}
    if prefect_on and state.prefect_api_url:
        data["prefect_api_url"] = state.prefect_api_url
        data["prefect_ui_url"] = state.prefect_ui_url
    return data


def _write_config(state: LabState, *, prefect_on: bool) -> str:
    data = _lab_config(state, prefect_on=prefect_on)
    parse_config(data, str(state.config_path))  # never write a config the flows would refuse
    text = (
        "# Written by `dr lab up` for the lab in this folder; rewritten on every up.\n"
        "# Targets after lab-s3 are the runbooks of shared/seeds (docs/runbooks.md).\n"
        + seeds.annotate(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    )
    try:
        if state.config_path.read_text() == text:
            return f"unchanged ({state.config_path})"
    except FileNotFoundError:
        pass
    tmp = state.config_path.with_name(state.config_path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, state.config_path)
    return f"written ({state.config_path})"


# --------------------------------------------------------------------------- up


def up(
    base_dir: Path | None = None,
    *,
    prefect: bool = True,
    engine: str = "auto",
    console: Console | None = None,
) -> LabState:
    """Bring the lab up, or repair it: every component is started or fixed only if needed.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`); created with mode 755
            (the ``postgres`` user must traverse it).
        prefect: start the lab's Prefect server and its Secret blocks (``--no-prefect``
            skips them; ``dr.yaml`` then names environment variables, see :func:`lab_env`).
        engine: ``auto`` (Podman if installed, else a local process; ``$DR_LAB_ENGINE``
            can force ``process``), ``podman`` or ``process``.
        console: where progress goes (a rich Console; default: standard error).

    Returns:
        The lab's state (also in ``<dir>/state.json``).

    Raises:
        PreconditionError: the folder is not usable, a port is taken by a foreign process,
            or a component did not come up (the message names its log).
        ClusterError: PostgreSQL could not be created or started.
    """
    started = time.monotonic()
    base_dir = Path(base_dir or default_base_dir()).absolute()
    _check_lab_folder(base_dir)
    _prepare_base_dir(base_dir)
    progress = _Progress(console)
    with _locked(base_dir):
        previous = load_state(base_dir)
        state = previous or _new_state(base_dir)
        progress.console.print(
            f"[bold]dr lab up[/] in {base_dir} ({'repair' if previous else 'new lab'})"
        )
        state.engine, state.engine_reason = _choose_engine(engine)
        _ensure_secrets(base_dir)
        _save_state(state)

        prefect_started: list[bool] = []

        def control_then_prefect() -> str:
            # The Prefect server is the slowest to start: start it as soon as its
            # database exists, then create the others.
            outcome = _ensure_control(state, ("prefect",))
            if prefect:
                said = _start_prefect(state)
                prefect_started.append(said == "starting")
                outcome += f"; prefect {said}"
            more = _ensure_control(state, CONTROL_DATABASES).split(" (:")[0]
            if more != "unchanged":
                outcome += f"; {more}"
            return outcome

        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=5, thread_name_prefix="lab-up") as pool:
            jobs: dict[str, Future[str]] = {
                "postgres": pool.submit(progress.run, "postgres", _ensure_postgres, state),
                "control": pool.submit(progress.run, "control", control_then_prefect),
                "moto": pool.submit(progress.run, "s3", _ensure_moto, state),
                "slack": pool.submit(progress.run, "slack", _ensure_slack, state),
            }
            if state.engine == "podman":
                jobs["podman"] = pool.submit(
                    progress.run, "podman", _ensure_podman_or_fallback, state, engine
                )
                # The docker SDK's factory (tasks.containers) is slow to import: do it here,
                # in the main thread, while the workers wait on servers.
                import tasks.containers  # noqa: F401
            for job in jobs.values():
                if job.exception() is not None:
                    errors.append(job.exception())  # type: ignore[arg-type]
        _save_state(state)
        if not errors:
            # The seed databases load while the app starts and the Prefect server comes up.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-seeds") as side:
                seeds_job = side.submit(progress.run, "seeds", _ensure_seeds, state)
                try:
                    progress.run("app", _ensure_app, state)
                    progress.run("heartbeat", _wait_heartbeat, state)
                    if prefect:
                        progress.run(
                            "prefect", _ensure_prefect, state, started_now=any(prefect_started)
                        )
                    seeds_job.result()
                    prefect_on = prefect or procs.owned(state.processes.get("prefect"))
                    progress.run("config", _write_config, state, prefect_on=prefect_on)
                except BaseException as exc:  # noqa: BLE001 - state is saved, then it is raised
                    errors.append(exc)
        total = time.monotonic() - started
        state.timings = {**progress.timings, "total": round(total, 2)}
        _save_state(state)
    progress.summary(total)
    if errors:
        raise errors[0]
    progress.console.print(
        f"[bold green]lab up[/] in {total:.1f} s — config {state.config_path}"
        + (f", Prefect UI {state.prefect_ui_url}" if state.prefect_ui_url and prefect else "")
    )
    return state


def heal(base_dir: Path | None = None, *, console: Console | None = None) -> LabState:
    """Bring the lab back to "primary + streaming replica + app writing" after a drill.

    After a failover drill (replica1 promoted, the app repointed) it switches the roles
    back without losing what was written to replica1; a missing or diverged replica is
    rebuilt from the primary; the app is recreated pointing at the primary. Faster than
    :func:`up`: moto, Slack and Prefect are left as they are.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`).
        console: where progress goes (default: standard error).

    Returns:
        The lab's state.

    Raises:
        PreconditionError: there is no lab in ``base_dir`` (run ``dr lab up`` first).
    """
    base_dir = Path(base_dir or default_base_dir()).absolute()
    state = load_state(base_dir)
    if state is None:
        raise PreconditionError(f"no lab in {base_dir}: run `dr lab up` first")
    progress = _Progress(console)
    with _locked(base_dir):
        progress.run("postgres", _ensure_postgres, state)
        progress.run("seeds", _ensure_seeds, state)
        if state.engine == "podman":
            progress.run("podman", _ensure_podman, state)
        progress.run("app", _ensure_app, state)
        progress.run("heartbeat", _wait_heartbeat, state)
        _save_state(state)
    return state


# --------------------------------------------------------------------------- status


def _query_one(
    cluster: Cluster, query: str, dbname: str = "postgres", params: tuple[Any, ...] = ()
) -> dict[str, Any] | None:
    """The first row of ``query`` as a dict; None when no row or the server is unreachable."""
    try:
        with _conn(cluster, dbname) as conn:
            cur = conn.execute(query, params or None)  # type: ignore[arg-type]
            row = cur.fetchone()
            if row is None:
                return None
            names = [d.name for d in cur.description or []]
            return dict(zip(names, row, strict=True))
    except psycopg.Error:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "is_finite"):  # Decimal
        return float(value)
    return value


def _node_status(cluster: Cluster, region: str) -> dict[str, Any]:
    up_ = cluster.is_running()
    info: dict[str, Any] = {
        "name": cluster.name,
        "port": cluster.port,
        "region": region,
        "data_dir": str(cluster.data_dir),
        "up": False,
        "role": "down",
        "pid": cluster.pid(),
    }
    if up_:
        rec = _in_recovery(cluster)
        info["up"] = rec is not None
        info["role"] = {True: "standby", False: "primary", None: "unreachable"}[rec]
    return info


def status(base_dir: Path | None = None) -> dict[str, Any]:
    """Report every component of the lab: up or down, and the numbers that matter.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`).

    Returns:
        A JSON-able dict: ``ok`` (everything up, replica streaming, heartbeat fresh),
        ``engine``, ``primary``, ``replica`` (state, ``lag_bytes``, ``lag_seconds``),
        ``control``, ``repositories`` (file, s3, evidence, wal), ``archiver``
        (``last_archived_wal``, time, ``failed_count``), ``s3_endpoint``, ``app``,
        ``prefect`` (URLs, health), ``slack``, ``heartbeat`` (``ts``, ``age_seconds``).
        ``{"exists": False, ...}`` when there is no lab in the folder.
    """
    base_dir = Path(base_dir or default_base_dir()).absolute()
    state = load_state(base_dir)
    if state is None:
        return {"exists": False, "base_dir": str(base_dir), "ok": False}
    cl = clusters(state)
    p, r, c = cl[PRIMARY], cl[REPLICA], cl[CONTROL]
    out: dict[str, Any] = {
        "exists": True,
        "base_dir": str(base_dir),
        "config_path": str(state.config_path),
        "engine": state.engine,
        "engine_reason": state.engine_reason,
    }
    primary = _node_status(p, REGIONS[PRIMARY])
    replica = _node_status(r, REGIONS[REPLICA])
    # The current primary is whichever node is not in recovery (after a failover: replica1).
    current = next((cl[n["name"]] for n in (primary, replica) if n["role"] == "primary"), None)
    standby = next((cl[n["name"]] for n in (replica, primary) if n["role"] == "standby"), None)
    primary["current_primary"] = current is p
    replica["current_primary"] = current is r
    replica.update({"streaming": False, "state": None, "lag_bytes": None, "lag_seconds": None})
    if current is not None and standby is not None:
        rep = _query_one(
            current,
            "SELECT state, sync_state, "
            "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::bigint "
            "AS lag_bytes, extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds "
            "FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
            params=(standby.name,),
        )
        stb = _query_one(
            standby,
            "SELECT pg_catalog.pg_last_xact_replay_timestamp() AS last_replay_ts, "
            "extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())"
            "::float8 AS replay_age_seconds, "
            "pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() "
            "AS caught_up",
        )
        target = replica if standby is r else primary
        if rep:
            lag_seconds = rep["replay_lag_seconds"]
            if lag_seconds is None and rep["lag_bytes"] == 0:
                lag_seconds = 0.0  # idle and caught up: pg_stat_replication shows NULL
            target.update(
                {
                    "streaming": rep["state"] == "streaming",
                    "state": rep["state"],
                    "sync_state": rep["sync_state"],
                    "lag_bytes": rep["lag_bytes"],
                    "lag_seconds": lag_seconds,
                    "upstream": current.name,
                }
            )
        if stb:
            target.update(
                {
                    "last_replay_ts": stb["last_replay_ts"],
                    "replay_age_seconds": stb["replay_age_seconds"],
                    "caught_up": stb["caught_up"],
                }
            )
    out["primary"], out["replica"] = primary, replica
    control = _node_status(c, REGIONS[CONTROL])
    out["control"] = control

    heartbeat: dict[str, Any] = {"up": False, "ts": None, "age_seconds": None, "seq": None}
    if current is not None:
        hb = _query_one(
            current,
            "SELECT seq, ts, extract(epoch FROM pg_catalog.clock_timestamp() - ts)::float8 "
            "AS age_seconds FROM public.dr_heartbeat WHERE writer = 'app' "
            "ORDER BY seq DESC LIMIT 1",
            APP_DB,
        )
        if hb:
            heartbeat.update(hb)
            heartbeat["node"] = current.name
            heartbeat["up"] = hb["age_seconds"] is not None and (
                hb["age_seconds"] < HEARTBEAT_FRESH_SECONDS
            )
    out["heartbeat"] = heartbeat

    archiver: dict[str, Any] = {"up": False}
    if current is not None:
        arch = _query_one(
            current,
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time, "
            "extract(epoch FROM pg_catalog.now() - last_archived_time)::float8 "
            "AS last_archived_age_seconds FROM pg_catalog.pg_stat_archiver",
        )
        if arch:
            archiver.update(arch)
            archiver["node"] = current.name
            archiver["up"] = arch["last_archived_wal"] is not None
    out["archiver"] = archiver

    moto_up = procs.owned(state.processes.get("moto")) and s3server.is_up(state.moto_url)
    out["s3_endpoint"] = {
        "url": state.moto_url,
        "up": moto_up,
        "pid": state.processes["moto"].pid if "moto" in state.processes else None,
        "note": s3server.IN_MEMORY_NOTE,
    }
    repo_path = base_dir / "repo"
    wal_path = base_dir / "wal"
    out["repositories"] = {
        "file": {
            "url": state.file_repository,
            "up": repo_path.is_dir() and os.access(repo_path, os.W_OK),
        },
        "s3": {
            "url": state.s3_repository,
            "endpoint": state.moto_url,
            "up": moto_up and procs.http_ok(f"{state.moto_url}/{BUCKET}", method="HEAD"),
            "note": s3server.IN_MEMORY_NOTE,
        },
        "evidence": {
            "url": state.evidence_repository,
            "endpoint": state.moto_url,
            "up": moto_up and procs.http_ok(f"{state.moto_url}/{EVIDENCE_BUCKET}", method="HEAD"),
            "object_lock": True,
        },
        "wal": {
            "url": state.wal_archive,
            "up": wal_path.is_dir(),
            "segments": sum(1 for f in wal_path.iterdir() if len(f.name) == 24)
            if wal_path.is_dir()
            else 0,
        },
    }
    out["app"] = _app_status(state)
    prefect_rec = state.processes.get("prefect")
    out["prefect"] = {
        "enabled": prefect_rec is not None,
        "api_url": state.prefect_api_url,
        "ui_url": state.prefect_ui_url,
        "pid": prefect_rec.pid if prefect_rec else None,
        "up": bool(
            procs.owned(prefect_rec)
            and state.prefect_api_url
            and prefect_server.is_up(state.prefect_api_url, timeout=3.0)
        ),
    }
    slack_rec = state.processes.get("slack")
    out["slack"] = {
        "url": state.slack_url,
        "state_file": str(state.slack_state_file),
        "pid": slack_rec.pid if slack_rec else None,
        "up": procs.owned(slack_rec) and _slack_ok(state),
    }
    required = [
        primary["role"] == "primary",
        replica["streaming"],
        control["up"],
        heartbeat["up"],
        moto_up,
        out["repositories"]["file"]["up"],
        out["app"]["up"],
        out["slack"]["up"],
    ]
    if out["prefect"]["enabled"]:
        required.append(out["prefect"]["up"])
    out["ok"] = all(required)
    return _jsonable(out)


def _app_status(state: LabState) -> dict[str, Any]:
    info: dict[str, Any] = {"engine": state.engine, "name": state.app_container, "up": False}
    if state.engine == "process":
        rec = state.processes.get("app")
        info.update({"pid": rec.pid if rec else None, "state": "down"})
        if procs.owned(rec):
            info.update({"up": True, "state": "running"})
        return info
    info["engine_url"] = state.podman_base_url
    if not state.podman_base_url or not _podman_service(state).running():
        info["state"] = "engine down"
        return info
    # A plain Docker API call over the socket: status must stay fast, and the SDK client
    # (tasks.containers) costs over a second to import and negotiate.
    code, body = _engine_request(
        state.podman_base_url, "GET", f"/containers/{state.app_container}/json"
    )
    if code == 404:
        info["state"] = "missing"
        return info
    if code != 200 or not isinstance(body, dict):
        info["state"] = f"engine error: HTTP {code}"
        return info
    env = dict(item.split("=", 1) for item in (body.get("Config") or {}).get("Env") or [])
    status_ = (body.get("State") or {}).get("Status", "unknown")
    info.update(
        {
            "state": status_,
            "up": status_ == "running",
            "id": str(body.get("Id", ""))[:12],
            "db_host": env.get("DB_HOST"),
            "db_port": int(env["DB_PORT"]) if env.get("DB_PORT") else None,
        }
    )
    return info


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _engine_request(base_url: str, method: str, path: str) -> tuple[int, Any]:
    """One Docker API call on the lab's Podman socket: (HTTP status or 0, decoded JSON)."""
    conn = _UnixHTTPConnection(base_url.removeprefix("unix://"), timeout=15.0)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None
    except OSError:
        return 0, None
    finally:
        conn.close()


# --------------------------------------------------------------------------- down


def _rmtree(path: Path) -> None:
    def onerror(func: Callable[..., Any], target: str, _exc: Any) -> None:
        # vfs layers hold read-only folders: make them writable, then retry.
        with contextlib.suppress(OSError):
            parent = os.path.dirname(target)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            os.chmod(target, os.stat(target).st_mode | stat.S_IWUSR)
        with contextlib.suppress(FileNotFoundError):
            func(target)

    shutil.rmtree(path, onerror=onerror)


def _check_lab_folder(base_dir: Path) -> None:
    """Refuse to adopt or remove a folder that holds anything but a lab.

    Raises:
        PreconditionError: the folder has no ``state.json`` and holds foreign entries.
    """
    if not base_dir.is_dir() or (base_dir / "state.json").exists():
        return
    foreign = sorted(p.name for p in base_dir.iterdir() if p.name not in LAB_ENTRIES)
    if foreign:
        raise PreconditionError(
            f"{base_dir} is not a lab folder (it holds {', '.join(foreign[:5])}): "
            "choose an empty or new folder with --dir"
        )


def _remove_lab_containers(base_url: str) -> int:
    """Force-remove the containers labelled ``dr-lab=1`` on the lab's own engine."""
    query = urllib.parse.quote(json.dumps({"label": ["dr-lab=1"]}))
    code, listed = _engine_request(base_url, "GET", f"/containers/json?all=true&filters={query}")
    removed = 0
    for item in listed if code == 200 and isinstance(listed, list) else []:
        rc, _ = _engine_request(base_url, "DELETE", f"/containers/{item['Id']}?force=true&t=0")
        removed += rc in (200, 204)
    return removed


def down(base_dir: Path | None = None, *, console: Console | None = None) -> None:
    """Stop everything the lab started and remove its folder.

    Only the lab's own things are touched: processes by the PIDs in ``state.json`` (after
    checking their start time and command line), containers labelled ``dr-lab=1`` on the
    lab's own Podman service, PostgreSQL servers whose data directory is in the folder.
    Anything else still carrying the lab's ``DR_LAB_OWNER`` marker is stopped last.
    Components stop in parallel.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`).
        console: where progress goes (default: standard error).

    Raises:
        PreconditionError: the folder is not a lab's (it is left untouched).
    """
    base_dir = Path(base_dir or default_base_dir()).absolute()
    out = console or Console(stderr=True)
    if not base_dir.exists():
        out.print(f"no lab in {base_dir}")
        return
    _check_lab_folder(base_dir)
    state = load_state(base_dir)
    started = time.monotonic()

    def stop_podman() -> str | None:
        podman_dir = base_dir / "podman"
        if not (podman_dir / "storage.conf").exists():
            return None
        from lab import podman

        service = podman.PodmanService(podman_dir)
        removed = _remove_lab_containers(service.base_url) if service.running() else 0
        service.stop()
        return f"podman service stopped ({removed} lab container(s) removed)"

    def stop_process(name: str) -> str | None:
        if state is not None and procs.kill(state.processes.get(name)):
            return f"{name} stopped"
        return None

    def stop_cluster(data_dir: Path) -> str | None:
        cluster = Cluster(data_dir, 1, name=data_dir.name)
        return f"postgres {data_dir.name} stopped" if cluster.stop("immediate") else None

    with _locked(base_dir):
        jobs: list[Callable[[], str | None]] = [stop_podman]
        jobs += [lambda n=name: stop_process(n) for name in ("app", "prefect", "moto", "slack")]
        pg_dir = base_dir / "pg"
        if pg_dir.is_dir():
            jobs += [
                lambda d=d: stop_cluster(d)
                for d in sorted(pg_dir.iterdir())
                if (d / "PG_VERSION").exists()
            ]
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="lab-down") as pool:
            futures = [pool.submit(job) for job in jobs]
        for future in futures:
            try:
                said = future.result()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest, then report
                out.print(f"[yellow]![/] {exc}")
                continue
            if said:
                out.print(f"[green]✓[/] {said}")
        for pid in procs.owner_pids(base_dir):
            log.warning("stopping leftover lab process %s: %s", pid, procs.cmdline(pid)[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _rmtree(base_dir)
    out.print(f"[bold green]lab down[/] in {time.monotonic() - started:.1f} s: {base_dir} removed")
