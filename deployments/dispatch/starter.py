"""The flow-run process starter of ``dr worker``: Prefect's engine, forked warm.

Prefect's runner and workers start a flow run through a *process starter* (the
``ProcessStarter`` protocol of ``prefect.runner._flow_run_executor``): ``start()`` starts
the process, hands its handle over with ``task_status.started(handle)``, then blocks until
it exits. Prefect's ``FlowRunExecutor`` around it tracks the process, cancels it, and
proposes Crashed when it exits non-zero. :class:`WarmEngineStarter` is such a starter,
shaped like Prefect's ``EngineCommandStarter`` (same environment, same engine) but it
forks the process from :class:`~deployments.dispatch.warm.WarmInterpreter` instead of
executing a new interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from deployments.dispatch.warm import WarmInterpreter

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel
    from prefect.runner._process_manager import ProcessHandle

__all__ = ["WarmEngineStarter", "engine_environment"]


def engine_environment(
    flow_run_id: str,
    job_env: dict[str, str | None],
    control_env: dict[str, str],
    heartbeat_seconds: int | None = None,
) -> dict[str, str]:
    """The environment of a flow-run process, as Prefect's ``EngineCommandStarter`` builds it.

    The worker's own environment, the job's (the work pool's ``env``, e.g. ``DR_CONFIG``),
    the worker's explicitly set Prefect settings, then the run's own variables. Variables
    set to None are removed.

    Args:
        flow_run_id: the flow run the process executes.
        job_env: the job configuration's environment.
        control_env: ``PREFECT__CONTROL_PORT`` and ``PREFECT__CONTROL_TOKEN`` (or empty).
        heartbeat_seconds: flow-run heartbeat period (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``)
            unless the job sets one; None leaves Prefect's default.

    Returns:
        The environment, with string values only.
    """
    from prefect.settings import get_current_settings
    from prefect.utilities.processutils import sanitize_subprocess_env

    env: dict[str, str | None] = dict(os.environ)
    env.update(job_env)
    env.update(get_current_settings().to_environment_variables(exclude_unset=True))
    if heartbeat_seconds is not None and not env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(int(heartbeat_seconds))
    env.update(
        {
            "PREFECT__FLOW_RUN_ID": flow_run_id,
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
            **control_env,
        }
    )
    return {k: v for k, v in sanitize_subprocess_env(env).items() if v is not None}


class WarmEngineStarter:
    """Starts one flow run's engine in a fork of the warm interpreter (a ``ProcessStarter``)."""

    def __init__(
        self,
        *,
        warm: WarmInterpreter,
        cwd: Path,
        env: dict[str, str | None],
        control_channel: ControlChannel | None = None,
        heartbeat_seconds: int | None = None,
    ) -> None:
        self._warm = warm
        self._cwd = cwd
        self._env = env
        self._control_channel = control_channel
        self._heartbeat_seconds = heartbeat_seconds

    def _register_control(self, flow_run: FlowRun) -> dict[str, str]:
        """Register the run with Prefect's control channel (cancel intent before SIGTERM)."""
        if self._control_channel is None:
            return {}
        try:
            port, token = self._control_channel.register(flow_run.id)
        except RuntimeError:  # no loopback listener: Prefect falls back to kill-only
            return {}
        return {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fork the engine for ``flow_run``, hand its handle over, wait until it exits."""
        from prefect.runner._process_manager import ProcessHandle

        control_env = self._register_control(flow_run)
        env = engine_environment(str(flow_run.id), self._env, control_env, self._heartbeat_seconds)
        handed_off = False
        try:
            process: Any = await anyio.to_thread.run_sync(
                self._warm.fork_engine, env, str(self._cwd), f"flow-run-{flow_run.id}"
            )
            task_status.started(ProcessHandle(process))
            handed_off = True
            await anyio.to_thread.run_sync(process.join)
        except BaseException:
            if control_env and not handed_off and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise
