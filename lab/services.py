"""The lab's side services: moto (S3), Redis (the app's cache), the Slack stand-in, Prefect."""

from __future__ import annotations

import logging
import shutil
import socket
import sys

import httpx

from dr.errors import PreconditionError
from lab import prefect_server, procs, s3server
from lab.host import free_port
from lab.state import (
    BUCKET,
    EVIDENCE_BUCKET,
    PREFECT_WAIT_SECONDS,
    PROCESS_WAIT_SECONDS,
    SECRET_BLOCKS,
    LabState,
    free_or_ours,
    log_path,
    read_secret,
    record_process,
    save_lock,
    spawn,
)

log = logging.getLogger(__name__)

#: The application's uploads (versioned: point-in-time restores read object versions).
UPLOADS_BUCKET = "dr-lab-uploads"
#: The machine's own Redis: the lab never uses (or frees) this port.
SYSTEM_REDIS_PORT = 6379


def ensure_moto(state: LabState) -> str:
    """moto's S3 server on loopback, with the lab's buckets (recreated after a restart)."""
    rec = state.processes.get("moto")
    actions = []
    if not procs.owned(rec):
        port = free_or_ours(state, "moto", rec)
        state.moto_url = f"http://127.0.0.1:{port}"
        rec = s3server.start(state.base_dir, port, log_file=log_path(state, "moto"))
        record_process(state, "moto", rec)
        actions.append("started")
    assert rec is not None
    url = state.moto_url
    procs.wait_until(
        "moto", lambda: procs.owned(rec) and s3server.is_up(url), PROCESS_WAIT_SECONDS, rec.log_file
    )
    actions += s3server.ensure_buckets(
        url,
        access_key_id=read_secret(state.base_dir, "aws-access-key-id"),
        secret_access_key=read_secret(state.base_dir, "aws-secret-access-key"),
        buckets=(BUCKET,),
        object_lock_buckets=(EVIDENCE_BUCKET,),
        versioned_buckets=(UPLOADS_BUCKET,),
    )
    return f"{', '.join(actions) or 'unchanged'} ({url}; in memory)"


def slack_ok(state: LabState) -> bool:
    """Whether the Slack stand-in answers ``auth.test`` with the lab's token."""
    token = read_secret(state.base_dir, "slack-token")
    try:
        resp = httpx.post(
            f"{state.slack_url}auth.test",
            headers={"Authorization": f"Bearer {token}"},
            timeout=1.0,
        )
        return resp.status_code == 200 and bool(resp.json().get("ok"))
    except (httpx.HTTPError, ValueError):
        return False


def ensure_slack(state: LabState) -> str:
    """The Slack stand-in (lab/slack_standin.py) as a process, with the lab's token."""
    rec = state.processes.get("slack")
    outcome = "unchanged"
    if not procs.owned(rec):
        port = free_or_ours(state, "slack", rec)
        state.slack_url = f"http://127.0.0.1:{port}/api/"
        env = procs.child_env(
            state.base_dir, {"SLACK_STANDIN_TOKEN": read_secret(state.base_dir, "slack-token")}
        )
        argv = [
            sys.executable, "-m", "lab.slack_standin",
            "--port", str(port), "--state-file", str(state.slack_state_file),
        ]  # fmt: skip
        rec = spawn(state, "slack", argv, marker=f"lab.slack_standin --port {port}", env=env)
        outcome = "started"
    assert rec is not None
    procs.wait_until(
        "the Slack stand-in",
        lambda: procs.owned(rec) and slack_ok(state),
        PROCESS_WAIT_SECONDS,
        rec.log_file,
    )
    return f"{outcome} ({state.slack_url})"


def start_prefect(state: LabState) -> str:
    """Start the lab's Prefect server in the background (its database: control/prefect)."""
    rec = state.processes.get("prefect")
    if procs.owned(rec):
        return "already running"
    port = free_or_ours(state, "prefect", rec)
    base = f"http://127.0.0.1:{port}"
    state.prefect_api_url, state.prefect_ui_url = f"{base}/api", base
    rec = prefect_server.start(
        state.base_dir,
        port,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{state.control.port}/prefect",
        home=state.base_dir / "prefect-home",
        log_file=log_path(state, "prefect"),
    )
    record_process(state, "prefect", rec)
    return "starting"


def ensure_prefect(state: LabState, *, started_now: bool = False) -> str:
    """Wait for the Prefect server's health, restart it if it is stuck, then the blocks."""
    outcome = "started" if started_now else "unchanged"
    if not procs.owned(state.processes.get("prefect")) or state.prefect_api_url is None:
        start_prefect(state)
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
        start_prefect(state)
        rec = state.processes["prefect"]
        procs.wait_until(
            "the Prefect server",
            lambda: procs.owned(rec) and prefect_server.is_up(api),
            PREFECT_WAIT_SECONDS,
            rec.log_file,
        )
        outcome = "restarted"
    values = {block: read_secret(state.base_dir, name) for block, name in SECRET_BLOCKS.items()}
    counts = prefect_server.ensure_secret_blocks(api, values)
    blocks = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"{outcome}, secret blocks {blocks} ({state.prefect_ui_url})"


def lab_port(state: LabState, key: str, rec: procs.ProcessInfo | None) -> int:
    """A component's port, chosen once (labs made before the component get one now)."""
    with save_lock:
        if key not in state.ports:
            avoid = [*state.ports.values(), SYSTEM_REDIS_PORT]
            state.ports[key] = free_port(avoid=avoid)
    port = free_or_ours(state, key, rec)
    if port == SYSTEM_REDIS_PORT:  # never the machine's Redis
        with save_lock:
            state.ports[key] = port = free_port(avoid=[*state.ports.values(), SYSTEM_REDIS_PORT])
    return port


def redis_url(state: LabState) -> str:
    """The lab's Redis (database 0), for the app and the ``caches:`` of dr.yaml."""
    return f"redis://127.0.0.1:{state.ports['redis']}/0"


def redis_ok(port: int) -> bool:
    """Whether a Redis answers PING on loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_argv(port: int, workdir: str) -> list[str]:
    """redis-server on loopback only, in memory (a cache: nothing to persist)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise PreconditionError("redis-server is not installed (setup.sh installs it)")
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", workdir, "--protected-mode", "yes",
    ]  # fmt: skip


def ensure_redis(state: LabState) -> str:
    """The lab's own redis-server (never the machine's on 6379): the app reads through it."""
    rec = state.processes.get("redis")
    outcome = "unchanged"
    if not procs.owned(rec):
        port = lab_port(state, "redis", rec)
        workdir = state.base_dir / "redis"
        workdir.mkdir(exist_ok=True)
        argv = redis_argv(port, str(workdir))
        env = procs.child_env(state.base_dir)
        rec = spawn(state, "redis", argv, marker=f"127.0.0.1:{port}", env=env)
        outcome = "started"
    assert rec is not None
    port = state.ports["redis"]
    procs.wait_until(
        "redis", lambda: procs.owned(rec) and redis_ok(port), PROCESS_WAIT_SECONDS, rec.log_file
    )
    return f"{outcome} ({redis_url(state)}; in memory)"
