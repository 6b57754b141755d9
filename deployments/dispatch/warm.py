"""A warm interpreter that flow-run processes are forked from.

Why: Prefect's process worker starts every flow run as a new ``python -m prefect.engine``
(behind a workspace supervisor, itself a new interpreter). Measured on this 2-core
machine, that is 2.3 s to import Prefect, 1.2 s more for its engine and 3 s more for a
scenario flow's modules (psycopg, boto3, docker, kubernetes, ...), every time, before any
flow code runs (docs/dispatch.md).

Here Python's own ``forkserver`` start method does that work once: a single-threaded
server process imports Prefect's engine and every flow of the project
(:data:`PRELOAD`) when the worker starts, and each flow run is a ``fork()`` of it. The
child runs the very module ``python -m prefect.engine`` runs (its ``__main__`` block,
through :func:`runpy.run_module`), with the environment and working directory the worker
would give that new process; only the interpreter start and the imports are skipped.

The forkserver is single-threaded (no lock can be held by another thread at the fork);
it exits when the worker process that started it goes away. A flow-run child is an
ordinary process: the worker tracks it by PID, cancels it with SIGTERM, and marks its run
Crashed when it exits non-zero (Prefect's ``FlowRunExecutor`` does all of that).

Caveat: modules are imported when the worker starts. A new version of the flows'
code is picked up by restarting the worker (``dr worker`` again), not by each run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import runpy
import sys
import time
from collections.abc import Mapping, Sequence
from multiprocessing import spawn
from multiprocessing.process import BaseProcess

from dr.errors import SystemError_

__all__ = ["PRELOAD", "WarmInterpreter", "WarmStartError", "run_engine"]

log = logging.getLogger(__name__)

#: Imported once by the forkserver: Prefect's engine, every deployed flow, and the
#: third-party clients the flows use. A missing optional one is skipped (forkserver rule).
PRELOAD: tuple[str, ...] = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.deployments.steps",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.concurrency.services",
    "prefect._internal.states",
    "prefect.utilities.visualization",
    "flows.backup",
    "flows.backup_verification",
    "flows.region_failover",
    "flows.failback",
    "flows.data_corruption",
    "flows.breach_response",
    "psycopg",
    "boto3",
    "docker",
    "kubernetes",
    "slack_sdk",
    "redis",
    # Last: the worker's main script, then gc.freeze() (deployments/dispatch/preload.py).
    "deployments.dispatch.preload",
)

#: The worker's main script (absolute, normalised) for the forkserver to import once.
MAIN_PATH_ENV = "DR_WARM_MAIN"

#: Exit code of the readiness check when a preloaded module is missing in the child.
_NOT_WARM = 3


class WarmStartError(SystemError_):
    """The warm interpreter could not be started or did not import what it should."""


def _main_path() -> str | None:
    """The path ``multiprocessing`` gives each child as its main script (None: none)."""
    return spawn.get_preparation_data("dr-warm").get("init_main_from_path")


def _ready(expected: Sequence[str]) -> None:
    """The readiness check, in a forked child: every preloaded module is already there."""
    missing = [name for name in expected if name not in sys.modules]
    if missing:
        print(f"warm interpreter lacks: {', '.join(missing)}", file=sys.stderr, flush=True)
        sys.exit(_NOT_WARM)


def run_engine(env: Mapping[str, str], cwd: str) -> None:
    """In a forked child: become ``python -m prefect.engine`` for one flow run.

    The environment is replaced by ``env`` (what the worker gives a new flow-run process:
    ``PREFECT__FLOW_RUN_ID``, the work pool's variables, the control channel) and
    Prefect's settings are re-read from it, as ``prefect.flow_engine.run_flow_in_subprocess``
    does for its children.
    """
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [sys.argv[0]]  # the engine takes the run id from argv[1], else the env
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings

    with SettingsContext(profile=get_settings_context().profile, settings=Settings()):
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


class WarmInterpreter:
    """Python's forkserver with :data:`PRELOAD` imported: forks flow-run processes."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self.preload = tuple(preload)
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(self.preload))

    def start(self) -> float:
        """Start the forkserver (it imports everything now) and check one fork.

        Returns:
            Seconds it took (imports included).

        Raises:
            WarmStartError: the server did not start, or a preloaded module of the
                project is missing in its children.
        """
        started = time.monotonic()
        os.environ[MAIN_PATH_ENV] = _main_path() or ""
        probe = self._ctx.Process(target=_ready, args=(self._expected(),), name="dr-warm-check")
        try:
            probe.start()
            probe.join()
        except OSError as exc:
            raise WarmStartError(f"warm interpreter did not start: {exc}") from exc
        if probe.exitcode != 0:
            raise WarmStartError(
                f"warm interpreter not ready (exit {probe.exitcode}): a module of the "
                "project failed to import in the forkserver; see the worker's stderr"
            )
        seconds = time.monotonic() - started
        log.info("warm interpreter ready in %.1f s (%d modules)", seconds, len(self.preload))
        return seconds

    def fork_engine(self, env: Mapping[str, str], cwd: str, name: str) -> BaseProcess:
        """A new flow-run process: a fork of the warm interpreter running the engine."""
        process = self._ctx.Process(target=run_engine, args=(dict(env), cwd), name=name)
        process.start()
        return process

    def _expected(self) -> list[str]:
        """Modules every child must find imported: Prefect's engine and the project's flows."""
        return [m for m in self.preload if m.startswith(("prefect", "flows"))]
