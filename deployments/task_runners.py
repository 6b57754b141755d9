"""Where a flow's parallel branches run: threads (default) or a Dask cluster.

Verifying many databases at once is a fan-out of independent tasks (one restore and check
per database). On one machine Prefect's default thread pool is enough; beyond it, the
same tasks run on a Dask cluster through ``prefect-dask``'s ``DaskTaskRunner`` without a
line of the flow changing. The choice is made by the environment of the flow-run process
(the work pool's ``env``, or the shell for ``dr drill``), read when the flow module is
imported:

``DR_TASK_RUNNER``
    ``thread`` (default) or ``dask``.
``DR_DASK_ADDRESS``
    ``tcp://scheduler:8786``: use an existing Dask cluster (e.g. the Dask Helm chart or
    dask-kubernetes); without it, each flow run starts a temporary ``LocalCluster``.
``DR_DASK_WORKERS``
    Workers of that local cluster (default 2).
``DR_DASK_PROCESSES``
    ``true``: the local cluster's workers are processes (default: threads in the
    flow-run process, which keeps the start-up light and needs no pickling).

``prefect-dask`` is an optional extra (``pip install 'dr-pipelines[dask]'``): asking for
``dask`` without it is a :class:`~dr.errors.ConfigError` naming the package.

A flow opts in with ``@flow(..., task_runner=configured_task_runner())``, or a caller
wraps an existing flow with :func:`with_task_runner`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from dr.errors import ConfigError

__all__ = [
    "DASK_ADDRESS_ENV",
    "DASK_PROCESSES_ENV",
    "DASK_WORKERS_ENV",
    "TASK_RUNNER_ENV",
    "configured_task_runner",
    "make_task_runner",
    "with_task_runner",
]

TASK_RUNNER_ENV = "DR_TASK_RUNNER"
DASK_ADDRESS_ENV = "DR_DASK_ADDRESS"
DASK_WORKERS_ENV = "DR_DASK_WORKERS"
DASK_PROCESSES_ENV = "DR_DASK_PROCESSES"
DEFAULT_DASK_WORKERS = 2

RunnerKind = Literal["thread", "dask"]


def make_task_runner(
    kind: RunnerKind = "thread",
    *,
    address: str | None = None,
    n_workers: int = DEFAULT_DASK_WORKERS,
    processes: bool = False,
    max_workers: int | None = None,
) -> Any:
    """Build a Prefect task runner.

    Args:
        kind: ``thread`` (Prefect's ``ThreadPoolTaskRunner``) or ``dask``.
        address: an existing Dask scheduler (``tcp://host:8786``); dask only.
        n_workers: workers of the temporary local cluster when no address is given.
        processes: local cluster workers as processes instead of threads.
        max_workers: thread pool size (thread only; default Prefect's).

    Returns:
        A ``TaskRunner`` instance.

    Raises:
        ConfigError: unknown kind, or ``dask`` without ``prefect-dask`` installed.
    """
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind != "dask":
        raise ConfigError(
            f"unknown task runner {kind!r} (known: thread, dask)", [(TASK_RUNNER_ENV, str(kind))]
        )
    try:
        from prefect_dask import DaskTaskRunner
    except ModuleNotFoundError:
        raise ConfigError(
            "the dask task runner needs prefect-dask: pip install 'dr-pipelines[dask]'",
            [(TASK_RUNNER_ENV, "dask: prefect-dask is not installed")],
        ) from None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "processes": processes,
            "threads_per_worker": 1,
            "dashboard_address": None,
        },
    )


def configured_task_runner(env: Mapping[str, str] | None = None) -> Any:
    """The task runner the environment asks for (see the module docstring).

    Args:
        env: the environment (default ``os.environ``).

    Returns:
        A ``TaskRunner`` instance.

    Raises:
        ConfigError: a bad ``DR_TASK_RUNNER``/``DR_DASK_WORKERS`` value, or dask missing.
    """
    env = os.environ if env is None else env
    kind = (env.get(TASK_RUNNER_ENV) or "thread").strip().lower()
    if kind not in ("thread", "dask"):
        raise ConfigError(
            f"{TASK_RUNNER_ENV}={kind!r}: expected thread or dask", [(TASK_RUNNER_ENV, kind)]
        )
    workers_text = env.get(DASK_WORKERS_ENV) or str(DEFAULT_DASK_WORKERS)
    try:
        workers = int(workers_text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ConfigError(
            f"{DASK_WORKERS_ENV}={workers_text!r}: expected a positive integer",
            [(DASK_WORKERS_ENV, workers_text)],
        )
    processes = (env.get(DASK_PROCESSES_ENV) or "").strip().lower() in ("1", "true", "yes")
    return make_task_runner(
        kind,  # type: ignore[arg-type]
        address=env.get(DASK_ADDRESS_ENV) or None,
        n_workers=workers,
        processes=processes,
    )


def with_task_runner(flow: Any, task_runner: Any | None = None) -> Any:
    """A copy of ``flow`` whose branches run on ``task_runner`` (default: the configured one).

    Args:
        flow: a Prefect ``Flow``.
        task_runner: a ``TaskRunner``; default :func:`configured_task_runner`.

    Returns:
        The new ``Flow`` (same name, so deployments and the UI see the same flow).
    """
    return flow.with_options(task_runner=task_runner or configured_task_runner())
