"""``dr lab up`` and ``heal``: every component an idempotent ``ensure_*`` step."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dr.errors import PreconditionError
from lab import monitoring as lab_monitoring
from lab import procs
from lab.app import (
    choose_engine,
    ensure_app,
    ensure_podman,
    ensure_podman_or_fallback,
    wait_heartbeat,
)
from lab.down import check_lab_folder
from lab.drconfig import write_config
from lab.monitoring_chain import ensure_monitoring
from lab.nodes import ensure_control, ensure_postgres, ensure_seeds
from lab.services import ensure_moto, ensure_prefect, ensure_redis, ensure_slack, start_prefect
from lab.stack import ensure_api, ensure_uploads_table
from lab.state import (
    CONTROL_DATABASES,
    LabState,
    default_base_dir,
    ensure_secrets,
    load_state,
    locked,
    new_state,
    prepare_base_dir,
    save_state,
)

log = logging.getLogger(__name__)


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


def up(
    base_dir: Path | None = None,
    *,
    prefect: bool = True,
    engine: str = "auto",
    monitoring: bool = False,
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
        monitoring: also the alert chain of :mod:`lab.monitoring` (exporters, Prometheus,
            Alertmanager, ``dr serve-alerts``, deployments and a worker); a lab that has it
            keeps it on every later ``up``.
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
    check_lab_folder(base_dir)
    prepare_base_dir(base_dir)
    progress = _Progress(console)
    with locked(base_dir):
        previous = load_state(base_dir)
        state = previous or new_state(base_dir)
        progress.console.print(
            f"[bold]dr lab up[/] in {base_dir} ({'repair' if previous else 'new lab'})"
        )
        state.engine, state.engine_reason = choose_engine(engine)
        ensure_secrets(base_dir)
        save_state(state)

        errors, prefect_started_now = _start_servers(state, progress, prefect, engine)
        save_state(state)
        if not errors:
            errors += _start_app_and_config(state, progress, prefect, prefect_started_now)
        if not errors and (monitoring or lab_monitoring.enabled(state)):
            errors += ensure_monitoring(state, progress.run)
        total = time.monotonic() - started
        state.timings = {**progress.timings, "total": round(total, 2)}
        save_state(state)
    progress.summary(total)
    if errors:
        raise errors[0]
    progress.console.print(
        f"[bold green]lab up[/] in {total:.1f} s — config {state.config_path}"
        + (f", Prefect UI {state.prefect_ui_url}" if state.prefect_ui_url and prefect else "")
    )
    return state


def _control_then_prefect(state: LabState, prefect: bool, started: list[bool]) -> str:
    """The control cluster, with the Prefect server started as soon as its database exists.

    The Prefect server is the slowest to start: it starts first, the other databases after.
    """
    outcome = ensure_control(state, ("prefect",))
    if prefect:
        said = start_prefect(state)
        started.append(said == "starting")
        outcome += f"; prefect {said}"
    more = ensure_control(state, CONTROL_DATABASES).split(" (:")[0]
    if more != "unchanged":
        outcome += f"; {more}"
    return outcome


def _start_servers(
    state: LabState, progress: _Progress, prefect: bool, engine: str
) -> tuple[list[BaseException], bool]:
    """The independent servers in parallel; their errors, and whether Prefect started now."""
    prefect_started: list[bool] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="lab-up") as pool:
        jobs: dict[str, Future[str]] = {
            "postgres": pool.submit(progress.run, "postgres", ensure_postgres, state),
            "control": pool.submit(
                progress.run, "control", _control_then_prefect, state, prefect, prefect_started
            ),
            "moto": pool.submit(progress.run, "s3", ensure_moto, state),
            "slack": pool.submit(progress.run, "slack", ensure_slack, state),
            "redis": pool.submit(progress.run, "redis", ensure_redis, state),
        }
        if state.engine == "podman":
            jobs["podman"] = pool.submit(
                progress.run, "podman", ensure_podman_or_fallback, state, engine
            )
            # The docker SDK's factory (tasks.containers) is slow to import: do it here,
            # in the main thread, while the workers wait on servers.
            import tasks.containers  # noqa: F401
        for job in jobs.values():
            if job.exception() is not None:
                errors.append(job.exception())  # type: ignore[arg-type]
    return errors, any(prefect_started)


def _start_app_and_config(
    state: LabState, progress: _Progress, prefect: bool, prefect_started_now: bool
) -> list[BaseException]:
    """App, heartbeat, Prefect ready, then dr.yaml; the seed databases load meanwhile."""
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-seeds") as side:
        seeds_job = side.submit(progress.run, "seeds", ensure_seeds, state)
        try:
            _start_stack(state, progress)
            if prefect:
                progress.run("prefect", ensure_prefect, state, started_now=prefect_started_now)
            seeds_job.result()
            prefect_on = prefect or procs.owned(state.processes.get("prefect"))
            progress.run("config", write_config, state, prefect_on=prefect_on)
        except BaseException as exc:  # noqa: BLE001 - state is saved, then it is raised
            errors.append(exc)
    return errors


def _start_stack(state: LabState, progress: _Progress) -> None:
    """The application stack in its declared order: uploads table, api (healthy), worker."""
    progress.run("uploads", ensure_uploads_table, state)
    progress.run("api", ensure_api, state)
    progress.run("app", ensure_app, state)
    progress.run("heartbeat", wait_heartbeat, state)


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
    with locked(base_dir):
        progress.run("postgres", ensure_postgres, state)
        progress.run("seeds", ensure_seeds, state)
        if state.engine == "podman":
            progress.run("podman", ensure_podman, state)
        progress.run("redis", ensure_redis, state)
        _start_stack(state, progress)
        save_state(state)
    return state
