"""The PostgreSQL adapter against real servers: assess, promote, fence, check, administer."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr.config import PostgresConfig, PostgresNode
from dr.errors import PostgresError, PreconditionError, UnsafeTargetError
from lab.pgcluster import Cluster, free_port
from tasks.postgres import admin, assess, checks, client, fence, local_server

from .conftest import Pair, ci, os_user

pytestmark = pytest.mark.integration

SHOP_SQL = """
CREATE SCHEMA sales;
CREATE TABLE sales.customers (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES sales.customers (id),
    amount numeric(12, 2) NOT NULL CHECK (amount >= 0)
);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE TABLE sales."Mixed Case" (x int);
CREATE TABLE sales.events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE sales.events_2024 PARTITION OF sales.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE sales.events_2025 PARTITION OF sales.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO sales.customers (email) VALUES ('a@example.com'), ('b@example.com'), ('c@example.com');
INSERT INTO sales.orders (customer_id, amount) VALUES (1, 10), (1, 20), (2, 5), (3, 7.5), (3, 0);
INSERT INTO sales."Mixed Case" VALUES (1), (2);
INSERT INTO sales.events VALUES (1, '2024-05-01'), (2, '2024-06-01'), (3, '2025-02-01');
CREATE TABLE public.empty_table (id int);
"""

SHOP_COUNTS = {
    "public.empty_table": 0,
    "sales.Mixed Case": 2,
    "sales.customers": 3,
    "sales.events_2024": 2,
    "sales.events_2025": 1,
    "sales.orders": 5,
}


@pytest.fixture(scope="session")
def shop_db(pg_pair: Pair) -> str:
    """A small application database on the shared primary."""
    pg_pair.primary.psql("CREATE DATABASE shop")
    pg_pair.primary.psql(SHOP_SQL, dbname="shop")
    return "shop"


def _role(cluster: Cluster, name: str, password: str) -> None:
    cluster.psql(f"DROP ROLE IF EXISTS {name}")
    cluster.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")


def _refused_conninfo() -> str:
    return client.conninfo(
        PostgresNode(name="nobody", host="127.0.0.1", port=free_port()),
        user="postgres",
        dbname="postgres",
    )


# --------------------------------------------------------------------------- assessment


def test_health_and_role_of_primary_and_replica(pg_pair: Pair) -> None:
    primary = assess.health(ci(pg_pair.primary))
    assert primary.reachable and primary.error is None
    assert primary.in_recovery is False
    assert primary.role == "primary" and assess.role(ci(pg_pair.primary)) == "primary"
    assert primary.is_accepting_writes is True
    assert primary.timeline_id == 1
    assert primary.current_lsn and "/" in primary.current_lsn
    assert primary.server_version_num and primary.server_version_num >= 100000
    assert primary.replay_lag_seconds is None
    assert primary.target == f"postgres@127.0.0.1:{pg_pair.primary.port}/postgres"

    replica = assess.health(ci(pg_pair.replica))
    assert replica.reachable and replica.in_recovery is True
    assert replica.role == "standby" and assess.role(ci(pg_pair.replica)) == "standby"
    assert replica.is_accepting_writes is False
    assert replica.timeline_id == 1
    assert replica.current_lsn is None
    assert replica.received_lsn and replica.replayed_lsn
    assert replica.replay_lag_seconds is not None and replica.replay_lag_seconds >= 0


def test_unreachable_server_is_reported_not_raised() -> None:
    conninfo = _refused_conninfo()
    result = assess.health(conninfo)
    assert result.reachable is False
    assert result.role == "unreachable" and assess.role(conninfo) == "unreachable"
    assert "refused" in (result.error or "").lower()
    assert result.in_recovery is None and result.timeline_id is None


def test_replication_status_shows_streaming_replica_and_lag(pg_pair: Pair) -> None:
    primary, replica = ci(pg_pair.primary), ci(pg_pair.replica)
    [status] = [
        s for s in assess.replication_status(primary) if s.application_name == "shared-replica"
    ]
    assert status.state == "streaming"
    assert status.sync_state == "async"
    assert status.client_addr == "127.0.0.1"
    assert status.lag_bytes is not None and status.lag_bytes >= 0
    assert status.sent_lsn and status.replay_lsn

    standby = assess.standby_status(replica)
    assert standby.in_recovery is True
    assert standby.receiver_status == "streaming"
    assert standby.sender_port == pg_pair.primary.port
    assert standby.slot_name == "shared_replica"
    assert standby.received_tli == 1

    # A replayed commit first, so the standby has a last replay time to measure from.
    pg_pair.primary.psql(
        "CREATE TABLE IF NOT EXISTS lag_probe (x int); INSERT INTO lag_probe VALUES (0)"
    )
    target = assess.current_wal_lsn(primary)
    deadline = time.monotonic() + 10
    while assess.wal_lsn_diff(assess.current_wal_lsn(replica), target) < 0:
        assert time.monotonic() < deadline, "the replica did not replay the commit"
        time.sleep(0.05)
    # With replay paused, new WAL arrives but is not applied: the lag must show it.
    pg_pair.replica.psql("SELECT pg_catalog.pg_wal_replay_pause()")
    try:
        pg_pair.primary.psql("INSERT INTO lag_probe SELECT generate_series(1, 20000)")
        target = assess.current_wal_lsn(primary)
        deadline = time.monotonic() + 10
        while True:
            standby = assess.standby_status(replica)
            if standby.flushed_lsn and assess.wal_lsn_diff(standby.flushed_lsn, target) >= 0:
                break
            assert time.monotonic() < deadline, "the replica did not receive the new WAL"
            time.sleep(0.05)
        assert standby.replay_backlog_bytes is not None and standby.replay_backlog_bytes > 0
        [status] = [
            s for s in assess.replication_status(primary) if s.application_name == "shared-replica"
        ]
        assert status.lag_bytes is not None and status.lag_bytes > 100_000
        lag = assess.health(replica).replay_lag_seconds
        assert lag is not None and lag > 0
    finally:
        pg_pair.replica.psql("SELECT pg_catalog.pg_wal_replay_resume()")
    deadline = time.monotonic() + 10
    while assess.standby_status(replica).replay_backlog_bytes:
        assert time.monotonic() < deadline, "replay did not catch up after resume"
        time.sleep(0.05)


def test_standby_status_of_a_primary_says_so(pg_pair: Pair) -> None:
    status = assess.standby_status(ci(pg_pair.primary))
    assert status.in_recovery is False
    assert status.receiver_status is None


def test_wal_positions_and_checksums_and_logs(pg_pair: Pair) -> None:
    conninfo = ci(pg_pair.primary)
    before = assess.current_wal_lsn(conninfo)
    pg_pair.primary.psql(
        "CREATE TABLE IF NOT EXISTS wal_probe (x int); INSERT INTO wal_probe VALUES (1)"
    )
    after = assess.current_wal_lsn(conninfo)
    assert assess.wal_lsn_diff(after, before) > 0
    assert assess.checksum_failures(conninfo)["postgres"] == 0
    files = assess.server_log_files(conninfo)
    assert files and all(f["name"].endswith(".log") for f in files)
    assert all(f["size_bytes"] >= 0 for f in files)


def test_multi_host_conninfo_lands_on_the_primary(pg_pair: Pair) -> None:
    # The standby listed first, as in a configuration written before a failover.
    config = PostgresConfig(
        primary=PostgresNode(name="listed-first", host="127.0.0.1", port=pg_pair.replica.port),
        replicas=[PostgresNode(name="listed-second", host="127.0.0.1", port=pg_pair.primary.port)],
        databases=["postgres"],
    )
    with client.connect(client.multi_host_conninfo(config, "postgres")) as conn:
        assert conn.info.port == pg_pair.primary.port
        assert conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone() == (False,)
    standby = client.multi_host_conninfo(config, "postgres", target_session_attrs="standby")
    with client.connect(standby) as conn:
        assert conn.info.port == pg_pair.replica.port


# --------------------------------------------------------------------------- errors


def test_connection_refused_is_transient() -> None:
    with pytest.raises(PostgresError) as info:
        client.connect(_refused_conninfo())
    assert info.value.transient is True
    assert info.value.kind == "refused"  # type: ignore[attr-defined]


def test_wrong_password_is_permanent_and_never_shown(pg_pair: Pair) -> None:
    _role(pg_pair.primary, "dr_wrongpw", "Right-Passw0rd-1")
    wrong = "Wr0ng-Passw0rd-xyzzy"
    conninfo = ci(pg_pair.primary, user="dr_wrongpw", password=wrong)
    with pytest.raises(PostgresError) as info:
        client.connect(conninfo)
    assert info.value.transient is False
    assert info.value.kind == "auth"  # type: ignore[attr-defined]
    assert wrong not in str(info.value)
    assert "dr_wrongpw@127.0.0.1" in str(info.value)
    # A wrong password must never read as "the server is down".
    with pytest.raises(PostgresError):
        assess.health(conninfo)
    # The right one works.
    with client.connect(
        ci(pg_pair.primary, user="dr_wrongpw", password="Right-Passw0rd-1")
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dr_wrongpw",)


def test_unknown_database_is_permanent(pg_pair: Pair) -> None:
    with pytest.raises(PostgresError) as info:
        client.connect(ci(pg_pair.primary, dbname="no_such_db"))
    assert info.value.transient is False
    assert info.value.kind == "no_database"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- promotion


def test_promote_waits_and_is_idempotent(fresh_pair: Pair) -> None:
    replica = ci(fresh_pair.replica)
    assert fence.ensure_promoted(ci(fresh_pair.primary)).outcome == "unchanged"

    first = fence.ensure_promoted(replica, wait_seconds=30)
    assert first.outcome == "changed"
    assert first.system == "postgres" and first.action == "promote"
    assert first.before["in_recovery"] is True and first.after["in_recovery"] is False
    assert first.compensable is False and first.undo
    # It returned only once the node takes writes: no waiting needed here.
    with client.connect(replica) as conn:
        conn.execute("CREATE TABLE after_promotion (x int)")
        conn.execute("INSERT INTO after_promotion VALUES (1)")
    now = assess.health(replica)
    assert now.role == "primary" and now.is_accepting_writes
    assert now.timeline_id == 2

    second = fence.ensure_promoted(replica, wait_seconds=30)
    assert second.outcome == "unchanged"
    assert second.undo == ""


# --------------------------------------------------------------------------- fencing


def test_fence_by_connections_is_proven_and_undone(fresh_primary: Cluster) -> None:
    fresh_primary.psql("CREATE DATABASE appdb")
    fresh_primary.psql("CREATE TABLE t (x int)", dbname="appdb")
    maintenance, app = ci(fresh_primary), ci(fresh_primary, dbname="appdb")
    app_session = psycopg.connect(app, autocommit=True)
    app_session.execute("INSERT INTO t VALUES (1)")

    with pytest.raises(PreconditionError):
        fence.fence_by_connections(app, dbnames=["appdb"])

    change = fence.fence_by_connections(maintenance, dbnames=["appdb"])
    assert change.outcome == "changed"
    assert change.after["terminated_sessions"] >= 1
    assert change.before["allow_connections"] == {"appdb": True}
    assert change.compensable

    # The old session is gone, new ones are refused, the rest are read-only.
    with pytest.raises(psycopg.OperationalError):
        app_session.execute("INSERT INTO t VALUES (2)")
    app_session.close()
    proof_app = fence.prove_not_writable(app)
    assert proof_app.proven and proof_app.method == "not_accepting_connections"
    proof_maintenance = fence.prove_not_writable(maintenance)
    assert proof_maintenance.proven and proof_maintenance.method == "read_only"

    again = fence.fence_by_connections(maintenance, dbnames=["appdb"])
    assert again.outcome == "unchanged"

    undo = fence.unfence_by_connections(maintenance, **change.undo_data)
    assert undo.outcome == "changed"
    proof_after = fence.prove_not_writable(app)
    assert not proof_after.proven and proof_after.method == "write_succeeded"
    with client.connect(app) as conn:
        conn.execute("INSERT INTO t VALUES (3)")
    assert fence.unfence_by_connections(maintenance, **change.undo_data).outcome == "unchanged"


def test_stopped_server_is_proven_not_writable(fresh_primary: Cluster) -> None:
    conninfo = ci(fresh_primary)
    user = os_user()
    change = local_server.stop_local_server(
        fresh_primary.data_dir, fresh_primary.bin_dir, user, mode="fast"
    )
    assert change.outcome == "changed"
    assert change.before["running"] is True and change.after["running"] is False
    assert not fresh_primary.is_running()
    proof = fence.prove_not_writable(conninfo)
    assert proof.proven and proof.method == "refused"

    again = local_server.stop_local_server(fresh_primary.data_dir, fresh_primary.bin_dir, user)
    assert again.outcome == "unchanged"

    started = local_server.start_local_server(**change.undo_data)
    assert started.outcome == "changed"
    assert not fence.prove_not_writable(conninfo).proven


def test_running_primary_is_not_proven(pg_pair: Pair) -> None:
    proof = fence.prove_not_writable(ci(pg_pair.primary))
    assert proof.proven is False
    assert proof.method == "write_succeeded"
    standby = fence.prove_not_writable(ci(pg_pair.replica))
    assert standby.proven and standby.method == "in_recovery"


def test_unauthenticated_proof_is_not_proven(pg_pair: Pair) -> None:
    proof = fence.prove_not_writable(ci(pg_pair.primary, user="dr_nobody", password="Nope-12345"))
    assert proof.proven is False and proof.method == "unknown"
    assert "Nope-12345" not in proof.reason


# --------------------------------------------------------------------------- checks


def test_sql_checks(pg_pair: Pair, shop_db: str) -> None:
    conninfo = ci(pg_pair.primary, dbname=shop_db)
    ok = checks.run_sql_check(
        conninfo, "SELECT count(*) > %s FROM sales.orders", [3], name="orders"
    )
    assert ok.ok and ok.value is True and ok.name == "orders" and ok.duration_seconds >= 0
    assert not checks.run_sql_check(conninfo, "SELECT count(*) > %s FROM sales.orders", [5]).ok
    none = checks.run_sql_check(conninfo, "SELECT 1 WHERE false")
    assert not none.ok and none.detail == "no rows returned"
    broken = checks.run_sql_check(conninfo, "SELECT * FROM sales.no_such_table")
    assert not broken.ok and "42P01" in broken.detail
    # Checks run read-only: one that tries to write fails and changes nothing.
    writer = checks.run_sql_check(
        conninfo,
        'WITH w AS (INSERT INTO sales."Mixed Case" VALUES (99) RETURNING 1) SELECT true FROM w',
    )
    assert not writer.ok and "25006" in writer.detail
    assert checks.table_row_counts(conninfo)["sales.Mixed Case"] == 2


def test_validation_queries(pg_pair: Pair, shop_db: str) -> None:
    conninfo = ci(pg_pair.primary, dbname=shop_db)
    orphans = (
        "SELECT o.id FROM sales.orders o LEFT JOIN sales.customers c ON c.id = o.customer_id "
        "WHERE c.id IS NULL"
    )
    no_orphans = checks.run_validation_query(
        conninfo, name="no orphans", sql=orphans, expect="no_rows"
    )
    assert no_orphans.ok and no_orphans.value == 0
    rows = checks.run_validation_query(
        conninfo, name="has customers", sql="SELECT id FROM sales.customers", expect="rows"
    )
    assert rows.ok and rows.value == 3
    total = checks.run_validation_query(
        conninfo,
        name="amounts",
        sql="SELECT sum(amount) = %(total)s FROM sales.orders",
        params={"total": 42.5},
    )
    assert total.ok
    failing = checks.run_validation_query(
        conninfo, name="no customers?", sql="SELECT id FROM sales.customers", expect="no_rows"
    )
    assert not failing.ok and failing.value == 3


def test_row_counts_are_exact(pg_pair: Pair, shop_db: str) -> None:
    conninfo = ci(pg_pair.primary, dbname=shop_db)
    assert checks.table_row_counts(conninfo) == SHOP_COUNTS
    estimates = checks.table_row_counts(conninfo, exact=False)
    assert set(estimates) == set(SHOP_COUNTS)


def test_schema_fingerprint_of_a_restored_copy(pg_pair: Pair, shop_db: str, tmp_path: Path) -> None:
    primary = pg_pair.primary
    maintenance = ci(primary)
    dump = tmp_path / "shop.dump"
    common = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "--no-password"]
    subprocess.run(
        [str(primary.bin("pg_dump")), *common, "-Fc", "-f", str(dump), shop_db], check=True
    )
    assert admin.create_database(maintenance, "shop_copy").outcome == "created"
    try:
        subprocess.run(
            [str(primary.bin("pg_restore")), *common, "-d", "shop_copy", str(dump)], check=True
        )
        source = checks.schema_fingerprint(ci(primary, dbname=shop_db))
        copy = checks.schema_fingerprint(ci(primary, dbname="shop_copy"))
        assert copy == source
        assert "sales.orders" in source["tables"]
        assert "sales.orders_customer_idx" in source["indexes"]
        assert any(k.startswith("sales.orders.") and "FOREIGN KEY" in v
                   for k, v in source["constraints"].items())  # fmt: skip
        assert checks.table_row_counts(ci(primary, dbname="shop_copy")) == SHOP_COUNTS

        primary.psql("ALTER TABLE sales.orders ADD COLUMN note text", dbname="shop_copy")
        altered = checks.schema_fingerprint(ci(primary, dbname="shop_copy"))
        assert altered["sha256"] != source["sha256"]
        assert altered["tables"]["sales.orders"] != source["tables"]["sales.orders"]
        assert altered["tables"]["sales.customers"] == source["tables"]["sales.customers"]
    finally:
        assert admin.drop_database(maintenance, "shop_copy", force=True).outcome == "deleted"


# --------------------------------------------------------------------------- databases


def test_databases_create_drop_and_protection(pg_pair: Pair, shop_db: str) -> None:
    maintenance = ci(pg_pair.primary)
    for name in ("postgres", "template0", "template1"):
        with pytest.raises(UnsafeTargetError):
            admin.drop_database(maintenance, name)
    with pytest.raises(UnsafeTargetError):
        admin.drop_database(maintenance, shop_db, must_not_be=[shop_db])
    assert admin.database_exists(maintenance, shop_db)

    odd = 'scratch "quoted"; DROP DATABASE shop; --'
    assert admin.create_database(maintenance, odd).outcome == "created"
    assert admin.create_database(maintenance, odd).outcome == "unchanged"
    assert admin.database_exists(maintenance, odd)
    dropped = admin.drop_database(maintenance, odd)
    assert dropped.outcome == "deleted" and dropped.compensable is False
    assert admin.drop_database(maintenance, odd).outcome == "unchanged"
    assert not admin.database_exists(maintenance, odd)
    assert admin.database_exists(maintenance, shop_db)


def test_terminate_sessions(pg_pair: Pair, shop_db: str) -> None:
    conninfo = ci(pg_pair.primary, dbname=shop_db)
    victims = [psycopg.connect(conninfo, autocommit=True) for _ in range(2)]
    bystander = psycopg.connect(ci(pg_pair.primary), autocommit=True)
    try:
        assert admin.terminate_sessions(ci(pg_pair.primary), dbname=shop_db) == 2
        for conn in victims:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in [*victims, bystander]:
            conn.close()


# --------------------------------------------------------------------------- roles


@pytest.fixture
def log_statements(pg_pair: Pair) -> Iterator[None]:
    """Log every statement on the shared primary while the test runs."""
    primary = pg_pair.primary
    primary.psql("ALTER SYSTEM SET log_statement = 'all'")
    primary.psql("SELECT pg_catalog.pg_reload_conf()")
    deadline = time.monotonic() + 10
    while primary.psql("SHOW log_statement") != "all":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield
    primary.psql("ALTER SYSTEM RESET log_statement")
    primary.psql("SELECT pg_catalog.pg_reload_conf()")


def test_set_role_password_rotates_and_never_reveals(pg_pair: Pair, log_statements: None) -> None:
    primary = pg_pair.primary
    old, new = "Old-Passw0rd-111", "New-Passw0rd-222"
    _role(primary, "dr_rotate", old)
    with client.connect(ci(primary, user="dr_rotate", password=old)):
        pass

    change = admin.set_role_password(ci(primary), "dr_rotate", new)
    assert change.outcome == "updated" and change.compensable is False
    text = change.model_dump_json() + repr(change) + change.summary()
    assert new not in text and old not in text

    with pytest.raises(PostgresError) as info:
        client.connect(ci(primary, user="dr_rotate", password=old))
    assert info.value.transient is False
    with client.connect(ci(primary, user="dr_rotate", password=new)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dr_rotate",)
    # Even with every statement logged, the new password is not in the server log.
    logs = "".join(p.read_text(errors="replace") for p in primary.log_dir.glob("*.log"))
    assert "dr_rotate" in logs
    assert new not in logs

    with pytest.raises(PreconditionError):
        admin.set_role_password(ci(primary), "dr_no_such_role", new)


def test_set_role_login_false_terminates_and_blocks(pg_pair: Pair) -> None:
    primary = pg_pair.primary
    password = "Login-Passw0rd-1"
    _role(primary, "dr_login", password)
    role_ci = ci(primary, user="dr_login", password=password)
    session = client.connect(role_ci)
    assert admin.role_exists(ci(primary), "dr_login")

    change = admin.set_role_login(ci(primary), "dr_login", False)
    assert change.outcome == "changed"
    assert change.after == {"login": False, "terminated_sessions": 1}
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    with pytest.raises(PostgresError) as info:
        client.connect(role_ci)
    assert info.value.transient is False and info.value.kind == "auth"  # type: ignore[attr-defined]
    assert admin.set_role_login(ci(primary), "dr_login", False).outcome == "unchanged"

    assert admin.set_role_login(ci(primary), "dr_login", True).outcome == "changed"
    with client.connect(role_ci) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    with pytest.raises(UnsafeTargetError):
        admin.set_role_login(ci(primary), "postgres", False)
    with pytest.raises(PreconditionError):
        admin.set_role_login(ci(primary), "dr_no_such_role", False)
    assert not admin.role_exists(ci(primary), "dr_no_such_role")


def test_roles_and_privileges_as_evidence(pg_pair: Pair, shop_db: str) -> None:
    primary = pg_pair.primary
    _role(primary, "dr_reader", "Reader-Passw0rd-1")
    primary.psql(
        "GRANT USAGE ON SCHEMA sales TO dr_reader; GRANT SELECT ON sales.orders TO dr_reader",
        dbname=shop_db,
    )
    try:
        roles = {r["name"]: r for r in admin.list_roles_and_privileges(ci(primary, dbname=shop_db))}
        assert roles["postgres"]["superuser"] is True
        reader = roles["dr_reader"]
        assert reader["login"] is True and reader["superuser"] is False
        assert reader["table_privileges"] == {"sales.orders": ["SELECT"]}
        assert shop_db in reader["can_connect"]
    finally:
        primary.psql("REVOKE ALL ON sales.orders FROM dr_reader", dbname=shop_db)
        primary.psql("REVOKE ALL ON SCHEMA sales FROM dr_reader", dbname=shop_db)


def test_a_former_standby_never_starts_without_its_signal_file(fresh_pair: Pair) -> None:
    """Without standby.signal a stopped standby would come up as a second primary."""
    replica, user = fresh_pair.replica, os_user()
    local_server.stop_local_server(replica.data_dir, replica.bin_dir, user, mode="fast")
    signal = replica.data_dir / "standby.signal"
    owner = (signal.stat().st_uid, signal.stat().st_gid)
    signal.unlink()
    with pytest.raises(PreconditionError, match=r"was a standby.*second primary"):
        local_server.start_local_server(replica.data_dir, replica.bin_dir, user)
    assert not replica.is_running()
    signal.touch()
    os.chown(signal, *owner)
    started = local_server.start_local_server(replica.data_dir, replica.bin_dir, user)
    assert started.outcome == "changed"
    assert fence.prove_not_writable(ci(replica)).method == "in_recovery"


def test_a_tool_a_killed_run_left_on_a_data_directory_is_waited_for(tmp_path: Path) -> None:
    """An orphaned pg_rewind (its run killed) still writes the directory: wait, then go on."""
    from tasks.postgres import datadir

    data = tmp_path / "data"
    data.mkdir()
    # argv: /bin/sh -c "sleep 1; true" pg_rewind -D <data>, like runuser ... pg_rewind -D <data>
    orphan = subprocess.Popen(["/bin/sh", "-c", "sleep 1; true", "pg_rewind", "-D", str(data)])
    try:
        assert datadir.tools_at_work(data) == [(orphan.pid, "pg_rewind")]
        assert datadir.tools_at_work(tmp_path / "other") == []
        with pytest.raises(PreconditionError, match="still being changed"):
            datadir.wait_for_tools(data, 0.1)
        assert datadir.wait_for_tools(data, 30) == [(orphan.pid, "pg_rewind")]
        assert datadir.tools_at_work(data) == []
    finally:
        orphan.kill()
        orphan.wait()
