"""Isolating pods with a deny-all NetworkPolicy that this project owns, and removing it.

Only policies labelled ``app.kubernetes.io/managed-by=dr-pipelines`` are modified or
deleted, so someone else's policy of the same name is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s

from dr.changes import Change
from dr.errors import KubernetesError, PreconditionError
from dr.tasking import dr_task
from tasks.kubernetes.changes import make_change
from tasks.kubernetes.client import REQUEST_TIMEOUT_SECONDS, boundary, is_missing

log = logging.getLogger(__name__)


# Marks objects this project created, so it never modifies or deletes anyone else's.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "dr-pipelines"
DEFAULT_POLICY_NAME = "dr-isolate"


def _desired_policy_spec(pod_selector: Mapping[str, str]) -> dict[str, Any]:
    # No ingress or egress rules with both policy types listed: all traffic denied.
    return {
        "podSelector": {"matchLabels": dict(pod_selector)},
        "policyTypes": ["Ingress", "Egress"],
    }


def _policy_matches(spec: Any, pod_selector: Mapping[str, str]) -> bool:
    selector = spec.pod_selector if spec else None
    return bool(
        spec is not None
        and selector is not None
        and (selector.match_labels or {}) == dict(pod_selector)
        and not selector.match_expressions
        and sorted(spec.policy_types or []) == ["Egress", "Ingress"]
        and not spec.ingress
        and not spec.egress
    )


def _read_policy(api: k8s.ApiClient, namespace: str, name: str) -> Any | None:
    try:
        with boundary("read", f"networkpolicy {namespace}/{name}"):
            return k8s.NetworkingV1Api(api).read_namespaced_network_policy(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    except KubernetesError as exc:
        if is_missing(exc):
            return None
        raise


def _ensure_ours(policy: Any, obj: str) -> None:
    labels = (policy.metadata.labels or {}) if policy.metadata else {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        raise PreconditionError(
            f"networkpolicy {obj} exists but was not created by DR pipelines "
            f"(no label {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}); refusing to modify or delete it"
        )


def _create_policy(api: k8s.ApiClient, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    """Create the deny-all policy, labelled as ours."""
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        },
        "spec": spec,
    }
    with boundary("create", f"networkpolicy {namespace}/{name}"):
        k8s.NetworkingV1Api(api).create_namespaced_network_policy(
            namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def _repoint_policy(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    old_selector: Mapping[str, str],
    pod_selector: Mapping[str, str],
) -> None:
    """Patch our policy to select ``pod_selector`` and deny all again."""
    # Null out what must go: labels not wanted any more, expressions and any rules.
    match_labels: dict[str, str | None] = {k: None for k in old_selector if k not in pod_selector}
    match_labels.update(pod_selector)
    patch = {
        "spec": {
            "podSelector": {"matchLabels": match_labels, "matchExpressions": None},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": None,
            "egress": None,
        }
    }
    with boundary("patch", f"networkpolicy {namespace}/{name}"):
        k8s.NetworkingV1Api(api).patch_namespaced_network_policy(
            name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def apply_isolation_policy(
    api: k8s.ApiClient,
    namespace: str,
    pod_selector: Mapping[str, str],
    name: str = DEFAULT_POLICY_NAME,
) -> Change:
    """Cut the matching pods off the network: a NetworkPolicy denying all ingress and egress.

    Used to contain a compromised workload while keeping it for forensics. Idempotent:
    an existing policy of ours with the same selector is left alone; one with another
    selector is patched. A policy of that name not created by this project is refused.

    Args:
        api: from :func:`~tasks.kubernetes.client.make_client`.
        namespace: where the pods run.
        pod_selector: ``matchLabels`` of the pods to isolate (must not be empty:
            an empty selector would isolate every pod in the namespace).
        name: the NetworkPolicy's name.

    Returns:
        A Change: ``created``, ``updated`` or ``unchanged``; undone by
        :func:`remove_isolation_policy` (or :func:`~tasks.kubernetes.undo.undo_change`).

    Raises:
        PreconditionError: empty selector, or a foreign policy with that name.
        KubernetesError: API failure.
    """
    obj = f"{namespace}/{name}"
    if not pod_selector:
        raise PreconditionError(
            f"refusing to apply networkpolicy {obj} with an empty pod selector "
            "(it would isolate every pod in the namespace)"
        )
    spec = _desired_policy_spec(pod_selector)
    existing = _read_policy(api, namespace, name)
    undo = f"kubectl -n {namespace} delete networkpolicy {name}"
    if existing is None:
        _create_policy(api, namespace, name, spec)
        log.info("created networkpolicy %s isolating pods %s", obj, dict(pod_selector))
        return make_change(
            obj,
            "apply-isolation-policy",
            "created",
            after={"pod_selector": dict(pod_selector)},
            undo=undo,
        )
    _ensure_ours(existing, obj)
    old_selector = dict(existing.spec.pod_selector.match_labels or {}) if existing.spec else {}
    if _policy_matches(existing.spec, pod_selector):
        log.info("networkpolicy %s already isolates pods %s: unchanged", obj, dict(pod_selector))
        return make_change(
            obj,
            "apply-isolation-policy",
            "unchanged",
            before={"pod_selector": old_selector},
            after={"pod_selector": old_selector},
        )
    _repoint_policy(api, namespace, name, old_selector, pod_selector)
    log.info("updated networkpolicy %s: pods %s -> %s", obj, old_selector, dict(pod_selector))
    return make_change(
        obj,
        "apply-isolation-policy",
        "updated",
        before={"pod_selector": old_selector},
        after={"pod_selector": dict(pod_selector)},
        undo=undo,
    )


def remove_isolation_policy(
    api: k8s.ApiClient, namespace: str, name: str = DEFAULT_POLICY_NAME
) -> Change:
    """Delete the isolation NetworkPolicy (only one this project created); no-op if absent.

    Returns:
        A Change: ``deleted`` (with the selector it had) or ``unchanged``.

    Raises:
        PreconditionError: the policy of that name was not created by this project.
        KubernetesError: API failure.
    """
    obj = f"{namespace}/{name}"
    existing = _read_policy(api, namespace, name)
    if existing is None:
        log.info("networkpolicy %s absent: unchanged", obj)
        return make_change(obj, "remove-isolation-policy", "unchanged")
    _ensure_ours(existing, obj)
    selector = dict(existing.spec.pod_selector.match_labels or {}) if existing.spec else {}
    try:
        with boundary("delete", f"networkpolicy {obj}"):
            k8s.NetworkingV1Api(api).delete_namespaced_network_policy(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    except KubernetesError as exc:
        if not is_missing(exc):  # deleted meanwhile: the outcome we wanted
            raise
    log.info("deleted networkpolicy %s (pods %s no longer isolated)", obj, selector)
    selector_text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return make_change(
        obj,
        "remove-isolation-policy",
        "deleted",
        before={"pod_selector": selector},
        undo=f"re-apply the isolation policy {name} in {namespace} for pods {selector_text}",
    )


apply_isolation_policy_task = dr_task(
    apply_isolation_policy, name="kubernetes-apply-isolation-policy"
)
remove_isolation_policy_task = dr_task(
    remove_isolation_policy, name="kubernetes-remove-isolation-policy"
)
