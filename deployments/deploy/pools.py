"""The work pool the deployments run on (process, or Kubernetes from a template)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Literal

from deployments.deploy.report import Outcome
from dr.errors import ConfigError

log = logging.getLogger("deployments.deploy")


#: The work pool every deployment of prefect.yaml uses (``--pool`` overrides it).
POOL_NAME = "dr-process"


PoolType = Literal["process", "kubernetes"]


#: The Kubernetes work pool's base job template (created once, never overwritten).
K8S_TEMPLATE_PATH = Path(__file__).parent.parent / "k8s-work-pool.json"


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
