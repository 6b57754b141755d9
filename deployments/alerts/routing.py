"""Which route an alert takes, in which mode, and the key that makes its run unique."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from deployments.alerts.payloads import IncomingAlert
from dr.config import AlertRoute, Mode

#: Labels passed to the flow run are trimmed to keep parameters small.
MAX_LABELS_IN_RUN = 32


MAX_LABEL_VALUE_CHARS = 200


def _route_allows_mode(route: AlertRoute, mode: Mode | None) -> bool:
    # A plain sender may ask for the route's own mode, or downgrade to a dry run (which
    # changes nothing); it may never turn a drill route into an incident or the reverse.
    return mode is None or mode == route.mode or mode == Mode.dry_run


def match_route(routes: Sequence[AlertRoute], alert: IncomingAlert) -> AlertRoute | None:
    """The first route that applies to ``alert``, or None.

    Sender alerts (Alertmanager, Grafana, PagerDuty) match a route when every
    ``label=value`` pair of its ``match`` is among the alert's labels (an empty ``match``
    matches everything). Plain alerts name their scenario and target, so they match the
    first route with the same scenario and target whose mode allows the one asked for;
    label matchers are not applied to them: for the plain form a route is the permission
    and the policy (approval, rate limit), not a classifier.

    Args:
        routes: ``config.alerts.routes``, in order; the first match wins.
        alert: the normalized alert.

    Returns:
        The route, or None when the alert maps nowhere.
    """
    for route in routes:
        if alert.source == "plain":
            if (
                route.scenario == alert.scenario
                and route.target == alert.target
                and _route_allows_mode(route, alert.mode)
            ):
                return route
        elif all(alert.labels.get(k) == v for k, v in route.match.items()):
            return route
    return None


#: Maps an alert's severity label onto the config's closed set (``DRConfig.alert_severity``).
SeverityFor = Callable[[str | None], str | None]


def with_severity(
    alert: IncomingAlert, severity_for: SeverityFor | None
) -> tuple[IncomingAlert, str | None]:
    """The alert with its severity as one of the config's (``critical`` -> ``SEV1``), or why not.

    Mapped before a flow run exists, so ``approval.auto_approve_severities`` means the same
    for a run an alert started as for one started from the command line.

    Returns:
        ``(alert, None)``, or ``(alert, reason)`` when the severity maps to none (the alert
        is then answered as ignored, with the reason, and no run is started).
    """
    if severity_for is None:
        return alert, None
    mapped = severity_for(alert.severity)
    if mapped is None:
        return alert, (
            f"unknown severity {alert.severity!r}: not one of the config's severities"
            " nor a label of alerts.severity_map"
        )
    return dataclasses.replace(alert, severity=mapped), None


def run_mode(route: AlertRoute, alert: IncomingAlert) -> Mode:
    """The mode the run starts in: the plain form's own (if allowed), else the route's."""
    return alert.mode if alert.mode is not None else route.mode


def idempotency_key(route: AlertRoute, alert: IncomingAlert) -> str:
    """The Prefect idempotency key: one flow run per route, fingerprint and firing.

    ``<route>:<fingerprint>``, plus ``:<startsAt UTC>`` for Alertmanager and Grafana
    alerts. Their fingerprint is a hash of the labels, the same every time the same
    condition fires: without the firing's start the key of an alert that resolved and
    fired again next month would still name last month's run, and Prefect would answer
    with it instead of starting a recovery. Repeats of one firing (Alertmanager's
    ``repeat_interval``, retries, several receivers) keep the same ``startsAt`` and so
    the same key. A plain dry run of an incident route gets ``:dry-run`` appended, so
    that rehearsing never uses up the real incident's key.

    Args:
        route: the matched route.
        alert: the normalized alert.

    Returns:
        The key (Prefect keeps it unique per flow).
    """
    key = f"{route.name}:{alert.fingerprint}"
    if alert.episode:
        key += f":{alert.episode}"
    mode = run_mode(route, alert)
    if mode != route.mode:
        key += f":{mode.value}"
    return key


def labels_summary(labels: Mapping[str, str]) -> dict[str, str]:
    """The alert's labels, trimmed, for the run's parameters."""
    items = sorted(labels.items())[:MAX_LABELS_IN_RUN]
    return {k: v[:MAX_LABEL_VALUE_CHARS] for k, v in items}
