"""``dr lab status``: each component up or down, replication lag, heartbeat, archive."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from lab import prefect_server, procs, s3server
from lab.app import engine_request, podman_service
from lab.db import APP_DB, in_recovery, query_one
from lab.monitoring_status import monitoring_status
from lab.pgcluster import Cluster
from lab.services import redis_ok, redis_url, slack_ok
from lab.state import (
    BUCKET,
    CONTROL,
    EVIDENCE_BUCKET,
    HEARTBEAT_FRESH_SECONDS,
    PRIMARY,
    REGIONS,
    REPLICA,
    LabState,
    clusters,
    default_base_dir,
    load_state,
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "is_finite"):  # Decimal
        return float(value)
    return value


def _node_status(cluster: Cluster, region: str) -> dict[str, Any]:
    up_ = cluster.is_running()
    info: dict[str, Any] = {
        "name": cluster.name,
        "port": cluster.port,
        "region": region,
        "data_dir": str(cluster.data_dir),
        "up": False,
        "role": "down",
        "pid": cluster.pid(),
    }
    if up_:
        rec = in_recovery(cluster)
        info["up"] = rec is not None
        info["role"] = {True: "standby", False: "primary", None: "unreachable"}[rec]
    return info


def status(base_dir: Path | None = None) -> dict[str, Any]:
    """Report every component of the lab: up or down, and the numbers that matter.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`).

    Returns:
        A JSON-able dict: ``ok`` (everything up, replica streaming, heartbeat fresh),
        ``engine``, ``primary``, ``replica`` (state, ``lag_bytes``, ``lag_seconds``),
        ``control``, ``repositories`` (file, s3, evidence, wal), ``archiver``
        (``last_archived_wal``, time, ``failed_count``), ``s3_endpoint``, ``app``,
        ``prefect`` (URLs, health), ``slack``, ``stack`` (``redis``, ``api`` health, where
        the lab has them), ``heartbeat`` (``ts``, ``age_seconds``),
        ``monitoring`` (:func:`lab.monitoring_status.monitoring_status`).
        ``{"exists": False, ...}`` when there is no lab in the folder.
    """
    base_dir = Path(base_dir or default_base_dir()).absolute()
    state = load_state(base_dir)
    if state is None:
        return {"exists": False, "base_dir": str(base_dir), "ok": False}
    cl = clusters(state)
    out: dict[str, Any] = {
        "exists": True,
        "base_dir": str(base_dir),
        "config_path": str(state.config_path),
        "engine": state.engine,
        "engine_reason": state.engine_reason,
    }
    primary, replica, current = _pair_status(cl)
    out["primary"], out["replica"] = primary, replica
    out["control"] = _node_status(cl[CONTROL], REGIONS[CONTROL])
    out["heartbeat"] = _heartbeat_status(current)
    out["archiver"] = _archiver_status(current)
    out["s3_endpoint"] = _s3_endpoint_status(state)
    out["repositories"] = _repositories_status(state, base_dir, out["s3_endpoint"]["up"])
    out["app"] = _app_status(state)
    out["prefect"] = _prefect_status(state)
    out["slack"] = _slack_status(state)
    out["stack"] = _stack_status(state)
    out["monitoring"] = monitoring_status(state)
    out["ok"] = _all_ok(out)
    return _jsonable(out)


def _pair_status(
    cl: dict[str, Cluster],
) -> tuple[dict[str, Any], dict[str, Any], Cluster | None]:
    """Primary and replica, with replication on the standby's side; and the current primary."""
    p, r = cl[PRIMARY], cl[REPLICA]
    primary = _node_status(p, REGIONS[PRIMARY])
    replica = _node_status(r, REGIONS[REPLICA])
    # The current primary is whichever node is not in recovery (after a failover: replica1).
    current = next((cl[n["name"]] for n in (primary, replica) if n["role"] == "primary"), None)
    standby = next((cl[n["name"]] for n in (replica, primary) if n["role"] == "standby"), None)
    primary["current_primary"] = current is p
    replica["current_primary"] = current is r
    replica.update({"streaming": False, "state": None, "lag_bytes": None, "lag_seconds": None})
    if current is not None and standby is not None:
        target = replica if standby is r else primary
        target.update(_replication_status(current, standby))
    return primary, replica, current


def _replication_status(current: Cluster, standby: Cluster) -> dict[str, Any]:
    """Lag as the primary sees it (pg_stat_replication) and replay as the standby sees it."""
    rep = query_one(
        current,
        "SELECT state, sync_state, "
        "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::bigint "
        "AS lag_bytes, extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds "
        "FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
        params=(standby.name,),
    )
    stb = query_one(
        standby,
        "SELECT pg_catalog.pg_last_xact_replay_timestamp() AS last_replay_ts, "
        "extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())"
        "::float8 AS replay_age_seconds, "
        "pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() "
        "AS caught_up",
    )
    info: dict[str, Any] = {}
    if rep:
        lag_seconds = rep["replay_lag_seconds"]
        if lag_seconds is None and rep["lag_bytes"] == 0:
            lag_seconds = 0.0  # idle and caught up: pg_stat_replication shows NULL
        info.update(
            {
                "streaming": rep["state"] == "streaming",
                "state": rep["state"],
                "sync_state": rep["sync_state"],
                "lag_bytes": rep["lag_bytes"],
                "lag_seconds": lag_seconds,
                "upstream": current.name,
            }
        )
    if stb:
        info.update(
            {
                "last_replay_ts": stb["last_replay_ts"],
                "replay_age_seconds": stb["replay_age_seconds"],
                "caught_up": stb["caught_up"],
            }
        )
    return info


def _heartbeat_status(current: Cluster | None) -> dict[str, Any]:
    heartbeat: dict[str, Any] = {"up": False, "ts": None, "age_seconds": None, "seq": None}
    if current is None:
        return heartbeat
    hb = query_one(
        current,
        "SELECT seq, ts, extract(epoch FROM pg_catalog.clock_timestamp() - ts)::float8 "
        "AS age_seconds FROM public.dr_heartbeat WHERE writer = 'app' "
        "ORDER BY seq DESC LIMIT 1",
        APP_DB,
    )
    if hb:
        heartbeat.update(hb)
        heartbeat["node"] = current.name
        heartbeat["up"] = hb["age_seconds"] is not None and (
            hb["age_seconds"] < HEARTBEAT_FRESH_SECONDS
        )
    return heartbeat


def _archiver_status(current: Cluster | None) -> dict[str, Any]:
    archiver: dict[str, Any] = {"up": False}
    if current is None:
        return archiver
    arch = query_one(
        current,
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
        "last_failed_wal, last_failed_time, "
        "extract(epoch FROM pg_catalog.now() - last_archived_time)::float8 "
        "AS last_archived_age_seconds FROM pg_catalog.pg_stat_archiver",
    )
    if arch:
        archiver.update(arch)
        archiver["node"] = current.name
        archiver["up"] = arch["last_archived_wal"] is not None
    return archiver


def _s3_endpoint_status(state: LabState) -> dict[str, Any]:
    return {
        "url": state.moto_url,
        "up": procs.owned(state.processes.get("moto")) and s3server.is_up(state.moto_url),
        "pid": state.processes["moto"].pid if "moto" in state.processes else None,
        "note": s3server.IN_MEMORY_NOTE,
    }


def _repositories_status(state: LabState, base_dir: Path, moto_up: bool) -> dict[str, Any]:
    repo_path = base_dir / "repo"
    wal_path = base_dir / "wal"
    return {
        "file": {
            "url": state.file_repository,
            "up": repo_path.is_dir() and os.access(repo_path, os.W_OK),
        },
        "s3": {
            "url": state.s3_repository,
            "endpoint": state.moto_url,
            "up": moto_up and procs.http_ok(f"{state.moto_url}/{BUCKET}", method="HEAD"),
            "note": s3server.IN_MEMORY_NOTE,
        },
        "evidence": {
            "url": state.evidence_repository,
            "endpoint": state.moto_url,
            "up": moto_up and procs.http_ok(f"{state.moto_url}/{EVIDENCE_BUCKET}", method="HEAD"),
            "object_lock": True,
        },
        "wal": {
            "url": state.wal_archive,
            "up": wal_path.is_dir(),
            "segments": sum(1 for f in wal_path.iterdir() if len(f.name) == 24)
            if wal_path.is_dir()
            else 0,
        },
    }


def _prefect_status(state: LabState) -> dict[str, Any]:
    prefect_rec = state.processes.get("prefect")
    return {
        "enabled": prefect_rec is not None,
        "api_url": state.prefect_api_url,
        "ui_url": state.prefect_ui_url,
        "pid": prefect_rec.pid if prefect_rec else None,
        "up": bool(
            procs.owned(prefect_rec)
            and state.prefect_api_url
            and prefect_server.is_up(state.prefect_api_url, timeout=3.0)
        ),
    }


def _slack_status(state: LabState) -> dict[str, Any]:
    slack_rec = state.processes.get("slack")
    return {
        "url": state.slack_url,
        "state_file": str(state.slack_state_file),
        "pid": slack_rec.pid if slack_rec else None,
        "up": procs.owned(slack_rec) and slack_ok(state),
    }


def _stack_status(state: LabState) -> dict[str, Any]:
    """The stack's other parts, where the lab has them: its Redis and the api's health."""
    import httpx

    from lab.stack import api_url

    out: dict[str, Any] = {}
    if "redis" in state.ports:
        out["redis"] = {"url": redis_url(state), "up": redis_ok(state.ports["redis"])}
    if "api" in state.ports:
        url = f"{api_url(state)}/health"
        try:
            resp = httpx.get(url, timeout=2.0)
            up, detail = resp.status_code == 200, f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            up, detail = False, type(exc).__name__
        out["api"] = {"url": url, "up": up, "detail": detail}
    return out


def _all_ok(out: dict[str, Any]) -> bool:
    """Everything up, the replica streaming, the heartbeat fresh (Prefect only if started)."""
    required = [
        out["primary"]["role"] == "primary",
        out["replica"]["streaming"],
        out["control"]["up"],
        out["heartbeat"]["up"],
        out["s3_endpoint"]["up"],
        out["repositories"]["file"]["up"],
        out["app"]["up"],
        out["slack"]["up"],
    ]
    if out["prefect"]["enabled"]:
        required.append(out["prefect"]["up"])
    required += [part["up"] for part in out.get("stack", {}).values()]
    if out["monitoring"]["enabled"]:
        required.append(out["monitoring"]["up"])
    return all(required)


def _app_status(state: LabState) -> dict[str, Any]:
    info: dict[str, Any] = {"engine": state.engine, "name": state.app_container, "up": False}
    if state.engine == "process":
        rec = state.processes.get("app")
        info.update({"pid": rec.pid if rec else None, "state": "down"})
        if procs.owned(rec):
            info.update({"up": True, "state": "running"})
        return info
    info["engine_url"] = state.podman_base_url
    if not state.podman_base_url or not podman_service(state).running():
        info["state"] = "engine down"
        return info
    # A plain Docker API call over the socket: status must stay fast, and the SDK client
    # (tasks.containers) costs over a second to import and negotiate.
    code, body = engine_request(
        state.podman_base_url, "GET", f"/containers/{state.app_container}/json"
    )
    if code == 404:
        info["state"] = "missing"
        return info
    if code != 200 or not isinstance(body, dict):
        info["state"] = f"engine error: HTTP {code}"
        return info
    env = dict(item.split("=", 1) for item in (body.get("Config") or {}).get("Env") or [])
    status_ = (body.get("State") or {}).get("Status", "unknown")
    info.update(
        {
            "state": status_,
            "up": status_ == "running",
            "id": str(body.get("Id", ""))[:12],
            "db_host": env.get("DB_HOST"),
            "db_port": int(env["DB_PORT"]) if env.get("DB_PORT") else None,
        }
    )
    return info
