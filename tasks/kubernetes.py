"""Kubernetes through its API: scale, restart, secrets, config maps, isolation, events.

The only module that imports the kubernetes client. Functions take an explicit
``ApiClient`` built by :func:`make_client` from a kubeconfig; every mutating step reads
the object first, writes only when it differs, and returns a :class:`dr.changes.Change`
recording what it was before, so a flow can undo it (:func:`undo_change`).

Writes are patches (strategic merge for these built-in kinds), never read-modify-PUT:
they need no resourceVersion and cannot overwrite a concurrent change to other fields.

Secret values are never logged, never put in a Change's ``before``/``after`` and never
in error messages (they are registered with :func:`dr.errors.register_secret` as soon as
they are read or written). To stay compensable, a replaced secret value is kept only in
``Change.undo_data``, which serialization and ``repr()`` leave out.

Errors: 404 raises :class:`KubernetesError` (permanent) naming the object; 409, 429, 5xx
and connection failures raise it with ``transient=True``; other refusals are permanent.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ConfigDict

from dr.changes import Change
from dr.errors import KubernetesError, PreconditionError, redact, register_secret
from dr.tasking import dr_task

__all__ = [
    "DeploymentState",
    "apply_isolation_policy",
    "apply_isolation_policy_task",
    "list_events",
    "list_events_task",
    "make_client",
    "patch_config_map_key",
    "patch_config_map_key_task",
    "read_config_map",
    "read_deployment",
    "read_secret",
    "remove_isolation_policy",
    "remove_isolation_policy_task",
    "replace_secret_key",
    "replace_secret_key_task",
    "restore_config_map_key",
    "restore_scale",
    "restore_secret_key",
    "rollout_restart",
    "rollout_restart_task",
    "scale_deployment",
    "scale_deployment_task",
    "undo_change",
    "undo_change_task",
]

log = logging.getLogger(__name__)

SYSTEM = "kubernetes"
# Per-request timeout (connect, read) in seconds.
REQUEST_TIMEOUT_SECONDS = (5, 30)
# The annotation `kubectl rollout restart` sets; changing it rolls the pods.
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# Marks objects this project created, so it never modifies or deletes anyone else's.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "dr-pipelines"
DEFAULT_POLICY_NAME = "dr-isolate"
# HTTP statuses worth retrying: conflict, throttling, and server errors.
TRANSIENT_STATUSES = frozenset({409, 429})


class DeploymentState(BaseModel):
    """What a Deployment asks for and, where the API reports it, what it has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    name: str
    replicas: int
    ready_replicas: int | None = None
    restarted_at: str | None = None


# --------------------------------------------------------------------------- client


def make_client(kubeconfig: Path | None, context: str | None) -> k8s.ApiClient:
    """Build the Kubernetes ``ApiClient``; the only place one is created.

    Args:
        kubeconfig: a kubeconfig file; None uses the in-cluster service account when
            running in a pod, else ``$KUBECONFIG`` / ``~/.kube/config``.
        context: the kubeconfig context; None uses its current context.

    Returns:
        An ``ApiClient`` to pass to every function here (close it when done).

    Raises:
        KubernetesError: the kubeconfig is missing or invalid, or has no such context.
    """
    configuration = k8s.Configuration()
    try:
        if kubeconfig is None:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
                log.info("kubernetes client: in-cluster service account")
                return k8s.ApiClient(configuration)
            except ConfigException:
                pass
        k8s_config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError) as exc:
        where = str(kubeconfig) if kubeconfig else "the default kubeconfig"
        raise KubernetesError(
            f"cannot load kubeconfig {where} (context {context or 'current'}): {exc}"
        ) from exc
    log.info("kubernetes client: %s (context %s)", configuration.host, context or "current")
    return k8s.ApiClient(configuration)


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason or "")
    except (ValueError, AttributeError):
        return str(exc.reason or "")


@contextmanager
def _boundary(what: str, obj: str) -> Iterator[None]:
    """Translate client errors into :class:`KubernetesError` (``obj`` like ``secret ns/x``)."""
    try:
        yield
    except ApiException as exc:
        status = exc.status or 0
        if status == 404:
            raise KubernetesError(f"{what}: {obj} not found (404)") from exc
        transient = status in TRANSIENT_STATUSES or status >= 500
        raise KubernetesError(
            f"{what} {obj}: API answered {status}: {redact(_api_message(exc))}",
            transient=transient,
        ) from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise KubernetesError(f"{what} {obj}: API unreachable: {exc}", transient=True) from exc


def _missing(exc: KubernetesError) -> bool:
    """True when ``exc`` came from a 404."""
    cause = exc.__cause__
    return isinstance(cause, ApiException) and cause.status == 404


def _change(obj: str, action: str, outcome: str, **fields: Any) -> Change:
    return Change(system=SYSTEM, action=action, object=obj, outcome=outcome, **fields)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- deployments


def read_deployment(api: k8s.ApiClient, namespace: str, name: str) -> DeploymentState:
    """Read a Deployment's replica count, ready replicas and last restart stamp.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    obj = f"deployment {namespace}/{name}"
    with _boundary("read", obj):
        dep = k8s.AppsV1Api(api).read_namespaced_deployment(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    annotations = {}
    if dep.spec and dep.spec.template and dep.spec.template.metadata:
        annotations = dep.spec.template.metadata.annotations or {}
    return DeploymentState(
        namespace=namespace,
        name=name,
        replicas=(dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1),
        ready_replicas=dep.status.ready_replicas if dep.status else None,
        restarted_at=annotations.get(RESTARTED_AT_ANNOTATION),
    )


def scale_deployment(api: k8s.ApiClient, namespace: str, name: str, replicas: int) -> Change:
    """Set a Deployment's replica count unless it already has it.

    Args:
        api: from :func:`make_client`.
        namespace: the Deployment's namespace.
        name: the Deployment's name.
        replicas: the wanted count (0 stops the application).

    Returns:
        A Change with ``before["replicas"]``; ``unchanged`` when already at that count.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    if replicas < 0:
        raise PreconditionError(f"cannot scale deployment {namespace}/{name} to {replicas}")
    obj = f"{namespace}/{name}"
    current = read_deployment(api, namespace, name).replicas
    if current == replicas:
        log.info("deployment %s already has %s replicas: unchanged", obj, replicas)
        return _change(
            obj, "scale", "unchanged", before={"replicas": current}, after={"replicas": current}
        )
    with _boundary("scale", f"deployment {obj}"):
        k8s.AppsV1Api(api).patch_namespaced_deployment(
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    log.info("scaled deployment %s from %s to %s replicas", obj, current, replicas)
    return _change(
        obj,
        "scale",
        "updated",
        before={"replicas": current},
        after={"replicas": replicas},
        undo=f"kubectl -n {namespace} scale deployment/{name} --replicas={current}",
    )


def restore_scale(api: k8s.ApiClient, change: Change) -> Change:
    """Put a Deployment back to the replica count recorded by :func:`scale_deployment`.

    Returns:
        The Change made by restoring (``unchanged`` when there is nothing to undo).

    Raises:
        PreconditionError: ``change`` is not a scale change.
        KubernetesError: not found (permanent) or API failure.
    """
    _expect(change, "scale")
    namespace, name = change.object.split("/", 1)
    if change.outcome == "unchanged":
        return _change(change.object, "restore-scale", "unchanged", before=change.after)
    restored = scale_deployment(api, namespace, name, int(change.before["replicas"]))
    return restored.model_copy(update={"action": "restore-scale"})


def rollout_restart(api: k8s.ApiClient, namespace: str, name: str) -> Change:
    """Restart a Deployment's pods the way ``kubectl rollout restart`` does.

    Stamps the pod template with ``kubectl.kubernetes.io/restartedAt``; the Deployment
    controller then replaces the pods gradually, under the Deployment's rollout rules.

    Returns:
        A Change that cannot be compensated (a restart cannot be undone).

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    obj = f"{namespace}/{name}"
    previous = read_deployment(api, namespace, name).restarted_at
    stamp = _now()
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}
    with _boundary("rollout restart", f"deployment {obj}"):
        k8s.AppsV1Api(api).patch_namespaced_deployment(
            name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    log.info("rollout restart of deployment %s at %s", obj, stamp)
    return _change(
        obj,
        "rollout-restart",
        "updated",
        before={"restarted_at": previous},
        after={"restarted_at": stamp},
        compensable=False,
    )


# --------------------------------------------------------------------------- secrets


def _decode(value: str) -> str:
    # surrogateescape keeps non-UTF-8 bytes, so encoding back gives the same bytes.
    return base64.b64decode(value).decode("utf-8", "surrogateescape")


def _encode(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")


def _read_secret_data(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    with _boundary("read", f"secret {namespace}/{name}"):
        secret = k8s.CoreV1Api(api).read_namespaced_secret(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    try:
        data = {key: _decode(value) for key, value in (secret.data or {}).items()}
    except (binascii.Error, ValueError, TypeError) as exc:
        raise KubernetesError(f"secret {namespace}/{name} holds data that is not base64") from exc
    for value in data.values():
        register_secret(value)
    return data


def read_secret(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    """Read and decode a Secret's data. The values are registered for redaction.

    Returns:
        ``{key: value}`` decoded (never log the values).

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    data = _read_secret_data(api, namespace, name)
    log.info("read secret %s/%s (keys %s)", namespace, name, sorted(data))
    return data


def _patch_secret(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str | None
) -> None:
    body = {"data": {key: None if value is None else _encode(value)}}
    with _boundary("patch", f"secret {namespace}/{name}"):
        k8s.CoreV1Api(api).patch_namespaced_secret(
            name, namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def replace_secret_key(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str
) -> Change:
    """Set one key of a Secret (e.g. a rotated password) unless it already holds ``value``.

    Args:
        api: from :func:`make_client`.
        namespace: the Secret's namespace.
        name: the Secret's name.
        key: the data key to set (created if missing).
        value: the new value (never logged or recorded).

    Returns:
        A Change whose ``before`` says only whether the key existed; the old value is
        kept in ``undo_data`` (left out of ``model_dump()`` and ``repr()``) so that
        :func:`restore_secret_key` can put it back.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    register_secret(value)
    obj = f"{namespace}/{name}"
    data = _read_secret_data(api, namespace, name)
    existed = key in data
    if existed and data[key] == value:
        log.info("secret %s key %s already holds the wanted value: unchanged", obj, key)
        return _change(obj, "replace-secret-key", "unchanged", before={"key": key, "existed": True})
    _patch_secret(api, namespace, name, key, value)
    log.info("replaced key %s of secret %s (existed before: %s)", key, obj, existed)
    return _change(
        obj,
        "replace-secret-key",
        "updated",
        before={"key": key, "existed": existed},
        after={"key": key},
        undo=(
            f"put back the previous value of key {key} in secret {obj}"
            if existed
            else f'kubectl -n {namespace} patch secret {name} -p \'{{"data":{{"{key}":null}}}}\''
        ),
        undo_data={"secret_value": data.get(key)},
    )


def restore_secret_key(api: k8s.ApiClient, change: Change) -> Change:
    """Put back the Secret value replaced by :func:`replace_secret_key` (in this process).

    Raises:
        PreconditionError: not a secret change, or its old value was not kept (the
            Change was serialized or made by another process).
        KubernetesError: not found (permanent) or API failure.
    """
    _expect(change, "replace-secret-key")
    key = change.before["key"]
    if change.outcome == "unchanged":
        return _change(change.object, "restore-secret-key", "unchanged", before={"key": key})
    if "secret_value" not in change.undo_data:
        raise PreconditionError(
            f"cannot restore key {key} of secret {change.object}: its previous value was not "
            "kept (the Change was serialized or made by another process)"
        )
    namespace, name = change.object.split("/", 1)
    old = change.undo_data["secret_value"]
    _patch_secret(api, namespace, name, key, old)
    log.info("restored key %s of secret %s (%s)", key, change.object, "value" if old else "removed")
    return _change(
        change.object,
        "restore-secret-key",
        "updated",
        before={"key": key},
        after={"key": key, "existed": old is not None},
        compensable=False,
    )


# --------------------------------------------------------------------------- config maps


def read_config_map(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    """Read a ConfigMap's data.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    with _boundary("read", f"configmap {namespace}/{name}"):
        cm = k8s.CoreV1Api(api).read_namespaced_config_map(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    return dict(cm.data or {})


def _patch_config_map(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str | None
) -> None:
    with _boundary("patch", f"configmap {namespace}/{name}"):
        k8s.CoreV1Api(api).patch_namespaced_config_map(
            name, namespace, {"data": {key: value}}, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def patch_config_map_key(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str
) -> Change:
    """Set one key of a ConfigMap (e.g. the database host) unless it already holds it.

    Returns:
        A Change with the previous value in ``before`` (ConfigMaps hold no secrets).

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    obj = f"{namespace}/{name}"
    data = read_config_map(api, namespace, name)
    previous = data.get(key)
    if previous == value:
        log.info("configmap %s key %s already %r: unchanged", obj, key, value)
        return _change(
            obj, "patch-config-map-key", "unchanged", before={"key": key, "value": previous}
        )
    _patch_config_map(api, namespace, name, key, value)
    log.info("configmap %s key %s: %r -> %r", obj, key, previous, value)
    undo_value = "null" if previous is None else json.dumps(previous)
    return _change(
        obj,
        "patch-config-map-key",
        "updated",
        before={"key": key, "value": previous},
        after={"key": key, "value": value},
        undo=f"kubectl -n {namespace} patch configmap {name} -p "
        f'\'{{"data":{{"{key}":{undo_value}}}}}\'',
    )


def restore_config_map_key(api: k8s.ApiClient, change: Change) -> Change:
    """Put back the ConfigMap value replaced by :func:`patch_config_map_key`.

    Raises:
        PreconditionError: ``change`` is not a config map change.
        KubernetesError: not found (permanent) or API failure.
    """
    _expect(change, "patch-config-map-key")
    key, previous = change.before["key"], change.before.get("value")
    if change.outcome == "unchanged":
        return _change(change.object, "restore-config-map-key", "unchanged", before=change.before)
    namespace, name = change.object.split("/", 1)
    _patch_config_map(api, namespace, name, key, previous)
    log.info("restored configmap %s key %s to %r", change.object, key, previous)
    return _change(
        change.object,
        "restore-config-map-key",
        "updated",
        before=change.after,
        after={"key": key, "value": previous},
    )


# --------------------------------------------------------------------------- isolation


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
        with _boundary("read", f"networkpolicy {namespace}/{name}"):
            return k8s.NetworkingV1Api(api).read_namespaced_network_policy(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    except KubernetesError as exc:
        if _missing(exc):
            return None
        raise


def _ensure_ours(policy: Any, obj: str) -> None:
    labels = (policy.metadata.labels or {}) if policy.metadata else {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        raise PreconditionError(
            f"networkpolicy {obj} exists but was not created by DR pipelines "
            f"(no label {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}); refusing to modify or delete it"
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
        api: from :func:`make_client`.
        namespace: where the pods run.
        pod_selector: ``matchLabels`` of the pods to isolate (must not be empty:
            an empty selector would isolate every pod in the namespace).
        name: the NetworkPolicy's name.

    Returns:
        A Change: ``created``, ``updated`` or ``unchanged``; undone by
        :func:`remove_isolation_policy` (or :func:`undo_change`).

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
        with _boundary("create", f"networkpolicy {obj}"):
            k8s.NetworkingV1Api(api).create_namespaced_network_policy(
                namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        log.info("created networkpolicy %s isolating pods %s", obj, dict(pod_selector))
        return _change(
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
        return _change(
            obj,
            "apply-isolation-policy",
            "unchanged",
            before={"pod_selector": old_selector},
            after={"pod_selector": old_selector},
        )
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
    with _boundary("patch", f"networkpolicy {obj}"):
        k8s.NetworkingV1Api(api).patch_namespaced_network_policy(
            name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    log.info("updated networkpolicy %s: pods %s -> %s", obj, old_selector, dict(pod_selector))
    return _change(
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
        return _change(obj, "remove-isolation-policy", "unchanged")
    _ensure_ours(existing, obj)
    selector = dict(existing.spec.pod_selector.match_labels or {}) if existing.spec else {}
    try:
        with _boundary("delete", f"networkpolicy {obj}"):
            k8s.NetworkingV1Api(api).delete_namespaced_network_policy(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    except KubernetesError as exc:
        if not _missing(exc):  # deleted meanwhile: the outcome we wanted
            raise
    log.info("deleted networkpolicy %s (pods %s no longer isolated)", obj, selector)
    selector_text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return _change(
        obj,
        "remove-isolation-policy",
        "deleted",
        before={"pod_selector": selector},
        undo=f"re-apply the isolation policy {name} in {namespace} for pods {selector_text}",
    )


# --------------------------------------------------------------------------- evidence


def list_events(api: k8s.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """List a namespace's events, oldest first, as plain dicts for the incident report.

    Returns:
        Dicts with ``type``, ``reason``, ``object`` (``Kind/name``), ``message``,
        ``count``, ``first_seen`` and ``last_seen`` (ISO 8601 or None).

    Raises:
        KubernetesError: API failure.
    """
    with _boundary("list events in", f"namespace {namespace}"):
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


# --------------------------------------------------------------------------- undo


def _expect(change: Change, action: str) -> None:
    if change.system != SYSTEM or change.action != action:
        raise PreconditionError(
            f"expected a {SYSTEM} {action} change, got {change.system} {change.action}"
        )


def undo_change(api: k8s.ApiClient, change: Change) -> Change:
    """Undo any compensable Change made by this module (for rollback hooks).

    Returns:
        The Change made by undoing (``unchanged`` when there was nothing to undo).

    Raises:
        PreconditionError: the change cannot be undone automatically.
        KubernetesError: API failure.
    """
    if change.system != SYSTEM:
        raise PreconditionError(f"undo_change got a {change.system} change")
    if change.outcome == "unchanged":
        return _change(change.object, f"undo-{change.action}", "unchanged")
    if not change.compensable:
        raise PreconditionError(f"cannot undo {change.action} of {change.object}")
    namespace, name = change.object.split("/", 1)
    if change.action == "scale":
        return restore_scale(api, change)
    if change.action == "replace-secret-key":
        return restore_secret_key(api, change)
    if change.action == "patch-config-map-key":
        return restore_config_map_key(api, change)
    if change.action == "apply-isolation-policy":
        if change.outcome == "updated":
            return apply_isolation_policy(api, namespace, change.before["pod_selector"], name)
        return remove_isolation_policy(api, namespace, name)
    if change.action == "remove-isolation-policy":
        return apply_isolation_policy(api, namespace, change.before["pod_selector"], name)
    raise PreconditionError(f"undo_change does not know how to undo {change.action!r}")


# --------------------------------------------------------------------------- tasks

scale_deployment_task = dr_task(scale_deployment, name="scale-deployment")
rollout_restart_task = dr_task(rollout_restart, name="rollout-restart")
replace_secret_key_task = dr_task(replace_secret_key, name="replace-secret-key")
patch_config_map_key_task = dr_task(patch_config_map_key, name="patch-config-map-key")
apply_isolation_policy_task = dr_task(apply_isolation_policy, name="apply-isolation-policy")
remove_isolation_policy_task = dr_task(remove_isolation_policy, name="remove-isolation-policy")
list_events_task = dr_task(list_events, name="list-kubernetes-events")
undo_change_task = dr_task(undo_change, name="undo-kubernetes-change")


# --- wrappers added for flows (lead: move on merge)
restore_scale_task = dr_task(restore_scale, name="restore-deployment-scale")
read_secret_task = dr_task(read_secret, name="read-kubernetes-secret")
