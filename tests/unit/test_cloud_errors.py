"""How tasks.aws classifies AWS errors and keeps secrets out of botocore's logs (no I/O).

Responses come from botocore's Stubber or from an event handler, so no request leaves the
process.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from dr.config import AWSConfig, SecretRef
from dr.errors import CloudError, register_secret
from tasks.aws.client import make_client
from tasks.aws.iam import rotate_access_key
from tasks.aws.route53 import ensure_record, get_record
from tasks.aws.secrets_manager import read_secret
from tasks.aws.security_groups import describe_ingress

ZONE = "Z0FAKEZONE0001"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> AWSConfig:
    monkeypatch.setenv("DR_UNIT_AWS_KEY_ID", "AKIAUNITTESTKEY00000")
    monkeypatch.setenv("DR_UNIT_AWS_SECRET", "dr-unit-test-fake-secret-0000")
    return AWSConfig(
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        access_key_id=SecretRef(env="DR_UNIT_AWS_KEY_ID"),
        secret_access_key=SecretRef(env="DR_UNIT_AWS_SECRET"),
    )


def _error(aws: AWSConfig, service: str, method: str, code: str, status: int) -> CloudError:
    client = make_client(aws, service)
    with Stubber(client) as stub:
        stub.add_client_error(method, service_error_code=code, http_status_code=status)
        with pytest.raises(CloudError) as raised:
            if service == "route53":
                get_record(client, ZONE, "db.example.test", "CNAME")
            elif service == "ec2":
                describe_ingress(client, "sg-0fake")
            elif service == "iam":
                rotate_access_key(client, "app", "AKIAOLDKEY")
            else:
                read_secret(client, "app/db")
    return raised.value


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("Throttling", 400),
        ("ThrottlingException", 400),
        ("RequestLimitExceeded", 503),
        ("PriorRequestNotComplete", 400),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("SomethingNew", 502),
    ],
)
def test_throttling_and_server_errors_are_transient(aws: AWSConfig, code: str, status: int) -> None:
    error = _error(aws, "route53", "list_resource_record_sets", code, status)
    assert error.transient is True
    assert code in str(error)


@pytest.mark.parametrize(
    ("service", "method", "code", "status", "names"),
    [
        ("route53", "list_resource_record_sets", "NoSuchHostedZone", 404, ZONE),
        ("route53", "list_resource_record_sets", "AccessDenied", 403, ZONE),
        ("ec2", "describe_security_groups", "InvalidGroup.NotFound", 400, "sg-0fake"),
        ("iam", "list_access_keys", "NoSuchEntity", 404, "IAM user app"),
        ("secretsmanager", "get_secret_value", "ResourceNotFoundException", 400, "app/db"),
    ],
)
def test_client_errors_are_permanent_and_name_the_object(
    aws: AWSConfig, service: str, method: str, code: str, status: int, names: str
) -> None:
    error = _error(aws, service, method, code, status)
    assert error.transient is False
    assert code in str(error)
    assert names in str(error)


def test_connection_errors_are_retried_by_the_sdk_then_transient(aws: AWSConfig) -> None:
    client = make_client(aws, "route53")
    attempts: list[str] = []

    def refuse(request: Any, **_: Any) -> None:
        attempts.append(request.url)
        raise EndpointConnectionError(endpoint_url=request.url)

    client.meta.events.register("before-send.route-53.ListResourceRecordSets", refuse)
    with pytest.raises(CloudError) as raised:
        get_record(client, ZONE, "db.example.test", "CNAME")
    assert raised.value.transient is True
    assert "unreachable" in str(raised.value)
    assert len(attempts) == 6  # the first attempt and the SDK's 5 retries


def test_botocore_body_logs_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    register_secret("registered-secret-value-123")
    logging.getLogger("botocore.parsers").debug(
        "Response body:\n%r",
        b"<AccessKey><SecretAccessKey>wJalrXUtnFEMI/K7MDENG</SecretAccessKey></AccessKey>",
    )
    logging.getLogger("botocore.endpoint").debug(
        "Making request with params: %s",
        {"body": b'{"SecretId": "app/db", "SecretString": "hunter2-\\"quoted\\"-x"}'},
    )
    logging.getLogger("botocore.hooks").debug("event with %s", "registered-secret-value-123")
    text = caplog.text
    assert "wJalrXUtnFEMI" not in text
    assert "hunter2" not in text and "quoted" not in text
    assert "registered-secret-value-123" not in text
    assert "<SecretAccessKey>***</SecretAccessKey>" in text
    assert "app/db" in text  # the rest of the body stays readable


def _stub_upsert(stub: Stubber, *statuses: str) -> None:
    stub.add_response(
        "list_resource_record_sets",
        {
            "ResourceRecordSets": [],
            "IsTruncated": False,
            "MaxItems": "300",
        },
    )
    submitted = {"Id": "/change/C1", "Status": "PENDING", "SubmittedAt": "2026-01-01T00:00:00Z"}
    stub.add_response("change_resource_record_sets", {"ChangeInfo": submitted})
    for status in statuses:
        stub.add_response("get_change", {"ChangeInfo": {**submitted, "Status": status}})


def test_dns_change_is_awaited_until_insync(aws: AWSConfig) -> None:
    client = make_client(aws, "route53")
    with Stubber(client) as stub:
        _stub_upsert(stub, "PENDING", "INSYNC")
        change = ensure_record(
            client, ZONE, "db.example.test", "CNAME", "pg1.example.test", 30, poll_seconds=1
        )
        stub.assert_no_pending_responses()
    assert change.outcome == "created"
    assert change.after["change_id"] == "C1"


def test_dns_change_not_insync_in_time_is_transient(aws: AWSConfig) -> None:
    client = make_client(aws, "route53")
    with Stubber(client) as stub:
        _stub_upsert(stub, "PENDING")
        with pytest.raises(CloudError, match="not INSYNC") as raised:
            ensure_record(
                client,
                ZONE,
                "db.example.test",
                "CNAME",
                "pg1.example.test",
                30,
                wait_timeout_seconds=1,
                poll_seconds=1,
            )
    assert raised.value.transient is True
    assert "the change was made (undo:" in str(raised.value) and "DELETE" in str(raised.value)
