"""The ``dr`` command: for people on call and for CI pipelines.

Thin on purpose: every command parses its arguments, loads and validates the config, and
calls one function of a flow or of the lab. Exit codes: 0 success, 1 a drill or run that
did not pass, 2 bad input (config, parameters, unknown target).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from dr.config import config_path, load_config
from dr.errors import ConfigError

app = typer.Typer(
    name="dr",
    help="Disaster recovery as code: executable, rehearsed and measured runbooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate the dr.yaml configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

err_console = Console(stderr=True, soft_wrap=True)


def print_config_error(exc: ConfigError) -> None:
    """Print every problem of a bad config, one per line, with its key path."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    for path, reason in exc.problems:
        err_console.print(f"  [yellow]{escape(path)}[/]: {escape(reason)}")


@config_app.command("check")
def config_check(
    file: Path | None = typer.Argument(
        None, help="Config file (default: $DR_CONFIG or ./dr.yaml)."
    ),
) -> None:
    """Validate a config file; print every error with its key path."""
    path = config_path(file)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print_config_error(exc)
        raise typer.Exit(2) from None
    targets = ", ".join(f"{name} ({t.tier})" for name, t in cfg.targets.items())
    typer.echo(f"{path}: valid; targets: {targets}")


# Sub-commands live next to the code they drive; each module exposes register(app) or a
# Typer sub-app. Importing them here keeps `dr --help` complete.
_COMMAND_MODULES = (
    "dr.cli_runs",
    "dr.cli_backup",
    "deployments.cli_alerts",
    "deployments.cli_deploy",
    "dr.cli_evidence",
)


def _wire() -> None:
    try:
        from lab.cli import lab_app
    except ModuleNotFoundError as exc:  # pragma: no cover - only in a partial checkout
        if exc.name != "lab.cli":
            raise
    else:
        app.add_typer(lab_app, name="lab", help="Bring the local lab up, inspect it, take it down.")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # pragma: no cover - only in a partial checkout
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_wire()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:
        print_config_error(exc)
        sys.exit(2)


__all__ = ["app", "load_config", "main"]
