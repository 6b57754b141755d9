"""Kubernetes secrets: read one, replace one key's value, and put the old value back.

Values are never logged, never put in a Change's ``before``/``after`` and never in error
messages (they are registered with :func:`dr.errors.register_secret` as soon as they are
read or written). To stay compensable, a replaced value is kept only in
``Change.undo_data``, which serialization and ``repr()`` leave out.
"""

from __future__ import annotations

import base64
import binascii
import logging

from kubernetes import client as k8s

from dr.changes import Change
from dr.errors import KubernetesError, PreconditionError, register_secret
from dr.tasking import dr_task
from tasks.kubernetes.changes import expect_change, make_change
from tasks.kubernetes.client import REQUEST_TIMEOUT_SECONDS, boundary

log = logging.getLogger(__name__)


def _decode(value: str) -> str:
    # surrogateescape keeps non-UTF-8 bytes, so encoding back gives the same bytes.
    return base64.b64decode(value).decode("utf-8", "surrogateescape")


def _encode(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")


def _read_secret_data(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str]:
    with boundary("read", f"secret {namespace}/{name}"):
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
    with boundary("patch", f"secret {namespace}/{name}"):
        k8s.CoreV1Api(api).patch_namespaced_secret(
            name, namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def replace_secret_key(
    api: k8s.ApiClient, namespace: str, name: str, key: str, value: str
) -> Change:
    """Set one key of a Secret (e.g. a rotated password) unless it already holds ``value``.

    Args:
        api: from :func:`~tasks.kubernetes.client.make_client`.
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
        return make_change(
            obj, "replace-secret-key", "unchanged", before={"key": key, "existed": True}
        )
    _patch_secret(api, namespace, name, key, value)
    log.info("replaced key %s of secret %s (existed before: %s)", key, obj, existed)
    return make_change(
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
    expect_change(change, "replace-secret-key")
    key = change.before["key"]
    if change.outcome == "unchanged":
        return make_change(change.object, "restore-secret-key", "unchanged", before={"key": key})
    if "secret_value" not in change.undo_data:
        raise PreconditionError(
            f"cannot restore key {key} of secret {change.object}: its previous value was not "
            "kept (the Change was serialized or made by another process)"
        )
    namespace, name = change.object.split("/", 1)
    old = change.undo_data["secret_value"]
    _patch_secret(api, namespace, name, key, old)
    log.info("restored key %s of secret %s (%s)", key, change.object, "value" if old else "removed")
    return make_change(
        change.object,
        "restore-secret-key",
        "updated",
        before={"key": key},
        after={"key": key, "existed": old is not None},
        compensable=False,
    )


read_secret_task = dr_task(read_secret, name="kubernetes-read-secret", timeout_seconds=60)
replace_secret_key_task = dr_task(replace_secret_key, name="kubernetes-replace-secret-key")
restore_secret_key_task = dr_task(
    restore_secret_key, name="kubernetes-restore-secret-key", timeout_seconds=120
)
