"""Which ``dr.yaml`` to read (the one resolver), reading it, and its errors as key paths.

Kept apart from the models of :mod:`dr.config`, which re-exports :func:`config_path`: every
command, flow and the alert receiver resolve the config through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dr.errors import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "LAB_CONFIG_PATH",
    "config_path",
    "problems_from_validation",
    "read_yaml_file",
]

DEFAULT_CONFIG_PATH = "dr.yaml"
CONFIG_ENV_VAR = "DR_CONFIG"
#: The config ``dr lab up`` writes, used when no other is given.
LAB_CONFIG_PATH = Path(".lab") / "dr.yaml"
#: libyaml's safe loader when PyYAML has it (same result, ~17x faster: the lab's dr.yaml
#: parses in 8 ms instead of 140 ms, paid by every flow run before its first step).
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``path``, else ``$DR_CONFIG``, else ``./dr.yaml``, else the lab's.

    The one resolver, so every command and flow reads the same file for the same arguments.
    Without any, ``./dr.yaml`` (the error then names the usual place).
    """
    if path:
        return Path(path)
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_PATH)
    if not default.exists() and LAB_CONFIG_PATH.exists():
        return LAB_CONFIG_PATH
    return default


def read_yaml_file(path: Path) -> Any:
    """The parsed content of a YAML file.

    Raises:
        ConfigError: the file is missing or not YAML (with the line and column).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", [("(file)", "not found")]) from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(
            f"{path}: not valid YAML at {where}", [(where, str(getattr(exc, "problem", exc)))]
        ) from None


def problems_from_validation(exc: ValidationError) -> list[tuple[str, str]]:
    """Every validation error as (key path, reason), the way ``dr config check`` prints them."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # Discriminated unions add the tag to the path; it is noise for a person.
        loc = [p for p in loc if p not in ("docker", "kubernetes") or p == loc[0]]
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if ": " in msg and msg.split(":")[0].count(".") and not loc:
            # Cross-field errors already carry their own key paths.
            for part in msg.split("; "):
                path, _, reason = part.partition(": ")
                problems.append((path, reason))
            continue
        if err["type"] == "value_error" and not loc:
            for part in msg.split("; "):
                path, _, reason = part.partition(": ")
                problems.append((path, reason) if reason else ("(top level)", part))
            continue
        problems.append((".".join(loc) or "(top level)", msg))
    return problems
