"""From a routed alert to a flow run: its deployment, parameters, tags and UI link."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

from deployments.alerts.payloads import IncomingAlert
from deployments.alerts.routing import labels_summary, run_mode
from dr.config import AlertRoute, Mode, Scenario

if TYPE_CHECKING:
    pass


# Tags on every run the receiver starts, so the UI can filter alert-started runs.
BASE_TAGS = ("dr", "alert")


def deployment_for(scenario: Scenario | str, mode: Mode | str) -> str:
    """The ``<flow-name>/<deployment-name>`` a scenario run starts from.

    Each scenario's flow is named after the scenario (``name="region-failover"``) and has
    two deployments, ``<scenario>-incident`` and ``<scenario>-drill``. A dry run prints
    an incident's plan, so it starts from the incident deployment (the ``mode`` parameter
    of the run says ``dry-run``).

    Args:
        scenario: the scenario (enum or its value).
        mode: ``incident``, ``drill`` or ``dry-run`` (enum or value).

    Returns:
        e.g. ``"region-failover/region-failover-incident"``.

    Raises:
        ValueError: unknown scenario or mode.
    """
    scenario_value = Scenario(scenario).value
    mode_value = Mode(mode)
    deployment_mode = Mode.incident if mode_value == Mode.dry_run else mode_value
    return f"{scenario_value}/{scenario_value}-{deployment_mode.value}"


def flow_parameters(route: AlertRoute, alert: IncomingAlert) -> dict[str, Any]:
    """The flow run's parameters for an alert.

    The scenario flows take ``target``, ``mode`` and an ``options`` model that accepts
    these four keys (``auto_approve`` is read by the lifecycle's approval gates).

    Args:
        route: the matched route (target, mode, approval policy).
        alert: the normalized alert (severity, fingerprint, labels).

    Returns:
        JSON-ready parameters for ``create_flow_run_from_deployment``.
    """
    return {
        "target": route.target,
        "mode": run_mode(route, alert).value,
        "options": {
            "severity": alert.severity,
            "auto_approve": route.auto_approve,
            "alert_fingerprint": alert.fingerprint,
            **(
                {"alert_started_at": alert.starts_at.astimezone(UTC).isoformat()}
                if alert.starts_at is not None
                else {}
            ),
            "alert_labels": labels_summary(alert.labels),
        },
    }


def flow_run_tags(route: AlertRoute, alert: IncomingAlert) -> list[str]:
    """Tags for filtering alert-started runs in the UI."""
    return [
        *BASE_TAGS,
        f"alert-source:{alert.source}",
        f"route:{route.name}",
        f"target:{route.target}",
    ]


def ui_url_from_api(api_url: str) -> str:
    """The Prefect UI's base URL for an API URL (as Prefect itself infers it)."""
    ui = api_url.rstrip("/")
    ui = ui.replace("://api.prefect.cloud", "://app.prefect.cloud")
    if ui.endswith("/api"):
        ui = ui[: -len("/api")]
    return (
        ui.replace("/api/", "/")
        .replace("/accounts/", "/account/")
        .replace("/workspaces/", "/workspace/")
    )
