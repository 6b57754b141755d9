"""prefect.yaml's deployments, planned for dr.yaml: one schedule per target, the form's choices."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from deployments.deploy.pools import POOL_NAME
from deployments.deploy.variables import (
    BACKUP_TARGET_VARIABLE,
    DRILL_TARGET_VARIABLE,
    _variable_placeholder,
    config_variables,
    drill_targets,
    resolve_placeholders,
)
from dr.config import DRConfig, Mode, Scenario
from dr.errors import ConfigError

#: Drills of targets on one cluster are moved this many minutes apart (see :func:`stagger`).
STAGGER_MINUTES = 15

#: What each mode does, for the form's ``mode`` field (only the deployment's modes are shown).
MODE_HELP = {
    Mode.drill.value: "drill: inject the failure, recover, measure RTO/RPO (and fail back)",
    Mode.incident.value: "incident: recover from a real failure; approval gates apply",
    Mode.dry_run.value: "dry-run: assess and print the plan; change nothing",
}

#: Scenario deployments are named ``<scenario>-drill`` / ``<scenario>-incident``; the alert
#: receiver starts runs on ``<scenario>/<scenario>-<mode>``, so the flow's name must match.
_SCENARIO_SUFFIXES = ("-drill", "-incident")


def default_prefect_file() -> Path:
    """``./prefect.yaml`` when there is one, else the one at the root of this project."""
    local = Path("prefect.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "prefect.yaml"


def load_prefect_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The raw (unresolved) deployment entries of a prefect.yaml.

    Raises:
        ConfigError: the file is missing, not YAML, or has no ``deployments`` list.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file", [("(file)", "not found")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML", [("(file)", str(exc))]) from None
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deployments, list) or not deployments:
        raise ConfigError(f"{p}: no deployments", [("deployments", "missing or empty")])
    problems = [
        (f"deployments.{i}", "needs a name and an entrypoint")
        for i, d in enumerate(deployments)
        if not (isinstance(d, dict) and d.get("name") and d.get("entrypoint"))
    ]
    if problems:
        raise ConfigError(f"{p}: {len(problems)} problem(s)", problems)
    return deployments


class ScheduleSpec(BaseModel):
    """One schedule of a deployment, resolved."""

    cron: str
    timezone: str = "UTC"
    slug: str | None = None
    active: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)


class DeploymentSpec(BaseModel):
    """One deployment as it will be applied (placeholders resolved, schedules per target)."""

    name: str
    entrypoint: str
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    work_pool_name: str = POOL_NAME
    work_queue_name: str | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)
    enforce_parameter_schema: bool = True
    paused: bool = False
    targets: list[str] = Field(description="Targets this deployment may act on (the enum).")
    modes: list[str] | None = Field(None, description="Modes it runs; None: no mode parameter.")
    severities: list[str] | None = Field(
        None, description="The config's severities (the form's choices); None: no severity."
    )

    @property
    def scenario(self) -> str | None:
        """The scenario of a ``<scenario>-drill``/``-incident`` deployment, else None."""
        for suffix in _SCENARIO_SUFFIXES:
            stem = self.name.removesuffix(suffix)
            if stem != self.name and stem in {s.value for s in Scenario}:
                return stem
        return None


def stagger(cron: str, minutes: int) -> str:
    """``cron`` moved ``minutes`` later, when its minute and hour are plain numbers.

    Other forms (``*/5``, lists) are returned unchanged: they name no single minute.
    """
    fields = cron.split()
    if minutes == 0 or len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()):
        return cron
    total = int(fields[1]) * 60 + int(fields[0]) + minutes
    hour, minute = divmod(total % (24 * 60), 60)
    return " ".join([str(minute), str(hour), *fields[2:]])


def _cluster(config: DRConfig, target: str) -> str:
    primary = config.target(target).postgres.primary
    return f"{primary.host}:{primary.port}"


def _free_minute(cron: str, taken: set[str]) -> str:
    """The first of ``cron``, +15 min, +30 min, ... not already due on the cluster."""
    for step in range(24 * 60 // STAGGER_MINUTES):
        moved = stagger(cron, step * STAGGER_MINUTES)
        if moved not in taken:
            break
    taken.add(moved)
    return moved


def _expand_schedule(
    raw: dict[str, Any],
    resolved: dict[str, Any],
    config: DRConfig,
    due: dict[str, set[str]] | None = None,
) -> list[ScheduleSpec]:
    """One schedule per target, named by it; drills on one cluster never due at one minute."""
    raw_target = (raw.get("parameters") or {}).get("target")
    variable = _variable_placeholder(raw_target)
    if variable == BACKUP_TARGET_VARIABLE:
        targets: list[str | None] = list(config.targets)
    elif variable == DRILL_TARGET_VARIABLE:
        targets = list(drill_targets(config))
    else:
        targets = [None]
    due = {} if due is None else due
    out = []
    for target in targets:
        item = copy.deepcopy(resolved)
        if target is not None:
            item.setdefault("parameters", {})["target"] = target
            slug = item.get("slug")
            item["slug"] = f"{slug}-{target}" if slug else target
            if variable == DRILL_TARGET_VARIABLE:
                taken = due.setdefault(_cluster(config, target), set())
                item["cron"] = _free_minute(str(item["cron"]), taken)
            # A copy exists only for a target that qualifies (drills_allowed): active.
            item["active"] = True
        elif item.get("active") in (None, ""):
            item.pop("active", None)
        if not item.get("timezone"):
            item.pop("timezone", None)
        out.append(ScheduleSpec.model_validate(item))
    return out


def _parameters(
    resolved: dict[str, Any], all_targets: list[str], drills: list[str]
) -> tuple[dict[str, Any], list[str], list[str] | None]:
    """A deployment's default parameters, the targets and the modes its form offers."""
    parameters = dict(resolved.get("parameters") or {})
    mode = parameters.get("mode")
    if mode == Mode.drill.value:
        targets, modes = drills, [Mode.drill.value]
    elif mode == Mode.incident.value:
        targets, modes = all_targets, [Mode.incident.value, Mode.dry_run.value]
    else:
        targets, modes = all_targets, None
    if parameters.get("target") in ("", None) or parameters.get("target") not in targets:
        parameters.pop("target", None)
    if modes is not None:
        # Scenario runs end Failed (with the reason) unless they passed: the UI's badge,
        # notifications and automations then agree with the report.
        parameters.setdefault("fail_flow", True)
    return parameters, list(targets), modes


def plan_deployments(
    raw_deployments: Iterable[dict[str, Any]],
    config: DRConfig,
    *,
    pool: str | None = None,
) -> list[DeploymentSpec]:
    """Resolve prefect.yaml's deployments against dr.yaml (no I/O).

    Args:
        raw_deployments: entries of prefect.yaml (:func:`load_prefect_file`).
        config: the validated config.
        pool: work pool for every deployment (default: each entry's own).

    Returns:
        One :class:`DeploymentSpec` per entry, schedules repeated per target.

    Raises:
        ConfigError: a schedule without a cron line, or a concurrency limit that is not an int.
    """
    variables = config_variables(config)
    all_targets = list(config.targets)
    drills = drill_targets(config)
    due: dict[str, set[str]] = {}  # cluster -> drill crons already planned on it
    specs = []
    for raw in raw_deployments:
        resolved = resolve_placeholders(copy.deepcopy(raw), variables)
        name = resolved["name"]
        schedules: list[ScheduleSpec] = []
        for raw_s, res_s in zip(
            raw.get("schedules") or [], resolved.get("schedules") or [], strict=True
        ):
            if not res_s.get("cron"):
                raise ConfigError(
                    f"prefect.yaml: deployment {name}: a schedule without a cron line",
                    [(f"deployments.{name}.schedules", "cron is empty (is the variable set?)")],
                )
            schedules.extend(_expand_schedule(raw_s, res_s, config, due))
        limit = resolved.get("concurrency_limit")
        strategy = None
        if isinstance(limit, dict):
            strategy = limit.get("collision_strategy")
            limit = limit.get("limit")
        if limit is not None and not isinstance(limit, int):
            raise ConfigError(
                f"prefect.yaml: deployment {name}: concurrency_limit must be an integer",
                [(f"deployments.{name}.concurrency_limit", repr(limit))],
            )
        parameters, targets, modes = _parameters(resolved, all_targets, drills)
        work_pool = resolved.get("work_pool") or {}
        specs.append(
            DeploymentSpec(
                name=name,
                entrypoint=resolved["entrypoint"],
                description=resolved.get("description"),
                tags=list(resolved.get("tags") or []),
                parameters=parameters,
                schedules=schedules,
                concurrency_limit=limit,
                collision_strategy=strategy,
                work_pool_name=pool or work_pool.get("name") or POOL_NAME,
                work_queue_name=work_pool.get("work_queue_name"),
                job_variables=dict(work_pool.get("job_variables") or {}),
                enforce_parameter_schema=resolved.get("enforce_parameter_schema", True),
                paused=bool(resolved.get("paused", False)),
                targets=targets,
                modes=modes,
                severities=list(config.severities) if modes is not None else None,
            )
        )
    return specs


def patch_parameter_schema(
    schema: dict[str, Any],
    *,
    targets: list[str],
    modes: list[str] | None,
    severities: list[str] | None = None,
) -> dict[str, Any]:
    """Make ``target``, ``mode`` and ``severity`` drop-downs of exactly the allowed values.

    Prefect's UI renders an ``enum`` as a select, and the server validates run parameters
    against this schema (``enforce_parameter_schema``), so a value outside it is refused
    before a run starts.

    Args:
        schema: the flow's parameter schema (``prefect.utilities.callables.parameter_schema``).
        targets: allowed targets (may be empty: nothing is allowed).
        modes: allowed modes; one mode is also made read-only; None leaves ``mode`` alone.
        severities: the config's severities; None leaves ``severity`` alone.

    Returns:
        A patched copy.
    """
    out = copy.deepcopy(schema)
    props = out.get("properties", {})

    def _keep(prop: dict[str, Any]) -> dict[str, Any]:
        return {k: prop[k] for k in ("title", "description", "position", "default") if k in prop}

    if "target" in props:
        new = _keep(props["target"]) | {"type": "string", "enum": list(targets)}
        if new.get("default") not in targets:
            new.pop("default", None)
        props["target"] = new
    if modes is not None and "mode" in props:
        new = _keep(props["mode"]) | {"type": "string", "enum": list(modes)}
        new["description"] = "; ".join(MODE_HELP.get(m, m) for m in modes) + "."
        if new.get("default") not in modes:
            new["default"] = modes[0]
        if len(modes) == 1:
            new["readOnly"] = True
        props["mode"] = new
    if severities and "severity" in props:
        new = _keep(props["severity"]) | {"type": "string", "enum": list(severities)}
        if new.get("default") not in severities:
            new.pop("default", None)
        props["severity"] = new
    return out
