"""Conninfo building, redaction and error classification of the PostgreSQL adapter (no I/O)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from dr.config import PostgresConfig, PostgresNode
from dr.errors import redact
from tasks.postgres import admin, assess, checks, client, fence, local_server

NODE = PostgresNode(name="db1", host="db1.internal", port=5433)


def test_conninfo_holds_node_user_db_and_defaults() -> None:
    d = conninfo_to_dict(client.conninfo(NODE, user="dr", dbname="app"))
    assert d == {
        "host": "db1.internal",
        "port": "5433",
        "user": "dr",
        "dbname": "app",
        "connect_timeout": "3",
        "application_name": "dr-pipelines",
    }


@pytest.mark.parametrize(("seconds", "expected"), [(0.1, "1"), (2, "2"), (2.2, "3"), (10, "10")])
def test_connect_timeout_is_whole_seconds(seconds: float, expected: str) -> None:
    built = client.conninfo(NODE, user="dr", dbname="app", connect_timeout_seconds=seconds)
    assert conninfo_to_dict(built)["connect_timeout"] == expected


def test_extra_keywords_and_application_name() -> None:
    built = client.conninfo(
        NODE, user="dr", dbname="app", application_name="dr probe", sslmode="require"
    )
    d = conninfo_to_dict(built)
    assert d["sslmode"] == "require"
    assert d["application_name"] == "dr probe"


@pytest.mark.parametrize(
    "password", ["plain-Passw0rd", "with spaces in it", 'it\'s "quoted"', "back\\slash=;&"]
)
def test_password_is_quoted_and_registered_for_redaction(password: str) -> None:
    built = client.conninfo(NODE, user="dr", dbname="app", password=password)
    assert conninfo_to_dict(built)["password"] == password
    assert password not in redact(f"failed with {built}")
    assert password not in client.describe_conninfo(built)
    assert password not in client.redact_conninfo(built)


def test_odd_database_names_survive_quoting() -> None:
    name = "my db 'x'"
    assert conninfo_to_dict(client.conninfo(NODE, user="dr", dbname=name))["dbname"] == name


def test_multi_host_lists_every_node_primary_first() -> None:
    config = PostgresConfig(
        primary=PostgresNode(name="a", host="10.0.0.1", port=5432),
        replicas=[
            PostgresNode(name="b", host="10.0.0.2", port=5433),
            PostgresNode(name="c", host="10.0.0.3"),
        ],
        user="app",
        databases=["shop"],
        connect_timeout_seconds=1.5,
    )
    d = conninfo_to_dict(client.multi_host_conninfo(config, "shop", password="S3cret-value"))
    assert d["host"] == "10.0.0.1,10.0.0.2,10.0.0.3"
    assert d["port"] == "5432,5433,5432"
    assert d["user"] == "app" and d["dbname"] == "shop"
    assert d["target_session_attrs"] == "read-write"
    assert d["connect_timeout"] == "2"
    assert d["password"] == "S3cret-value"
    standby = conninfo_to_dict(
        client.multi_host_conninfo(config, "shop", target_session_attrs="standby")
    )
    assert standby["target_session_attrs"] == "standby" and "password" not in standby


def test_describe_names_the_server_without_secrets() -> None:
    built = client.conninfo(NODE, user="dr", dbname="app", password="Describe-me-not")
    assert client.describe_conninfo(built) == "dr@db1.internal:5433/app"
    assert client.describe_conninfo("host=a,b port=1,2 user=u dbname=d") == "u@a:1,b:2/d"
    assert client.describe_conninfo("host=a,b port=5 dbname=d") == "a:5,b:5/d"
    assert client.describe_conninfo("user=u") == "u@localhost:5432/u"
    assert client.describe_conninfo("host='unterminated") == "<invalid conninfo>"


def test_redact_conninfo_masks_the_password_only() -> None:
    masked = client.redact_conninfo("host=h port=1 user=u password=Hunter2-pw dbname=d")
    assert conninfo_to_dict(masked) == {
        "host": "h",
        "port": "1",
        "user": "u",
        "password": "***",
        "dbname": "d",
    }
    # Unparseable text is still scrubbed by the shared patterns.
    assert "Hunter3-pw" not in client.redact_conninfo("host='bad password=Hunter3-pw")


@pytest.mark.parametrize(
    ("message", "kind", "transient"),
    [
        (
            'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
            "connections?",
            "refused",
            True,
        ),
        ("connection timeout expired", "timeout", True),
        ("FATAL:  the database system is starting up", "starting_up", True),
        ("FATAL:  the database system is shutting down", "shutting_down", True),
        ("FATAL:  sorry, too many clients already", "too_many_clients", True),
        ("server closed the connection unexpectedly", "network", True),
        ("connection is bad: No route to host", "network", True),
        ('FATAL:  password authentication failed for user "app"', "auth", False),
        ('FATAL:  role "ghost" does not exist', "auth", False),
        ('FATAL:  role "app" is not permitted to log in', "auth", False),
        ("fe_sendauth: no password supplied", "auth", False),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.9"', "auth", False),
        ('FATAL:  database "nope" does not exist', "no_database", False),
        (
            'FATAL:  database "appdb" is not currently accepting connections',
            "not_accepting_connections",
            False,
        ),
        ('could not translate host name "db.invalid" to address', "unknown_host", False),
        ("server is in hot standby mode", "no_writable_host", True),
        ("something nobody has seen before", "other", False),
        # Several hosts: a wrong password anywhere is a configuration problem.
        (
            "Multiple connection attempts failed. All failures were:\n- host: 'a': "
            "Connection refused\n- host: 'b': password authentication failed for user \"x\"",
            "auth",
            False,
        ),
    ],
)
def test_connection_errors_are_classified(message: str, kind: str, transient: bool) -> None:
    assert client.connection_error_kind(message) == (kind, transient)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.SerializationFailure("could not serialize"), True),
        (psycopg.errors.DeadlockDetected("deadlock"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), True),
        (psycopg.OperationalError("consuming input failed: server closed the connection"), True),
        (psycopg.errors.UndefinedTable('relation "t" does not exist'), False),
        (psycopg.errors.InsufficientPrivilege("permission denied"), False),
        (psycopg.errors.ReadOnlySqlTransaction("read-only transaction"), False),
    ],
)
def test_query_errors_are_classified(error: psycopg.Error, transient: bool) -> None:
    err = client.query_error(error, "host=h user=u password=Query-Secret-1 dbname=d", "probe")
    assert err.transient is transient
    assert "Query-Secret-1" not in str(err)
    assert str(err).startswith("probe on u@h:5432/d failed")


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        ("0/3000148", "0/3000000", 0x148),
        ("0/3000000", "0/3000148", -0x148),
        ("1/0", "0/FFFFFFFF", 1),
        ("16/B374D848", "16/B374D848", 0),
    ],
)
def test_wal_lsn_diff(a: str, b: str, diff: int) -> None:
    assert assess.wal_lsn_diff(a, b) == diff


def test_wal_lsn_diff_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        assess.wal_lsn_diff("3000148", "0/0")


def test_every_task_wraps_its_plain_function() -> None:
    wrapped = {
        "health", "role", "replication_status", "standby_status", "ensure_promoted",
        "fence_by_connections", "unfence_by_connections", "stop_local_server",
        "start_local_server", "prove_not_writable", "run_sql_check", "run_validation_query",
        "table_row_counts", "schema_fingerprint", "create_database", "drop_database",
        "terminate_sessions", "checksum_failures", "set_role_login", "set_role_password",
        "list_roles_and_privileges", "server_log_files",
    }  # fmt: skip
    modules = (assess, fence, local_server, checks, admin)
    for name in wrapped:
        # Each wrapper lives in the module of its function, and only there.
        (module,) = [m for m in modules if hasattr(m, f"{name}_task")]
        task = getattr(module, f"{name}_task")
        assert task.fn is getattr(module, name)
        assert task.name.startswith("postgres-")
    # A fence proof is an observation: never retried into a different answer.
    assert fence.prove_not_writable_task.retries == 0
    assert fence.ensure_promoted_task.retries > 0
