"""Route 53 records: set a simple record and wait until Route 53's name servers serve it.

:func:`ensure_record` sends ``UPSERT`` only when the value or TTL differ, then waits until
the change is ``INSYNC``. Simple records only: a record set with a routing policy
(``SetIdentifier``) is refused rather than half-managed. :func:`restore_record` puts back
what :func:`ensure_record` recorded, unless someone changed the record since.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from botocore.client import BaseClient
from botocore.exceptions import WaiterError
from pydantic import BaseModel, ConfigDict

from dr.changes import Change
from dr.errors import CloudError, ConfigError, PreconditionError
from dr.tasking import dr_task
from tasks.aws.changes import expect_change, make_change
from tasks.aws.client import boundary, waiter_config

log = logging.getLogger(__name__)


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


class RecordState(BaseModel):
    """One simple Route 53 record set as it is now (``name`` fully qualified, lower case)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    ttl: int | None = None
    values: list[str] = []
    alias_target: dict[str, Any] | None = None


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
        client: a ``route53`` client from :func:`~tasks.aws.client.make_client`.
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
    with boundary("read", obj):
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
    with boundary(action.lower(), obj):
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
                Id=change_id, WaiterConfig=waiter_config(wait_timeout_seconds, poll_seconds)
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
        client: a ``route53`` client from :func:`~tasks.aws.client.make_client`.
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
    if current is not None and _holds(current, desired):
        log.info("route53 %s already %s (ttl %s): unchanged", obj, ", ".join(values), ttl)
        return _record_change(obj, "upsert-record", "unchanged", _zone(zone_id), current, desired)
    undo = (
        _cli_change(zone_id, "DELETE", desired)
        if current is None
        else _cli_change(zone_id, "UPSERT", current)
    )
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
    _log_upsert(obj, current, desired, change_id)
    outcome = "created" if current is None else "updated"
    return _record_change(
        obj, "upsert-record", outcome, _zone(zone_id), current, desired, change_id, undo
    )


def _holds(current: RecordState, desired: RecordState) -> bool:
    """True when a plain (not alias) record already has the desired values and TTL."""
    return (
        current.alias_target is None
        and current.ttl == desired.ttl
        and _same_values(desired.type, current.values, desired.values)
    )


def _log_upsert(
    obj: str, current: RecordState | None, desired: RecordState, change_id: str
) -> None:
    if current is None:
        log.info(
            "route53 %s created as %s (ttl %s), change %s",
            obj,
            desired.values,
            desired.ttl,
            change_id,
        )
        return
    log.info(
        "route53 %s updated from %s to %s (ttl %s -> %s), change %s",
        obj,
        current.values or current.alias_target,
        desired.values,
        current.ttl,
        desired.ttl,
        change_id,
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
    expect_change(change, "route53", "upsert-record")
    zone_id = str(change.after["zone_id"])
    ours = change.after["record"]
    old = change.before.get("record")
    name, record_type = ours["name"], ours["type"]
    obj = change.object
    if change.outcome == "unchanged":
        return make_change("route53", obj, "restore-record", "unchanged")
    current = get_record(client, zone_id, name, record_type)
    if _matches(current, old):
        log.info("route53 %s already as before: unchanged", obj)
        return make_change("route53", obj, "restore-record", "unchanged")
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
        undo = _cli_change(zone_id, "UPSERT", current)
        return _record_change(
            obj, "restore-record", "deleted", zone_id, current, None, change_id, undo
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
    undo = _cli_change(zone_id, "UPSERT", current)
    return _record_change(
        obj, "restore-record", "updated", zone_id, current, previous, change_id, undo
    )


def _record_change(
    obj: str,
    action: str,
    outcome: str,
    zone_id: str,
    before: RecordState | None,
    after: RecordState | None,
    change_id: str | None = None,
    undo: str = "",
) -> Change:
    """A Route 53 Change recording the record before and after (None: no such record)."""
    after_fields: dict[str, Any] = {
        "zone_id": zone_id,
        "record": after.model_dump() if after is not None else None,
    }
    if change_id is not None:
        after_fields["change_id"] = change_id
    return make_change(
        "route53",
        obj,
        action,
        outcome,
        before={"zone_id": zone_id, "record": before.model_dump() if before is not None else None},
        after=after_fields,
        undo=undo,
    )


get_record_task = dr_task(get_record, name="aws-get-record", timeout_seconds=120)
ensure_record_task = dr_task(ensure_record, name="aws-ensure-record")
restore_record_task = dr_task(restore_record, name="aws-restore-record")
