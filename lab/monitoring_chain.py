"""The lab's alert chain after Alertmanager: ``dr serve-alerts``, the deployments, a worker.

:func:`ensure_monitoring` starts the whole monitoring of :mod:`lab.monitoring` in order:
exporters and Prometheus, the receiver, ``dr deploy`` and the worker, then Alertmanager
(it needs the receiver's address).

The worker is defined in one place, :func:`worker_command`: a faster dispatcher replaces
the command there and nothing else changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from dr.errors import PreconditionError
from lab import monitoring, procs
from lab.services import lab_port
from lab.state import LabState, log_path, read_secret

__all__ = [
    "RECEIVER",
    "WORKER",
    "WorkerCommand",
    "ensure_deployments",
    "ensure_monitoring",
    "ensure_receiver",
    "ensure_worker",
    "receiver_url",
    "worker_command",
    "worker_online",
]

RECEIVER = "receiver"
WORKER = "worker"
POOL = "dr-process"  # deployments.deploy.POOL_NAME (not imported: it pulls in Prefect)
#: The processes :mod:`lab.down` stops, besides the lab's others.
PROCESS_NAMES = (
    WORKER,
    monitoring.ALERTMANAGER,
    RECEIVER,
    monitoring.PROMETHEUS,
    *(monitoring.exporter_name(info) for info in monitoring.MONITORED),
)
#: How often the worker asks Prefect for runs (Prefect's default is 10 s).
WORKER_QUERY_SECONDS = 0.25
DEPLOY_TIMEOUT_SECONDS = 300.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _python_env(state: LabState) -> dict[str, str]:
    """What a Python child of the chain needs: the project importable, the lab's Prefect."""
    assert state.prefect_api_url is not None
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": str(PROJECT_ROOT) + (f":{path}" if path else ""),
        "PREFECT_API_URL": state.prefect_api_url,
        "PREFECT_HOME": str(state.base_dir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DR_CONFIG": str(state.config_path),
    }


def token_file(state: LabState) -> Path:
    """The receiver's bearer token, as Alertmanager reads it (``credentials_file``, mode 600)."""
    read_secret(state.base_dir, "alerts-token")
    return state.base_dir / "secrets" / "alerts-token"


# --------------------------------------------------------------------------- receiver


def receiver_url(state: LabState) -> str:
    """The lab's ``dr serve-alerts``."""
    return f"http://127.0.0.1:{state.ports[RECEIVER]}"


def ensure_receiver(state: LabState) -> str:
    """``dr serve-alerts`` on loopback with the lab's ``dr.yaml`` (routes and token)."""
    port = lab_port(state, RECEIVER, state.processes.get(RECEIVER))
    argv = [
        sys.executable, "-m", "cli.alerts", "serve-alerts",
        "--config", str(state.config_path), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    said = monitoring._ensure_process(
        state,
        RECEIVER,
        argv,
        marker=f"serve-alerts --config {state.config_path} --host 127.0.0.1 --port {port}",
        ready=lambda: procs.http_ok(f"{receiver_url(state)}/healthz"),
        env=_python_env(state),
        fingerprint=monitoring._fingerprint(state.config_path.read_text(), *argv),
    )
    return f"{said} ({receiver_url(state)})"


# --------------------------------------------------------------------------- deployments


def ensure_deployments(state: LabState) -> str:
    """``dr deploy`` against the lab's Prefect server, then its schedules paused.

    The worker would otherwise run hourly backups and quarterly drills in the lab; a
    person can switch each schedule on in the UI.

    Raises:
        PreconditionError: ``dr deploy`` failed (its output is in ``logs/deploy.log``).
    """
    argv = [
        sys.executable, "-c", "from cli.main import app; app()",
        "deploy", "--config", str(state.config_path), "--json",
    ]  # fmt: skip
    log_file = log_path(state, "deploy")
    env = procs.child_env(state.base_dir, _python_env(state))
    try:
        done = subprocess.run(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PreconditionError(f"dr deploy did not finish in {exc.timeout:.0f} s") from exc
    log_file.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise PreconditionError(f"dr deploy failed; see {log_file}: {procs.tail(log_file)}")
    report = json.loads(done.stdout)
    counts: dict[str, int] = {}
    for item in report.get("outcomes", []):
        if item.get("kind") == "deployment":
            counts[item["outcome"]] = counts.get(item["outcome"], 0) + 1
    paused = _pause_schedules(state)
    said = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"{said}; {paused} schedule(s) paused"


def _pause_schedules(state: LabState) -> int:
    """Set every active schedule of the lab's deployments inactive; how many were."""
    paused = 0
    with httpx.Client(base_url=f"{state.prefect_api_url}/", timeout=10.0) as client:
        resp = client.post("deployments/filter", json={"limit": 200})
        resp.raise_for_status()
        for deployment in resp.json():
            for schedule in deployment.get("schedules") or []:
                if schedule.get("active"):
                    client.patch(
                        f"deployments/{deployment['id']}/schedules/{schedule['id']}",
                        json={"active": False},
                    ).raise_for_status()
                    paused += 1
    return paused


# --------------------------------------------------------------------------- worker


class WorkerCommand(NamedTuple):
    """How the lab runs its worker: the command, its environment, how to recognise it."""

    argv: list[str]
    env: dict[str, str]
    marker: str
    name: str


def worker_command(state: LabState) -> WorkerCommand:
    """The one definition of the lab's worker: ``dr worker`` (:mod:`deployments.dispatch`).

    Prefect's process worker on the ``dr-process`` pool, polling every
    :data:`WORKER_QUERY_SECONDS`, each run forked from an interpreter that has already
    imported Prefect and the flows (no cold Python process per incident).
    """
    from deployments.dispatch import worker_argv

    name = f"dr-lab-worker-{monitoring._fingerprint(str(state.base_dir))[:8]}"
    script = Path(sys.executable).with_name("dr")
    dr_bin = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from cli.main import main; main()"]
    )
    argv = [
        *dr_bin,
        *worker_argv("dr", POOL, name=name, query_seconds=WORKER_QUERY_SECONDS)[1:],
    ]
    env = {**_python_env(state), "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)}
    return WorkerCommand(argv=argv, env=env, marker=f"--name {name}", name=name)


def worker_online(state: LabState, name: str | None = None) -> bool:
    """Whether Prefect sees the lab's worker polling the pool (status ``ONLINE``)."""
    name = name or worker_command(state).name
    try:
        resp = httpx.post(
            f"{state.prefect_api_url}/work_pools/{POOL}/workers/filter",
            json={"limit": 50},
            timeout=monitoring.HTTP_TIMEOUT_SECONDS,
        )
        workers = resp.json() if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return False
    return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)


def ensure_worker(state: LabState) -> str:
    """The worker of :func:`worker_command`, until Prefect sees it online."""
    cmd = worker_command(state)
    said = monitoring._ensure_process(
        state,
        WORKER,
        cmd.argv,
        marker=cmd.marker,
        ready=lambda: worker_online(state, cmd.name),
        env=cmd.env,
        fingerprint=monitoring._fingerprint(*cmd.argv, json.dumps(cmd.env, sort_keys=True)),
    )
    return f"{said} ({cmd.name} on pool {POOL})"


# --------------------------------------------------------------------------- all of it


def ensure_monitoring(state: LabState, run: Callable[..., str]) -> list[BaseException]:
    """Exporters, Prometheus, receiver, deployments, worker, Alertmanager; their errors.

    Args:
        state: the lab (its Prefect server up, its ``dr.yaml`` written).
        run: ``run(name, fn, state, ...)`` runs one step and reports it (``dr lab up``'s
            progress).
    """
    if state.prefect_api_url is None or not procs.owned(state.processes.get("prefect")):
        return [PreconditionError("--monitoring needs the lab's Prefect server (not --no-prefect)")]
    errors: list[BaseException] = []

    def prometheus_side() -> str:
        return run("exporters", monitoring.ensure_exporters, state) and run(
            "prometheus", monitoring.ensure_prometheus, state
        )

    def worker_side() -> str:
        return run("deploy", ensure_deployments, state) and run("worker", ensure_worker, state)

    jobs: list[Callable[[], Any]] = [
        prometheus_side,
        worker_side,
        lambda: run("receiver", ensure_receiver, state),
    ]
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="lab-monitoring") as pool:
        futures = [pool.submit(job) for job in jobs]
    errors += [f.exception() for f in futures if f.exception() is not None]  # type: ignore[misc]
    if not errors:
        try:
            run(
                "alertmanager",
                monitoring.ensure_alertmanager,
                state,
                receiver_url(state),
                token_file(state),
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the caller with the rest
            errors.append(exc)
    return errors
