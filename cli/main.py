"""The ``dr`` command: for people on call and for CI pipelines.

Thin on purpose: every command parses its arguments, loads and validates the config, and
calls one function of a flow or of the lab. Exit codes: 0 success, 1 a drill or run that
did not pass, 2 bad input (config, parameters, unknown target).
"""

from __future__ import annotations

import importlib
import sys

import typer

from cli.common import print_config_error
from dr.config import load_config
from dr.errors import ConfigError

app = typer.Typer(
    name="dr",
    help="Disaster recovery as code: executable, rehearsed and measured runbooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Sub-commands live next to the code they drive; each module exposes register(app) or a
# Typer sub-app. Importing them here keeps `dr --help` complete.
_COMMAND_MODULES = (
    "cli.runs",
    "cli.backup",
    "cli.alerts",
    "cli.worker",
    "cli.deploy",
    "cli.evidence",
    "cli.doctor",
)


def _wire() -> None:
    from cli.config import register as register_config

    register_config(app)  # first, as `dr --help` lists it
    try:
        from cli.lab import lab_app
    except ModuleNotFoundError as exc:  # pragma: no cover - only in a partial checkout
        if exc.name != "cli.lab" and exc.name != "lab":
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


__all__ = ["app", "load_config", "main", "print_config_error"]
