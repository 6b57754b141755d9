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

from deployments.deploy.apply import deploy, spec_version
from deployments.deploy.pools import K8S_TEMPLATE_PATH, POOL_NAME, process_pool_template
from deployments.deploy.report import DeployReport, Outcome
from deployments.deploy.specs import (
    DeploymentSpec,
    ScheduleSpec,
    default_prefect_file,
    load_prefect_file,
    patch_parameter_schema,
    plan_deployments,
)
from deployments.deploy.variables import (
    BACKUP_TARGET_VARIABLE,
    DRILL_TARGET_VARIABLE,
    config_variables,
    drill_targets,
    resolve_placeholders,
)

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
