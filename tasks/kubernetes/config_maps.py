"""Config maps: read one, set one key, and put the old value back."""

from __future__ import annotations

import json
import logging

from kubernetes import client as k8s

from dr.changes import Change
from dr.tasking import dr_task
from tasks.kubernetes.changes import expect_change, make_change
from tasks.kubernetes.client import REQUEST_TIMEOUT_SECONDS, boundary

log = logging.getLogger(__name__)


def read_config_map(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    """Read a ConfigMap's data.

    Raises:
        KubernetesError: not found (permanent) or API failure.
    """
    with boundary("read", f"configmap {namespace}/{name}"):
        cm = k8s.CoreV1Api(api).read_namespaced_config_map(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    return dict(cm.data or {})


def _patch_config_map(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str | None
) -> None:
    with boundary("patch", f"configmap {namespace}/{name}"):
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
        return make_change(
            obj, "patch-config-map-key", "unchanged", before={"key": key, "value": previous}
        )
    _patch_config_map(api, namespace, name, key, value)
    log.info("configmap %s key %s: %r -> %r", obj, key, previous, value)
    undo_value = "null" if previous is None else json.dumps(previous)
    return make_change(
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
    expect_change(change, "patch-config-map-key")
    key, previous = change.before["key"], change.before.get("value")
    if change.outcome == "unchanged":
        return make_change(
            change.object, "restore-config-map-key", "unchanged", before=change.before
        )
    namespace, name = change.object.split("/", 1)
    _patch_config_map(api, namespace, name, key, previous)
    log.info("restored configmap %s key %s to %r", change.object, key, previous)
    return make_change(
        change.object,
        "restore-config-map-key",
        "updated",
        before=change.after,
        after={"key": key, "value": previous},
    )


read_config_map_task = dr_task(
    read_config_map, name="kubernetes-read-config-map", timeout_seconds=60
)
patch_config_map_key_task = dr_task(patch_config_map_key, name="kubernetes-patch-config-map-key")
restore_config_map_key_task = dr_task(
    restore_config_map_key, name="kubernetes-restore-config-map-key", timeout_seconds=120
)
