"""``dr deploy``: every DR flow as a Prefect deployment, schedules and targets from dr.yaml.

Two files, each saying one thing:

- ``prefect.yaml`` (repository root) defines the deployments: names, entrypoints, work
  pool, tags, parameter defaults, concurrency limits, and which schedule each one has.
  Where a value belongs to the protected system (a cron line, a time zone, a target) it
  holds a placeholder, ``{{ prefect.variables.dr_... }}``.
- ``dr.yaml`` holds those values: ``schedules:`` and ``targets:``.

:func:`deploy` joins them. It stores the values as Prefect variables (so a plain
``prefect --no-prompt deploy --all`` run from the repository root resolves the same
placeholders), creates or updates the work pool, and applies every deployment of
``prefect.yaml`` itself, adding what a static file cannot say:

- one schedule per target: a schedule whose ``target`` is ``dr_backup_target`` is repeated
  for every target, one whose ``target`` is ``dr_drill_target`` for every target that
  allows drills (``drills_allowed``); the first target's schedule keeps prefect.yaml's
  slug (so ``prefect deploy --all`` updates that one in place), the others are
  ``<slug>-<target>``;
- the target as a list: each deployment's parameter schema gets an ``enum`` of the
  targets it may act on (drill deployments: only targets that allow drills), and the mode
  an ``enum`` of the modes it runs (drill deployments: ``drill`` only, read-only;
  incident deployments: ``incident`` or ``dry-run``). The Prefect UI shows drop-downs and
  the server refuses other values before a run starts (HTTP 409).

A plain ``prefect deploy --all`` gives each deployment one schedule, for the first target
(``dr_backup_target``) or the first target allowing drills (``dr_drill_target``), and a
free-text target field; the flows refuse an unknown target themselves.

Runs start in the repository (``set_working_directory``, as ``prefect deploy`` records it)
and find the config through ``DR_CONFIG``, which :func:`deploy` sets in the process work
pool's environment. Kubernetes pools get no working directory (the image holds the code)
and their template is created once from ``deployments/k8s-work-pool.json``, never
overwritten.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from dr.config import DRConfig, Mode, Scenario
from dr.errors import ConfigError

__all__ = [
    "BACKUP_TARGET_VARIABLE",
    "DRILL_TARGET_VARIABLE",
    "K8S_TEMPLATE_PATH",
    "POOL_NAME",
    "DeployReport",
    "DeploymentSpec",
    "Outcome",
    "ScheduleSpec",
    "config_variables",
    "default_prefect_file",
    "deploy",
    "drill_targets",
    "load_prefect_file",
    "patch_parameter_schema",
    "plan_deployments",
    "process_pool_template",
    "resolve_placeholders",
    "spec_version",
]

log = logging.getLogger(__name__)

#: The work pool every deployment of prefect.yaml uses (``--pool`` overrides it).
POOL_NAME = "dr-process"
PoolType = Literal["process", "kubernetes"]
#: The Kubernetes work pool's base job template (created once, never overwritten).
K8S_TEMPLATE_PATH = Path(__file__).with_name("k8s-work-pool.json")
#: Schedules whose ``target`` is this variable are repeated for every target.
BACKUP_TARGET_VARIABLE = "dr_backup_target"
#: Schedules whose ``target`` is this variable are repeated for every drill target.
DRILL_TARGET_VARIABLE = "dr_drill_target"
VARIABLE_TAGS = ["dr"]
_VARIABLE_PREFIX = "prefect.variables."
_WORKING_DIRECTORY_STEP = "prefect.deployments.steps.set_working_directory"
#: Scenario deployments are named ``<scenario>-drill`` / ``<scenario>-incident``; the alert
#: receiver starts runs on ``<scenario>/<scenario>-<mode>``, so the flow's name must match.
_SCENARIO_SUFFIXES = ("-drill", "-incident")


# --------------------------------------------------------------------------- values


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


# --------------------------------------------------------------------------- prefect.yaml


def default_prefect_file() -> Path:
    """``./prefect.yaml`` when there is one, else the one at the root of this project."""
    local = Path("prefect.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / "prefect.yaml"


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

    @property
    def scenario(self) -> str | None:
        """The scenario of a ``<scenario>-drill``/``-incident`` deployment, else None."""
        for suffix in _SCENARIO_SUFFIXES:
            stem = self.name.removesuffix(suffix)
            if stem != self.name and stem in {s.value for s in Scenario}:
                return stem
        return None


def _expand_schedule(
    raw: dict[str, Any], resolved: dict[str, Any], config: DRConfig
) -> list[ScheduleSpec]:
    raw_target = (raw.get("parameters") or {}).get("target")
    variable = _variable_placeholder(raw_target)
    if variable == BACKUP_TARGET_VARIABLE:
        targets: list[str | None] = list(config.targets)
    elif variable == DRILL_TARGET_VARIABLE:
        targets = list(drill_targets(config))
    else:
        targets = [None]
    out = []
    for index, target in enumerate(targets):
        item = copy.deepcopy(resolved)
        if target is not None:
            item.setdefault("parameters", {})["target"] = target
            slug = item.get("slug")
            # The first target is the variable's value: its schedule keeps prefect.yaml's
            # slug, so `prefect deploy --all` updates it in place instead of adding another.
            if index > 0 or not slug:
                item["slug"] = f"{slug}-{target}" if slug else target
            # A copy exists only for a target that qualifies (drills_allowed): active.
            item["active"] = True
        elif item.get("active") in (None, ""):
            item.pop("active", None)
        if not item.get("timezone"):
            item.pop("timezone", None)
        out.append(ScheduleSpec.model_validate(item))
    return out


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
            schedules.extend(_expand_schedule(raw_s, res_s, config))
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
            )
        )
    return specs


# --------------------------------------------------------------------------- the form


def patch_parameter_schema(
    schema: dict[str, Any], *, targets: list[str], modes: list[str] | None
) -> dict[str, Any]:
    """Make ``target`` and ``mode`` drop-downs of exactly the allowed values.

    Prefect's UI renders an ``enum`` as a select, and the server validates run parameters
    against this schema (``enforce_parameter_schema``), so a value outside it is refused
    before a run starts.

    Args:
        schema: the flow's parameter schema (``prefect.utilities.callables.parameter_schema``).
        targets: allowed targets (may be empty: nothing is allowed).
        modes: allowed modes; one mode is also made read-only; None leaves ``mode`` alone.

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
        if new.get("default") not in modes:
            new["default"] = modes[0]
        if len(modes) == 1:
            new["readOnly"] = True
        props["mode"] = new
    return out


# --------------------------------------------------------------------------- work pools


def process_pool_template(config_path: Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The process work pool's base job template with ``DR_CONFIG`` in its environment.

    Args:
        config_path: the config file the runs read (made absolute).
        base: an existing template to change (default: Prefect's default process template).

    Returns:
        The template (a copy).
    """
    if base is None:
        from prefect.workers.process import ProcessWorker

        base = ProcessWorker.get_default_base_job_template()
    template = copy.deepcopy(base)
    env = template.setdefault("variables", {}).setdefault("properties", {}).setdefault("env", {})
    default = dict(env.get("default") or {})
    default["DR_CONFIG"] = str(Path(config_path).resolve())
    env["default"] = default
    return template


# --------------------------------------------------------------------------- applying


class Outcome(BaseModel):
    """What :func:`deploy` did to one object."""

    kind: Literal["variable", "work-pool", "deployment"]
    name: str
    outcome: Literal["created", "updated", "unchanged", "skipped"]
    detail: str = ""


class DeployReport(BaseModel):
    """What ``dr deploy`` prints (``--json``)."""

    api_url: str
    pool: str
    pool_type: str
    prefect_file: str
    config_path: str
    outcomes: list[Outcome] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def deployments(self, outcome: str | None = None) -> list[str]:
        return [
            o.name
            for o in self.outcomes
            if o.kind == "deployment" and (outcome is None or o.outcome == outcome)
        ]


def spec_version(payload: dict[str, Any]) -> str:
    """A version string that changes exactly when what is applied changes."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"dr-{digest[:12]}"


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


def _ensure_pool(client: Any, name: str, pool_type: PoolType, config_path: Path) -> Outcome:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        pool = None
    if pool is None:
        if pool_type == "process":
            template = process_pool_template(config_path)
        else:
            template = json.loads(K8S_TEMPLATE_PATH.read_text())
        client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=pool_type,
                base_job_template=template,
                description="DR pipelines: backups, drills and incident runs.",
            )
        )
        log.info("work pool %s (%s): created", name, pool_type)
        return Outcome(kind="work-pool", name=name, outcome="created", detail=pool_type)
    if pool.type != pool_type:
        raise ConfigError(
            f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}",
            [("--pool-type", f"{name} is a {pool.type} pool")],
        )
    if pool_type != "process":
        return Outcome(kind="work-pool", name=name, outcome="unchanged", detail=pool_type)
    template = process_pool_template(config_path, pool.base_job_template)
    if template == pool.base_job_template:
        return Outcome(kind="work-pool", name=name, outcome="unchanged", detail=pool_type)
    client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
    log.info("work pool %s: DR_CONFIG set to %s", name, Path(config_path).resolve())
    return Outcome(
        kind="work-pool",
        name=name,
        outcome="updated",
        detail=f"DR_CONFIG={Path(config_path).resolve()}",
    )


def _import_flow(entrypoint: str) -> Any:
    """The flow object of a ``module:function`` entrypoint, or None when not installed."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            return None
        raise
    flow = getattr(module, attr, None)
    if flow is None:
        raise ConfigError(
            f"prefect.yaml: {entrypoint}: {module_name} has no {attr}",
            [("entrypoint", entrypoint)],
        )
    return flow


def _payload(spec: DeploymentSpec, flow: Any, pull_steps: list[dict[str, Any]]) -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow).model_dump(mode="json")
    schema = patch_parameter_schema(schema, targets=spec.targets, modes=spec.modes)
    return {
        "name": spec.name,
        "flow_name": flow.name,
        "entrypoint": spec.entrypoint,
        "description": spec.description or flow.description,
        "tags": spec.tags,
        "parameters": spec.parameters,
        "schedules": [s.model_dump() for s in spec.schedules],
        "concurrency_limit": spec.concurrency_limit,
        "collision_strategy": spec.collision_strategy,
        "work_pool_name": spec.work_pool_name,
        "work_queue_name": spec.work_queue_name,
        "job_variables": spec.job_variables,
        "enforce_parameter_schema": spec.enforce_parameter_schema,
        "paused": spec.paused,
        "pull_steps": pull_steps,
        "parameter_openapi_schema": schema,
    }


def _apply(client: Any, payload: dict[str, Any], *, force: bool) -> Outcome:
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyOptions
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound

    full_name = f"{payload['flow_name']}/{payload['name']}"
    version = spec_version(payload)
    try:
        existing = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        existing = None
    if existing is not None and existing.version == version and not force:
        return Outcome(kind="deployment", name=full_name, outcome="unchanged", detail=version)
    flow_id = client.create_flow_from_name(payload["flow_name"])
    schedules = [
        DeploymentScheduleCreate(
            schedule=CronSchedule(cron=s["cron"], timezone=s["timezone"]),
            active=s["active"],
            parameters=s["parameters"],
            slug=s["slug"],
        )
        for s in payload["schedules"]
    ]
    options = (
        ConcurrencyOptions(collision_strategy=payload["collision_strategy"])
        if payload["collision_strategy"]
        else None
    )
    client.create_deployment(
        flow_id=flow_id,
        name=payload["name"],
        version=version,
        schedules=schedules,
        concurrency_limit=payload["concurrency_limit"],
        concurrency_options=options,
        parameters=payload["parameters"],
        description=payload["description"],
        work_queue_name=payload["work_queue_name"],
        work_pool_name=payload["work_pool_name"],
        tags=payload["tags"],
        entrypoint=payload["entrypoint"],
        parameter_openapi_schema=payload["parameter_openapi_schema"],
        paused=payload["paused"],
        pull_steps=payload["pull_steps"],
        enforce_parameter_schema=payload["enforce_parameter_schema"],
        job_variables=payload["job_variables"],
    )
    outcome: Literal["created", "updated"] = "created" if existing is None else "updated"
    log.info(
        "deployment %s: %s (%s schedule(s), version %s)",
        full_name,
        outcome,
        len(schedules),
        version,
    )
    targets = payload["parameter_openapi_schema"]["properties"].get("target", {}).get("enum", [])
    return Outcome(
        kind="deployment",
        name=full_name,
        outcome=outcome,
        detail=f"{len(schedules)} schedule(s), targets: {', '.join(targets) or '-'}",
    )


def _check_flow_name(spec: DeploymentSpec, flow: Any) -> None:
    scenario = spec.scenario
    if scenario is not None and flow.name != scenario:
        raise ConfigError(
            f"prefect.yaml: deployment {spec.name} runs flow {flow.name!r}; the alert "
            f"receiver looks it up as {scenario}/{spec.name}: name the flow {scenario!r}",
            [(f"deployments.{spec.name}.entrypoint", spec.entrypoint)],
        )


def deploy(
    config: DRConfig,
    *,
    config_path: str | os.PathLike[str],
    api_url: str,
    prefect_file: str | os.PathLike[str] | None = None,
    pool: str = POOL_NAME,
    pool_type: PoolType = "process",
    deployments: bool = True,
    force: bool = False,
    client: Any = None,
) -> DeployReport:
    """Store dr.yaml's schedules and targets as variables, ensure the pool, apply prefect.yaml.

    Idempotent: a deployment whose resolved definition did not change is left alone
    (its ``version`` is a digest of that definition); ``force`` applies it anyway.

    Args:
        config: the validated config.
        config_path: where it is (runs of a process pool read it through ``DR_CONFIG``).
        api_url: the Prefect API (``PREFECT_API_URL``).
        prefect_file: the deployments' definition (default :func:`default_prefect_file`).
        pool: the work pool every deployment goes to.
        pool_type: ``process`` or ``kubernetes`` (created from ``k8s-work-pool.json``).
        deployments: False: only store the variables and ensure the work pool (what a
            plain ``prefect deploy --all`` needs), apply no deployment.
        force: re-apply deployments whose definition did not change.
        client: a ``SyncPrefectClient`` (default: one for ``api_url``).

    Returns:
        A :class:`DeployReport`; flows that are not installed are ``skipped``.

    Raises:
        ConfigError: a bad prefect.yaml, a pool of another type, a flow named otherwise
            than its scenario.
    """
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    path = Path(prefect_file) if prefect_file else default_prefect_file()
    raw = load_prefect_file(path)
    specs = plan_deployments(raw, config, pool=pool)
    project_dir = path.resolve().parent
    pull_steps = (
        [{_WORKING_DIRECTORY_STEP: {"directory": str(project_dir)}}]
        if pool_type == "process"
        else []
    )
    report = DeployReport(
        api_url=api_url,
        pool=pool,
        pool_type=pool_type,
        prefect_file=str(path.resolve()),
        config_path=str(Path(config_path).resolve()),
    )
    if not drill_targets(config):
        report.warnings.append(
            "no target allows drills (drills_allowed): drill deployments get no schedule "
            "and accept no target"
        )
    own = client is None
    if own:
        client = SyncPrefectClient(
            api_url,
            auth_string=PREFECT_API_AUTH_STRING.value(),
            api_key=PREFECT_API_KEY.value(),
        )
        client.__enter__()
    try:
        for name, value in config_variables(config).items():
            report.outcomes.append(_ensure_variable(client, name, value))
        report.outcomes.append(_ensure_pool(client, pool, pool_type, Path(config_path)))
        if not deployments:
            return report
        for spec in specs:
            flow = _import_flow(spec.entrypoint)
            if flow is None:
                report.outcomes.append(
                    Outcome(
                        kind="deployment",
                        name=spec.name,
                        outcome="skipped",
                        detail=f"{spec.entrypoint} is not installed",
                    )
                )
                continue
            _check_flow_name(spec, flow)
            report.outcomes.append(_apply(client, _payload(spec, flow, pull_steps), force=force))
    finally:
        if own:
            client.__exit__(None, None, None)
    return report
