"""Rows to objects, both ways, on a real PostgreSQL and moto's S3."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from dr.config import AWSConfig
from dr.config_state import FileLink, FileSource
from dr.errors import PostgresError
from lab.pgcluster import Cluster
from tasks.files.links import check_links


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def linked(pg_cluster: Cluster, s3: Any, versioned_bucket: str) -> FileSource:
    """Three rows: one whole, one whose object is gone, one whose object changed; one orphan."""
    for key, data in {"a.png": b"A", "c.png": b"changed", "orphan.png": b"O"}.items():
        s3.put_object(Bucket=versioned_bucket, Key=f"uploads/{key}", Body=data)
    pg_cluster.psql(
        "DROP TABLE IF EXISTS uploads; CREATE TABLE uploads (object_key text, sha256 text);"
        f"INSERT INTO uploads VALUES ('uploads/a.png', '{_sha(b'A')}'),"
        f" ('b.png', '{_sha(b'B')}'), ('c.png', '{_sha(b'C')}'), (NULL, NULL)"
    )
    return FileSource(name="uploads", s3=f"s3://{versioned_bucket}/uploads")


LINK = FileLink(
    name="uploads",
    table="public.uploads",
    key_column="object_key",
    sha256_column="sha256",
    files="uploads",
)


def test_orphans_both_ways_and_mismatches(
    linked: FileSource, pg_cluster: Cluster, aws: AWSConfig
) -> None:
    result = check_links(LINK, linked, conninfo=pg_cluster.conninfo(), aws=aws)
    assert (result.rows, result.objects) == (3, 3)
    assert result.missing_objects == ["b.png"]
    assert result.mismatched == ["c.png"]
    assert result.orphan_objects == ["orphan.png"]
    assert not result.passed and "INCONSISTENT" in result.sentence()


def test_presence_only_and_consistent(
    linked: FileSource, pg_cluster: Cluster, aws: AWSConfig
) -> None:
    pg_cluster.psql("DELETE FROM uploads WHERE object_key = 'b.png'")
    result = check_links(LINK, linked, conninfo=pg_cluster.conninfo(), aws=aws, checksums=False)
    assert result.passed and result.orphan_count == 1


def test_unknown_column_is_a_permanent_error(
    linked: FileSource, pg_cluster: Cluster, aws: AWSConfig
) -> None:
    bad = LINK.model_copy(update={"key_column": "no_such_column"})
    with pytest.raises(PostgresError) as info:
        check_links(bad, linked, conninfo=pg_cluster.conninfo(), aws=aws)
    assert not info.value.transient
