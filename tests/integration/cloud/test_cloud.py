"""Route 53, security groups, snapshots and Secrets Manager against moto's server."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from pydantic import SecretStr

from dr.config import AWSConfig, SecretRef
from dr.errors import CloudError, ConfigError, PreconditionError
from tasks.aws.client import make_client, make_session
from tasks.aws.route53 import ensure_record, get_record, restore_record
from tasks.aws.secrets_manager import (
    put_secret_value,
    read_secret,
    restore_secret_version,
    secret_versions,
)
from tasks.aws.security_groups import (
    IngressRule,
    block_cidrs,
    describe_ingress,
    restore_ingress,
    revoke_ingress,
)
from tasks.aws.snapshots import create_volume_snapshots, wait_snapshots
from tasks.aws.undo import undo_change

pytestmark = pytest.mark.integration

THROTTLING_XML = (
    b'<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
    b"<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    b"<RequestId>5a1c0e5e-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def domain(raw: Any) -> str:
    """A fresh hosted zone's domain (``z-….example.test``)."""
    return f"{_unique('z')}.example.test"


@pytest.fixture
def zone(raw: Any, domain: str) -> str:
    created = raw("route53").create_hosted_zone(Name=domain, CallerReference=_unique("ref"))
    return created["HostedZone"]["Id"].rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- client factory


def test_make_client_uses_config_and_standard_retries(aws: AWSConfig) -> None:
    client = make_client(aws, "route53")
    assert client.meta.endpoint_url == aws.endpoint_url
    assert client.meta.region_name == "us-east-1"
    # botocore reads the dict's "max_attempts" as retries: 5 retries, 6 attempts in all.
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    credentials = make_session(aws).get_credentials()
    assert credentials is not None
    assert credentials.access_key == "AKIADRCLOUDTESTKEY00"


def test_make_session_without_references_uses_default_chain(aws: AWSConfig) -> None:
    bare = AWSConfig(region="eu-west-1")
    session = make_session(bare)
    assert session.region_name == "eu-west-1"
    # The autouse fixture's environment credentials: boto3's default chain.
    assert session.get_credentials().access_key == "AKIANOTAREALKEY00000"


def test_half_a_key_pair_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="both"):
        make_session(AWSConfig(access_key_id=SecretRef(env="DR_TEST_AWS_ACCESS_KEY_ID")))
    with pytest.raises(ConfigError, match="DR_TEST_UNSET_VARIABLE"):
        make_session(
            AWSConfig(
                access_key_id=SecretRef(env="DR_TEST_UNSET_VARIABLE"),
                secret_access_key=SecretRef(env="DR_TEST_UNSET_VARIABLE"),
            )
        )


# --------------------------------------------------------------------------- route 53


def test_record_created_unchanged_updated_and_undone(
    aws: AWSConfig, zone: str, domain: str
) -> None:
    r53 = make_client(aws, "route53")
    created = ensure_record(r53, zone, f"db.{domain}", "CNAME", "pg1.example.test", 30)
    assert created.outcome == "created"
    assert created.before["record"] is None
    assert created.after["change_id"]
    state = get_record(r53, zone, f"db.{domain}.", "CNAME")
    assert state is not None
    assert (state.name, state.values, state.ttl) == (f"db.{domain}.", ["pg1.example.test"], 30)

    # Same value, written differently: nothing to do.
    again = ensure_record(r53, zone, f"DB.{domain}.", "CNAME", "PG1.example.test.", 30)
    assert again.outcome == "unchanged"
    assert not again.changed

    updated = ensure_record(r53, zone, f"db.{domain}", "CNAME", "pg2.example.test", 60)
    assert updated.outcome == "updated"
    assert updated.before["record"]["values"] == ["pg1.example.test"]
    assert "UPSERT" in updated.undo and "pg1.example.test" in updated.undo
    assert get_record(r53, zone, f"db.{domain}", "CNAME").values == ["pg2.example.test"]

    restored = restore_record(r53, updated)
    assert restored.outcome == "updated"
    state = get_record(r53, zone, f"db.{domain}", "CNAME")
    assert (state.values, state.ttl) == (["pg1.example.test"], 30)
    assert restore_record(r53, updated).outcome == "unchanged"

    # Undoing the creation deletes the record (through the generic undo).
    deleted = undo_change(aws, created)
    assert deleted.outcome == "deleted"
    assert get_record(r53, zone, f"db.{domain}", "CNAME") is None
    assert undo_change(aws, again).outcome == "unchanged"


def test_restore_refuses_to_overwrite_a_later_change(
    aws: AWSConfig, zone: str, domain: str, raw: Any
) -> None:
    r53 = make_client(aws, "route53")
    ensure_record(r53, zone, f"app.{domain}", "A", "192.0.2.10", 30)
    change = ensure_record(r53, zone, f"app.{domain}", "A", "192.0.2.20", 30)
    raw("route53").change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": f"app.{domain}",
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": "192.0.2.99"}],
                    },
                }
            ]
        },
    )
    with pytest.raises(PreconditionError, match="changed since"):
        restore_record(r53, change)
    assert get_record(r53, zone, f"app.{domain}", "A").values == ["192.0.2.99"]


def test_routing_policy_records_are_not_managed(
    aws: AWSConfig, zone: str, domain: str, raw: Any
) -> None:
    raw("route53").change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": f"weighted.{domain}",
                        "Type": "A",
                        "SetIdentifier": side,
                        "Weight": 50,
                        "TTL": 30,
                        "ResourceRecords": [{"Value": address}],
                    },
                }
                for side, address in (("blue", "192.0.2.1"), ("green", "192.0.2.2"))
            ]
        },
    )
    r53 = make_client(aws, "route53")
    with pytest.raises(PreconditionError, match="routing policy"):
        ensure_record(r53, zone, f"weighted.{domain}", "A", "192.0.2.3", 30)


def test_transient_dns_errors_are_retried_by_the_sdk(
    aws: AWSConfig, zone: str, domain: str, flaky_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    via_proxy = aws.model_copy(update={"endpoint_url": flaky_proxy.endpoint})
    r53 = make_client(via_proxy, "route53")
    # Throttling first: the SDK's backoff base is 1 s for throttling, 50 ms otherwise.
    flaky_proxy.fail_next(400, THROTTLING_XML)
    flaky_proxy.fail_next(503, b"<html><body>Service Unavailable</body></html>")
    caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")

    change = ensure_record(r53, zone, f"retry.{domain}", "CNAME", "pg1.example.test", 30)

    assert change.outcome == "created"
    first_three = flaky_proxy.requests[:3]
    assert [status for _, _, status in first_three] == [400, 503, 200]
    # The same request (ListResourceRecordSets) three times: the SDK retried it, we did not.
    assert len({(method, path) for method, path, _ in first_three}) == 1
    assert "Retry needed" in caplog.text
    assert get_record(r53, zone, f"retry.{domain}", "CNAME").values == ["pg1.example.test"]


def test_permanent_dns_error_is_reported_at_once(aws: AWSConfig, flaky_proxy: Any) -> None:
    via_proxy = aws.model_copy(update={"endpoint_url": flaky_proxy.endpoint})
    r53 = make_client(via_proxy, "route53")
    with pytest.raises(CloudError) as raised:
        ensure_record(r53, "ZNOSUCHZONE000", "db.example.test", "CNAME", "pg1.example.test", 30)
    assert raised.value.transient is False
    assert "NoSuchHostedZone" in str(raised.value)
    assert "ZNOSUCHZONE000" in str(raised.value)
    assert len(flaky_proxy.requests) == 1


# --------------------------------------------------------------------------- security groups

RULES = [
    {
        "IpProtocol": "tcp",
        "FromPort": 5432,
        "ToPort": 5432,
        "IpRanges": [
            {"CidrIp": "10.0.0.0/8", "Description": "app subnets"},
            {"CidrIp": "198.51.100.0/28", "Description": "partner office"},
        ],
    },
    {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "IpRanges": [{"CidrIp": "203.0.113.10/32", "Description": "bastion"}],
    },
    {
        "IpProtocol": "tcp",
        "FromPort": 443,
        "ToPort": 443,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": "web v6"}],
    },
]


@pytest.fixture
def group(raw: Any) -> str:
    ec2 = raw("ec2")
    group_id = ec2.create_security_group(GroupName=_unique("db"), Description="database")["GroupId"]
    peers = [
        {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": "same group"}],
        }
    ]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=RULES + peers)
    return group_id


def _rules(client: Any, group_id: str) -> set[IngressRule]:
    return set(describe_ingress(client, group_id))


def test_revoke_then_restore_is_exact(aws: AWSConfig, group: str) -> None:
    ec2 = make_client(aws, "ec2")
    original = _rules(ec2, group)
    assert len(original) == 6
    assert any(r.description == "partner office" for r in original)

    change = revoke_ingress(ec2, group, keep_cidrs=["203.0.113.0/24"])

    assert change.outcome == "updated"
    left = _rules(ec2, group)
    assert [r.describe() for r in left] == ["tcp 22 from 203.0.113.10/32"]
    assert len(change.after["revoked"]) == 5
    assert "authorize-security-group-ingress" in change.undo
    assert revoke_ingress(ec2, group, keep_cidrs=["203.0.113.0/24"]).outcome == "unchanged"

    restored = restore_ingress(ec2, change)
    assert restored.outcome == "updated"
    assert _rules(ec2, group) == original  # descriptions included
    assert restore_ingress(ec2, change).outcome == "unchanged"


def test_block_cidrs_revokes_covered_rules_and_reports_broader_ones(
    aws: AWSConfig, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    ec2 = make_client(aws, "ec2")
    original = _rules(ec2, group)
    caplog.set_level(logging.WARNING, logger="tasks.aws")

    change = block_cidrs(ec2, group, ["198.51.100.0/24"])

    assert change.outcome == "updated"
    assert [r["source"] for r in change.after["revoked"]] == ["198.51.100.0/28"]
    assert change.after["complete"] is False
    assert [
        (s["rule"]["source"], s["rule"]["from_port"]) for s in change.after["still_allowing"]
    ] == [("0.0.0.0/0", 443)]
    assert [r["source_kind"] for r in change.after["not_checked"]] == ["group"]
    assert "cannot be narrowed" in caplog.text
    now = _rules(ec2, group)
    assert {r.source for r in original - now} == {"198.51.100.0/28"}

    assert block_cidrs(ec2, group, ["198.51.100.0/24"]).outcome == "unchanged"
    assert undo_change(aws, change).outcome == "updated"
    assert _rules(ec2, group) == original


def test_block_cidrs_complete_when_nothing_broader(aws: AWSConfig, raw: Any) -> None:
    ec2 = make_client(aws, "ec2")
    group_id = raw("ec2").create_security_group(GroupName=_unique("g"), Description="g")["GroupId"]
    raw("ec2").authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "IpRanges": [{"CidrIp": c}]}
            for c in ("203.0.113.7/32", "10.1.0.0/16")
        ],
    )
    change = block_cidrs(ec2, group_id, ["203.0.113.7"])
    assert change.after["complete"] is True
    assert [r.source for r in describe_ingress(ec2, group_id)] == ["10.1.0.0/16"]


def test_security_group_errors(aws: AWSConfig, group: str) -> None:
    ec2 = make_client(aws, "ec2")
    with pytest.raises(CloudError) as raised:
        describe_ingress(ec2, "sg-0123456789abcdef0")
    assert raised.value.transient is False
    assert "InvalidGroup.NotFound" in str(raised.value)
    assert "sg-0123456789abcdef0" in str(raised.value)
    with pytest.raises(ConfigError, match="not a network"):
        block_cidrs(ec2, group, ["10.0.0.5/8"])


# --------------------------------------------------------------------------- snapshots


def test_forensic_snapshots_are_tagged_and_taken_once(aws: AWSConfig, raw: Any) -> None:
    volumes = [
        raw("ec2").create_volume(AvailabilityZone="us-east-1a", Size=size)["VolumeId"]
        for size in (1, 2)
    ]
    ec2 = make_client(aws, "ec2")
    tags = {"dr:incident": _unique("inc"), "dr:purpose": "evidence"}

    ids = create_volume_snapshots(ec2, volumes, description="forensic copy", tags=tags)

    assert len(set(ids)) == 2
    infos = wait_snapshots(ec2, ids, timeout_seconds=30, poll_seconds=1)
    assert [i.snapshot_id for i in infos] == ids
    assert [i.volume_id for i in infos] == volumes
    assert all(i.state == "completed" for i in infos)
    assert all(i.tags == tags and i.description == "forensic copy" for i in infos)
    assert [i.volume_size_gib for i in infos] == [1, 2]
    # A retried step reuses the evidence already taken.
    assert create_volume_snapshots(ec2, volumes, description="forensic copy", tags=tags) == ids

    with pytest.raises(CloudError) as raised:
        create_volume_snapshots(ec2, ["vol-0123456789abcdef0"], description="x", tags=tags)
    assert raised.value.transient is False
    assert "vol-0123456789abcdef0" in str(raised.value)


# --------------------------------------------------------------------------- secrets manager


def test_put_secret_value_stages_versions_and_undo(
    aws: AWSConfig, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = _unique("app/db-password")
    old_value, new_value = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
    raw("secretsmanager").create_secret(Name=name, SecretString=old_value)
    sm = make_client(aws, "secretsmanager")
    caplog.set_level(logging.DEBUG)

    change = put_secret_value(sm, name, SecretStr(new_value))

    assert change.outcome == "updated"
    versions = secret_versions(sm, name)
    assert versions[change.after["version_id"]] == ["AWSCURRENT"]
    assert versions[change.before["version_id"]] == ["AWSPREVIOUS"]
    current = read_secret(sm, name)
    assert isinstance(current, SecretStr)
    assert current.get_secret_value() == new_value
    assert put_secret_value(sm, name, new_value).outcome == "unchanged"

    shown = " ".join(
        [change.model_dump_json(), repr(change), str(change.model_dump()), change.summary()]
    )
    assert new_value not in shown and old_value not in shown
    assert "SecretString" in caplog.text  # botocore's bodies were logged, and redacted:
    assert new_value not in caplog.text and old_value not in caplog.text

    restored = restore_secret_version(sm, change)
    assert restored.outcome == "updated"
    assert read_secret(sm, name).get_secret_value() == old_value
    assert secret_versions(sm, name)[change.after["version_id"]] == ["AWSPREVIOUS"]
    assert restore_secret_version(sm, change).outcome == "unchanged"


def test_missing_secret_is_a_permanent_error(aws: AWSConfig) -> None:
    sm = make_client(aws, "secretsmanager")
    with pytest.raises(CloudError) as raised:
        read_secret(sm, "no/such/secret")
    assert raised.value.transient is False
    assert "ResourceNotFoundException" in str(raised.value)
    assert "no/such/secret" in str(raised.value)
