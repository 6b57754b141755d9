"""``dr worker``: Prefect's process worker, polling fast, its runs forked from a warm interpreter.

:class:`WarmProcessWorker` *is* Prefect's ``ProcessWorker`` (type ``process``): it polls
the same work pool, registers in the UI's Workers tab, moves each run Scheduled → Pending
→ Running exactly like ``prefect worker start --pool dr-process`` does, and reports
crashes and cancellations through Prefect's ``FlowRunExecutor``. What differs:

- it polls every :data:`DEFAULT_QUERY_SECONDS` instead of Prefect's 10 s
  (``PREFECT_WORKER_QUERY_SECONDS``), and prefetches :data:`DEFAULT_PREFETCH_SECONDS`;
- each run's process is a fork of :class:`~deployments.dispatch.warm.WarmInterpreter`
  (Prefect and every flow already imported) through
  :class:`~deployments.dispatch.starter.WarmEngineStarter`, instead of a new interpreter;
- it sets a flow-run heartbeat (:data:`DEFAULT_HEARTBEAT_SECONDS`) so that a run whose
  process is killed together with the worker is marked Crashed by the automation the
  lifecycle installs (``flows/lifecycle/lock_holders.py``), not left Running.

A run whose job sets an explicit ``command`` keeps Prefect's own path (a new process).
The runs stay the ordinary runs of the deployments in ``prefect.yaml``; nothing about the
deployments or the pool changes, and ``prefect worker start --pool dr-process`` can serve
the same pool at the same time (either worker takes a run; both behave the same).
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from deployments.dispatch.starter import WarmEngineStarter
from deployments.dispatch.warm import WarmInterpreter

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_POOL",
    "DEFAULT_PREFETCH_SECONDS",
    "DEFAULT_QUERY_SECONDS",
    "WarmProcessWorker",
    "WorkerOptions",
    "run_worker",
]

DEFAULT_POOL = "dr-process"
#: Seconds between two polls of the work pool (Prefect's default: 10). One light query.
DEFAULT_QUERY_SECONDS = 0.25
#: Runs scheduled up to this far ahead are submitted early (Prefect's default: 10).
DEFAULT_PREFETCH_SECONDS = 10.0
#: Flow-run heartbeat period: well inside the crash automation's 540 s window.
DEFAULT_HEARTBEAT_SECONDS = 30


@dataclass(frozen=True)
class WorkerOptions:
    """How ``dr worker`` runs (the command's options)."""

    pool: str = DEFAULT_POOL
    name: str | None = None
    query_seconds: float = DEFAULT_QUERY_SECONDS
    prefetch_seconds: float = DEFAULT_PREFETCH_SECONDS
    heartbeat_seconds: int | None = DEFAULT_HEARTBEAT_SECONDS
    limit: int | None = None
    warm: bool = True


# Prefect registers every worker class under its ``type``; this one keeps ``process`` on
# purpose (it serves process pools), so Prefect's "overrides ProcessWorker" notice is noise.
warnings.filterwarnings("ignore", message=r"Type 'WarmProcessWorker' .* has key 'process'")


class WarmProcessWorker(ProcessWorker):
    """Prefect's process worker whose flow-run processes are forks of a warm interpreter."""

    def __init__(
        self,
        *args: Any,
        warm: WarmInterpreter | None,
        heartbeat_seconds: int | None = DEFAULT_HEARTBEAT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._warm = warm
        self._flow_heartbeat_seconds = heartbeat_seconds
        self._executors: Any = None

    async def __aenter__(self) -> WarmProcessWorker:
        """Open one ``FlowRunExecutorContext`` for every run, then Prefect's worker.

        Prefect's ``ProcessWorker.run`` opens one per run (a client, an events connection,
        a control channel, a cancellation observer): ~0.3 s of each dispatch. Shared, it
        is opened once; it outlives the worker's runs (closed after them).
        """
        if self._warm is not None:
            from prefect.runner._flow_run_executor import FlowRunExecutorContext

            self._executors = FlowRunExecutorContext()
            await self._executors.__aenter__()
        try:
            await super().__aenter__()
        except BaseException as exc:
            await self._close_executors(exc)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            await self._close_executors(exc_info[1] if len(exc_info) > 1 else None)

    async def _close_executors(self, exc: BaseException | None) -> None:
        if self._executors is not None:
            executors, self._executors = self._executors, None
            await executors.__aexit__(
                type(exc) if exc else None, exc, exc.__traceback__ if exc else None
            )

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run one flow run (Prefect's ``ProcessWorker.run``, with the warm starter)."""
        ctx = self._executors
        if (
            ctx is None
            or self._warm is None
            or getattr(configuration, "_command_configured", False)
        ):
            return await super().run(flow_run, configuration, task_status)
        from prefect.flows import load_flow_from_flow_run

        status = task_status if task_status is not None else anyio.TASK_STATUS_IGNORED
        working_dir_ctx: Any = (
            tempfile.TemporaryDirectory(suffix="prefect")
            if not configuration.working_dir
            else contextlib.nullcontext(configuration.working_dir)
        )
        execution: Any = None
        with working_dir_ctx as working_dir:
            starter = WarmEngineStarter(
                warm=self._warm,
                cwd=Path(working_dir).resolve(),
                env=configuration.env,
                control_channel=ctx.control_channel,
                heartbeat_seconds=self._flow_heartbeat_seconds,
            )
            executor = ctx.create_executor(
                flow_run, starter, resolve_flow=load_flow_from_flow_run, propose_submitting=False
            )

            async def execute(
                *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as group:
                handle = await group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("flow run process has no PID")
                status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("failed to start the flow run process")
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )


def run_worker(options: WorkerOptions, printer: Any = print) -> None:
    """Start the warm interpreter, then serve the work pool until interrupted (blocks).

    Args:
        options: pool, name, polling, prefetch, heartbeat, limit, warm or not.
        printer: where the worker's start-up lines go.

    Raises:
        WarmStartError: the warm interpreter could not start.
    """
    from prefect.settings import (
        PREFECT_WORKER_PREFETCH_SECONDS,
        PREFECT_WORKER_QUERY_SECONDS,
        temporary_settings,
    )

    settings = {
        PREFECT_WORKER_QUERY_SECONDS: options.query_seconds,
        PREFECT_WORKER_PREFETCH_SECONDS: options.prefetch_seconds,
    }
    with temporary_settings(updates=settings):
        warm = WarmInterpreter() if options.warm else None
        if warm is not None:
            printer(f"Warm interpreter ready in {warm.start():.1f} s.")
        worker = WarmProcessWorker(
            work_pool_name=options.pool,
            name=options.name,
            prefetch_seconds=options.prefetch_seconds,
            limit=options.limit,
            create_pool_if_not_found=False,
            warm=warm,
            heartbeat_seconds=options.heartbeat_seconds,
        )
        # SIGTERM (systemd, Kubernetes, `kill`) stops like Ctrl-C: polling stops, runs under
        # way finish, then the worker deregisters.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            anyio.run(lambda: worker.start(printer=printer))
        except KeyboardInterrupt:
            printer(f"Worker {worker.name!r} stopped.")
        finally:
            signal.signal(signal.SIGTERM, previous)
