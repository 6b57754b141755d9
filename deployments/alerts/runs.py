"""From a routed alert to a flow run: its deployment, parameters, tags and UI link."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from deployments.alerts.payloads import IncomingAlert
from deployments.alerts.routing import labels_summary, run_mode
from dr.config import AlertRoute, Mode, Scenario
from dr.errors import ConfigError, DRError, SystemError_

# Tags on every run the receiver starts, so the UI can filter alert-started runs.
BASE_TAGS = ("dr", "alert")

#: States of a run that has not begun: a resolved alert may still cancel it.
NOT_BEGUN_STATES = ("SCHEDULED", "PENDING")

#: States of a run that is under way (a resolved alert leaves it to finish).
UNDER_WAY_STATES = ("RUNNING", "PAUSED", "CANCELLING")

#: A run in one of these is the target's run of a scenario: new alerts attach to it.
ACTIVE_STATES = NOT_BEGUN_STATES + UNDER_WAY_STATES

#: Active runs looked at per scenario (a target rarely has more than one).
ACTIVE_RUNS_LIMIT = 200
#: A scheduled run due later than this is a slot of a schedule (next month's drill), not an
#: active run: an alert never attaches to it.
ATTACH_WINDOW_SECONDS = 60.0

#: Prefix of the tag recording, on a run, each alert that attached to it.
ATTACHED_TAG = "attached-alert:"

#: Tag of a run whose starting alert resolved while attached alerts still fired.
STARTER_RESOLVED_TAG = "alert-resolved"


# limit and sort given explicitly: with FastAPI >= 0.148 the server answers 422 to the
# nulls Prefect 3.8's client sends for them by default.
def _page() -> dict[str, Any]:
    from prefect.client.schemas.sorting import FlowRunSort

    return {"sort": FlowRunSort.ID_DESC, "limit": ACTIVE_RUNS_LIMIT}


# payloads.py writes an alert's startsAt as its episode in this form.
_EPISODE_FORMAT = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True)
class RunRecord:
    """The flow run an alert started (or had already started)."""

    fingerprint: str
    route: str
    scenario: str
    target: str
    mode: str
    flow_run_id: str
    flow_run_url: str
    deduplicated: bool = False
    attached: bool = False

    def as_json(self, *, deduplicated: bool | None = None) -> dict[str, Any]:
        return {
            "attached": self.attached,
            "fingerprint": self.fingerprint,
            "route": self.route,
            "scenario": self.scenario,
            "target": self.target,
            "mode": self.mode,
            "flow_run_id": self.flow_run_id,
            "flow_run_url": self.flow_run_url,
            "deduplicated": self.deduplicated if deduplicated is None else deduplicated,
        }


@dataclass
class Outcome:
    """What one request led to; decides the HTTP status."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)

    @property
    def retry_after_seconds(self) -> int:
        waits = [item["retry_after_seconds"] for item in self.rate_limited]
        return max(waits, default=0)

    @property
    def status_code(self) -> int:
        if self.rate_limited:
            return 429
        if any(not (run["deduplicated"] or run["attached"]) for run in self.runs):
            return 201
        if self.runs or any(r["flow_run_id"] for r in self.resolved):
            return 200
        return 202

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"runs": self.runs, "ignored": self.ignored}
        if self.resolved:
            body["resolved"] = self.resolved
        if self.rate_limited:
            body["rate_limited"] = self.rate_limited
        return body


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
    options: dict[str, Any] = {
        "severity": alert.severity,
        "auto_approve": route.auto_approve,
        "alert_fingerprint": alert.fingerprint,
        "alert_labels": labels_summary(alert.labels),
    }
    starts_at = alert_starts_at(alert)
    if starts_at is not None:
        options["alert_starts_at"] = starts_at.isoformat()
    return {"target": route.target, "mode": run_mode(route, alert).value, "options": options}


def alert_starts_at(alert: IncomingAlert) -> datetime | None:
    """The alert's ``startsAt`` (Alertmanager, Grafana), or None when the sender has none."""
    if alert.starts_at is not None:
        return alert.starts_at.astimezone(UTC)
    if not alert.episode:
        return None
    try:
        return datetime.strptime(alert.episode, _EPISODE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


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


def state_type(flow_run: Any) -> str:
    """``SCHEDULED``, ``RUNNING``, ... of a Prefect flow run (or a stand-in)."""
    state = getattr(flow_run, "state_type", None) or getattr(flow_run.state, "type", "")
    return str(getattr(state, "value", state)).upper()


async def active_runs(
    client: Any, scenario: str, target: str, mode: str | None = None
) -> list[Any]:
    """The target's scheduled or under-way runs of a scenario, oldest first.

    Any run counts, whoever started it (an alert, ``dr run``, the UI): its flow is named
    after the scenario and its ``target`` parameter names the target. With ``mode``, only
    runs of that mode: an incident alert never attaches to a drill, which recovers nothing.
    """
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[scenario])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ACTIVE_STATES)))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=ACTIVE_RUNS_LIMIT,
    )
    return [
        r
        for r in runs
        if (r.parameters or {}).get("target") == target
        and (mode is None or str((r.parameters or {}).get("mode", "drill")) == mode)
        and not _due_later(r)
    ]


def _due_later(flow_run: Any) -> bool:
    """A Scheduled run whose start is more than :data:`ATTACH_WINDOW_SECONDS` away."""
    state = getattr(flow_run, "state", None)
    start = getattr(flow_run, "expected_start_time", None) or getattr(
        flow_run, "next_scheduled_start_time", None
    )
    if state is None or str(getattr(state, "type", "")).split(".")[-1] != "SCHEDULED" or not start:
        return False
    return (start - datetime.now(UTC)).total_seconds() > ATTACH_WINDOW_SECONDS


async def runs_started_by(client: Any, key: str) -> list[Any]:
    """The runs created with an alert's idempotency key (the runs that alert started)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

    return list(
        await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])),
            **_page(),
        )
    )


def attached_tag(alert: IncomingAlert) -> str:
    """The tag recording on a run that ``alert`` attached to it."""
    return f"{ATTACHED_TAG}{alert.fingerprint[:64]}"


def attached_fingerprints(tags: list[str]) -> list[str]:
    """The fingerprints of the alerts attached to a run (from its tags)."""
    return [t[len(ATTACHED_TAG) :] for t in tags if t.startswith(ATTACHED_TAG)]


async def retag(
    client: Any, flow_run: Any, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
) -> list[str]:
    """Add and remove tags of a run (one update, none when nothing changes); the new tags."""
    before = list(flow_run.tags or [])
    after = [t for t in before if t not in remove] + [t for t in add if t not in before]
    if after != before:
        await client.update_flow_run(flow_run.id, tags=after)
    return after


async def attach_alert(client: Any, flow_run: Any, alert: IncomingAlert) -> None:
    """Record on ``flow_run`` (a tag) that ``alert`` attached to it instead of starting a run."""
    await retag(client, flow_run, add=(attached_tag(alert),))


async def runs_tagged(client: Any, tag: str) -> list[Any]:
    """The runs carrying ``tag`` (those an alert attached to)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return list(
        await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    )


async def cancel_not_begun(client: Any, flow_run: Any, reason: str) -> bool:
    """Cancel a run that has not begun; False when Prefect refused (it began meanwhile)."""
    from prefect.states import Cancelled

    result = await client.set_flow_run_state(flow_run.id, Cancelled(message=reason))
    status = getattr(result, "status", None)
    return str(getattr(status, "value", status)).upper() == "ACCEPT"


def translate_prefect_error(exc: Exception, what: str) -> DRError:
    """Prefect client errors → our tree: unreachable/5xx transient, the rest permanent."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        detail = exc.response.text[:300]
        if status >= 500 or status == 429:
            return SystemError_(f"{what}: Prefect answered {status}", transient=True)
        return ConfigError(f"{what}: Prefect refused ({status}): {detail}")
    if isinstance(exc, httpx.TransportError | OSError | TimeoutError):
        return SystemError_(
            f"{what}: Prefect API unreachable ({type(exc).__name__})", transient=True
        )
    return SystemError_(f"{what}: {type(exc).__name__}: {exc}", transient=True)
