"""The lab's state (``state.json``), folder, secrets and environments: what every step reads."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import PreconditionError
from lab import procs, seeds
from lab.db import APP_DB, APP_ROLE
from lab.host import free_port, port_open, run_as_server, server_user
from lab.pgcluster import Cluster
from lab.procs import ProcessInfo

log = logging.getLogger(__name__)

LAB_DIR_ENV = "DR_LAB_DIR"
ENGINE_ENV = "DR_LAB_ENGINE"

PRIMARY = "primary"
REPLICA = "replica1"
CONTROL = "control"
REGIONS = {PRIMARY: "primary-region", REPLICA: "dr-region", CONTROL: "control"}

APP_CONTAINER = "dr-lab-app"
APP_LABELS = {"dr-lab": "1"}
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
    "lab-alerts-token": "alerts-token",
}
#: Environment variable names used in dr.yaml instead of the blocks when Prefect is off.
SECRET_ENV = {
    "lab-app-password": "DR_LAB_APP_PASSWORD",
    "lab-slack-token": "DR_LAB_SLACK_TOKEN",
    "lab-aws-access-key-id": "DR_LAB_AWS_ACCESS_KEY_ID",
    "lab-aws-secret-access-key": "DR_LAB_AWS_SECRET_ACCESS_KEY",
    "lab-alerts-token": "DR_LAB_ALERTS_TOKEN",
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
     "monitoring", seeds.FOREIGN_FOLDER}
)  # fmt: skip


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
save_lock = threading.RLock()


def save_state(state: LabState) -> None:
    """Write ``state.json`` atomically (a crash never leaves half a file)."""
    with save_lock:
        state.updated_at = datetime.now(UTC)
        path = _state_path(state.base_dir)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(state.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)


def new_state(base_dir: Path) -> LabState:
    """A new lab's state: free loopback ports (never 5432) and the folder's layout."""
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
def locked(base_dir: Path) -> Iterator[None]:
    """One ``up``/``heal``/``down`` at a time per lab folder."""
    with (base_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_base_dir(base_dir: Path) -> None:
    """Create the lab folder and its sub-folders; the server user must traverse it."""
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


def read_secret(base_dir: Path, name: str) -> str:
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


def ensure_secrets(base_dir: Path) -> None:
    """Generate missing credentials (mode 600) and the ``secrets/env`` file naming them."""
    for name in SECRET_BLOCKS.values():
        read_secret(base_dir, name)
    env_file = base_dir / "secrets" / "env"
    body = "".join(
        f"export {SECRET_ENV[block]}={read_secret(base_dir, name)}\n"
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
        SECRET_ENV[block]: read_secret(state.base_dir, name)
        for block, name in SECRET_BLOCKS.items()
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
        "DB_PASSWORD": read_secret(state.base_dir, "app-password"),
        "HEARTBEAT_INTERVAL_MS": "50",
        "HEARTBEAT_WRITER": "app",
        # Every write the app got a COMMIT for, outside the database: drills count lost
        # acknowledged writes from it (the target's app_ack_log names the same file).
        "HEARTBEAT_ACK_LOG": str(ack_log_path(state)),
    }


def ack_log_path(state: LabState) -> Path:
    """The lab application's acknowledgement log (in the lab folder, mounted into its container)."""
    return state.base_dir / "ack" / "app.jsonl"


def env_fingerprint(env: Mapping[str, str]) -> str:
    """A short hash of an environment, to tell whether a process runs with it."""
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]


def spawn(
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
        log_file=log_path(state, name),
        marker=marker,
        env=env,
        fingerprint=fingerprint,
    )
    record_process(state, name, rec)
    return rec


def record_process(state: LabState, name: str, rec: ProcessInfo) -> None:
    """Remember a started process (PID, start time, command line) in the state."""
    with save_lock:
        state.processes[name] = rec
        save_state(state)


def log_path(state: LabState, name: str) -> Path:
    """The log file of a process the lab starts."""
    return state.base_dir / "logs" / f"{name}.log"


def free_or_ours(state: LabState, key: str, rec: ProcessInfo | None) -> int:
    """The component's port; a new one if a process the lab did not start holds it."""
    port = state.ports[key]
    if port_open(port) and not procs.owned(rec):
        new = free_port(avoid=list(state.ports.values()))
        log.warning("port %s for %s is taken by another process: using %s", port, key, new)
        with save_lock:
            state.ports[key] = port = new
    return port


def clusters(state: LabState) -> dict[str, Cluster]:
    """The lab's clusters as :class:`~lab.pgcluster.Cluster` objects.

    Returns:
        ``{"primary": ..., "replica1": ..., "control": ...}``.
    """
    return {
        info.name: Cluster(info.data_dir, info.port, name=info.name)
        for info in (state.primary, state.replica, state.control)
    }


def mark_done(state: LabState, step: str, done: bool) -> None:
    """Record that a build step finished (or is being redone) before moving on."""
    with save_lock:
        if done and step not in state.completed:
            state.completed.append(step)
        if not done and step in state.completed:
            state.completed.remove(step)
        save_state(state)


def wal_archive_dir(state: LabState) -> Path:
    """The lab's WAL archive folder."""
    return state.base_dir / "wal"
