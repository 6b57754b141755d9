"""AWS clients and AWS errors: the one place boto3 sessions and clients are built.

Every client comes from :func:`make_client`, built from the ``aws`` section of ``dr.yaml``:
region, an ``endpoint_url`` only for the local stand-in, credentials resolved from
:class:`~dr.config.SecretRef` here and nowhere else (else boto3's default chain: environment,
shared files, instance role), and botocore's *standard* retry mode with 5 retries, so
throttling, 5xx and dropped connections are retried by the SDK itself with backoff and jitter.
S3 clients are built by :mod:`tasks.storage`.

Secrets never reach logs: botocore's own DEBUG logging of request and response bodies is
redacted by a filter installed on its loggers (it would otherwise print a new key's secret).

Errors (:func:`boundary`): botocore's ``ClientError`` becomes :class:`~dr.errors.CloudError`
naming the object, ``transient=True`` for throttling, ``PriorRequestNotComplete``, timeouts
and 5xx (they reach us only once the SDK's own retries are spent), permanent otherwise
(``AccessDenied``, ``NoSuchHostedZone``, ``InvalidGroup.NotFound``, ``NoSuchEntity``...); a
connection that cannot be made is transient.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import botocore.loaders
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import SecretStr

from dr.config import AWSConfig
from dr.errors import CloudError, ConfigError, redact, register_secret

# botocore's "standard" retry mode: throttling, transient codes, 5xx and connection errors,
# with exponential backoff and jitter:
# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
# botocore's Config reads ``retries["max_attempts"]`` as retries after the first attempt
# (6 attempts in all); ``total_max_attempts`` would count the first one.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0

# Error codes worth retrying (the SDK already retried them; reaching us means it gave up).
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "ConcurrentModification",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceFailure",
        "Unavailable",
    }
)
# Codes with which AWS refuses a request's credentials (key unknown, inactive, wrong secret).
REJECTED_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "AuthFailure",
        "InvalidAccessKeyId",
    }
)


# One botocore data loader for every session: parsing a service model (EC2's is megabytes
# of JSON) takes ~0.5 s per new session otherwise, on the failover path's clock. The loader
# only reads and caches the SDK's bundled files; credentials stay per session.
_LOADER = botocore.loaders.create_loader()


def _botocore_session() -> botocore.session.Session:
    session = botocore.session.get_session()
    session.register_component("data_loader", _LOADER)
    return session


def make_session(
    aws: AWSConfig,
    *,
    access_key_id: str | None = None,
    secret_access_key: SecretStr | str | None = None,
) -> boto3.Session:
    """Build a boto3 session: the one place AWS credentials are resolved.

    Args:
        aws: the ``aws`` section of ``dr.yaml``; its SecretRefs are resolved here.
        access_key_id: an explicit key to use instead (only to prove a key works or not).
        secret_access_key: the explicit key's secret.

    Returns:
        A session for ``aws.region``; with no credentials given or configured, boto3's
        default chain applies (environment, shared files, instance role).

    Raises:
        ConfigError: only one half of a key pair, or a reference that does not resolve.
    """
    if access_key_id is not None or secret_access_key is not None:
        if access_key_id is None or secret_access_key is None:
            raise ConfigError("give both an AWS access key id and its secret, or neither")
        key_id = access_key_id
        secret = (
            secret_access_key.get_secret_value()
            if isinstance(secret_access_key, SecretStr)
            else secret_access_key
        )
    elif aws.access_key_id is not None or aws.secret_access_key is not None:
        if aws.access_key_id is None or aws.secret_access_key is None:
            raise ConfigError(
                "aws: give both access_key_id and secret_access_key references, or neither",
                [("aws", "only one of access_key_id / secret_access_key is set")],
            )
        key_id = aws.access_key_id.resolve()
        secret = aws.secret_access_key.resolve()
    else:
        return boto3.Session(region_name=aws.region, botocore_session=_botocore_session())
    register_secret(secret)
    return boto3.Session(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=aws.region,
        botocore_session=_botocore_session(),
    )


def make_client(
    aws: AWSConfig,
    service: str,
    *,
    session: boto3.Session | None = None,
    access_key_id: str | None = None,
    secret_access_key: SecretStr | str | None = None,
) -> BaseClient:
    """Build a boto3 client for ``service``; nothing else in the project creates one.

    Args:
        aws: the ``aws`` section of ``dr.yaml`` (region, stand-in endpoint, credentials).
        service: boto3's service name (``route53``, ``ec2``, ``iam``, ``sts``,
            ``secretsmanager``).
        session: a session from :func:`make_session` to share; default: a new one.
        access_key_id: an explicit key instead of the configured one (key proofs only).
        secret_access_key: the explicit key's secret.

    Returns:
        A client with botocore's standard retry mode (5 retries) and bounded timeouts.

    Raises:
        ConfigError: incomplete or unresolvable credentials.
    """
    if session is None:
        session = make_session(
            aws, access_key_id=access_key_id, secret_access_key=secret_access_key
        )
    config = Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        user_agent_extra="dr-pipelines",
    )
    return session.client(service, endpoint_url=aws.endpoint_url, config=config)


_BODY_SECRET_PATTERNS = [
    # XML responses (IAM CreateAccessKey).
    (re.compile(r"(<SecretAccessKey>)[^<]*(</SecretAccessKey>)"), r"\1***\2"),
    # JSON bodies and Python reprs of parameters (Secrets Manager, parsed responses).
    (
        re.compile(
            r"""(["']?(?:SecretString|SecretBinary|SecretAccessKey|SessionToken)["']?\s*[:=]\s*b?)"""
            # Escaped quotes may come with doubled backslashes (a repr of a JSON body):
            # any run of backslashes escapes the next character. Errs towards redacting more.
            r"""(["'])(?:\\+.|(?!\2).)*\2"""
        ),
        r"\1\2***\2",
    ),
]

# botocore loggers that print request parameters or response bodies at DEBUG level.
_BOTOCORE_BODY_LOGGERS = (
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.hooks",
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.httpsession",
    "botocore.retryhandler",
    "botocore.retries.standard",
    "botocore.client",
    "botocore.credentials",
)


def _redact_body(text: str) -> str:
    # Registered secrets first (whole values), then whatever a body calls a secret.
    text = redact(text)
    for pattern, repl in _BODY_SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class _RedactSecrets(logging.Filter):
    """Rewrite botocore's DEBUG records so request/response bodies carry no secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to logging
            return True
        cleaned = _redact_body(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_REDACT_FILTER = _RedactSecrets()
for _name in _BOTOCORE_BODY_LOGGERS:
    _logger = logging.getLogger(_name)
    if _REDACT_FILTER not in _logger.filters:
        _logger.addFilter(_REDACT_FILTER)


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error") or {}
    code = str(error.get("Code") or "")
    if not code:
        # Some stand-ins answer XML that botocore parses into "Errors" (moto's 403s).
        nested = (exc.response.get("Errors") or {}).get("Error") or {}
        code = str(nested.get("Code") or "")
    return code or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _error_message(exc: ClientError) -> str:
    error = exc.response.get("Error") or {}
    message = str(error.get("Message") or "")
    if not message:
        nested = (exc.response.get("Errors") or {}).get("Error") or {}
        message = str(nested.get("Message") or "")
    return redact(message)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _client_error(exc: ClientError, what: str, obj: str) -> CloudError:
    """Translate a ClientError: transient for throttling and 5xx, permanent otherwise."""
    code = _error_code(exc)
    status = _status(exc)
    transient = code in TRANSIENT_CODES or status >= 500
    message = _error_message(exc)
    text = f"{what} {obj}: AWS answered {code or 'an error'}"
    if status:
        text += f" (HTTP {status})"
    if message:
        text += f": {message}"
    return CloudError(text, transient=transient)


@contextmanager
def boundary(what: str, obj: str) -> Iterator[None]:
    """Translate botocore errors into :class:`CloudError` (``obj`` names the AWS object)."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, what, obj) from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise CloudError(f"{what} {obj}: AWS unreachable: {exc}", transient=True) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise CloudError(f"{what} {obj}: no usable AWS credentials: {exc}") from exc
    except ParamValidationError as exc:
        raise CloudError(f"{what} {obj}: invalid request: {exc}") from exc
    except BotoCoreError as exc:
        raise CloudError(f"{what} {obj}: {exc}") from exc


def error_code_of(exc: CloudError) -> str | None:
    """AWS's error code behind a :class:`CloudError` from :func:`boundary` (None if none)."""
    cause = exc.__cause__
    return _error_code(cause) if isinstance(cause, ClientError) else None


def waiter_config(timeout_seconds: float, poll_seconds: float) -> dict[str, int]:
    """A botocore ``WaiterConfig`` polling every ``poll_seconds`` for ``timeout_seconds``."""
    delay = max(1, math.ceil(poll_seconds))
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout_seconds / delay))}
