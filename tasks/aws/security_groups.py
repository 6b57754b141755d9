"""EC2 security groups: isolate a group, block networks in it, and put revoked rules back.

Rules are handled one source at a time (:class:`IngressRule`), descriptions included, revoked
by their rule ids (exactly those rules, nothing EC2 might match more loosely), so a restore
puts back exactly what was revoked. Security groups are allow-lists with no deny rule, so
:func:`block_cidrs` cannot subtract addresses from a broader rule: it revokes the rules whose
source lies wholly inside a blocked range and *reports* the broader rules that still admit
blocked addresses (``after["still_allowing"]``), for the flow to escalate (isolate the group
with :func:`revoke_ingress`, or block in ``pg_hba``). A network ACL deny is not used: it acts
on a whole subnet, not on the group the flow was asked about.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict

from dr.changes import Change
from dr.errors import CloudError, ConfigError, VerificationError
from dr.tasking import dr_task
from tasks.aws.changes import expect_change, make_change
from tasks.aws.client import boundary, error_code_of

log = logging.getLogger(__name__)


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
        client: an ``ec2`` client from :func:`~tasks.aws.client.make_client`.
        group_id: the security group id (``sg-...``).

    Returns:
        The rules in EC2's order.

    Raises:
        CloudError: no such group (``InvalidGroup.NotFound``), access denied, throttling.
    """
    with boundary("describe ingress of", f"security group {group_id}"):
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
    with boundary("describe rules of", f"security group {group_id}"):
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
            with boundary("revoke ingress of", obj):
                client.revoke_security_group_ingress(GroupId=group_id, SecurityGroupRuleIds=wanted)
        except CloudError as exc:
            # Already gone (a concurrent revoke): the check below decides.
            if error_code_of(exc) != "InvalidPermission.NotFound":
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
        client: an ``ec2`` client from :func:`~tasks.aws.client.make_client`.
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
        return make_change(
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
    return make_change(
        "ec2",
        obj,
        "revoke-ingress",
        "updated",
        before={"group_id": group_id, "rules": _dump(rules)},
        after={"group_id": group_id, "rules": _dump(kept), "revoked": _dump(revoked)},
        undo=_authorize_cli(group_id, revoked),
    )


def _sort_for_blocking(
    group_id: str,
    rules: Iterable[IngressRule],
    blocked: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[list[IngressRule], list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rules into: to revoke, still admitting a blocked network, not checkable.

    Revoked: wholly inside a blocked network. Still admitting (logged): broader rules.
    Not checkable: sources that are groups or prefix lists, not address ranges.
    """
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
    return revoke, still_allowing, not_checked


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
        client: an ``ec2`` client from :func:`~tasks.aws.client.make_client`.
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
    revoke, still_allowing, not_checked = _sort_for_blocking(group_id, rules, blocked)
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
        return make_change("ec2", group_id, "block-cidrs", "unchanged", before=before, after=after)
    _revoke(client, group_id, revoke)
    log.info(
        "security group %s: revoked %s rule(s) within %s; %s rule(s) still admit them",
        group_id,
        len(revoke),
        ", ".join(str(b) for b in blocked),
        len(still_allowing),
    )
    return make_change(
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
    expect_change(change, "ec2", "revoke-ingress", "block-cidrs")
    group_id = str(change.after["group_id"])
    revoked = [IngressRule.model_validate(r) for r in change.after.get("revoked", [])]
    current = describe_ingress(client, group_id)
    present = {r.key() for r in current}
    missing = [r for r in revoked if r.key() not in present]
    if not missing:
        log.info("security group %s: revoked rules already present: unchanged", group_id)
        return make_change("ec2", group_id, "restore-ingress", "unchanged")
    obj = f"security group {group_id}"
    try:
        with boundary("authorize ingress of", obj):
            client.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=[r.to_permission() for r in missing]
            )
    except CloudError as exc:
        if error_code_of(exc) != "InvalidPermission.Duplicate":
            raise
    now = {r.key() for r in describe_ingress(client, group_id)}
    still_missing = [r for r in missing if r.key() not in now]
    if still_missing:
        raise VerificationError(
            f"{obj} still lacks {len(still_missing)} rule(s) after restoring: "
            + "; ".join(r.describe() for r in still_missing)
        )
    log.info("security group %s: restored %s inbound rule(s)", group_id, len(missing))
    return make_change(
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


describe_ingress_task = dr_task(describe_ingress, name="aws-describe-ingress", timeout_seconds=120)
revoke_ingress_task = dr_task(revoke_ingress, name="aws-revoke-ingress")
block_cidrs_task = dr_task(block_cidrs, name="aws-block-cidrs")
restore_ingress_task = dr_task(restore_ingress, name="aws-restore-ingress")
