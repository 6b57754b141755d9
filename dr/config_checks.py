"""Cross-field checks of ``dr.yaml``, on the plain mapping, so they run in the same pass as the
field errors: a file with an unknown tier, a bad port and an unknown key gets all three at once.

:class:`dr.config.DRConfig` runs them on its own dump when the fields are valid, and
:func:`dr.config.parse_config` runs them on the raw file when they are not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_SEVERITIES", "DEFAULT_SEVERITY_MAP", "cross_problems"]

#: The closed set of severities when the config names none.
DEFAULT_SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")

#: Alert ``severity`` labels and what they mean here (``alerts.severity_map``).
DEFAULT_SEVERITY_MAP = {
    "critical": "SEV1",
    "page": "SEV1",
    "high": "SEV2",
    "error": "SEV2",
    "warning": "SEV3",
    "medium": "SEV3",
    "low": "SEV4",
    "info": "SEV4",
    # PagerDuty priorities
    "p1": "SEV1",
    "p2": "SEV2",
    "p3": "SEV3",
    "p4": "SEV4",
    "p5": "SEV4",
}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _node_address(node: Any) -> tuple[str, str] | None:
    if not isinstance(node, dict) or "host" not in node:
        return None
    return str(node["host"]), str(node.get("port", 5432))


def _target_problems(name: str, target: dict[str, Any], tiers: set[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    tier = target.get("tier", "critical")
    if isinstance(tier, str) and tier not in tiers:
        problems.append(
            (f"targets.{name}.tier", f"unknown tier {tier!r} (known: {', '.join(sorted(tiers))})")
        )
    postgres = _mapping(target.get("postgres"))
    primary = _node_address(postgres.get("primary"))
    replicas = postgres.get("replicas")
    for i, replica in enumerate(replicas if isinstance(replicas, list) else []):
        if primary is not None and _node_address(replica) == primary:
            problems.append(
                (
                    f"targets.{name}.postgres.replicas.{i}",
                    f"same host and port as the primary ({primary[0]}:{primary[1]})",
                )
            )
    return problems


def _severity_problems(data: dict[str, Any], severities: set[str]) -> list[tuple[str, str]]:
    known = ", ".join(sorted(severities))
    problems: list[tuple[str, str]] = []
    approval = _mapping(data.get("approval")).get("auto_approve_severities")
    for i, value in enumerate(approval if isinstance(approval, list) else []):
        if value not in severities:
            problems.append(
                (
                    f"approval.auto_approve_severities.{i}",
                    f"unknown severity {value!r} (known: {known})",
                )
            )
    mapping = _mapping(_mapping(data.get("alerts")).get("severity_map"))
    for label, value in mapping.items():
        if value not in severities:
            problems.append(
                (f"alerts.severity_map.{label}", f"unknown severity {value!r} (known: {known})")
            )
    return problems


def cross_problems(data: Any, default_tiers: Iterable[str]) -> list[tuple[str, str]]:
    """Every cross-field problem of a config mapping, as ``(key path, reason)``.

    Tolerates a mapping whose fields are invalid: what cannot be read is skipped (the field
    errors name it).
    """
    if not isinstance(data, dict):
        return []
    tiers = set(default_tiers) | set(_mapping(data.get("tiers")))
    raw_severities = data.get("severities")
    severities = set(
        raw_severities
        if isinstance(raw_severities, list) and raw_severities
        else DEFAULT_SEVERITIES
    )
    problems: list[tuple[str, str]] = []
    targets = _mapping(data.get("targets"))
    for name, target in targets.items():
        if isinstance(target, dict):
            problems.extend(_target_problems(str(name), target, tiers))
    routes = _mapping(data.get("alerts")).get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        if isinstance(route, dict) and "target" in route and route["target"] not in targets:
            problems.append((f"alerts.routes.{i}.target", f"unknown target {route['target']!r}"))
    problems.extend(_severity_problems(data, severities))
    return problems
