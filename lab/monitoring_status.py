"""``dr lab status``'s monitoring rows: each part of the alert chain, up or down, and why."""

from __future__ import annotations

from typing import Any

import httpx

from lab import monitoring, procs
from lab.monitoring_chain import RECEIVER, WORKER, receiver_url, worker_command, worker_online
from lab.state import LabState

__all__ = ["monitoring_status"]


def _process(state: LabState, name: str) -> dict[str, Any]:
    rec = state.processes.get(name)
    return {"pid": rec.pid if rec else None, "running": procs.owned(rec)}


def _scrapes(state: LabState) -> dict[str, str]:
    """``node -> "up"/"down"`` of the exporters' scrapes, as Prometheus last saw them."""
    try:
        resp = httpx.get(
            f"{monitoring.prometheus_url(state)}/api/v1/query",
            params={"query": f'up{{job="{monitoring.JOB}"}}'},
            timeout=monitoring.HTTP_TIMEOUT_SECONDS,
        )
        results = resp.json()["data"]["result"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {r["metric"].get("node", "?"): "up" if r["value"][1] == "1" else "down" for r in results}


def monitoring_status(state: LabState) -> dict[str, Any]:
    """Every monitoring component: ``enabled``, then one entry each with ``up`` and details.

    Returns:
        ``{"enabled": False}`` for a lab without ``--monitoring``; else ``exporters``
        (per node: its URL, and Prometheus's last scrape of it), ``prometheus`` (URL, the
        firing DR alerts), ``alertmanager``, ``receiver`` and ``worker`` (Prefect sees it
        online).
    """
    if not monitoring.enabled(state):
        return {"enabled": False}
    prometheus = _process(state, monitoring.PROMETHEUS)
    prometheus["url"] = monitoring.prometheus_url(state)
    prometheus["up"] = prometheus["running"] and procs.http_ok(f"{prometheus['url']}/-/ready")
    scrapes = _scrapes(state) if prometheus["up"] else {}
    prometheus["firing"] = [
        {k: a["labels"].get(k) for k in ("alertname", "target", "node")}
        | {"active_at": a.get("activeAt")}
        for a in (monitoring.firing_alerts(state) if prometheus["up"] else [])
    ]
    exporters = {}
    for node in monitoring.MONITORED:
        name = monitoring.exporter_name(node)
        info = _process(state, name)
        info["url"] = f"http://127.0.0.1:{state.ports.get(name)}/metrics"
        info["up"] = info["running"] and procs.http_ok(info["url"], timeout=3.0)
        info["scrape"] = scrapes.get(node, "unknown")
        exporters[node] = info
    alertmanager = _process(state, monitoring.ALERTMANAGER)
    alertmanager["url"] = monitoring.alertmanager_url(state)
    alertmanager["up"] = alertmanager["running"] and procs.http_ok(f"{alertmanager['url']}/-/ready")
    receiver = _process(state, RECEIVER)
    receiver["url"] = receiver_url(state)
    receiver["up"] = receiver["running"] and procs.http_ok(f"{receiver['url']}/healthz")
    worker = _process(state, WORKER)
    worker["name"] = worker_command(state).name
    worker["online"] = worker["running"] and worker_online(state, worker["name"])
    worker["up"] = worker["online"]
    return {
        "enabled": True,
        "exporters": exporters,
        "prometheus": prometheus,
        "alertmanager": alertmanager,
        "receiver": receiver,
        "worker": worker,
        "up": all(
            part["up"] for part in (*exporters.values(), prometheus, alertmanager, receiver, worker)
        ),
    }
