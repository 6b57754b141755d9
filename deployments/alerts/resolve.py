"""A resolved alert: cancel the run it started if that has not begun, else leave it be.

A run serves every alert attached to it too: it is cancelled only once its starting
alert and every attached one have resolved (each resolution removes its tag).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from deployments.alerts.payloads import IncomingAlert
from deployments.alerts.runs import (
    NOT_BEGUN_STATES,
    STARTER_RESOLVED_TAG,
    UNDER_WAY_STATES,
    RunRecord,
    attached_fingerprints,
    attached_tag,
    cancel_not_begun,
    retag,
    runs_started_by,
    runs_tagged,
    state_type,
    translate_prefect_error,
)
from dr.config import AlertRoute

logger = logging.getLogger("deployments.alerts")

Say = Callable[[str, str], Awaitable[None]]


async def resolve_alert(
    client: Any,
    route: AlertRoute,
    alert: IncomingAlert,
    key: str,
    cached: RunRecord | None,
    run_url: Callable[[str], str],
    say: Say,
) -> list[dict[str, Any]]:
    """Settle the runs a resolved alert started or attached to; one answer per run.

    Args:
        client: the Prefect client.
        route: the alert's route; ``key`` its idempotency key.
        alert: the resolved alert.
        cached: what the receiver remembered of it (None after a restart).
        run_url: a run's UI link, for the Slack line.
        say: posts a Slack line for the route's target.
    """
    try:
        started = await runs_started_by(client, key)
        own = {str(r.id) for r in started}
        attached = [
            r for r in await runs_tagged(client, attached_tag(alert)) if str(r.id) not in own
        ]
        answers = [await _detach(client, route, alert, r, run_url, say) for r in attached]
        answers += [await _starter_resolved(client, route, alert, r, run_url, say) for r in started]
    except Exception as exc:
        raise translate_prefect_error(exc, f"resolving alert {alert.fingerprint}") from exc
    if not answers:
        was_attached = cached is not None and cached.attached
        action = "left to the run it attached to" if was_attached else "no run to cancel"
        flow_run_id = cached.flow_run_id if was_attached else None
        logger.info("resolved %s alert %s: %s", alert.source, alert.fingerprint, action)
        answers.append(_answer(route, alert, flow_run_id, None, action))
    return answers


async def _detach(
    client: Any, route: AlertRoute, alert: IncomingAlert, flow_run: Any, run_url: Any, say: Say
) -> dict[str, Any]:
    tags = await retag(client, flow_run, remove=(attached_tag(alert),))
    if STARTER_RESOLVED_TAG in tags and not attached_fingerprints(tags):
        return await _settle(client, route, alert, flow_run, run_url, say)
    action = "left to the run it attached to"
    logger.info("resolved %s alert %s: %s %s", alert.source, alert.fingerprint, action, flow_run.id)
    return _answer(route, alert, str(flow_run.id), state_type(flow_run), action)


async def _starter_resolved(
    client: Any, route: AlertRoute, alert: IncomingAlert, flow_run: Any, run_url: Any, say: Say
) -> dict[str, Any]:
    waiting = attached_fingerprints(list(flow_run.tags or []))
    if not waiting:
        return await _settle(client, route, alert, flow_run, run_url, say)
    await retag(client, flow_run, add=(STARTER_RESOLVED_TAG,))
    action = f"left: alerts attached to it still fire ({', '.join(waiting)})"
    logger.info(
        "resolved %s alert %s: run %s %s", alert.source, alert.fingerprint, flow_run.id, action
    )
    return _answer(route, alert, str(flow_run.id), state_type(flow_run), action)


async def _settle(
    client: Any, route: AlertRoute, alert: IncomingAlert, flow_run: Any, run_url: Any, say: Say
) -> dict[str, Any]:
    """Cancel a run that has not begun; one under way is left to finish, with a Slack line."""
    flow_run_id = str(flow_run.id)
    state = state_type(flow_run)
    action = "none: already finished"
    if state in NOT_BEGUN_STATES:
        reason = f"alert {alert.fingerprint} resolved before the run began"
        cancelled = await cancel_not_begun(client, flow_run, reason)
        action = "cancelled" if cancelled else "left to finish (it began meanwhile)"
    elif state in UNDER_WAY_STATES:
        action = "left to finish"
    logger.info(
        "resolved %s alert %s: run %s (%s) %s",
        alert.source,
        alert.fingerprint,
        flow_run_id,
        state.lower(),
        action,
    )
    if action.startswith("left to finish"):
        await say(
            route.target,
            f"Alert {alert.fingerprint} ({alert.summary or route.name}) resolved; its "
            f"{route.scenario.value} run on {route.target} has already begun and is left to "
            f"finish: {run_url(flow_run_id)}",
        )
    return _answer(route, alert, flow_run_id, state, action)


def _answer(
    route: AlertRoute, alert: IncomingAlert, flow_run_id: str | None, state: str | None, action: str
) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint,
        "route": route.name,
        "flow_run_id": flow_run_id,
        "state": state,
        "action": action,
    }
