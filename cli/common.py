"""What every ``dr`` command shares: exit codes, consoles, loading and printing a config."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dr.config import DRConfig, config_path, load_config
from dr.errors import ConfigError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "err",
    "err_console",
    "load",
    "out",
    "print_config_error",
]

#: 0 success, 1 a drill or run that did not pass, 2 bad input (config, parameters, target).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
err_console = err


def print_config_error(exc: ConfigError) -> None:
    """Print every problem of a bad config, one per line, with its key path."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    for path, reason in exc.problems:
        err.print(f"  [yellow]{escape(path)}[/]: {escape(reason)}")


def load(config: Path | None) -> tuple[Path, DRConfig]:
    """The config file the one resolver picks (``--config`` first), and its validated content."""
    path = config_path(config)
    return path, load_config(path)
