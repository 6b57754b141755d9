"""Fast dispatch of flow runs: ``dr worker`` (issue 16).

From an incident run created through the API (``dr serve-alerts``, the UI, a schedule) to
its flow code running, in well under a second on a warm machine, with Prefect's own
parts: its process worker (:mod:`~deployments.dispatch.worker`) polling every 0.25 s with
prefetch, and a process starter (:mod:`~deployments.dispatch.starter`) that forks each
run's engine from an interpreter that has already imported Prefect and every flow
(:mod:`~deployments.dispatch.warm`). Where the time went before, and the figures after:
``docs/dispatch.md``; the benchmark: ``bench/dispatch.py``.

Modules: ``warm`` (the forkserver and the engine child), ``starter`` (the process starter),
``worker`` (the worker and :func:`run_worker`); :func:`worker_argv` here.
"""

from __future__ import annotations

__all__ = ["worker_argv"]


def worker_argv(
    dr_bin: str,
    pool: str = "dr-process",
    *,
    config: str | None = None,
    name: str | None = None,
    query_seconds: float | None = None,
) -> list[str]:
    """The command line that starts the fast worker as its own process (lab, services).

    Args:
        dr_bin: the ``dr`` executable (e.g. ``.venv/bin/dr``).
        pool: the work pool to serve.
        config: ``--config`` (dr.yaml, for ``prefect_api_url`` when ``PREFECT_API_URL``
            is not set).
        name: the worker's name in the UI.
        query_seconds: polling period (default: the worker's).

    Returns:
        The argv, e.g. ``["dr", "worker", "--pool", "dr-process"]``.
    """
    argv = [dr_bin, "worker", "--pool", pool]
    if config:
        argv += ["--config", config]
    if name:
        argv += ["--name", name]
    if query_seconds is not None:
        argv += ["--query-seconds", str(query_seconds)]
    return argv
