"""One small exception tree for the whole project.

Every error a person can see derives from :class:`DRError`. The tree is grouped by cause,
so that retries are decided in one place (:func:`is_transient`)::

    DRError
    ├── ConfigError              bad dr.yaml or bad parameters (permanent)
    ├── PreconditionError        the world is not in a state where the step is safe (permanent)
    │   └── UnsafeTargetError    a restore/drill would touch something it must not
    ├── VerificationError        a check ran and failed (permanent: the evidence is the answer)
    ├── ApprovalError            a person rejected a gate, or the gate timed out
    └── SystemError_             an external system misbehaved; one base per system
        ├── PostgresError
        ├── StorageError
        │   ├── ObjectNotFound
        │   └── ChecksumMismatch
        ├── CacheError           Redis
        ├── ContainerError
        ├── KubernetesError
        ├── CloudError           AWS APIs other than S3 (Route 53, EC2, IAM)
        └── NotifyError          Slack

Any of these may carry ``transient=True`` (connection refused/reset, timeout, throttling,
5xx). Only transient errors are retried; everything else fails fast with a message a
person can act on. Adapters translate library errors at their boundary with
``raise ... from exc`` and never put secrets in messages (see :func:`redact`).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ApprovalError",
    "CacheError",
    "ChecksumMismatch",
    "CloudError",
    "ConfigError",
    "ContainerError",
    "DRError",
    "KubernetesError",
    "NotifyError",
    "ObjectNotFound",
    "PostgresError",
    "PreconditionError",
    "RecoveryRefused",
    "StorageError",
    "SystemError_",
    "UnsafeTargetError",
    "VerificationError",
    "is_transient",
    "redact",
    "retry_condition",
]


class DRError(Exception):
    """Root of every error raised by DR pipelines.

    Args:
        message: what went wrong, phrased for the person on call.
        transient: True when trying again later may succeed.
    """

    transient_default: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(redact(message))
        self.transient = self.transient_default if transient is None else transient


class ConfigError(DRError):
    """The configuration or the run's parameters are invalid.

    ``problems`` holds every problem found as ``(key_path, reason)`` pairs so all of them
    can be printed at once, not just the first.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message, transient=False)
        self.problems = problems or []


class PreconditionError(DRError):
    """The world is not in a state where the step is safe; nothing was changed."""


class RecoveryRefused(PreconditionError):
    """A recovery that cannot be done for a reason found at run time (no base backup before
    the point, a WAL gap, a point in the future): the run ends ``refused``, not ``failed``."""


class UnsafeTargetError(PreconditionError):
    """A restore or drill would touch an object it must never touch."""


class VerificationError(DRError):
    """A check ran to completion and its answer was "no"."""


class ApprovalError(DRError):
    """A person rejected an approval gate, or nobody answered before the timeout."""


class SystemError_(DRError):  # noqa: N801 - trailing underscore avoids the builtin name
    """An external system failed. Subclassed once per system."""


class PostgresError(SystemError_):
    """PostgreSQL refused, failed or could not be reached."""


class StorageError(SystemError_):
    """A backup repository (file:// or s3://) failed."""


class ObjectNotFound(StorageError):
    """The object or file does not exist in the repository."""


class ChecksumMismatch(StorageError):
    """Content does not match the recorded SHA-256 (or an object exists with other content)."""


class CacheError(SystemError_):
    """A cache (Redis) failed or refused."""


class ContainerError(SystemError_):
    """The container engine (Docker API) failed."""


class KubernetesError(SystemError_):
    """The Kubernetes API failed."""


class CloudError(SystemError_):
    """An AWS API other than S3 (Route 53, EC2, IAM, Secrets Manager) failed."""


class NotifyError(SystemError_):
    """Slack failed. Never fatal to a recovery: callers log and carry on."""


def is_transient(exc: BaseException) -> bool:
    """Tell whether ``exc`` is worth retrying.

    Our own errors say so themselves. Foreign exceptions are classified conservatively:
    connection and timeout errors are transient, anything else is not.
    """
    if isinstance(exc, DRError):
        return exc.transient
    return isinstance(exc, (ConnectionError, TimeoutError))


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when its failure was transient.

    This is the one place where the retry decision is made for every task.
    """
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False


_SECRET_PATTERNS = [
    # key=value in libpq conninfo strings and query strings
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|sslpassword)=([^\s&;'\"]+)"), r"\1=***"),
    # user:password@host in URLs
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+):([^@\s/]+)@"), r"\1:***@"),
    # Slack tokens
    (re.compile(r"xox[abprs]-[A-Za-z0-9-]+"), "xox?-***"),
    # AWS secret keys as they appear in headers or dumps
    (re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+"), r"\1***"),
    # Authorization headers
    (re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"), r"\1***"),
]

_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` removes it from any text.

    Called wherever a secret is resolved (config references, rotated passwords), so that
    even a secret that slips into an error message from a library never reaches a log.
    """
    if value and len(value) >= 4:
        _registered_secrets.add(value)


def forget_secrets(keep: set[str] | None = None) -> None:
    """Forget registered secrets (except ``keep``): for test isolation and long-lived workers."""
    _registered_secrets.intersection_update(keep or set())


def registered_secrets() -> set[str]:
    """A copy of the registered secret values (tests use it to restore the registry)."""
    return set(_registered_secrets)


def redact(text: str) -> str:
    """Remove passwords, tokens and registered secret values from ``text``."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    for secret in sorted(_registered_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
