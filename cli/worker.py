"""``dr worker``: the fast worker that runs the deployments' flow runs (incidents in < 1 s).

``cli/main.py`` adds it with :func:`register`. Prefect is imported only when the command
runs (after ``PREFECT_API_URL`` is set from ``dr.yaml`` when the environment has none).
See :mod:`deployments.dispatch` for what it does and ``docs/dispatch.md`` for the figures.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dr.errors import ConfigError

__all__ = ["register"]

# Same as deployments.dispatch.worker's (not imported here: it imports Prefect).
DEFAULT_POOL = "dr-process"
DEFAULT_QUERY_SECONDS = 0.25
DEFAULT_PREFETCH_SECONDS = 10.0
DEFAULT_HEARTBEAT_SECONDS = 30


def register(app: typer.Typer) -> None:
    """Add the ``worker`` command to a typer app.

    Args:
        app: the ``dr`` command line's app.
    """

    @app.command("worker")
    def worker(
        pool: str = typer.Option(DEFAULT_POOL, "--pool", "-p", help="Work pool to serve."),
        config: str | None = typer.Option(
            None,
            "--config",
            "-c",
            help="dr.yaml (its prefect_api_url when PREFECT_API_URL is unset).",
        ),
        name: str | None = typer.Option(None, "--name", "-n", help="The worker's name in the UI."),
        query_seconds: float = typer.Option(
            DEFAULT_QUERY_SECONDS, "--query-seconds", min=0.05, help="Seconds between polls."
        ),
        prefetch_seconds: float = typer.Option(
            DEFAULT_PREFETCH_SECONDS, "--prefetch-seconds", min=0, help="Submit runs due this soon."
        ),
        heartbeat_seconds: int = typer.Option(
            DEFAULT_HEARTBEAT_SECONDS,
            "--heartbeat-seconds",
            min=0,
            help="Flow-run heartbeat period (0: Prefect's default).",
        ),
        limit: int | None = typer.Option(
            None, "--limit", help="Most runs at once (default: no limit)."
        ),
        cold: bool = typer.Option(
            False, "--cold", help="Start each run as a new process (Prefect's way), polling fast."
        ),
    ) -> None:
        """Serve the work pool: poll every 0.25 s, fork each run from a warm interpreter.

        Replaces `prefect worker start --pool dr-process`: the same runs of the same
        deployments, visible in the UI, but an incident's flow code runs within about a
        second of the run's creation instead of 10-20 s. Restart it after changing the code.
        """
        from cli.common import load, prefect_api, print_config_error

        cfg = None
        if config is not None:
            try:
                _, cfg = load(Path(config))
            except ConfigError as exc:
                print_config_error(exc)
                raise typer.Exit(2) from None
        with prefect_api(cfg):  # before Prefect is imported
            from deployments.dispatch.worker import WorkerOptions, run_worker

            run_worker(
                WorkerOptions(
                    pool=pool,
                    name=name,
                    query_seconds=query_seconds,
                    prefetch_seconds=prefetch_seconds,
                    heartbeat_seconds=heartbeat_seconds or None,
                    limit=limit,
                    warm=not cold,
                )
            )
