"""What every ``dr`` command shares: exit codes, consoles, loading and printing a config."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
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
    "prefect_api",
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


@contextlib.contextmanager
def prefect_api(cfg: DRConfig | None) -> Iterator[None]:
    """Point Prefect at the config's API when ``PREFECT_API_URL`` is not set.

    Before Prefect is imported the environment variable is enough (Prefect reads its
    settings at import). If it was already imported (tests, a long-lived process), the
    process-wide settings are re-read from the environment and the current context's are
    overridden, for the block only.
    """
    url = cfg.prefect_api_url if cfg is not None else None
    if os.environ.get("PREFECT_API_URL") or not url:
        yield
        return
    os.environ["PREFECT_API_URL"] = url
    imported = "prefect" in sys.modules
    try:
        if not imported:
            yield
            return
        import prefect.context
        from prefect.settings import PREFECT_API_URL, temporary_settings

        prefect.context.refresh_global_settings_context()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if imported:
            import prefect.context

            prefect.context.refresh_global_settings_context()
