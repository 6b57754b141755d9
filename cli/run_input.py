"""What ``dr drill`` and ``dr run`` check before a flow run exists: options, severity, times.

A typo must exit 2 with one line per problem, leaving no flow run, history row or Slack
message behind; only a run that really started can end ``failed`` or ``refused``.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from dr.config import DRConfig, Mode
from dr.errors import ConfigError

__all__ = ["check_run_input", "options_model"]


def options_model(flow_obj: Any) -> type[BaseModel] | None:
    """The pydantic model of a flow's ``options`` parameter, if it has one."""
    fn = getattr(flow_obj, "fn", flow_obj)
    if "options" not in inspect.signature(fn).parameters:
        return None
    hint = typing.get_type_hints(fn).get("options")
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _option_flag(loc: tuple[Any, ...]) -> str:
    key = ".".join(str(p) for p in loc) or "options"
    return "--inject" if key == "inject" else f"--option {key}"


def _option_problems(model: type[BaseModel], options: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields))
                message = f"unknown option (known: {known})"
            problems.append((_option_flag(tuple(error["loc"])), message))
        return problems
    return []


def _scenario_problems(
    model: type[BaseModel], options: dict[str, Any], cfg: DRConfig, target: str, mode: Mode
) -> list[tuple[str, str]]:
    """The options model's own checks against the target (``input_problems``), if it has any."""
    check = getattr(model, "input_problems", None)
    if check is None:
        return []
    return list(check(model.model_validate(options), cfg, target, mode))


def check_run_input(
    flow_obj: Any,
    cfg: DRConfig,
    *,
    target: str,
    mode: Mode,
    severity: str | None,
    options: dict[str, Any],
) -> str | None:
    """Validate a run's input; return the severity as the config spells it.

    Raises:
        ConfigError: listing every problem (options, severity, times, tables).
    """
    problems: list[tuple[str, str]] = []
    if severity is not None:
        try:
            severity = cfg.severity(severity, "--severity")
        except ConfigError as exc:
            problems.extend(exc.problems)
    model = options_model(flow_obj)
    if model is not None:
        option_problems = _option_problems(model, options)
        problems.extend(option_problems)
        if not option_problems and options.get("severity") is not None:
            try:
                cfg.severity(str(options["severity"]), "--option severity")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if not option_problems:
            problems.extend(_scenario_problems(model, options, cfg, target, mode))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the run's input", problems)
    return severity
