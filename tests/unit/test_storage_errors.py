"""Pure logic of the storage adapter: error translation, ETag arithmetic, client factory."""

from __future__ import annotations

import errno
import hashlib

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from dr.config import AWSConfig, SecretRef
from dr.errors import ChecksumMismatch, ConfigError, ObjectNotFound, StorageError, redact
from tasks.storage import operations
from tasks.storage.client import PutResult, _os_error, _s3_error, make_s3_client
from tasks.storage.s3 import S3_MAX_PARTS, S3_MIN_PART_SIZE_BYTES
from tasks.storage.streams import _Digest

MiB = 1024 * 1024


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "transient"),
    [
        ("NoSuchKey", 404, ObjectNotFound, False),
        ("404", 404, ObjectNotFound, False),
        ("NoSuchBucket", 404, StorageError, False),
        ("SlowDown", 503, StorageError, True),
        ("Throttling", 400, StorageError, True),
        ("RequestTimeout", 400, StorageError, True),
        ("InternalError", 500, StorageError, True),
        ("BadGateway", 502, StorageError, True),
        ("AccessDenied", 403, StorageError, False),
        ("InvalidAccessKeyId", 403, StorageError, False),
        ("PreconditionFailed", 412, StorageError, True),
    ],
)
def test_client_errors_are_translated(
    code: str, status: int, kind: type[StorageError], transient: bool
) -> None:
    err = _s3_error(client_error(code, status), "s3://b/k")
    assert type(err) is kind or (kind is StorageError and isinstance(err, StorageError))
    assert not isinstance(err, ObjectNotFound) or kind is ObjectNotFound
    assert err.transient is transient
    assert "s3://b/k" in str(err)


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ResponseStreamingError(error="reset"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
    ],
)
def test_connection_failures_are_transient(exc: Exception) -> None:
    assert _s3_error(exc, "s3://b/k").transient


def test_missing_credentials_are_permanent() -> None:
    err = _s3_error(NoCredentialsError(), "s3://b/k")
    assert not err.transient and "credentials" in str(err)


@pytest.mark.parametrize(
    ("code", "kind", "transient"),
    [
        (errno.ENOENT, ObjectNotFound, False),
        (errno.ENOSPC, StorageError, False),
        (errno.EACCES, StorageError, False),
        (errno.ESTALE, StorageError, True),
        (errno.ETIMEDOUT, StorageError, True),
    ],
)
def test_os_errors_are_translated(code: int, kind: type[StorageError], transient: bool) -> None:
    err = _os_error(OSError(code, "boom"), "file:///r/k")
    assert isinstance(err, kind) and err.transient is transient
    local = _os_error(OSError(errno.ENOENT, "gone"), "local", missing_is_not_found=False)
    assert not isinstance(local, ObjectNotFound)


def test_enospc_says_so() -> None:
    assert "no space left" in str(_os_error(OSError(errno.ENOSPC, "x"), "file:///r/k"))


def _etag_of_parts(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@pytest.mark.parametrize("size", [0, 10, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 12 * MiB + 5])
def test_digest_predicts_the_etag_s3_reports(size: int) -> None:
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    digest = _Digest(part_size=5 * MiB, threshold=5 * MiB)
    for i in range(0, size, 777_777):  # chunks that straddle part boundaries
        digest.update(data[i : i + 777_777])
    expected = hashlib.md5(data).hexdigest() if size < 5 * MiB else _etag_of_parts(data, 5 * MiB)
    assert digest.expected_etag() == expected
    assert digest.etag_matches(f'"{expected}"') is True
    assert digest.etag_matches('"00000000000000000000000000000000"') is False
    assert digest.etag_matches('"not-an-md5-etag-from-sse-kms"') is None
    assert digest.sha256 == hashlib.sha256(data).hexdigest()


def test_provider_limits_are_the_documented_ones() -> None:
    assert S3_MIN_PART_SIZE_BYTES == 5 * MiB
    assert S3_MAX_PARTS == 10_000


def test_s3_client_factory_uses_standard_retries_and_endpoint() -> None:
    client = make_s3_client(
        AWSConfig(region="eu-west-1", endpoint_url="http://127.0.0.1:9"),
        access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 1 + 5  # five retries
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert "wJalrXUtnFEMI" not in redact("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY leaked")


def test_s3_client_factory_resolves_secret_refs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DR_TEST_KEY_ID", "AKIDREF")
    monkeypatch.setenv("DR_TEST_SECRET", "secret-from-env-1234")
    aws = AWSConfig(
        access_key_id=SecretRef(env="DR_TEST_KEY_ID"),
        secret_access_key=SecretRef(env="DR_TEST_SECRET"),
    )
    client = make_s3_client(aws)
    creds = client._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AKIDREF", "secret-from-env-1234")
    assert "secret-from-env-1234" not in redact("secret-from-env-1234")


def test_s3_clients_share_the_model_but_each_has_its_own_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rotated keys (breach response) give a client with the new keys, never a cached one."""
    aws = AWSConfig(
        access_key_id=SecretRef(env="DR_TEST_KEY_ID"),
        secret_access_key=SecretRef(env="DR_TEST_SECRET"),
    )
    keys = []
    for n in (1, 2):
        monkeypatch.setenv("DR_TEST_KEY_ID", f"AKIDROT{n}")
        monkeypatch.setenv("DR_TEST_SECRET", f"rotated-secret-{n}-5678")
        creds = make_s3_client(aws)._request_signer._credentials
        keys.append((creds.access_key, creds.secret_key))
    assert keys == [("AKIDROT1", "rotated-secret-1-5678"), ("AKIDROT2", "rotated-secret-2-5678")]
    a, b = make_s3_client(aws), make_s3_client(aws)
    assert a is not b  # a test's event hooks on one client never reach another


def test_s3_client_factory_refuses_half_a_key_pair() -> None:
    with pytest.raises(ConfigError):
        make_s3_client(access_key_id="AKID")
    monkeypatch_free = AWSConfig(secret_access_key=SecretRef(env="DR_UNSET_VAR_FOR_TEST"))
    with pytest.raises(ConfigError):
        make_s3_client(monkeypatch_free)


def test_put_result_undo_and_lock() -> None:
    created = PutResult("k", "s3://b/k", 1, "a" * 64, "created")
    assert created.undo == "delete s3://b/k" and not created.locked
    locked = PutResult("k", "s3://b/k", 1, "a" * 64, "created", lock_mode="COMPLIANCE")
    assert locked.locked and "Object Lock" in locked.undo
    assert PutResult("k", "u", 1, "a" * 64, "unchanged").undo == "nothing to undo"


def test_checksum_mismatch_is_permanent_by_default() -> None:
    assert not ChecksumMismatch("x").transient


def test_task_wrappers_retry_through_dr_task() -> None:
    assert operations.put_file_task.name == "storage-put-file"
    assert operations.get_to_file_task.fn is operations.get_to_file
    assert operations.copy_to_local_dir_task.retries == 3
    assert operations.delete_prefix_task.retry_condition_fn is not None
