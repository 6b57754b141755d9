"""``dr config check``: validate a config file and print every problem with its key path."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import print_config_error
from dr.config import config_path, load_config
from dr.errors import ConfigError

__all__ = ["config_app", "register"]

config_app = typer.Typer(help="Validate the dr.yaml configuration.", no_args_is_help=True)


@config_app.command("check")
def config_check(
    file: Path | None = typer.Argument(
        None, help="Config file (default: $DR_CONFIG, ./dr.yaml, the lab's)."
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


def register(app: typer.Typer) -> None:
    """Add the ``config`` group to the ``dr`` app."""
    app.add_typer(config_app, name="config")
