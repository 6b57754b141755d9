"""What every ``dr`` command shares: the error console and how a bad config is printed."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from dr.errors import ConfigError

__all__ = ["err_console", "print_config_error"]

err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def print_config_error(exc: ConfigError) -> None:
    """Print every problem of a bad config, one per line, with its key path."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    for path, reason in exc.problems:
        err_console.print(f"  [yellow]{escape(path)}[/]: {escape(reason)}")
