"""The lab's application stack on Podman or as plain processes: the worker and its helpers."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from dr.errors import ConfigError, PreconditionError
from lab import procs
from lab.db import heartbeat_age
from lab.podman import UnixHTTPConnection
from lab.state import (
    APP_LABELS,
    APP_SCRIPT,
    AWS_REGION,
    ENGINE_ENV,
    HEARTBEAT_FRESH_SECONDS,
    HEARTBEAT_WAIT_SECONDS,
    PRIMARY,
    LabState,
    app_env,
    clusters,
    env_fingerprint,
    read_secret,
    save_state,
    spawn,
)

log = logging.getLogger(__name__)

#: Where the worker puts its uploads in the lab's versioned bucket (the ``files:`` prefix).
UPLOADS_PREFIX = "uploads/"
UPLOAD_INTERVAL_MS = 2000


def choose_engine(requested: str) -> tuple[Literal["podman", "process"], str]:
    """Podman when it is installed, unless ``process`` is asked for (or forced by env).

    A lab switching engines (e.g. ``DR_LAB_ENGINE=process`` on a podman lab) has its old
    app removed by :func:`ensure_app`.
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


def podman_service(state: LabState) -> Any:
    """The lab's own Podman service (in ``<dir>/podman``)."""
    from lab import podman

    return podman.PodmanService(state.base_dir / "podman")


def ensure_podman(state: LabState) -> str:
    """The lab's own Podman service (Docker API) and the busybox image the app runs on."""
    from lab import podman_image

    service = podman_service(state)
    outcome = "unchanged" if service.running() else "started"
    state.podman_base_url = service.start()
    if podman_image.ensure_busybox_image(service):
        outcome += ", imported image"
    return f"{outcome} ({state.podman_base_url})"


def ensure_podman_or_fallback(state: LabState, requested: str) -> str:
    """Start Podman; with ``engine="auto"`` a failure falls back to a local process."""
    try:
        return ensure_podman(state)
    except Exception as exc:
        if requested != "auto":
            raise
        log.warning("podman could not start, running the app as a local process: %s", exc)
        state.engine, state.engine_reason = "process", f"podman failed to start: {exc}"
        state.podman_base_url = None
        return f"failed, falling back to a local process ({exc})"


def _docker_client(state: LabState) -> Any:
    from tasks.containers.client import make_client

    return make_client(state.podman_base_url, timeout_seconds=30)


def _find_app_container(client: Any, name: str) -> Any | None:
    for container in client.containers.list(all=True, filters={"name": name}):
        if container.name == name:
            return container
    return None


def _container_env(container: Any) -> dict[str, str]:
    env = (container.attrs.get("Config") or {}).get("Env") or []
    return dict(item.split("=", 1) for item in env if "=" in item)


def container_serves_port(state: LabState, name: str, port_env: str, port: int) -> bool:
    """Whether the lab's own running container ``name`` was started to listen on ``port``.

    A container's listener is not a process the lab recorded, so without this the port of
    a container service would look taken by a stranger and be moved on every ``up``.
    """
    if state.engine != "podman" or not state.podman_base_url:
        return False
    try:
        container = _find_app_container(_docker_client(state), name)
    except Exception:  # noqa: BLE001 - an engine that does not answer: nothing of ours listens
        return False
    return (
        container is not None
        and container.status == "running"
        and _container_env(container).get(port_env) == str(port)
    )


def _app_argv() -> list[str]:
    return [sys.executable, str(APP_SCRIPT)]


def ensure_app(state: LabState) -> str:
    """The worker (heartbeat writer, uploads), pointed at the primary: a container or a process."""
    return ensure_service(state, "app", state.app_container, _app_argv(), stack_env(state))


def stack_env(state: LabState) -> dict[str, str]:
    """The worker's environment: the database, and (once they run) the cache and the uploads."""
    from lab.services import UPLOADS_BUCKET, redis_url

    env = app_env(state)
    if "redis" in state.ports:
        env["CACHE_URL"] = redis_url(state)
    env.update(
        {
            "UPLOADS_BUCKET": UPLOADS_BUCKET,
            "UPLOADS_PREFIX": UPLOADS_PREFIX,
            # Every backup, verification and link check reads every object: keep it small.
            "UPLOAD_INTERVAL_MS": str(UPLOAD_INTERVAL_MS),
            "S3_ENDPOINT": state.moto_url,
            "AWS_REGION": AWS_REGION,
            "AWS_ACCESS_KEY_ID": read_secret(state.base_dir, "aws-access-key-id"),
            "AWS_SECRET_ACCESS_KEY": read_secret(state.base_dir, "aws-secret-access-key"),
        }
    )
    return env


def ensure_service(
    state: LabState, key: str, container: str, argv: list[str], env: dict[str, str]
) -> str:
    """One service of the lab's stack: a container on Podman, else a local process.

    A lab that switched engines has the other kind removed first.
    """
    if state.engine == "podman":
        if procs.kill(state.processes.get(key)):
            state.processes.pop(key, None)
            save_state(state)
        return _ensure_container(state, container, argv, env)
    if state.podman_base_url and podman_service(state).running():
        client = _docker_client(state)
        old = _find_app_container(client, container)
        if old is not None:
            old.remove(force=True)
    return _ensure_process(state, key, argv, env)


def _ensure_container(state: LabState, name: str, argv: list[str], env: dict[str, str]) -> str:
    from lab import podman_image

    client = _docker_client(state)
    container = _find_app_container(client, name)
    action = "created"
    if container is not None:
        current = _container_env(container)
        if all(current.get(k) == v for k, v in env.items()):
            if container.status == "running":
                return f"unchanged (container {name})"
            container.start()
            return f"started (container {name})"
        # Pointed elsewhere (e.g. by a failover drill) or stale credentials: recreate.
        container.remove(force=True)
        action = "recreated"
    podman_image.run_python_container(
        client,
        name,
        argv,
        mounts_extra=[
            podman_image.BindMount(APP_SCRIPT.parent, APP_SCRIPT.parent),
            *_ack_mount(state, env),
        ],
        env={**env, "PYTHONUNBUFFERED": "1", procs.OWNER_ENV: str(state.base_dir)},
        labels=APP_LABELS,
    )
    return f"{action} (container {name})"


def _ack_mount(state: LabState, env: dict[str, str]) -> list[Any]:
    """The folder of the app's acknowledgement log, writable from the container."""
    from lab import podman_image

    if "HEARTBEAT_ACK_LOG" not in env:
        return []
    folder = Path(env["HEARTBEAT_ACK_LOG"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    return [podman_image.BindMount(folder, folder, read_only=False)]


def _ensure_process(state: LabState, key: str, argv: list[str], env: dict[str, str]) -> str:
    rec = state.processes.get(key)
    fingerprint = env_fingerprint(env)
    if procs.owned(rec) and rec is not None and rec.fingerprint == fingerprint:
        return f"unchanged (process {rec.pid})"
    action = "restarted" if procs.kill(rec) else "started"
    tagged = [*argv, f"--lab={state.base_dir}"]
    rec = spawn(
        state,
        key,
        tagged,
        marker=" ".join(tagged[1:]),
        env=procs.child_env(state.base_dir, {**env, "PYTHONUNBUFFERED": "1"}),
        fingerprint=fingerprint,
    )
    return f"{action} (process {rec.pid})"


def wait_heartbeat(state: LabState) -> str:
    """Wait until the app's newest heartbeat on the primary is younger than a second."""
    primary = clusters(state)[PRIMARY]
    deadline = time.monotonic() + HEARTBEAT_WAIT_SECONDS
    age: float | None = None
    while time.monotonic() < deadline:
        age = heartbeat_age(primary)
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


def engine_request(base_url: str, method: str, path: str) -> tuple[int, Any]:
    """One Docker API call on the lab's Podman socket: (HTTP status or 0, decoded JSON)."""
    conn = UnixHTTPConnection(base_url.removeprefix("unix://"), timeout=15.0)
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
