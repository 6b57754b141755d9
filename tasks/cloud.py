"""AWS APIs other than S3: Route 53 records, EC2 security groups and snapshots, IAM keys, secrets.

The only module that imports boto3 for these services (S3 is :mod:`tasks.storage`). Every
client comes from :func:`make_client`, built from the ``aws`` section of ``dr.yaml``:
region, an ``endpoint_url`` only for the local stand-in, credentials resolved from
:class:`~dr.config.SecretRef` here and nowhere else (else boto3's default chain: environment,
shared files, instance role), and botocore's *standard* retry mode with 5 retries, so
throttling, 5xx and dropped connections are retried by the SDK itself with backoff and jitter.

Mutating steps read first, change only what differs, and return a :class:`dr.changes.Change`
recording the state before, so :func:`undo_change` (or the ``restore_*`` functions) can put
it back. What each part does, and why it is shaped so:

- **Route 53** (:func:`ensure_record`): ``UPSERT`` only when the value or TTL differ, then
  wait until the change is ``INSYNC`` on Route 53's name servers. Simple records only: a
  record set with a routing policy (``SetIdentifier``) is refused rather than half-managed.
- **Security groups** (:func:`revoke_ingress`, :func:`block_cidrs`): rules are handled one
  source at a time (:class:`IngressRule`), descriptions included, revoked by their rule ids
  (exactly those rules, nothing EC2 might match more loosely), so a restore puts back
  exactly what was revoked. Security groups are allow-lists with no deny rule, so
  :func:`block_cidrs` cannot subtract addresses from a broader rule: it revokes the rules
  whose source lies wholly inside a blocked range and *reports* the broader rules that still
  admit blocked addresses (``after["still_allowing"]``), for the flow to escalate
  (isolate the group with :func:`revoke_ingress`, or block in ``pg_hba``). A network ACL deny
  is not used: it acts on a whole subnet, not on the group the flow was asked about.
- **Snapshots** (:func:`create_volume_snapshots`): forensic snapshots tagged by the caller;
  a volume that already has a snapshot with the same tags is not snapshotted twice, so a
  retried task does not multiply evidence.
- **IAM access keys** (:func:`rotate_access_key`): create the new key, then deactivate the
  old one; never delete in the same step (a person deletes later, with
  :func:`delete_access_key`). The rotation is not compensable on purpose: undoing it would
  re-enable a key believed compromised.
- **Proving keys** (:func:`prove_key_works`, :func:`prove_key_rejected`): two independent
  observations, the key's ``Status`` as IAM lists it and a real signed call
  (``sts:GetCallerIdentity``, which needs no permission) made *with* the key. Against real
  AWS both must agree (IAM changes propagate within seconds, so the proof polls). The moto
  stand-in authenticates inactive keys, so there a rejection proof rests on the IAM status
  alone and says so; with moto's authentication switched on it does check that the key
  exists and that the secret signs correctly, so "works" is a real proof of the secret and a
  deleted key is really rejected. With moto's authentication off, any secret is accepted.
  The key's owner is always looked up, so a wrong user name cannot make a live key look
  deleted.
- **Secrets Manager** (:func:`put_secret_value`): a new version becomes ``AWSCURRENT`` and the
  old one ``AWSPREVIOUS``; the Change records version ids only, so undoing moves the stage
  back without ever holding the old value.

Secrets never reach logs, Change dumps or messages: they are registered with
:func:`dr.errors.register_secret` the moment they are read or made, returned as
``SecretStr``, and botocore's own DEBUG logging of request and response bodies is redacted by
a filter installed on its loggers (it would otherwise print a new key's secret).

Errors: botocore's ``ClientError`` becomes :class:`~dr.errors.CloudError` naming the object,
``transient=True`` for throttling, ``PriorRequestNotComplete``, timeouts and 5xx (they
reach us only once the SDK's own retries are spent), permanent otherwise (``AccessDenied``,
``NoSuchHostedZone``, ``InvalidGroup.NotFound``, ``NoSuchEntity``...); a connection that
cannot be made is transient.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

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
    WaiterError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import BaseModel, ConfigDict, SecretStr

from dr.changes import Change
from dr.config import AWSConfig
from dr.errors import (
    CloudError,
    ConfigError,
    PreconditionError,
    VerificationError,
    redact,
    register_secret,
)
from dr.tasking import dr_task

__all__ = [
    "IngressRule",
    "KeyProof",
    "RecordState",
    "SnapshotInfo",
    "block_cidrs",
    "block_cidrs_task",
    "create_volume_snapshots",
    "create_volume_snapshots_task",
    "delete_access_key",
    "delete_access_key_task",
    "describe_ingress",
    "ensure_record",
    "ensure_record_task",
    "get_record",
    "make_client",
    "make_session",
    "prove_key_rejected",
    "prove_key_rejected_task",
    "prove_key_works",
    "prove_key_works_task",
    "put_secret_value",
    "put_secret_value_task",
    "read_secret",
    "restore_ingress",
    "restore_ingress_task",
    "restore_record",
    "restore_secret_version",
    "revoke_ingress",
    "revoke_ingress_task",
    "rotate_access_key",
    "rotate_access_key_task",
    "secret_versions",
    "undo_change",
    "undo_change_task",
    "wait_snapshots",
    "wait_snapshots_task",
]

log = logging.getLogger(__name__)

# botocore's "standard" retry mode: throttling, transient codes, 5xx and connection errors,
# with exponential backoff and jitter:
# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
# botocore's Config reads ``retries["max_attempts"]`` as retries after the first attempt
# (6 attempts in all); ``total_max_attempts`` would count the first one.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0

# Route 53 changes usually reach all name servers within 60 s:
# https://docs.aws.amazon.com/Route53/latest/APIReference/API_GetChange.html
DNS_WAIT_TIMEOUT_SECONDS = 300.0
DNS_POLL_SECONDS = 5.0
# At most this many record sets per ListResourceRecordSets page:
# https://docs.aws.amazon.com/Route53/latest/APIReference/API_ListResourceRecordSets.html
ROUTE53_MAX_ITEMS = 300
ROUTE53_RECORD_TYPES = frozenset(
    {"A", "AAAA", "CAA", "CNAME", "DS", "MX", "NAPTR", "NS", "PTR", "SOA", "SPF", "SRV", "TXT"}
)

# EBS snapshots of large volumes can take hours; evidence waits up to this by default.
SNAPSHOT_WAIT_TIMEOUT_SECONDS = 3600.0
SNAPSHOT_POLL_SECONDS = 15.0

# IAM allows two access keys per user:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html
IAM_MAX_KEYS_PER_USER = 2
# IAM is eventually consistent; a new or deactivated key takes seconds to be honoured:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency
KEY_PROPAGATION_TIMEOUT_SECONDS = 60.0
KEY_POLL_SECONDS = 2.0

AWSCURRENT = "AWSCURRENT"
AWSPREVIOUS = "AWSPREVIOUS"

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


# --------------------------------------------------------------------------- models


class RecordState(BaseModel):
    """One simple Route 53 record set as it is now (``name`` fully qualified, lower case)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    ttl: int | None = None
    values: list[str] = []
    alias_target: dict[str, Any] | None = None


class IngressRule(BaseModel):
    """One inbound security-group rule with a single source, as EC2 reports it.

    ``source_kind`` says what ``source`` is: an IPv4 or IPv6 CIDR, another security group
    (``group_owner_id`` is its account when given) or a managed prefix list. ``from_port`` and
    ``to_port`` are None for all protocols (``-1``); for ICMP they are type and code.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: str
    from_port: int | None = None
    to_port: int | None = None
    source_kind: Literal["cidr_ipv4", "cidr_ipv6", "group", "prefix_list"]
    source: str
    group_owner_id: str | None = None
    description: str | None = None

    def key(self) -> tuple[Any, ...]:
        """Identity of the rule as EC2 matches it (the description is not part of it)."""
        return (self.protocol, self.from_port, self.to_port, self.source_kind, self.source)

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The source network, for CIDR sources."""
        if self.source_kind in ("cidr_ipv4", "cidr_ipv6"):
            return ipaddress.ip_network(self.source, strict=False)
        return None

    def to_permission(self, *, with_description: bool = True) -> dict[str, Any]:
        """This rule as one EC2 ``IpPermissions`` entry."""
        perm: dict[str, Any] = {"IpProtocol": self.protocol}
        if self.from_port is not None:
            perm["FromPort"] = self.from_port
        if self.to_port is not None:
            perm["ToPort"] = self.to_port
        extra = {"Description": self.description} if with_description and self.description else {}
        if self.source_kind == "cidr_ipv4":
            perm["IpRanges"] = [{"CidrIp": self.source, **extra}]
        elif self.source_kind == "cidr_ipv6":
            perm["Ipv6Ranges"] = [{"CidrIpv6": self.source, **extra}]
        elif self.source_kind == "group":
            pair: dict[str, Any] = {"GroupId": self.source, **extra}
            if self.group_owner_id:
                pair["UserId"] = self.group_owner_id
            perm["UserIdGroupPairs"] = [pair]
        else:
            perm["PrefixListIds"] = [{"PrefixListId": self.source, **extra}]
        return perm

    def describe(self) -> str:
        """The rule as a person reads it: ``tcp 5432 from 10.0.0.0/8``."""
        if self.protocol == "-1":
            ports = "all traffic"
        elif self.from_port is None or self.from_port == self.to_port:
            ports = f"{self.protocol} {self.from_port if self.from_port is not None else 'all'}"
        else:
            ports = f"{self.protocol} {self.from_port}-{self.to_port}"
        return f"{ports} from {self.source}"


class SnapshotInfo(BaseModel):
    """An EBS snapshot, as recorded in an evidence manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_id: str
    volume_id: str
    state: str
    progress: str | None = None
    start_time: datetime | None = None
    volume_size_gib: int | None = None
    description: str | None = None
    encrypted: bool | None = None
    tags: dict[str, str] = {}


class KeyProof(BaseModel):
    """What was observed when proving an access key works or is rejected.

    Attributes:
        key_id: the access key id (not secret).
        user_name: the IAM user owning it, when known.
        expected: ``works`` or ``rejected``.
        iam_status: ``Active``/``Inactive`` as IAM lists it, or ``absent`` (deleted).
        call: whether ``sts:GetCallerIdentity`` signed with the key was accepted.
        call_error: the error code when the call was rejected.
        caller_arn: the identity AWS answered with, when accepted.
        stand_in: True when the proof ran against the local stand-in (see module notes).
        evidence: each observation, one sentence each, for the report.
        proven: True when the observations prove the expectation.
        attempts: how many observations were made before concluding.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str
    user_name: str | None
    expected: Literal["works", "rejected"]
    iam_status: Literal["Active", "Inactive", "absent"]
    call: Literal["accepted", "rejected"]
    call_error: str | None = None
    caller_arn: str | None = None
    stand_in: bool
    evidence: list[str]
    proven: bool
    attempts: int = 1

    def summary(self) -> str:
        """One line for logs and the report."""
        verdict = "proven" if self.proven else "NOT proven"
        return f"access key {self.key_id} {self.expected}: {verdict} ({'; '.join(self.evidence)})"


# --------------------------------------------------------------------------- client

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


# --------------------------------------------------------------------------- redaction

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


# --------------------------------------------------------------------------- errors


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
def _boundary(what: str, obj: str) -> Iterator[None]:
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


def _code_of(exc: CloudError) -> str | None:
    cause = exc.__cause__
    return _error_code(cause) if isinstance(cause, ClientError) else None


def _change(system: str, obj: str, action: str, outcome: str, **fields: Any) -> Change:
    return Change(system=system, action=action, object=obj, outcome=outcome, **fields)


def _expect(change: Change, system: str, *actions: str) -> None:
    if change.system != system or change.action not in actions:
        raise PreconditionError(
            f"expected a {system} {' or '.join(actions)} change, "
            f"got {change.system} {change.action}"
        )


def _waiter_config(timeout_seconds: float, poll_seconds: float) -> dict[str, int]:
    delay = max(1, math.ceil(poll_seconds))
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout_seconds / delay))}


# --------------------------------------------------------------------------- route 53


def _zone(zone_id: str) -> str:
    return zone_id.rsplit("/", 1)[-1]


def _fqdn(name: str) -> str:
    # Route 53 answers names with a trailing dot and octal escapes (``\052`` for ``*``).
    name = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), name.strip())
    return name.lower().rstrip(".") + "."


def _norm_value(record_type: str, value: str) -> str:
    value = value.strip()
    if record_type in ("A", "AAAA"):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    if record_type in ("CNAME", "NS", "PTR"):
        return value.lower().rstrip(".")
    return value


def _same_values(record_type: str, a: Iterable[str], b: Iterable[str]) -> bool:
    return sorted(_norm_value(record_type, v) for v in a) == sorted(
        _norm_value(record_type, v) for v in b
    )


def _record_obj(zone_id: str, name: str, record_type: str) -> str:
    return f"record {_fqdn(name)} {record_type} in hosted zone {_zone(zone_id)}"


def _check_type(record_type: str) -> str:
    record_type = record_type.upper()
    if record_type not in ROUTE53_RECORD_TYPES:
        raise ConfigError(
            f"unknown DNS record type {record_type!r} "
            f"(known: {', '.join(sorted(ROUTE53_RECORD_TYPES))})"
        )
    return record_type


def get_record(client: BaseClient, zone_id: str, name: str, type: str) -> RecordState | None:
    """Read one simple record set from a hosted zone.

    Args:
        client: a ``route53`` client from :func:`make_client`.
        zone_id: the hosted zone id (``Z123...`` or ``/hostedzone/Z123...``).
        name: the record name (trailing dot optional).
        type: the record type (``A``, ``AAAA``, ``CNAME``, ...).

    Returns:
        The record set, or None when the zone has no such record.

    Raises:
        PreconditionError: the name has record sets with a routing policy (``SetIdentifier``).
        CloudError: no such hosted zone, access denied (permanent), throttling or 5xx.
    """
    record_type = _check_type(type)
    fqdn = _fqdn(name)
    obj = _record_obj(zone_id, name, record_type)
    with _boundary("read", obj):
        page = client.list_resource_record_sets(
            HostedZoneId=_zone(zone_id),
            StartRecordName=fqdn,
            StartRecordType=record_type,
            MaxItems=str(ROUTE53_MAX_ITEMS),
        )
    matches = [
        rrs
        for rrs in page.get("ResourceRecordSets", [])
        if _fqdn(rrs["Name"]) == fqdn and rrs["Type"] == record_type
    ]
    if not matches:
        return None
    if len(matches) > 1 or "SetIdentifier" in matches[0]:
        raise PreconditionError(
            f"{obj} has {len(matches)} record set(s) with a routing policy (SetIdentifier); "
            "only simple records are managed here"
        )
    rrs = matches[0]
    return RecordState(
        name=fqdn,
        type=record_type,
        ttl=rrs.get("TTL"),
        values=[r["Value"] for r in rrs.get("ResourceRecords", [])],
        alias_target=dict(rrs["AliasTarget"]) if rrs.get("AliasTarget") else None,
    )


def _record_set(state: RecordState) -> dict[str, Any]:
    rrs: dict[str, Any] = {"Name": state.name, "Type": state.type}
    if state.alias_target is not None:
        rrs["AliasTarget"] = state.alias_target
    else:
        rrs["TTL"] = state.ttl
        rrs["ResourceRecords"] = [{"Value": v} for v in state.values]
    return rrs


def _cli_change(zone_id: str, action: str, state: RecordState) -> str:
    batch = json.dumps({"Changes": [{"Action": action, "ResourceRecordSet": _record_set(state)}]})
    return (
        f"aws route53 change-resource-record-sets --hosted-zone-id {_zone(zone_id)} "
        f"--change-batch '{batch}'"
    )


def _submit(
    client: BaseClient,
    zone_id: str,
    action: Literal["UPSERT", "DELETE"],
    state: RecordState,
    *,
    comment: str,
    wait_timeout_seconds: float,
    poll_seconds: float,
    undo: str = "",
) -> str:
    """Send one change and wait until Route 53 reports it INSYNC. Returns the change id.

    If the wait fails, the change was nonetheless made: the error says how to undo it, since
    a retried step will find the record already set and report it ``unchanged``.
    """
    obj = _record_obj(zone_id, state.name, state.type)
    with _boundary(action.lower(), obj):
        answer = client.change_resource_record_sets(
            HostedZoneId=_zone(zone_id),
            ChangeBatch={
                "Comment": comment,
                "Changes": [{"Action": action, "ResourceRecordSet": _record_set(state)}],
            },
        )
    info = answer["ChangeInfo"]
    change_id = str(info["Id"]).rsplit("/", 1)[-1]
    made = f"; the change was made (undo: {undo})" if undo else "; the change was made"
    if info.get("Status") != "INSYNC":
        waiter = client.get_waiter("resource_record_sets_changed")
        try:
            waiter.wait(
                Id=change_id, WaiterConfig=_waiter_config(wait_timeout_seconds, poll_seconds)
            )
        except WaiterError as exc:
            last = getattr(exc, "last_response", None) or {}
            if "Error" in last:
                raise CloudError(
                    f"wait for change {change_id} of {obj}: {exc}{made}", transient=True
                ) from exc
            raise CloudError(
                f"change {change_id} of {obj} not INSYNC after {wait_timeout_seconds:.0f} s" + made,
                transient=True,
            ) from exc
    return change_id


def ensure_record(
    client: BaseClient,
    zone_id: str,
    name: str,
    type: str,
    value: str | Sequence[str],
    ttl: int,
    *,
    comment: str = "dr-pipelines",
    wait_timeout_seconds: float = DNS_WAIT_TIMEOUT_SECONDS,
    poll_seconds: float = DNS_POLL_SECONDS,
) -> Change:
    """Make a simple record hold ``value`` with ``ttl``, changing it only if it differs.

    Why the wait: repointing an application is only done when Route 53's name servers answer
    the new value (``INSYNC``); resolvers may still cache the old one for up to the old TTL.

    Args:
        client: a ``route53`` client from :func:`make_client`.
        zone_id: the hosted zone id.
        name: the record name.
        type: the record type.
        value: the value, or several values (an ``A`` record with many addresses).
        ttl: the TTL in seconds.
        comment: the change batch's comment (shown in CloudTrail).
        wait_timeout_seconds: how long to wait for ``INSYNC``.
        poll_seconds: delay between ``GetChange`` polls.

    Returns:
        A Change (``created``/``updated``/``unchanged``) whose ``before["record"]`` is the
        previous record (None when created), for :func:`restore_record`.

    Raises:
        PreconditionError: the name has routing-policy record sets.
        CloudError: no such zone, invalid change, access denied (permanent); throttling,
            5xx or not INSYNC in time (transient).
    """
    record_type = _check_type(type)
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ConfigError(f"no value given for {_record_obj(zone_id, name, record_type)}")
    desired = RecordState(name=_fqdn(name), type=record_type, ttl=ttl, values=values)
    obj = f"{_zone(zone_id)}/{desired.name} {record_type}"
    current = get_record(client, zone_id, name, record_type)
    target = {"zone_id": _zone(zone_id), "record": desired.model_dump()}
    if (
        current is not None
        and current.alias_target is None
        and current.ttl == ttl
        and _same_values(record_type, current.values, values)
    ):
        log.info("route53 %s already %s (ttl %s): unchanged", obj, ", ".join(values), ttl)
        return _change(
            "route53",
            obj,
            "upsert-record",
            "unchanged",
            before={"zone_id": _zone(zone_id), "record": current.model_dump()},
            after=target,
        )
    if current is None:
        undo = _cli_change(zone_id, "DELETE", desired)
    else:
        undo = _cli_change(zone_id, "UPSERT", current)
    change_id = _submit(
        client,
        zone_id,
        "UPSERT",
        desired,
        comment=comment,
        wait_timeout_seconds=wait_timeout_seconds,
        poll_seconds=poll_seconds,
        undo=undo,
    )
    outcome = "created" if current is None else "updated"
    if current is None:
        log.info("route53 %s created as %s (ttl %s), change %s", obj, values, ttl, change_id)
    else:
        log.info(
            "route53 %s updated from %s to %s (ttl %s -> %s), change %s",
            obj,
            current.values or current.alias_target,
            values,
            current.ttl,
            ttl,
            change_id,
        )
    return _change(
        "route53",
        obj,
        "upsert-record",
        outcome,
        before={
            "zone_id": _zone(zone_id),
            "record": current.model_dump() if current is not None else None,
        },
        after={**target, "change_id": change_id},
        undo=undo,
    )


def _matches(state: RecordState | None, recorded: Mapping[str, Any] | None) -> bool:
    """True when the live record is the one recorded (values, TTL and alias)."""
    if state is None or recorded is None:
        return state is None and recorded is None
    other = RecordState.model_validate(recorded)
    if state.alias_target is not None or other.alias_target is not None:
        return state.alias_target == other.alias_target
    return state.ttl == other.ttl and _same_values(state.type, state.values, other.values)


def restore_record(
    client: BaseClient,
    change: Change,
    *,
    wait_timeout_seconds: float = DNS_WAIT_TIMEOUT_SECONDS,
    poll_seconds: float = DNS_POLL_SECONDS,
) -> Change:
    """Put a record back as it was before :func:`ensure_record` changed it.

    A created record is deleted; an updated one gets its old value, TTL or alias back. If
    someone changed the record since (it is neither what we set nor what it was), nothing is
    done: overwriting a person's later fix would be worse than not undoing.

    Returns:
        The Change made by restoring (``unchanged`` when already as before).

    Raises:
        PreconditionError: not a Route 53 upsert change, or the record changed since.
        CloudError: as :func:`ensure_record`.
    """
    _expect(change, "route53", "upsert-record")
    zone_id = str(change.after["zone_id"])
    ours = change.after["record"]
    old = change.before.get("record")
    name, record_type = ours["name"], ours["type"]
    obj = change.object
    if change.outcome == "unchanged":
        return _change("route53", obj, "restore-record", "unchanged")
    current = get_record(client, zone_id, name, record_type)
    if _matches(current, old):
        log.info("route53 %s already as before: unchanged", obj)
        return _change("route53", obj, "restore-record", "unchanged")
    if not _matches(current, ours):
        raise PreconditionError(
            f"route53 {obj} changed since it was set ({current.values if current else 'deleted'}"
            "); not restoring over someone else's change"
        )
    assert current is not None  # _matches(None, ours) is False: ours is never None
    if old is None:
        change_id = _submit(
            client,
            zone_id,
            "DELETE",
            current,
            comment="dr-pipelines undo",
            wait_timeout_seconds=wait_timeout_seconds,
            poll_seconds=poll_seconds,
        )
        log.info("route53 %s deleted (undo of its creation), change %s", obj, change_id)
        return _change(
            "route53",
            obj,
            "restore-record",
            "deleted",
            before={"zone_id": zone_id, "record": current.model_dump()},
            after={"zone_id": zone_id, "record": None, "change_id": change_id},
            undo=_cli_change(zone_id, "UPSERT", current),
        )
    previous = RecordState.model_validate(old)
    change_id = _submit(
        client,
        zone_id,
        "UPSERT",
        previous,
        comment="dr-pipelines undo",
        wait_timeout_seconds=wait_timeout_seconds,
        poll_seconds=poll_seconds,
    )
    log.info(
        "route53 %s restored to %s, change %s",
        obj,
        previous.values or previous.alias_target,
        change_id,
    )
    return _change(
        "route53",
        obj,
        "restore-record",
        "updated",
        before={"zone_id": zone_id, "record": current.model_dump()},
        after={"zone_id": zone_id, "record": previous.model_dump(), "change_id": change_id},
        undo=_cli_change(zone_id, "UPSERT", current),
    )


# --------------------------------------------------------------------------- security groups


def _rules_from_permissions(permissions: Iterable[Mapping[str, Any]]) -> list[IngressRule]:
    rules: list[IngressRule] = []
    for perm in permissions:
        protocol = str(perm.get("IpProtocol", "-1"))
        ports: dict[str, Any] = {"protocol": protocol}
        if protocol != "-1":
            ports["from_port"] = perm.get("FromPort")
            ports["to_port"] = perm.get("ToPort")
        for r in perm.get("IpRanges", []):
            rules.append(
                IngressRule(
                    **ports,
                    source_kind="cidr_ipv4",
                    source=r["CidrIp"],
                    description=r.get("Description"),
                )
            )
        for r in perm.get("Ipv6Ranges", []):
            rules.append(
                IngressRule(
                    **ports,
                    source_kind="cidr_ipv6",
                    source=r["CidrIpv6"],
                    description=r.get("Description"),
                )
            )
        for r in perm.get("UserIdGroupPairs", []):
            rules.append(
                IngressRule(
                    **ports,
                    source_kind="group",
                    source=r["GroupId"],
                    group_owner_id=r.get("UserId"),
                    description=r.get("Description"),
                )
            )
        for r in perm.get("PrefixListIds", []):
            rules.append(
                IngressRule(
                    **ports,
                    source_kind="prefix_list",
                    source=r["PrefixListId"],
                    description=r.get("Description"),
                )
            )
    return rules


def describe_ingress(client: BaseClient, group_id: str) -> list[IngressRule]:
    """List a security group's inbound rules, one per source.

    Args:
        client: an ``ec2`` client from :func:`make_client`.
        group_id: the security group id (``sg-...``).

    Returns:
        The rules in EC2's order.

    Raises:
        CloudError: no such group (``InvalidGroup.NotFound``), access denied, throttling.
    """
    with _boundary("describe ingress of", f"security group {group_id}"):
        groups = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    if not groups:
        raise CloudError(f"security group {group_id} not found")
    return _rules_from_permissions(groups[0].get("IpPermissions", []))


def _parse_networks(
    cidrs: Iterable[str], what: str
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(f"{what}: {cidr!r} is not a network address ({exc})") from exc
    return networks


def _within(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    others: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    for other in others:
        if net.version == other.version and net.subnet_of(other):  # type: ignore[arg-type]
            return other
    return None


def _rule_ids(client: BaseClient, group_id: str) -> dict[tuple[Any, ...], str]:
    """Security-group rule ids of the group's inbound rules, by :meth:`IngressRule.key`."""
    ids: dict[tuple[Any, ...], str] = {}
    with _boundary("describe rules of", f"security group {group_id}"):
        pages = client.get_paginator("describe_security_group_rules").paginate(
            Filters=[{"Name": "group-id", "Values": [group_id]}]
        )
        for page in pages:
            for rule in page.get("SecurityGroupRules", []):
                if rule.get("IsEgress"):
                    continue
                protocol = str(rule.get("IpProtocol", "-1"))
                ports = (
                    (None, None) if protocol == "-1" else (rule.get("FromPort"), rule.get("ToPort"))
                )
                if rule.get("CidrIpv4"):
                    source = ("cidr_ipv4", rule["CidrIpv4"])
                elif rule.get("CidrIpv6"):
                    source = ("cidr_ipv6", rule["CidrIpv6"])
                elif rule.get("ReferencedGroupInfo"):
                    source = ("group", rule["ReferencedGroupInfo"].get("GroupId"))
                elif rule.get("PrefixListId"):
                    source = ("prefix_list", rule["PrefixListId"])
                else:
                    continue
                ids[(protocol, *ports, *source)] = rule["SecurityGroupRuleId"]
    return ids


def _revoke(client: BaseClient, group_id: str, rules: Sequence[IngressRule]) -> None:
    """Revoke ``rules`` by their rule ids, then check that none of them is left.

    By id rather than by ``IpPermissions``: an id names exactly one rule, where matching by
    permission leaves EC2 (and the stand-in) to decide which fields must match.
    """
    obj = f"security group {group_id}"
    ids = _rule_ids(client, group_id)
    wanted = [ids[r.key()] for r in rules if r.key() in ids]
    if wanted:
        try:
            with _boundary("revoke ingress of", obj):
                client.revoke_security_group_ingress(GroupId=group_id, SecurityGroupRuleIds=wanted)
        except CloudError as exc:
            # Already gone (a concurrent revoke): the check below decides.
            if _code_of(exc) != "InvalidPermission.NotFound":
                raise
    wanted_gone = {r.key() for r in rules}
    left = [r for r in describe_ingress(client, group_id) if r.key() in wanted_gone]
    if left:
        raise VerificationError(
            f"{obj} still has {len(left)} rule(s) after revoking: "
            + "; ".join(r.describe() for r in left)
        )


def _dump(rules: Iterable[IngressRule]) -> list[dict[str, Any]]:
    return [r.model_dump() for r in rules]


def _authorize_cli(group_id: str, rules: Sequence[IngressRule]) -> str:
    perms = json.dumps([r.to_permission() for r in rules])
    return (
        f"aws ec2 authorize-security-group-ingress --group-id {group_id} --ip-permissions '{perms}'"
    )


def revoke_ingress(client: BaseClient, group_id: str, *, keep_cidrs: Iterable[str] = ()) -> Change:
    """Isolate a security group: revoke every inbound rule except from ``keep_cidrs``.

    Args:
        client: an ``ec2`` client from :func:`make_client`.
        group_id: the security group id.
        keep_cidrs: networks whose rules stay (say, the responders' bastion); a rule is kept
            when its source lies wholly inside one of them. Rules whose source is another
            security group or a prefix list are revoked.

    Returns:
        A Change with every rule before (``before["rules"]``), the rules kept
        (``after["rules"]``) and the ones revoked (``after["revoked"]``), exactly as EC2
        listed them, descriptions included, for :func:`restore_ingress`.

    Raises:
        ConfigError: a keep CIDR is not a network address.
        CloudError: no such group, access denied, throttling.
        VerificationError: a revoked rule is still listed afterwards.
    """
    keep = _parse_networks(keep_cidrs, "keep_cidrs")
    obj = group_id
    rules = describe_ingress(client, group_id)
    kept, revoked = [], []
    for rule in rules:
        net = rule.network()
        (kept if net is not None and _within(net, keep) else revoked).append(rule)
    if not revoked:
        log.info("security group %s has no inbound rule to revoke: unchanged", group_id)
        return _change(
            "ec2",
            obj,
            "revoke-ingress",
            "unchanged",
            before={"group_id": group_id, "rules": _dump(rules)},
            after={"group_id": group_id, "rules": _dump(kept), "revoked": []},
        )
    _revoke(client, group_id, revoked)
    log.info(
        "security group %s: revoked %s inbound rule(s), kept %s (%s)",
        group_id,
        len(revoked),
        len(kept),
        "; ".join(r.describe() for r in kept) or "none",
    )
    return _change(
        "ec2",
        obj,
        "revoke-ingress",
        "updated",
        before={"group_id": group_id, "rules": _dump(rules)},
        after={"group_id": group_id, "rules": _dump(kept), "revoked": _dump(revoked)},
        undo=_authorize_cli(group_id, revoked),
    )


def block_cidrs(client: BaseClient, group_id: str, cidrs: Iterable[str]) -> Change:
    """Stop a security group admitting traffic from ``cidrs``, as far as a group can.

    Security groups only allow; they have no deny rule. So a rule whose source lies wholly
    inside a blocked network is revoked, and a broader rule that also admits other addresses
    (``0.0.0.0/0`` when blocking one attacker) is left in place and *reported*: removing it
    would cut off everyone else, and splitting it into the complement of the blocked range
    can take dozens of rules (beyond the per-group quota). The flow decides what to do with
    what remains (isolate the group with :func:`revoke_ingress`, or block in ``pg_hba``).
    Rules whose source is a security group or a prefix list cannot be checked against
    addresses here and are listed in ``after["not_checked"]``.

    Args:
        client: an ``ec2`` client from :func:`make_client`.
        group_id: the security group id.
        cidrs: networks to block (``203.0.113.7/32``; a bare address means ``/32``/``/128``).

    Returns:
        A Change: ``after["revoked"]`` (for :func:`restore_ingress`), ``after["still_allowing"]``
        (rules that still admit blocked addresses, each with the blocked network),
        ``after["not_checked"]`` and ``after["complete"]`` (True when no rule still admits a
        blocked address).

    Raises:
        ConfigError: a CIDR is not a network address.
        CloudError: no such group, access denied, throttling.
        VerificationError: a revoked rule is still listed afterwards.
    """
    blocked = _parse_networks(cidrs, "cidrs")
    if not blocked:
        raise ConfigError(f"block_cidrs on {group_id}: no CIDR given")
    rules = describe_ingress(client, group_id)
    revoke: list[IngressRule] = []
    still_allowing: list[dict[str, Any]] = []
    not_checked: list[dict[str, Any]] = []
    for rule in rules:
        net = rule.network()
        if net is None:
            not_checked.append(rule.model_dump())
            continue
        if _within(net, blocked) is not None:
            revoke.append(rule)
            continue
        for b in blocked:
            if b.version == net.version and b.subnet_of(net):  # type: ignore[arg-type]
                still_allowing.append({"rule": rule.model_dump(), "blocked": str(b)})
                log.warning(
                    "security group %s: rule %s admits blocked %s and cannot be narrowed "
                    "(security groups have no deny rule)",
                    group_id,
                    rule.describe(),
                    b,
                )
    after = {
        "group_id": group_id,
        "blocked": [str(b) for b in blocked],
        "revoked": _dump(revoke),
        "still_allowing": still_allowing,
        "not_checked": not_checked,
        "complete": not still_allowing,
    }
    before = {"group_id": group_id, "rules": _dump(rules)}
    if not revoke:
        log.info(
            "security group %s: no rule lies within %s: unchanged",
            group_id,
            ", ".join(str(b) for b in blocked),
        )
        return _change("ec2", group_id, "block-cidrs", "unchanged", before=before, after=after)
    _revoke(client, group_id, revoke)
    log.info(
        "security group %s: revoked %s rule(s) within %s; %s rule(s) still admit them",
        group_id,
        len(revoke),
        ", ".join(str(b) for b in blocked),
        len(still_allowing),
    )
    return _change(
        "ec2",
        group_id,
        "block-cidrs",
        "updated",
        before=before,
        after=after,
        undo=_authorize_cli(group_id, revoke),
    )


def restore_ingress(client: BaseClient, change: Change) -> Change:
    """Put back exactly the rules :func:`revoke_ingress` or :func:`block_cidrs` revoked.

    Only rules that are missing now are added, with their original descriptions; rules
    someone added since are left alone.

    Returns:
        The Change made by restoring (``unchanged`` when every rule is already there).

    Raises:
        PreconditionError: not a revoke-ingress or block-cidrs change.
        CloudError: no such group, access denied, throttling.
        VerificationError: a rule is still missing afterwards.
    """
    _expect(change, "ec2", "revoke-ingress", "block-cidrs")
    group_id = str(change.after["group_id"])
    revoked = [IngressRule.model_validate(r) for r in change.after.get("revoked", [])]
    current = describe_ingress(client, group_id)
    present = {r.key() for r in current}
    missing = [r for r in revoked if r.key() not in present]
    if not missing:
        log.info("security group %s: revoked rules already present: unchanged", group_id)
        return _change("ec2", group_id, "restore-ingress", "unchanged")
    obj = f"security group {group_id}"
    try:
        with _boundary("authorize ingress of", obj):
            client.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=[r.to_permission() for r in missing]
            )
    except CloudError as exc:
        if _code_of(exc) != "InvalidPermission.Duplicate":
            raise
    now = {r.key() for r in describe_ingress(client, group_id)}
    still_missing = [r for r in missing if r.key() not in now]
    if still_missing:
        raise VerificationError(
            f"{obj} still lacks {len(still_missing)} rule(s) after restoring: "
            + "; ".join(r.describe() for r in still_missing)
        )
    log.info("security group %s: restored %s inbound rule(s)", group_id, len(missing))
    return _change(
        "ec2",
        group_id,
        "restore-ingress",
        "updated",
        before={"group_id": group_id, "rules": _dump(current)},
        after={"group_id": group_id, "restored": _dump(missing)},
        undo=(
            f"aws ec2 revoke-security-group-ingress --group-id {group_id} --ip-permissions '"
            + json.dumps([r.to_permission(with_description=False) for r in missing])
            + "'"
        ),
    )


# --------------------------------------------------------------------------- snapshots


def _tags(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _snapshot_info(snap: Mapping[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=snap["SnapshotId"],
        volume_id=snap.get("VolumeId", ""),
        state=snap.get("State", "unknown"),
        progress=snap.get("Progress"),
        start_time=snap.get("StartTime"),
        volume_size_gib=snap.get("VolumeSize"),
        description=snap.get("Description"),
        encrypted=snap.get("Encrypted"),
        tags=_tags(snap.get("Tags")),
    )


def create_volume_snapshots(
    client: BaseClient,
    volume_ids: Sequence[str],
    *,
    description: str,
    tags: Mapping[str, str],
) -> list[str]:
    """Start a forensic snapshot of each volume, tagged, before anything is remediated.

    Why reuse: evidence is taken once. A volume that already has a snapshot (not failed)
    carrying all of ``tags`` is not snapshotted again, so give tags that identify the
    incident (``{"dr:incident": "<id>"}``); with no tags every call makes new snapshots.

    Args:
        client: an ``ec2`` client from :func:`make_client`.
        volume_ids: EBS volume ids (``vol-...``).
        description: the snapshots' description (who and why).
        tags: tags put on every snapshot.

    Returns:
        Snapshot ids, in the order of ``volume_ids`` (use :func:`wait_snapshots`).

    Raises:
        CloudError: no such volume (``InvalidVolume.NotFound``), access denied, throttling.
    """
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    ids: list[str] = []
    for volume_id in volume_ids:
        obj = f"volume {volume_id}"
        if tags:
            filters = [{"Name": "volume-id", "Values": [volume_id]}] + [
                {"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()
            ]
            with _boundary("look for snapshots of", obj):
                found = client.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]
            usable = [s for s in found if s.get("State") != "error"]
            if usable:
                first = min(usable, key=lambda s: (str(s.get("StartTime", "")), s["SnapshotId"]))
                ids.append(first["SnapshotId"])
                log.info(
                    "volume %s already has snapshot %s with these tags: unchanged",
                    volume_id,
                    first["SnapshotId"],
                )
                continue
        kwargs: dict[str, Any] = {"VolumeId": volume_id, "Description": description}
        if tag_list:
            kwargs["TagSpecifications"] = [{"ResourceType": "snapshot", "Tags": tag_list}]
        with _boundary("snapshot", obj):
            snap = client.create_snapshot(**kwargs)
        ids.append(snap["SnapshotId"])
        log.info("volume %s: snapshot %s started", volume_id, snap["SnapshotId"])
    return ids


def wait_snapshots(
    client: BaseClient,
    snapshot_ids: Sequence[str],
    *,
    timeout_seconds: float = SNAPSHOT_WAIT_TIMEOUT_SECONDS,
    poll_seconds: float = SNAPSHOT_POLL_SECONDS,
) -> list[SnapshotInfo]:
    """Wait until every snapshot is ``completed``; fail at once if one is in ``error``.

    Args:
        client: an ``ec2`` client from :func:`make_client`.
        snapshot_ids: from :func:`create_volume_snapshots`.
        timeout_seconds: how long to wait in all.
        poll_seconds: delay between polls.

    Returns:
        The snapshots as they are once completed, in the order given.

    Raises:
        CloudError: a snapshot failed (permanent), not completed in time (transient), no
            such snapshot, access denied.
    """
    if not snapshot_ids:
        return []
    obj = f"snapshots {', '.join(snapshot_ids)}"
    waiter = client.get_waiter("snapshot_completed")
    try:
        waiter.wait(
            SnapshotIds=list(snapshot_ids),
            WaiterConfig=_waiter_config(timeout_seconds, poll_seconds),
        )
    except WaiterError as exc:
        last = getattr(exc, "last_response", None) or {}
        if "Error" in last:
            error = last["Error"]
            raise CloudError(
                f"wait for {obj}: AWS answered {error.get('Code')}: {error.get('Message')}",
                transient=str(error.get("Code")) in TRANSIENT_CODES,
            ) from exc
        failed = [s["SnapshotId"] for s in last.get("Snapshots", []) if s.get("State") == "error"]
        if failed:
            raise CloudError(f"snapshot(s) {', '.join(failed)} failed (state error)") from exc
        raise CloudError(
            f"{obj} not completed after {timeout_seconds:.0f} s", transient=True
        ) from exc
    with _boundary("describe", obj):
        snaps = client.describe_snapshots(SnapshotIds=list(snapshot_ids))["Snapshots"]
    by_id = {s["SnapshotId"]: _snapshot_info(s) for s in snaps}
    log.info("snapshots completed: %s", ", ".join(snapshot_ids))
    return [by_id[i] for i in snapshot_ids]


# --------------------------------------------------------------------------- IAM keys


def _list_keys(client: BaseClient, user_name: str) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = []
    with _boundary("list access keys of", f"IAM user {user_name}"):
        for page in client.get_paginator("list_access_keys").paginate(UserName=user_name):
            for k in page.get("AccessKeyMetadata", []):
                created = k.get("CreateDate")
                keys.append(
                    {
                        "key_id": k["AccessKeyId"],
                        "status": k["Status"],
                        "created": created.isoformat() if created else None,
                    }
                )
    return keys


def _set_key_status(
    client: BaseClient, user_name: str, key_id: str, status: Literal["Active", "Inactive"]
) -> None:
    with _boundary(f"set status {status} of", f"access key {key_id} of IAM user {user_name}"):
        client.update_access_key(UserName=user_name, AccessKeyId=key_id, Status=status)


def rotate_access_key(
    client: BaseClient, user_name: str, old_key_id: str
) -> tuple[str, SecretStr, Change]:
    """Replace a (compromised) access key: create a new one, then deactivate the old one.

    Why deactivate and not delete: a deactivated key can be inspected (last used, by what)
    and, if rotation broke something, re-enabled by a person; deletion is a separate, later
    step (:func:`delete_access_key`). The rotation is not compensable automatically: undoing
    it would re-enable a key believed compromised. If deactivating fails after the new key
    was made, the new key is deleted again (its secret would otherwise be lost) and the error
    is raised.

    Args:
        client: an ``iam`` client from :func:`make_client`.
        user_name: the IAM user owning the key.
        old_key_id: the key to retire.

    Returns:
        ``(new_key_id, new_secret, change)``; the secret is registered for redaction and is
        in neither the Change nor any log.

    Raises:
        PreconditionError: the key is not this user's, or the user already has a second key
            (IAM allows two; the message names it so a person can remove it).
        CloudError: no such user (``NoSuchEntity``), access denied, throttling.
        VerificationError: IAM does not list the new key Active and the old one Inactive.
    """
    obj = f"user/{user_name}"
    keys = _list_keys(client, user_name)
    old = next((k for k in keys if k["key_id"] == old_key_id), None)
    if old is None:
        raise PreconditionError(
            f"access key {old_key_id} is not a key of IAM user {user_name} "
            f"(its keys: {', '.join(k['key_id'] for k in keys) or 'none'})"
        )
    others = [k for k in keys if k["key_id"] != old_key_id]
    if len(keys) >= IAM_MAX_KEYS_PER_USER and others:
        other = others[0]
        raise PreconditionError(
            f"IAM user {user_name} already has a second access key {other['key_id']} "
            f"({other['status']}, created {other['created']}); IAM allows "
            f"{IAM_MAX_KEYS_PER_USER}. If it is left from an interrupted rotation its secret "
            "is lost: deactivate and delete it, then rotate again"
        )
    with _boundary("create access key for", f"IAM user {user_name}"):
        created = client.create_access_key(UserName=user_name)["AccessKey"]
    new_key_id = str(created["AccessKeyId"])
    secret = SecretStr(str(created["SecretAccessKey"]))
    register_secret(secret.get_secret_value())
    log.info("IAM user %s: created access key %s", user_name, new_key_id)
    if old["status"] != "Inactive":
        try:
            _set_key_status(client, user_name, old_key_id, "Inactive")
        except CloudError as exc:
            try:
                with _boundary("delete new access key of", f"IAM user {user_name}"):
                    client.delete_access_key(UserName=user_name, AccessKeyId=new_key_id)
            except CloudError as cleanup:
                raise CloudError(
                    f"IAM user {user_name}: could not deactivate {old_key_id} ({exc}) nor "
                    f"delete the new key {new_key_id} ({cleanup}); delete {new_key_id} by hand",
                    transient=False,
                ) from exc
            log.warning(
                "IAM user %s: deactivating %s failed; new key %s deleted again",
                user_name,
                old_key_id,
                new_key_id,
            )
            raise
        log.info("IAM user %s: access key %s deactivated", user_name, old_key_id)
    else:
        log.info("IAM user %s: access key %s was already inactive", user_name, old_key_id)
    status = {k["key_id"]: k["status"] for k in _list_keys(client, user_name)}
    if status.get(new_key_id) != "Active" or status.get(old_key_id) != "Inactive":
        raise VerificationError(
            f"IAM user {user_name}: after rotation IAM lists new key {new_key_id} as "
            f"{status.get(new_key_id, 'absent')} and old key {old_key_id} as "
            f"{status.get(old_key_id, 'absent')}"
        )
    change = _change(
        "iam",
        obj,
        "rotate-access-key",
        "updated",
        before={"user_name": user_name, "keys": keys},
        after={
            "user_name": user_name,
            "new_key_id": new_key_id,
            "old_key_id": old_key_id,
            "old_status": "Inactive",
        },
        undo=(
            f"by hand only, it re-enables a key believed compromised: aws iam update-access-key "
            f"--user-name {user_name} --access-key-id {old_key_id} --status Active; "
            f"aws iam delete-access-key --user-name {user_name} --access-key-id {new_key_id}"
        ),
        compensable=False,
    )
    return new_key_id, secret, change


def delete_access_key(client: BaseClient, user_name: str, key_id: str) -> Change:
    """Delete an access key that is already inactive (the step after a rotation).

    Refuses an active key: deleting a key in use is an outage, not a cleanup.

    Returns:
        A Change (``deleted``, or ``unchanged`` when the key is already gone); not
        compensable (a deleted key cannot come back).

    Raises:
        PreconditionError: the key is active.
        CloudError: no such user, access denied, throttling.
    """
    obj = f"user/{user_name}"
    keys = {k["key_id"]: k for k in _list_keys(client, user_name)}
    key = keys.get(key_id)
    if key is None:
        log.info("IAM user %s has no access key %s: unchanged", user_name, key_id)
        return _change("iam", obj, "delete-access-key", "unchanged", after={"key_id": key_id})
    if key["status"] == "Active":
        raise PreconditionError(
            f"access key {key_id} of IAM user {user_name} is active; deactivate it first"
        )
    with _boundary("delete", f"access key {key_id} of IAM user {user_name}"):
        client.delete_access_key(UserName=user_name, AccessKeyId=key_id)
    log.info("IAM user %s: inactive access key %s deleted", user_name, key_id)
    return _change(
        "iam",
        obj,
        "delete-access-key",
        "deleted",
        before={"key": key},
        after={"key_id": key_id},
        compensable=False,
    )


def _key_status(
    iam: BaseClient, key_id: str, user_name: str | None
) -> tuple[str | None, Literal["Active", "Inactive", "absent"]]:
    """The key's owner and status as IAM lists them (``absent`` when deleted).

    The owner is always looked up (``GetAccessKeyLastUsed``), so that a wrong ``user_name``
    cannot make a live key look absent. Where that lookup is refused (``AccessDenied``) the
    given ``user_name`` is trusted.
    """
    owner: str | None = None
    try:
        with _boundary("look up owner of", f"access key {key_id}"):
            owner = iam.get_access_key_last_used(AccessKeyId=key_id).get("UserName") or None
    except CloudError as exc:
        code = _code_of(exc)
        if code == "NoSuchEntity":
            owner = None
        elif code in ("AccessDenied", "AccessDeniedException") and user_name is not None:
            owner = user_name
        else:
            raise
    if owner is not None and user_name is not None and owner != user_name:
        raise VerificationError(f"access key {key_id} belongs to IAM user {owner}, not {user_name}")
    user = owner or user_name
    if user is None:
        return None, "absent"
    try:
        keys = _list_keys(iam, user)
    except CloudError as exc:
        if _code_of(exc) == "NoSuchEntity":
            return user, "absent"
        raise
    for k in keys:
        if k["key_id"] == key_id:
            return user, k["status"]
    return user, "absent"


def _try_key(sts: BaseClient, key_id: str) -> tuple[Literal["accepted", "rejected"], str | None]:
    """Call sts:GetCallerIdentity with the key. Returns (outcome, ARN or error code)."""
    try:
        with _boundary("sts:GetCallerIdentity with", f"access key {key_id}"):
            arn = sts.get_caller_identity().get("Arn")
    except CloudError as exc:
        code = _code_of(exc)
        if code in REJECTED_CREDENTIAL_CODES:
            return "rejected", code
        raise
    return "accepted", str(arn)


def _prove(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    expected: Literal["works", "rejected"],
    user_name: str | None,
    timeout_seconds: float,
    poll_seconds: float,
    stand_in: bool | None,
) -> KeyProof:
    if isinstance(secret, str):
        secret = SecretStr(secret)
    register_secret(secret.get_secret_value())
    on_stand_in = aws.endpoint_url is not None if stand_in is None else stand_in
    iam = make_client(aws, "iam")
    sts = make_client(aws, "sts", access_key_id=key_id, secret_access_key=secret)
    deadline = time.monotonic() + timeout_seconds
    attempts = 0
    while True:
        attempts += 1
        owner, status = _key_status(iam, key_id, user_name)
        call, detail = _try_key(sts, key_id)
        evidence = [f"IAM lists the key as {status}" + (f" (user {owner})" if owner else "")]
        if call == "accepted":
            evidence.append(f"sts:GetCallerIdentity with the key answered {detail}")
        else:
            evidence.append(f"sts:GetCallerIdentity with the key was refused ({detail})")
        if expected == "works":
            own = owner is None or (detail or "").endswith(f"/{owner}")
            proven = status == "Active" and call == "accepted" and own
            if call == "accepted" and not own:
                evidence.append(f"the caller is not IAM user {owner}")
        elif on_stand_in:
            proven = status in ("Inactive", "absent")
            if call == "accepted":
                evidence.append(
                    "the stand-in authenticates inactive keys, so this call is not evidence; "
                    "the proof rests on the IAM status"
                )
        else:
            proven = status in ("Inactive", "absent") and call == "rejected"
        if proven or time.monotonic() + poll_seconds > deadline:
            break
        time.sleep(poll_seconds)
    return KeyProof(
        key_id=key_id,
        user_name=owner,
        expected=expected,
        iam_status=status,
        call=call,
        call_error=detail if call == "rejected" else None,
        caller_arn=detail if call == "accepted" else None,
        stand_in=on_stand_in,
        evidence=evidence,
        proven=proven,
        attempts=attempts,
    )


def prove_key_works(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    user_name: str | None = None,
    timeout_seconds: float = KEY_PROPAGATION_TIMEOUT_SECONDS,
    poll_seconds: float = KEY_POLL_SECONDS,
) -> KeyProof:
    """Prove a (new) access key works: IAM lists it Active and a call signed with it succeeds.

    The call is ``sts:GetCallerIdentity`` (allowed to every valid key, so a refusal means the
    credentials, not a policy); the answer must be the key's own user. A new key can take a
    few seconds to be honoured, so observations repeat until ``timeout_seconds``.

    Against the moto stand-in the call checks the secret only when moto's authentication is
    switched on (``/moto-api/reset-auth``); otherwise any secret is accepted.

    Args:
        aws: the ``aws`` section (its credentials read IAM; the key under test signs the call).
        key_id: the key to prove.
        secret: its secret.
        user_name: its owner, when known (else looked up with ``GetAccessKeyLastUsed``).
        timeout_seconds: how long to keep observing.
        poll_seconds: delay between observations.

    Returns:
        The proof (``proven`` is True).

    Raises:
        VerificationError: not proven in time; the message lists what was observed.
        CloudError: IAM or STS could not be asked (throttling, access denied...).
    """
    proof = _prove(
        aws,
        key_id,
        secret,
        expected="works",
        user_name=user_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        stand_in=None,
    )
    log.info("%s", proof.summary())
    if not proof.proven:
        raise VerificationError(proof.summary())
    return proof


def prove_key_rejected(
    aws: AWSConfig,
    key_id: str,
    secret: SecretStr | str,
    *,
    user_name: str | None = None,
    timeout_seconds: float = KEY_PROPAGATION_TIMEOUT_SECONDS,
    poll_seconds: float = KEY_POLL_SECONDS,
    stand_in: bool | None = None,
) -> KeyProof:
    """Prove an (old) access key is rejected: IAM lists it Inactive or not at all, and a call
    signed with it is refused.

    Against real AWS both observations must hold (a deactivated key stops working within
    seconds, so observations repeat until ``timeout_seconds``). The moto stand-in
    authenticates inactive keys, so there an accepted call is recorded but not held against
    the proof, which then rests on the IAM status; a deleted key is refused by moto too when
    its authentication is on.

    Args:
        aws: the ``aws`` section (its credentials read IAM; the key under test signs the call).
        key_id: the key to prove.
        secret: its secret.
        user_name: its owner, when known.
        timeout_seconds: how long to keep observing.
        poll_seconds: delay between observations.
        stand_in: True when ``aws`` points at the stand-in; default: when
            ``aws.endpoint_url`` is set (which dr.yaml reserves for the stand-in).

    Returns:
        The proof (``proven`` is True).

    Raises:
        VerificationError: not proven in time; the message lists what was observed.
        CloudError: IAM or STS could not be asked.
    """
    proof = _prove(
        aws,
        key_id,
        secret,
        expected="rejected",
        user_name=user_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        stand_in=stand_in,
    )
    log.info("%s", proof.summary())
    if not proof.proven:
        raise VerificationError(proof.summary())
    return proof


# --------------------------------------------------------------------------- secrets manager


def secret_versions(client: BaseClient, secret_id: str) -> dict[str, list[str]]:
    """Version ids of a secret with their staging labels (``AWSCURRENT``, ``AWSPREVIOUS``).

    Raises:
        CloudError: no such secret (``ResourceNotFoundException``), access denied, throttling.
    """
    with _boundary("describe", f"secret {secret_id}"):
        described = client.describe_secret(SecretId=secret_id)
    return {v: list(stages) for v, stages in described.get("VersionIdsToStages", {}).items()}


def _version_with(versions: Mapping[str, list[str]], stage: str) -> str | None:
    return next((v for v, stages in versions.items() if stage in stages), None)


def read_secret(client: BaseClient, secret_id: str) -> SecretStr:
    """Read a secret's current value (the version staged ``AWSCURRENT``).

    Args:
        client: a ``secretsmanager`` client from :func:`make_client`.
        secret_id: the secret's name or ARN.

    Returns:
        The value, registered for redaction.

    Raises:
        CloudError: no such secret, access denied, a binary secret that is not UTF-8.
    """
    obj = f"secret {secret_id}"
    with _boundary("read", obj):
        answer = client.get_secret_value(SecretId=secret_id, VersionStage=AWSCURRENT)
    if "SecretString" in answer:
        value = str(answer["SecretString"])
    else:
        try:
            value = bytes(answer.get("SecretBinary", b"")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CloudError(f"read {obj}: binary value is not UTF-8 text") from exc
    register_secret(value)
    return SecretStr(value)


def put_secret_value(client: BaseClient, secret_id: str, value: SecretStr | str) -> Change:
    """Store a new value as the secret's current version, unless it already is.

    Secrets Manager stages the new version ``AWSCURRENT`` and moves ``AWSPREVIOUS`` to the
    version it replaced; the Change records version ids only, so :func:`restore_secret_version`
    can move the stage back without this run ever holding the old value.

    Args:
        client: a ``secretsmanager`` client from :func:`make_client`.
        secret_id: the secret's name or ARN (it must exist).
        value: the new value.

    Returns:
        A Change (``updated`` or ``unchanged``) with ``before["version_id"]`` and
        ``after["version_id"]``, holding no value.

    Raises:
        CloudError: no such secret (``ResourceNotFoundException``), access denied, throttling.
        VerificationError: the new version is not staged ``AWSCURRENT`` afterwards.
    """
    new_value = value.get_secret_value() if isinstance(value, SecretStr) else value
    register_secret(new_value)
    obj = f"secret {secret_id}"
    versions = secret_versions(client, secret_id)
    current_version = _version_with(versions, AWSCURRENT)
    if current_version is not None:
        current = read_secret(client, secret_id)
        if current.get_secret_value() == new_value:
            log.info("%s already holds this value (version %s): unchanged", obj, current_version)
            return _change(
                "secretsmanager",
                secret_id,
                "put-secret-value",
                "unchanged",
                before={"secret_id": secret_id, "version_id": current_version},
                after={"secret_id": secret_id, "version_id": current_version},
            )
    with _boundary("put value of", obj):
        answer = client.put_secret_value(
            SecretId=secret_id,
            SecretString=new_value,
            ClientRequestToken=str(uuid.uuid4()),
            VersionStages=[AWSCURRENT],
        )
    new_version = str(answer["VersionId"])
    after_versions = secret_versions(client, secret_id)
    if AWSCURRENT not in after_versions.get(new_version, []):
        raise VerificationError(
            f"{obj}: new version {new_version} is not staged {AWSCURRENT} "
            f"(stages: {after_versions})"
        )
    log.info(
        "%s: new version %s is %s, previous %s is %s",
        obj,
        new_version,
        AWSCURRENT,
        current_version,
        AWSPREVIOUS,
    )
    undo = ""
    if current_version is not None:
        undo = (
            f"aws secretsmanager update-secret-version-stage --secret-id {secret_id} "
            f"--version-stage {AWSCURRENT} --move-to-version-id {current_version} "
            f"--remove-from-version-id {new_version}"
        )
    return _change(
        "secretsmanager",
        secret_id,
        "put-secret-value",
        "updated",
        before={"secret_id": secret_id, "version_id": current_version},
        after={"secret_id": secret_id, "version_id": new_version},
        undo=undo,
        compensable=current_version is not None,
    )


def restore_secret_version(client: BaseClient, change: Change) -> Change:
    """Make the version that was current before :func:`put_secret_value` current again.

    Only when the version we staged is still current: a later rotation is not undone.
    (Breach flows should not call this: it brings a possibly leaked value back.)

    Returns:
        The Change made by restoring (``unchanged`` when already so).

    Raises:
        PreconditionError: not a put-secret-value change, or a later version is current.
        CloudError: no such secret or version, access denied, throttling.
    """
    _expect(change, "secretsmanager", "put-secret-value")
    secret_id = str(change.after["secret_id"])
    ours = str(change.after["version_id"])
    old = change.before.get("version_id")
    if change.outcome == "unchanged" or old is None:
        return _change("secretsmanager", secret_id, "restore-secret-version", "unchanged")
    versions = secret_versions(client, secret_id)
    current = _version_with(versions, AWSCURRENT)
    if current == old:
        log.info("secret %s: version %s already current: unchanged", secret_id, old)
        return _change("secretsmanager", secret_id, "restore-secret-version", "unchanged")
    if current != ours:
        raise PreconditionError(
            f"secret {secret_id}: version {current} is current, not {ours} which we staged; "
            "not undoing a later change"
        )
    with _boundary("restage", f"secret {secret_id}"):
        client.update_secret_version_stage(
            SecretId=secret_id,
            VersionStage=AWSCURRENT,
            MoveToVersionId=old,
            RemoveFromVersionId=ours,
        )
    log.info("secret %s: version %s is %s again (was %s)", secret_id, old, AWSCURRENT, ours)
    return _change(
        "secretsmanager",
        secret_id,
        "restore-secret-version",
        "updated",
        before={"secret_id": secret_id, "version_id": ours},
        after={"secret_id": secret_id, "version_id": old},
        undo=(
            f"aws secretsmanager update-secret-version-stage --secret-id {secret_id} "
            f"--version-stage {AWSCURRENT} --move-to-version-id {ours} "
            f"--remove-from-version-id {old}"
        ),
    )


# --------------------------------------------------------------------------- undo


def undo_change(aws: AWSConfig, change: Change) -> Change:
    """Undo any compensable Change made by this module (for rollback hooks).

    Args:
        aws: the ``aws`` section; the client for the change's service is built here.
        change: a Change returned by this module.

    Returns:
        The Change made by undoing (``unchanged`` when there was nothing to undo).

    Raises:
        PreconditionError: the change is not this module's or cannot be undone automatically
            (a key rotation, a deletion).
        CloudError: as the matching ``restore_*`` function.
    """
    if change.outcome == "unchanged":
        return _change(change.system, change.object, f"undo-{change.action}", "unchanged")
    if not change.compensable:
        raise PreconditionError(
            f"cannot undo {change.system} {change.action} of {change.object} automatically"
            + (f"; {change.undo}" if change.undo else "")
        )
    if change.system == "route53" and change.action == "upsert-record":
        return restore_record(make_client(aws, "route53"), change)
    if change.system == "ec2" and change.action in ("revoke-ingress", "block-cidrs"):
        return restore_ingress(make_client(aws, "ec2"), change)
    if change.system == "secretsmanager" and change.action == "put-secret-value":
        return restore_secret_version(make_client(aws, "secretsmanager"), change)
    raise PreconditionError(f"undo_change does not know {change.system} {change.action}")


# --------------------------------------------------------------------------- tasks

ensure_record_task = dr_task(ensure_record, name="ensure-dns-record")
revoke_ingress_task = dr_task(revoke_ingress, name="revoke-security-group-ingress")
block_cidrs_task = dr_task(block_cidrs, name="block-cidrs-in-security-group")
restore_ingress_task = dr_task(restore_ingress, name="restore-security-group-ingress")
create_volume_snapshots_task = dr_task(create_volume_snapshots, name="create-volume-snapshots")
wait_snapshots_task = dr_task(wait_snapshots, name="wait-volume-snapshots", retries=1)
rotate_access_key_task = dr_task(rotate_access_key, name="rotate-access-key")
delete_access_key_task = dr_task(delete_access_key, name="delete-access-key")
prove_key_works_task = dr_task(prove_key_works, name="prove-access-key-works")
prove_key_rejected_task = dr_task(prove_key_rejected, name="prove-access-key-rejected")
put_secret_value_task = dr_task(put_secret_value, name="put-secret-value")
undo_change_task = dr_task(undo_change, name="undo-cloud-change")


# --- wrappers added for flows (lead: move on merge)
describe_ingress_task = dr_task(describe_ingress, name="describe-security-group-ingress")
read_secret_task = dr_task(read_secret, name="read-secret-value")
