"""PostgreSQL security steps on a real server of the test's own (no lab needed).

pg_hba blocks go on top and are proven loaded, stay idempotent and come off exactly; a held
session ends when its role is disabled and the role cannot log in again; logs are copied
from the folder and through SQL alike; a dropped role is gone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dr.errors import ConfigError, PostgresError
from lab.pgcluster import Cluster, temporary_cluster
from tasks.postgres import admin as roles
from tasks.postgres import hba, intruder, security

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROGUE = "dr_test_rogue"
ROGUE_PASSWORD = "dr-test-rogue-password-0123"


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="dr-breach-pg-"))
    root.chmod(0o755)
    try:
        with temporary_cluster(root, "pg") as cluster:
            cluster.psql("CREATE DATABASE app")
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _admin(server: Cluster, db: str = "postgres") -> str:
    return server.conninfo(db)


def _hba(server: Cluster) -> list[str]:
    return (server.data_dir / "pg_hba.conf").read_text().splitlines()


def test_block_puts_rejects_first_and_unblock_removes_exactly_them(server: Cluster) -> None:
    original = _hba(server)
    change = hba.block_cidrs_in_hba(_admin(server), ["192.0.2.7", "2001:db8::/32"], reason="t1")
    assert change.outcome == "updated"
    assert change.after["blocked"] == ["192.0.2.7/32", "2001:db8::/32"]
    rules = hba.hba_rules(_admin(server))
    assert [r["method"] for r in rules[:2]] == ["reject", "reject"]
    assert rules[0]["address"] == "192.0.2.7" and all(r["error"] is None for r in rules)
    first_rule = next(i for i, line in enumerate(_hba(server)) if line and not line.startswith("#"))
    assert _hba(server)[first_rule].split() == ["host", "all", "all", "192.0.2.7/32", "reject"]
    # Ours stay on top: blocking again (or a subset) changes nothing.
    assert hba.block_cidrs_in_hba(_admin(server), ["192.0.2.7/32"]).outcome == "unchanged"
    # Someone's own line, added meanwhile, survives the unblock.
    path = server.data_dir / "pg_hba.conf"
    path.write_text(path.read_text() + "# a person's comment\n")
    undone = hba.unblock_cidrs_in_hba(_admin(server), change)
    assert undone.outcome == "updated" and undone.after["removed"] == change.after["added"]
    assert _hba(server) == [*original, "# a person's comment"]
    assert hba.unblock_cidrs_in_hba(_admin(server), change).outcome == "unchanged"
    assert [r for r in hba.hba_rules(_admin(server)) if r["method"] == "reject"] == []


def test_block_refuses_invalid_networks(server: Cluster) -> None:
    before = _hba(server)
    with pytest.raises(ConfigError, match="invalid source network"):
        hba.block_cidrs_in_hba(_admin(server), ["not-an-address"])
    with pytest.raises(ConfigError, match="every address"):
        hba.normalize_cidrs(["0.0.0.0/0"])
    assert _hba(server) == before


def test_disabled_role_loses_its_session_and_cannot_come_back(server: Cluster) -> None:
    admin = _admin(server)
    created = intruder.create_login_role(admin, ROGUE, ROGUE_PASSWORD)
    assert created.outcome == "created" and ROGUE_PASSWORD not in created.model_dump_json()
    rogue_ci = server.conninfo("app", user=ROGUE, password=ROGUE_PASSWORD)
    session = intruder.HeldSession(rogue_ci).start()
    try:
        assert session.alive and session.user == ROGUE
        snapshot = security.session_snapshot(admin)
        assert any(s["pid"] == session.pid and s["user"] == ROGUE for s in snapshot)
        assert security.try_login(rogue_ci) == (True, f"logged in as {ROGUE}")
        change = roles.set_role_login(admin, ROGUE, False)
        assert change.after["terminated_sessions"] >= 1
        assert session.wait_ended(5) and "terminating connection" in (session.error or "")
        assert security.sessions_alive(admin, [session.pid or 0]) == []
        assert security.role_can_login(admin, ROGUE) is False
        ok, why = security.try_login(rogue_ci)
        assert not ok and "not permitted to log in" in why
        wrong = server.conninfo("app", user=ROGUE, password="wrong-password")
        roles.set_role_login(admin, ROGUE, True)
        ok, why = security.try_login(wrong)
        assert not ok and "password authentication failed" in why
    finally:
        session.close()
        dropped = intruder.drop_role(admin, ROGUE, dbnames=["app"])
    assert dropped.outcome == "deleted"
    assert security.role_can_login(admin, ROGUE) is None
    assert intruder.drop_role(admin, ROGUE).outcome == "unchanged"


def test_try_login_raises_when_the_server_is_unreachable() -> None:
    from lab.pgcluster import free_port

    ci = f"host=127.0.0.1 port={free_port()} dbname=app user=x password=y connect_timeout=1"
    with pytest.raises(PostgresError, match="unreachable"):
        security.try_login(ci)


def test_server_logs_are_copied_from_the_folder_and_through_sql(
    server: Cluster, tmp_path: Path
) -> None:
    from_folder = security.collect_server_logs(
        _admin(server), tmp_path / "a", local_log_dir=server.log_dir
    )
    via_sql = security.collect_server_logs(_admin(server), tmp_path / "b")
    assert from_folder and via_sql
    assert {e["name"] for e in from_folder} >= {e["name"] for e in via_sql}
    assert {e["via"] for e in from_folder} == {"file"} and {e["via"] for e in via_sql} == {"sql"}
    for entry in via_sql:
        assert Path(entry["path"]).stat().st_size == entry["size_bytes"] > 0


def test_newest_heartbeat(server: Cluster) -> None:
    with psycopg.connect(server.conninfo("app"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.dr_heartbeat "
            "(writer text, seq bigint, ts timestamptz DEFAULT clock_timestamp())"
        )
        conn.execute("INSERT INTO public.dr_heartbeat (writer, seq) VALUES ('app', 1)")
    assert security.newest_heartbeat(server.conninfo("app"), "app") is not None
    assert security.newest_heartbeat(server.conninfo("app"), "nobody") is None
