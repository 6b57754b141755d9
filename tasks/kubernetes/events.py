"""Kubernetes events of a namespace, kept as evidence."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from dr.errors import redact
from dr.tasking import dr_task
from tasks.kubernetes.client import REQUEST_TIMEOUT_SECONDS, boundary


def list_events(api: k8s.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """List a namespace's events, oldest first, as plain dicts for the incident report.

    Returns:
        Dicts with ``type``, ``reason``, ``object`` (``Kind/name``), ``message``,
        ``count``, ``first_seen`` and ``last_seen`` (ISO 8601 or None).

    Raises:
        KubernetesError: API failure.
    """
    with boundary("list events in", f"namespace {namespace}"):
        events = k8s.CoreV1Api(api).list_namespaced_event(
            namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    result = []
    for event in events.items or []:
        involved = event.involved_object
        first = event.first_timestamp or event.event_time
        last = event.last_timestamp or event.event_time or first
        result.append(
            {
                "type": event.type,
                "reason": event.reason,
                "object": f"{involved.kind}/{involved.name}" if involved else None,
                "message": redact(event.message or ""),
                "count": event.count or 1,
                "first_seen": first.isoformat() if first else None,
                "last_seen": last.isoformat() if last else None,
            }
        )
    return sorted(result, key=lambda e: e["last_seen"] or "")


list_events_task = dr_task(list_events, name="kubernetes-list-events")
