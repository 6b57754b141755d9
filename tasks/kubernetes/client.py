"""The Kubernetes ``ApiClient`` and its errors: the one place both are decided.

Errors (:func:`boundary`): 404 raises :class:`KubernetesError` (permanent) naming the
object; 409, 429, 5xx and connection failures raise it with ``transient=True``; other
refusals are permanent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from dr.errors import KubernetesError, redact

log = logging.getLogger(__name__)


# Per-request timeout (connect, read) in seconds.
REQUEST_TIMEOUT_SECONDS = (5, 30)
# HTTP statuses worth retrying: conflict, throttling, and server errors.
TRANSIENT_STATUSES = frozenset({409, 429})


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
def boundary(what: str, obj: str) -> Iterator[None]:
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


def is_missing(exc: KubernetesError) -> bool:
    """True when ``exc`` came from a 404."""
    cause = exc.__cause__
    return isinstance(cause, ApiException) and cause.status == 404
