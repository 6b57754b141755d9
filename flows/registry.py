"""Where each scenario's flow lives, for lazy imports.

The command line must start fast and must set ``PREFECT_API_URL`` before Prefect is
imported, so it never imports scenario modules up front: it asks this registry for an
import string and imports only the flow it runs. A scenario whose module is missing (a
partial install) gives a clear "scenario not installed" error instead of a traceback.

This module imports neither Prefect nor any flow.
"""

from __future__ import annotations

import importlib
from pathlib import Path  # noqa: F401 - tests read registry.Path
from typing import Any

from dr.config import LAB_CONFIG_PATH, Scenario, config_path
from dr.errors import ConfigError

__all__ = ["LAB_CONFIG_PATH", "SCENARIO_FLOWS", "find_config_path", "flow_import_path", "load_flow"]

#: Scenario -> "module:function" of its Prefect flow.
SCENARIO_FLOWS: dict[Scenario, str] = {
    Scenario.backup_verification: "flows.backup_verification:backup_verification_flow",
    Scenario.region_failover: "flows.region_failover:region_failover_flow",
    Scenario.data_corruption: "flows.data_corruption:data_corruption_flow",
    Scenario.breach_response: "flows.breach_response:breach_response_flow",
}

#: Compatibility alias (removed when the layout lands): the resolver is dr.config.config_path.
find_config_path = config_path


def flow_import_path(scenario: Scenario | str) -> str:
    """The ``module:function`` of a scenario's flow.

    Args:
        scenario: a :class:`Scenario` or its value (``region-failover``).

    Returns:
        The import string.

    Raises:
        ConfigError: the scenario is unknown.
    """
    try:
        key = Scenario(scenario)
    except ValueError:
        known = ", ".join(s.value for s in Scenario)
        raise ConfigError(
            f"unknown scenario {scenario!r} (known: {known})", [("scenario", str(scenario))]
        ) from None
    return SCENARIO_FLOWS[key]


def load_flow(scenario: Scenario | str) -> Any:
    """Import and return a scenario's flow object.

    Args:
        scenario: a :class:`Scenario` or its value.

    Returns:
        The Prefect ``Flow``.

    Raises:
        ConfigError: the scenario is unknown, or its module is not installed, or the module
            has no such flow.
    """
    path = flow_import_path(scenario)
    module_name, _, attr = path.partition(":")
    name = Scenario(scenario).value
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            raise ConfigError(
                f"scenario {name!r} is not installed: module {module_name} not found",
                [("scenario", f"{name}: {module_name} missing")],
            ) from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"scenario {name!r} is not installed: {module_name} has no {attr}",
            [("scenario", f"{name}: {path} missing")],
        ) from None
