"""Applying the plan: variables, the pool, then each deployment whose definition changed."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from deployments.deploy.pools import POOL_NAME, PoolType, _ensure_pool
from deployments.deploy.report import DeployReport, Outcome
from deployments.deploy.specs import (
    DeploymentSpec,
    default_prefect_file,
    load_prefect_file,
    patch_parameter_schema,
    plan_deployments,
)
from deployments.deploy.variables import _ensure_variable, config_variables, drill_targets
from dr.config import DRConfig
from dr.errors import ConfigError

log = logging.getLogger("deployments.deploy")


_WORKING_DIRECTORY_STEP = "prefect.deployments.steps.set_working_directory"


def spec_version(payload: dict[str, Any]) -> str:
    """A version string that changes exactly when what is applied changes."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"dr-{digest[:12]}"


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
    schema = patch_parameter_schema(
        schema, targets=spec.targets, modes=spec.modes, severities=spec.severities
    )
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


def _open_client(api_url: str) -> Any:
    """A Prefect client for ``api_url``, entered (the caller exits it)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    client = SyncPrefectClient(
        api_url,
        auth_string=PREFECT_API_AUTH_STRING.value(),
        api_key=PREFECT_API_KEY.value(),
    )
    client.__enter__()
    return client


def _apply_spec(
    client: Any, spec: DeploymentSpec, pull_steps: list[dict[str, Any]], *, force: bool
) -> Outcome:
    """One deployment: skipped when its flow is not installed, else applied if changed."""
    flow = _import_flow(spec.entrypoint)
    if flow is None:
        return Outcome(
            kind="deployment",
            name=spec.name,
            outcome="skipped",
            detail=f"{spec.entrypoint} is not installed",
        )
    _check_flow_name(spec, flow)
    return _apply(client, _payload(spec, flow, pull_steps), force=force)


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
        client = _open_client(api_url)
    try:
        for name, value in config_variables(config).items():
            report.outcomes.append(_ensure_variable(client, name, value))
        report.outcomes.append(_ensure_pool(client, pool, pool_type, Path(config_path)))
        if not deployments:
            return report
        for spec in specs:
            report.outcomes.append(_apply_spec(client, spec, pull_steps, force=force))
    finally:
        if own:
            client.__exit__(None, None, None)
    return report
