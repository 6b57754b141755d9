"""``dr lab up --monitoring``: real monitoring of the lab, from a dead primary to a DR run.

The chain, every part a real program on a free loopback port, its data under
``<lab>/monitoring``, started and stopped by the lab like its other processes:

1. ``prometheus-postgres-exporter``, one per PostgreSQL server (primary, replica1), with the
   custom query of ``deployments/monitoring/queries.yaml`` (which node is the primary);
2. ``prometheus``, scraping them every second and evaluating the shipped rules
   ``deployments/monitoring/rules.yml`` every second (the very file a user copies);
3. ``prometheus-alertmanager``, routing the DR alerts to the receiver with the bearer token
   (``deployments/monitoring/alertmanager.yml``, with the lab's address and token file);
4. ``dr serve-alerts`` and a worker of the ``dr-process`` pool (:mod:`lab.monitoring_chain`).

The lab's ``dr.yaml`` routes ``PostgresPrimaryDown`` / ``PostgresNoPrimary`` on target
``lab`` to a region-failover incident with ``auto_approve``: killing the primary is then
recovered with no human.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from dr.errors import PreconditionError
from lab import procs
from lab.services import lab_port
from lab.state import (
    PRIMARY,
    PROCESS_WAIT_SECONDS,
    REPLICA,
    ClusterInfo,
    LabState,
    log_path,
    spawn,
)

__all__ = [
    "ALERTMANAGER",
    "EXPORTER",
    "MONITORING_FILES",
    "PROMETHEUS",
    "alertmanager_config",
    "alertmanager_url",
    "enabled",
    "ensure_alertmanager",
    "ensure_exporters",
    "ensure_prometheus",
    "expire_silence",
    "firing_alerts",
    "prometheus_config",
    "prometheus_url",
    "silence",
]

#: The shipped files (what a user copies into their own monitoring).
MONITORING_FILES = Path(__file__).resolve().parent.parent / "deployments" / "monitoring"
RULES_FILE = MONITORING_FILES / "rules.yml"
QUERIES_FILE = MONITORING_FILES / "queries.yaml"
ALERTMANAGER_FILE = MONITORING_FILES / "alertmanager.yml"

EXPORTER = "prometheus-postgres-exporter"
PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"

#: Lab intervals: detection in seconds (production values are in the shipped prometheus.yml).
SCRAPE_SECONDS = 1
EVALUATION_SECONDS = 1
#: The scrape job and the DR target the lab's exporters belong to (the rules match both).
JOB = "postgres"
LAB_TARGET = "lab"
#: The alerts that start a DR run (the receiver's routes match these names).
DR_ALERTS = ("PostgresPrimaryDown", "PostgresNoPrimary")
HTTP_TIMEOUT_SECONDS = 2.0


def folder(state: LabState) -> Path:
    """``<lab>/monitoring``: configurations and data of Prometheus and Alertmanager."""
    path = state.base_dir / "monitoring"
    path.mkdir(exist_ok=True)
    return path


def enabled(state: LabState) -> bool:
    """Whether the lab was brought up with ``--monitoring``."""
    return PROMETHEUS in state.processes


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PreconditionError(f"{name} is not installed (scripts/setup.sh installs it)")
    return found


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _ensure_process(
    state: LabState,
    name: str,
    argv: list[str],
    *,
    marker: str,
    ready: Any,
    env: dict[str, str] | None = None,
    fingerprint: str = "",
) -> str:
    """Start ``name`` unless the lab's process runs with the same configuration; wait ready."""
    rec = state.processes.get(name)
    outcome = "unchanged"
    if procs.owned(rec) and rec is not None and rec.fingerprint != fingerprint:
        procs.kill(rec)
        outcome = "restarted (configuration changed)"
    if not procs.owned(state.processes.get(name)):
        rec = spawn(
            state,
            name,
            argv,
            marker=marker,
            env=procs.child_env(state.base_dir, env),
            fingerprint=fingerprint,
        )
        outcome = "started" if outcome == "unchanged" else outcome
    rec = state.processes[name]
    procs.wait_until(
        name, lambda: procs.owned(rec) and ready(), PROCESS_WAIT_SECONDS, log_path(state, name)
    )
    return outcome


# --------------------------------------------------------------------------- exporters


#: The servers with an exporter (by their lab names).
MONITORED = (PRIMARY, REPLICA)


def exporter_name(info: ClusterInfo | str) -> str:
    """The process (and port) name of a server's exporter: ``exporter-primary``, ..."""
    return f"exporter-{info if isinstance(info, str) else info.name}"


def exporter_url(state: LabState, info: ClusterInfo) -> str:
    """The exporter's address (its metrics are under ``/metrics``)."""
    return f"http://127.0.0.1:{state.ports[exporter_name(info)]}"


def _ensure_exporter(state: LabState, info: ClusterInfo) -> str:
    name = exporter_name(info)
    port = lab_port(state, name, state.processes.get(name))
    # The lab's superuser is trusted on loopback: no password in the DSN.
    dsn = f"postgresql://postgres@127.0.0.1:{info.port}/postgres?sslmode=disable&connect_timeout=2"
    argv = [
        _binary(EXPORTER),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--extend.query-path={QUERIES_FILE}",
        "--disable-settings-metrics",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}/metrics"
    said = _ensure_process(
        state,
        name,
        argv,
        marker=f"--web.listen-address=127.0.0.1:{port}",
        ready=lambda: procs.http_ok(url, timeout=HTTP_TIMEOUT_SECONDS),
        env={"DATA_SOURCE_NAME": dsn},
        fingerprint=_fingerprint(dsn, *argv, QUERIES_FILE.read_text()),
    )
    return f"{info.name} {said} (:{port})"


def ensure_exporters(state: LabState) -> str:
    """One postgres_exporter per PostgreSQL server of the lab."""
    return "; ".join(_ensure_exporter(state, info) for info in (state.primary, state.replica))


# --------------------------------------------------------------------------- Prometheus


def prometheus_url(state: LabState) -> str:
    """The lab's Prometheus (UI and API)."""
    return f"http://127.0.0.1:{state.ports[PROMETHEUS]}"


def alertmanager_url(state: LabState) -> str:
    """The lab's Alertmanager (UI and API)."""
    return f"http://127.0.0.1:{state.ports[ALERTMANAGER]}"


def prometheus_config(state: LabState) -> dict[str, Any]:
    """The lab's ``prometheus.yml``: 1 s scrapes and evaluations, the shipped rules.

    Every exporter is labelled with the DR target (``lab``) and its node's name, which the
    rules and the receiver's routes match on.
    """
    return {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{EVALUATION_SECONDS}s",
        },
        "rule_files": [str(RULES_FILE)],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{state.ports[ALERTMANAGER]}"]}]}
            ]
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{state.ports[exporter_name(info)]}"],
                        "labels": {"target": LAB_TARGET, "node": info.name},
                    }
                    for info in (state.primary, state.replica)
                ],
            }
        ],
    }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def ensure_prometheus(state: LabState) -> str:
    """Prometheus on loopback, its TSDB in ``<lab>/monitoring/prometheus``."""
    lab_port(state, ALERTMANAGER, state.processes.get(ALERTMANAGER))  # named in the config
    port = lab_port(state, PROMETHEUS, state.processes.get(PROMETHEUS))
    config = folder(state) / "prometheus.yml"
    text = yaml.safe_dump(prometheus_config(state), sort_keys=False)
    _write(config, text)
    argv = [
        _binary(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={folder(state) / 'prometheus'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url=http://127.0.0.1:{port}/",
    ]
    said = _ensure_process(
        state,
        PROMETHEUS,
        argv,
        marker=f"--web.listen-address=127.0.0.1:{port}",
        ready=lambda: procs.http_ok(f"{prometheus_url(state)}/-/ready"),
        fingerprint=_fingerprint(text, RULES_FILE.read_text(), *argv),
    )
    return f"{said} ({prometheus_url(state)}; rules {RULES_FILE.name})"


# --------------------------------------------------------------------------- Alertmanager


def alertmanager_config(receiver_url: str, token_file: Path) -> dict[str, Any]:
    """The shipped ``alertmanager.yml`` with the receiver's address and token file."""
    config = yaml.safe_load(ALERTMANAGER_FILE.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{receiver_url}/alerts/alertmanager"
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return config


def ensure_alertmanager(state: LabState, receiver_url: str, token_file: Path) -> str:
    """Alertmanager on loopback (no cluster), routed to the lab's ``dr serve-alerts``."""
    port = lab_port(state, ALERTMANAGER, state.processes.get(ALERTMANAGER))
    config = folder(state) / "alertmanager.yml"
    text = yaml.safe_dump(alertmanager_config(receiver_url, token_file), sort_keys=False)
    _write(config, text, 0o600)
    argv = [
        _binary(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={folder(state) / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url=http://127.0.0.1:{port}/",
        "--cluster.listen-address=",
    ]
    said = _ensure_process(
        state,
        ALERTMANAGER,
        argv,
        marker=f"--web.listen-address=127.0.0.1:{port}",
        ready=lambda: procs.http_ok(f"{alertmanager_url(state)}/-/ready"),
        fingerprint=_fingerprint(text, *argv),
    )
    return f"{said} ({alertmanager_url(state)} -> {receiver_url})"


# --------------------------------------------------------------------------- reading


def firing_alerts(state: LabState, names: tuple[str, ...] = DR_ALERTS) -> list[dict[str, Any]]:
    """Prometheus's firing alerts of these names (``labels``, ``activeAt``, ``state``)."""
    try:
        resp = httpx.get(f"{prometheus_url(state)}/api/v1/alerts", timeout=HTTP_TIMEOUT_SECONDS)
        alerts = resp.json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []
    return [
        a for a in alerts if a.get("state") == "firing" and a["labels"].get("alertname") in names
    ]


def silence(state: LabState, *, minutes: float, comment: str, target: str = LAB_TARGET) -> str:
    """Silence the DR alerts of ``target`` in Alertmanager (planned work: a failback).

    A silence stops deliveries, not the alert: Prometheus still evaluates it. Expire it
    with :func:`expire_silence` once the condition is over.

    Returns:
        The silence's id.

    Raises:
        PreconditionError: Alertmanager refused or is unreachable.
    """
    now = datetime.now(UTC)
    body = {
        "matchers": [
            {"name": "alertname", "value": "|".join(DR_ALERTS), "isRegex": True},
            {"name": "target", "value": target, "isRegex": False},
        ],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
        "createdBy": "dr lab",
        "comment": comment,
    }
    try:
        resp = httpx.post(
            f"{alertmanager_url(state)}/api/v2/silences", json=body, timeout=HTTP_TIMEOUT_SECONDS
        )
        resp.raise_for_status()
        return str(resp.json()["silenceID"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise PreconditionError(f"Alertmanager did not take the silence: {exc}") from exc


def expire_silence(state: LabState, silence_id: str) -> bool:
    """End a silence made by :func:`silence`; False when Alertmanager did not answer."""
    try:
        url = f"{alertmanager_url(state)}/api/v2/silence/{silence_id}"
        return httpx.delete(url, timeout=HTTP_TIMEOUT_SECONDS).status_code < 300
    except httpx.HTTPError:
        return False
