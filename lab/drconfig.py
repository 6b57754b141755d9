"""The ``dr.yaml`` the lab writes: targets ``lab``, ``lab-s3`` and one per seed runbook."""

from __future__ import annotations

import copy
import getpass
import os
from typing import Any

import yaml

from dr.config import parse_config
from lab import seeds
from lab.app import UPLOADS_PREFIX
from lab.db import APP_DB
from lab.host import pg_bin_dir, server_user
from lab.services import UPLOADS_BUCKET, redis_url
from lab.stack import API_CONTAINER, api_url
from lab.state import (
    AWS_REGION,
    BUCKET,
    EVIDENCE_BUCKET,
    PRIMARY,
    REGIONS,
    SECRET_ENV,
    SLACK_CHANNEL,
    ClusterInfo,
    LabState,
    ack_log_path,
)


def lab_config(state: LabState, *, prefect_on: bool) -> dict[str, Any]:
    """The lab's ``dr.yaml`` as a mapping (validated by :func:`dr.config.parse_config`)."""

    def ref(block: str) -> dict[str, str]:
        return {"prefect_secret": block} if prefect_on else {"env": SECRET_ENV[block]}

    target = _lab_target(state)
    target_s3 = copy.deepcopy(target)
    target_s3["description"] = "The same lab, backed up to the S3-compatible endpoint (moto)."
    target_s3["backup"]["repository"] = state.s3_repository
    seed_targets = seeds.targets(
        target,
        file_repository=state.file_repository,
        s3_bucket=BUCKET,
        evidence_bucket=EVIDENCE_BUCKET,
        base_dir=state.base_dir,
    )
    data: dict[str, Any] = {
        "version": 1,
        "tiers": seeds.tiers(),
        "targets": {"lab": target, "lab-s3": target_s3, **seed_targets},
        "slack": {
            "token": ref("lab-slack-token"),
            "base_url": state.slack_url,
            "default_channel": SLACK_CHANNEL,
        },
        "aws": {
            "region": AWS_REGION,
            "endpoint_url": state.moto_url,
            "access_key_id": ref("lab-aws-access-key-id"),
            "secret_access_key": ref("lab-aws-secret-access-key"),
        },
        "history": {
            "dsn": f"host=127.0.0.1 port={state.control.port} dbname=dr_history user=postgres"
        },
    }
    data["alerts"] = _alerts(ref)
    if state.engine == "podman" and state.podman_base_url:
        data["docker"] = {"base_url": state.podman_base_url}
    if prefect_on and state.prefect_api_url:
        data["prefect_api_url"] = state.prefect_api_url
        data["prefect_ui_url"] = state.prefect_ui_url
    return data


#: The alerts of deployments/monitoring/rules.yml that start a failover of target ``lab``.
LAB_ALERT_ROUTES = {
    "PostgresPrimaryDown": "lab-primary-down",
    "PostgresNoPrimary": "lab-no-primary",
}


def _alerts(ref: Any) -> dict[str, Any]:
    """``dr serve-alerts`` for the lab (``dr lab up --monitoring`` runs it): a dead primary
    of target ``lab`` starts a region-failover incident, approved by policy (no human)."""
    return {
        "bearer_token": ref("lab-alerts-token"),
        "routes": [
            {
                "name": route,
                "match": {"alertname": name, "target": "lab"},
                "scenario": "region-failover",
                "target": "lab",
                "mode": "incident",
                "auto_approve": True,
            }
            for name, route in LAB_ALERT_ROUTES.items()
        ],
    }


def _node(info: ClusterInfo, bin_dir: str, os_user: str) -> dict[str, Any]:
    return {
        "name": info.name,
        "host": "127.0.0.1",
        "port": info.port,
        "region": info.region,
        "data_directory": str(info.data_dir),
        "bin_dir": bin_dir,
        "os_user": os_user,
        "log_directory": str(info.data_dir / "log"),
    }


def _lab_target(state: LabState) -> dict[str, Any]:
    """Target ``lab``: the pair, the file repository, the app, its checks and queries."""
    os_user = server_user() or getpass.getuser()
    bin_dir = str(pg_bin_dir())
    return {
        "tier": "critical",
        "description": "The local lab: PostgreSQL primary + streaming replica, heartbeat app.",
        "production": False,
        "drills_allowed": True,
        "postgres": {
            "primary": _node(state.primary, bin_dir, os_user),
            "replicas": [_node(state.replica, bin_dir, os_user)],
            "user": "postgres",
            "databases": [APP_DB],
            "heartbeat_database": APP_DB,
        },
        "backup": {"repository": state.file_repository, "wal_archive": state.wal_archive},
        **_stack(state),
        **_checks(state),
        "slack_channel": SLACK_CHANNEL,
        "evidence_repository": state.evidence_repository,
    }


def _checks(state: LabState) -> dict[str, Any]:
    """The lab dataset's health checks and validation queries (fresh objects every call)."""
    return {
        "health_checks": {
            "http": _http_checks(state),
            "sql": [
                {"name": "customers-present", "sql": "SELECT count(*) > 0 FROM shop.customers",
                 "database": APP_DB},
                {"name": "orders-present", "sql": "SELECT count(*) > 0 FROM shop.orders",
                 "database": APP_DB},
            ]
        },
        "validation_queries": [
            {
                "name": "no-orphan-order-items",
                "sql": "SELECT i.order_id FROM shop.order_items i LEFT JOIN shop.orders o "
                "ON o.order_id = i.order_id WHERE o.order_id IS NULL LIMIT 1",
                "database": APP_DB,
                "expect": "no_rows",
            },
            {
                "name": "order-totals-match-lines",
                "sql": "SELECT o.order_id FROM shop.orders o JOIN (SELECT order_id, "
                "sum(quantity * unit_price) AS total FROM shop.order_items GROUP BY order_id) s "
                "ON s.order_id = o.order_id WHERE o.total <> s.total LIMIT 1",
                "database": APP_DB,
                "expect": "no_rows",
            },
            {
                "name": "every-customer-has-an-account",
                "sql": "SELECT NOT EXISTS (SELECT 1 FROM shop.customers c WHERE NOT EXISTS "
                "(SELECT 1 FROM shop.accounts a WHERE a.customer_id = c.customer_id))",
                "database": APP_DB,
                "expect": "true",
            },
        ],
    }  # fmt: skip


def _http_checks(state: LabState) -> list[dict[str, Any]]:
    """The api's health endpoint (it reads the database and the cache), once the api runs."""
    if "api" not in state.ports:
        return []
    return [{"name": "api-health", "url": f"{api_url(state)}/health", "timeout_seconds": 5}]


#: The cache warm-up: what the worker caches, from the recovered ``uploads`` rows.
WARM_SQL = (
    "(SELECT 'upload:newest', object_key, 60 FROM public.uploads ORDER BY id DESC LIMIT 1) "
    "UNION ALL (SELECT 'upload:' || id, sha256, 3600 FROM public.uploads "
    "ORDER BY id DESC LIMIT 1000)"
)


def _stack(state: LabState) -> dict[str, Any]:
    """The application stack: its services (api before worker), cache, uploads and their link."""
    out: dict[str, Any] = {"services": [], "app_ack_log": str(ack_log_path(state))}
    if state.engine == "podman":
        region = REGIONS[PRIMARY]
        out["services"] = [
            {"kind": "docker", "name": API_CONTAINER, "role": "writer", "region": region,
             "start_order": 1, "health_url": f"{api_url(state)}/health"},
            {"kind": "docker", "name": state.app_container, "role": "writer", "region": region,
             "start_order": 2},
        ] if "api" in state.ports else [
            {"kind": "docker", "name": state.app_container, "role": "writer", "region": region},
        ]  # fmt: skip
    if "redis" in state.ports:
        out["caches"] = [
            {
                "name": "app-cache",
                "url": redis_url(state),
                "after_recovery": {"flush": "all"},
                "warm": {"sql": WARM_SQL, "database": APP_DB},
                "sample_keys": ["upload:newest"],
                "min_hit_rate": 1.0,
            }
        ]
    out["files"] = [{"name": "uploads", "s3": f"s3://{UPLOADS_BUCKET}/{UPLOADS_PREFIX}"}]
    out["links"] = [
        {"name": "uploads-objects", "database": APP_DB, "table": "public.uploads",
         "key_column": "object_key", "sha256_column": "sha256", "files": "uploads"},
    ]  # fmt: skip
    return out


def write_config(state: LabState, *, prefect_on: bool) -> str:
    """Validate and write the lab's ``dr.yaml`` when it changed; say which."""
    data = lab_config(state, prefect_on=prefect_on)
    parse_config(data, str(state.config_path))  # never write a config the flows would refuse
    text = (
        "# Written by `dr lab up` for the lab in this folder; rewritten on every up.\n"
        "# Targets after lab-s3 are the runbooks of shared/seeds (docs/runbooks.md).\n"
        + seeds.annotate(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    )
    try:
        if state.config_path.read_text() == text:
            return f"unchanged ({state.config_path})"
    except FileNotFoundError:
        pass
    tmp = state.config_path.with_name(state.config_path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, state.config_path)
    return f"written ({state.config_path})"
