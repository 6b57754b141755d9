"""dr.yaml's schedules and targets as Prefect variables, and the placeholders that name them."""

from __future__ import annotations

import logging
import os
from typing import Any

from deployments.deploy.report import Outcome
from dr.config import DRConfig

log = logging.getLogger("deployments.deploy")


#: Schedules whose ``target`` is this variable are repeated for every target.
BACKUP_TARGET_VARIABLE = "dr_backup_target"


#: Schedules whose ``target`` is this variable are repeated for every drill target.
DRILL_TARGET_VARIABLE = "dr_drill_target"


VARIABLE_TAGS = ["dr"]


_VARIABLE_PREFIX = "prefect.variables."


def drill_targets(config: DRConfig) -> list[str]:
    """Targets that allow drills, in the config's order (scheduled drills run on these)."""
    return [name for name, target in config.targets.items() if target.drills_allowed]


def config_variables(config: DRConfig) -> dict[str, Any]:
    """The Prefect variables prefect.yaml's placeholders read, from dr.yaml.

    Args:
        config: the validated config.

    Returns:
        ``{variable name: JSON value}``: one ``dr_schedule_<name>`` per field of
        ``schedules:`` (cron lines and ``timezone``), ``dr_backup_target`` (the first
        target), ``dr_drill_target`` (the first target allowing drills, or ``""``) and
        ``dr_drills_active`` (whether any target allows drills).
    """
    values: dict[str, Any] = {
        f"dr_schedule_{field}": value for field, value in config.schedules.model_dump().items()
    }
    drills = drill_targets(config)
    values[BACKUP_TARGET_VARIABLE] = next(iter(config.targets))
    values[DRILL_TARGET_VARIABLE] = drills[0] if drills else ""
    values["dr_drills_active"] = bool(drills)
    return values


def resolve_placeholders(template: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{{ prefect.variables.NAME }}`` and ``{{ $ENV }}`` as ``prefect deploy`` does.

    A string that is one variable placeholder becomes the variable's JSON value (a bool
    stays a bool); placeholders inside longer strings become ``str(value)``; a missing
    variable becomes ``""`` (Prefect's behaviour). Other placeholders are left alone.

    Args:
        template: a value of prefect.yaml (dicts and lists are walked).
        variables: the variables' values.

    Returns:
        The resolved copy.
    """
    from prefect.utilities.templating import PlaceholderType, find_placeholders

    if isinstance(template, dict):
        return {k: resolve_placeholders(v, variables) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve_placeholders(v, variables) for v in template]
    if not isinstance(template, str):
        return template
    placeholders = find_placeholders(template)
    if not placeholders:
        return template
    if len(placeholders) == 1:
        only = next(iter(placeholders))
        if only.full_match == template and only.type is PlaceholderType.VARIABLE:
            return variables.get(only.name[len(_VARIABLE_PREFIX) :], "")
    text = template
    for placeholder in placeholders:
        if placeholder.type is PlaceholderType.VARIABLE:
            value = variables.get(placeholder.name[len(_VARIABLE_PREFIX) :], "")
            text = text.replace(placeholder.full_match, str(value))
        elif placeholder.type is PlaceholderType.ENV_VAR:
            value = os.environ.get(placeholder.name.lstrip("$"))
            if value is not None:
                text = text.replace(placeholder.full_match, value)
    return text


def _variable_placeholder(value: Any) -> str | None:
    """The variable name if ``value`` is exactly one ``{{ prefect.variables.X }}``."""
    if not isinstance(value, str):
        return None
    from prefect.utilities.templating import PlaceholderType, find_placeholders

    placeholders = find_placeholders(value)
    if len(placeholders) != 1:
        return None
    only = next(iter(placeholders))
    if only.full_match != value or only.type is not PlaceholderType.VARIABLE:
        return None
    return only.name[len(_VARIABLE_PREFIX) :]


def _ensure_variable(client: Any, name: str, value: Any) -> Outcome:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    current = client.read_variable_by_name(name)
    if current is None:
        client.create_variable(VariableCreate(name=name, value=value, tags=VARIABLE_TAGS))
        log.info("variable %s: created (%r)", name, value)
        return Outcome(kind="variable", name=name, outcome="created", detail=repr(value))
    if current.value == value and type(current.value) is type(value):
        return Outcome(kind="variable", name=name, outcome="unchanged", detail=repr(value))
    client.update_variable(VariableUpdate(name=name, value=value))
    log.info("variable %s: updated %r -> %r", name, current.value, value)
    return Outcome(
        kind="variable", name=name, outcome="updated", detail=f"{current.value!r} -> {value!r}"
    )
