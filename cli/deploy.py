"""``dr deploy``: the command that puts every DR flow on a Prefect server.

``cli/main.py`` adds it with :func:`register`. Prefect is imported only when the command
runs, so ``dr --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import typer

from dr.config import DRConfig
from dr.errors import ConfigError

__all__ = ["register"]

POOL_NAME = "dr-process"  # same as deployments.deploy.POOL_NAME (not imported: slow)


def _fail(exc: ConfigError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    for key, reason in exc.problems:
        typer.echo(f"  {key}: {reason}", err=True)
    raise typer.Exit(2)


def deploy_command(
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="dr.yaml to read (default: $DR_CONFIG, ./dr.yaml, the lab's).",
    ),
    pool: str = typer.Option(POOL_NAME, "--pool", help="Work pool of every deployment."),
    pool_type: str = typer.Option(
        "process",
        "--pool-type",
        help="process, or kubernetes (deployments/k8s-work-pool.json).",
    ),
    prefect_file: Path | None = typer.Option(
        None,
        "--prefect-file",
        help="Deployments definition (default: ./prefect.yaml or the project's).",
    ),
    deployments: bool = typer.Option(
        True,
        "--deployments/--no-deployments",
        help="--no-deployments: only store dr.yaml's schedules and targets as Prefect "
        "variables and ensure the work pool (what `prefect deploy --all` needs).",
    ),
    force: bool = typer.Option(False, "--force", help="Re-apply unchanged deployments."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Create or update the work pool and every deployment of prefect.yaml.

    Schedules and targets come from dr.yaml (one schedule per target).

    Needs a Prefect API: $PREFECT_API_URL, else prefect_api_url in dr.yaml.

    Then start a worker: dr worker --pool dr-process
    """
    if pool_type not in ("process", "kubernetes"):
        _fail(
            ConfigError("--pool-type must be process or kubernetes", [("--pool-type", pool_type)])
        )
    path, cfg, api_url = _config_and_api(config)
    from deployments.deploy import deploy

    try:
        report = deploy(
            cfg,
            config_path=path,
            api_url=api_url,
            prefect_file=prefect_file,
            pool=pool,
            pool_type=pool_type,  # type: ignore[arg-type]
            deployments=deployments,
            force=force,
        )
    except ConfigError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    _print_report(report, deployments)


def _config_and_api(config: str | None) -> tuple[Path, DRConfig, str]:
    """The config (by the one resolver) and the Prefect API to deploy to; exit 2 without."""
    from dr.config import config_path, load_config

    path = config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _fail(exc)
    api_url = os.environ.get("PREFECT_API_URL") or cfg.prefect_api_url
    if not api_url:
        _fail(
            ConfigError(
                "no Prefect API to deploy to: set PREFECT_API_URL or prefect_api_url in dr.yaml",
                [("prefect_api_url", "not set, and PREFECT_API_URL is not set")],
            )
        )
    return path, cfg, api_url


def _print_report(report: Any, deployments: bool) -> None:
    """What was created, updated or left unchanged, then the warnings."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dr deploy -> {report.api_url}")
    for column in ("kind", "name", "outcome", "detail"):
        table.add_column(column)
    for o in report.outcomes:
        table.add_row(o.kind, o.name, o.outcome, o.detail)
    console = Console()
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if deployments:
        console.print(f"Start a worker: dr worker --pool {report.pool}")


def register(app: typer.Typer) -> None:
    """Add the ``deploy`` command to a typer app.

    Args:
        app: the ``dr`` command line's app.
    """
    app.command("deploy")(deploy_command)
