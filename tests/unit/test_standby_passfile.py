"""No password on disk in a data directory (issue 14): standbys use a passfile."""

from __future__ import annotations

import stat
from pathlib import Path

from tasks.postgres.datadir import passfile_path, read_auto_conf
from tasks.postgres.standby import configure_standby

SECRET = "s3cr:et\\pw"


def _datadir(tmp_path: Path) -> Path:
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    (data / "postgresql.auto.conf").write_text(
        "primary_conninfo = 'host=old user=postgres password=leaked'\n"
    )
    return data


def test_primary_conninfo_names_a_passfile_outside_the_data_directory(tmp_path: Path) -> None:
    data = _datadir(tmp_path)
    change = configure_standby(
        data,
        primary_host="10.0.0.2",
        primary_port=5433,
        user="postgres",
        application_name="pg1",
        slot_name="dr_pg1",
        password=SECRET,
    )
    assert change.outcome == "changed"
    conninfo = read_auto_conf(data)["primary_conninfo"]
    passfile = passfile_path(data)
    assert f"passfile={passfile}" in conninfo and "password" not in conninfo
    for path in data.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert SECRET not in text and "leaked" not in text, path
    assert passfile.parent == data.parent
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert passfile.read_text() == "10.0.0.2:5433:*:postgres:s3cr\\:et\\\\pw\n"
    assert (data / "standby.signal").exists()


def test_a_role_without_password_gets_no_passfile(tmp_path: Path) -> None:
    data = _datadir(tmp_path)
    configure_standby(
        data, primary_host="h", primary_port=5432, user="replicator", application_name="pg1"
    )
    assert "passfile" not in read_auto_conf(data)["primary_conninfo"]
    assert not passfile_path(data).exists()
