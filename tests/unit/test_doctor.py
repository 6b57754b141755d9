"""The checks of ``dr doctor`` (lab/doctor.py) and its command, with fakes for the machine."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from cli import doctor as cli_doctor
from dr.errors import PreconditionError
from lab import doctor
from lab import programs as progs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "dr.example.yaml"
Usage = namedtuple("Usage", "total used free")


def _program(name: str) -> progs.Program:
    return next(p for p in progs.PROGRAMS if p.name == name)


def _fake_tool(folder: Path, name: str, prints: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho '{prints}'\n")
    tool.chmod(0o755)
    return tool


@pytest.fixture
def pg_lib(tmp_path: Path) -> Path:
    """A PostgreSQL lib folder with a major 16 and no tools in it."""
    (tmp_path / "pglib" / "16" / "bin").mkdir(parents=True)
    return tmp_path / "pglib"


# --------------------------------------------------------------------------- programs


def test_a_missing_postgresql_tool_names_the_package_of_the_installed_major(
    tmp_path: Path, pg_lib: Path
) -> None:
    check = doctor.check_program(_program("psql"), path=str(tmp_path), pg_lib_dir=pg_lib)
    assert (check.status, check.required) == ("fail", True)
    assert check.fix == "apt-get install -y --no-install-recommends postgresql-client-16"
    server = doctor.check_program(_program("pg_ctl"), path=str(tmp_path), pg_lib_dir=pg_lib)
    assert server.fix.endswith(" postgresql-16")


def test_a_postgresql_older_than_14_fails(tmp_path: Path) -> None:
    _fake_tool(tmp_path / "pglib" / "13" / "bin", "psql", "psql (PostgreSQL) 13.4")
    check = doctor.check_program(
        _program("psql"), path=str(tmp_path), pg_lib_dir=tmp_path / "pglib"
    )
    assert check.status == "fail"
    assert "14 or later" in check.detail


def test_the_newest_postgresql_major_is_found_first(tmp_path: Path) -> None:
    for major in ("9.6", "15", "17"):
        _fake_tool(tmp_path / "pglib" / major / "bin", "pg_dump", f"pg_dump (PostgreSQL) {major}.1")
    check = doctor.check_program(
        _program("pg_dump"), path=str(tmp_path), pg_lib_dir=tmp_path / "pglib"
    )
    assert check.status == "ok"
    assert check.detail.startswith("17.1 — ")


def test_a_program_on_path_reports_its_version(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "podman", "podman version 4.3.1")
    check = doctor.check_program(_program("podman"), path=str(tmp_path))
    assert check.status == "ok"
    assert check.detail == f"4.3.1 — {tmp_path / 'podman'}"


def test_a_program_without_a_version_line_is_a_warning(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "runc", "")
    check = doctor.check_program(_program("runc"), path=str(tmp_path))
    assert check.status == "warn"


def test_chromium_is_optional(tmp_path: Path) -> None:
    check = doctor.check_program(_program("chromium"), path=str(tmp_path))
    assert (check.status, check.required) == ("fail", False)
    assert check.fix.endswith(" chromium")


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("psql (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", "15.20"),
        ("BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.", "1.35.0"),
        ("runc version 1.1.5+ds1", "1.1.5+ds1"),
        ("tini version 0.1.7_catatonit", "0.1.7_catatonit"),
        ("no number", "no number"),
    ],
)
def test_short_version(line: str, version: str) -> None:
    assert progs.short_version(line) == version


@pytest.mark.parametrize(("version_id", "major"), [("12", "15"), ("13", "17"), ("11", "N")])
def test_the_postgresql_major_follows_the_debian_release(
    tmp_path: Path, version_id: str, major: str
) -> None:
    release = tmp_path / "os-release"
    release.write_text(f'NAME="Debian GNU/Linux"\nVERSION_ID="{version_id}"\n')
    assert progs.pg_major_to_install(pg_lib_dir=tmp_path / "none", os_release=release) == major


def test_pg_major_of() -> None:
    assert progs.pg_major_of("pg_ctl (PostgreSQL) 17.2") == 17
    assert progs.pg_major_of("podman version 4.3.1") is None


def test_fix_all_combines_the_apt_fixes_of_failed_required_checks() -> None:
    apt = "apt-get install -y --no-install-recommends"
    report = doctor.DoctorReport(
        ok=False,
        seconds=0.1,
        checks=[
            doctor.Check(name="a", status="fail", required=True, fix=f"{apt} catatonit"),
            doctor.Check(name="b", status="fail", required=True, fix=f"{apt} postgresql-15"),
            doctor.Check(name="c", status="fail", required=True, fix=f"{apt} catatonit"),
            doctor.Check(name="d", status="fail", required=False, fix=f"{apt} chromium"),
            doctor.Check(name="e", status="fail", required=True, fix="free space"),
        ],
    )
    assert doctor.fix_all(report) == f"{apt} catatonit postgresql-15"


# --------------------------------------------------------------------------- containers


def test_the_init_path_of_containers_conf_wins(tmp_path: Path) -> None:
    share, etc = tmp_path / "share.conf", tmp_path / "etc.conf"
    share.write_text('[engine]\n#init_path = "/usr/libexec/podman/catatonit"\n')
    etc.write_text('[containers]\ninit_path = "/opt/init"\n')
    (tmp_path / "etc.conf.d").mkdir()
    (tmp_path / "etc.conf.d" / "50.conf").write_text('[containers]\n init_path = "/opt/other"\n')
    assert doctor.configured_init_path((str(share),)) is None
    assert doctor.configured_init_path((str(share), str(etc))) == "/opt/other"


def test_a_missing_init_binary_is_caught_before_any_container(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor.podman, "available", lambda: (True, ""))

    def no_service(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no Podman command may run")

    monkeypatch.setattr(doctor, "_prepare_service", no_service)
    check = doctor.check_container_engine(init_path=str(tmp_path / "catatonit"))
    assert (check.status, check.required) == ("fail", True)
    assert check.fix == "apt-get install -y --no-install-recommends catatonit"
    assert "catatonit" in check.detail


def test_a_missing_podman_names_the_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor.podman, "available", lambda: (False, "not installed: podman"))
    check = doctor.check_container_engine(folder=tmp_path)
    assert check.status == "fail"
    assert check.fix.startswith("apt-get install -y --no-install-recommends podman")


@pytest.mark.parametrize(
    ("message", "package"),
    [
        ("container-init binary not found on the host: stat /x/catatonit", "catatonit"),
        ('OCI runtime "runc" not found', "runc"),
        ("/bin/busybox is missing or not static: install busybox-static", "busybox-static"),
    ],
)
def test_podman_errors_map_to_their_fix(message: str, package: str) -> None:
    assert doctor._container_fix(message).endswith(f" {package}")


def test_a_test_init_path_is_not_left_in_the_doctors_podman_config(tmp_path: Path) -> None:
    service = doctor._prepare_service(tmp_path, "/nowhere/catatonit")
    assert 'init_path = "/nowhere/catatonit"' in service.containers_conf.read_text()
    service = doctor._prepare_service(tmp_path, None)
    assert "init_path = " not in service.containers_conf.read_text()
    assert service.storage_conf.exists()


# --------------------------------------------------------------------------- ports, disk


def test_ports_are_free_on_loopback(tmp_path: Path) -> None:
    assert doctor.check_ports(tmp_path).status == "ok"


def test_ports_fail_when_loopback_cannot_bind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class NoBind:
        def __init__(self, *args: Any) -> None: ...

        def bind(self, address: Any) -> None:
            raise OSError("Cannot assign requested address")

        def close(self) -> None: ...

    monkeypatch.setattr(doctor.socket, "socket", NoBind)
    check = doctor.check_ports(tmp_path)
    assert check.status == "fail"
    assert "ip link set lo up" in check.fix


@pytest.mark.parametrize(
    ("free_gib", "status"), [(0.5, "fail"), (3, "warn"), (50, "ok")]
)  # fmt: skip
def test_disk_space(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free_gib: float, status: str
) -> None:
    seen: list[Path] = []

    def usage(path: Path) -> Usage:
        seen.append(Path(path))
        return Usage(100 << 30, 0, int(free_gib * (1 << 30)))

    monkeypatch.setattr(doctor.shutil, "disk_usage", usage)
    check = doctor.check_disk("disk: lab", tmp_path / "not" / "yet", 2 << 30, "DR_LAB_DIR")
    assert check.status == status
    assert seen == [tmp_path]  # the nearest existing folder
    if status != "ok":
        assert "DR_LAB_DIR" in check.fix


# --------------------------------------------------------------------------- config, Prefect


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without dr.yaml, no $DR_CONFIG / $PREFECT_API_URL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DR_CONFIG", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def test_no_config_is_skipped(no_config: Path) -> None:
    check = doctor.check_config(None, no_config / ".lab")
    assert (check.status, check.required) == ("skip", False)


def test_a_bad_config_lists_every_problem_and_the_fix(no_config: Path) -> None:
    bad = no_config / "dr.yaml"
    bad.write_text("targets: {}\nno_such_key: 1\n")
    check = doctor.check_config(None, no_config / ".lab")
    assert (check.status, check.required) == ("fail", True)
    assert "no_such_key" in check.detail
    assert check.fix == "edit dr.yaml (list: dr config check dr.yaml)"


def test_a_valid_config_names_its_targets(no_config: Path) -> None:
    check = doctor.check_config(EXAMPLE_CONFIG, no_config / ".lab")
    assert check.status == "ok"
    assert "trading (critical)" in check.detail


def test_prefect_api_unset_is_skipped(no_config: Path) -> None:
    assert doctor.check_prefect_api(None, no_config).status == "skip"


@pytest.mark.parametrize(("answer", "status"), [(200, "ok"), (503, "warn"), (None, "warn")])
def test_prefect_api_health(
    monkeypatch: pytest.MonkeyPatch, no_config: Path, answer: int | None, status: str
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4299/api")
    asked: list[str] = []

    def get(url: str, timeout: float) -> httpx.Response:
        asked.append(url)
        if answer is None:
            raise httpx.ConnectError("refused")
        return httpx.Response(answer)

    monkeypatch.setattr(doctor.httpx, "get", get)
    check = doctor.check_prefect_api(None, no_config)
    assert (check.status, check.required) == (status, False)
    assert asked == ["http://127.0.0.1:4299/api/health"]


# --------------------------------------------------------------------------- running


def _fixed(*checks: doctor.Check) -> list[Any]:
    return [lambda c=c: c for c in checks]


def test_ok_means_every_required_check_passed() -> None:
    warn = doctor.Check(name="w", status="warn", required=True)
    optional = doctor.Check(name="o", status="fail", required=False)
    required = doctor.Check(name="r", status="fail", required=True, fix="do it")
    assert doctor._run(_fixed(warn, optional)).ok is True
    report = doctor._run(_fixed(warn, optional, required))
    assert report.ok is False
    assert [c.name for c in report.problems] == ["r", "w", "o"]


def test_preflight_raises_naming_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fail = doctor.Check(
        name="program catatonit",
        status="fail",
        required=True,
        detail="not installed",
        fix="apt-get install -y --no-install-recommends catatonit",
    )
    monkeypatch.setattr(doctor, "lab_checks", lambda lab_dir, engine, **_: _fixed(fail))
    with pytest.raises(PreconditionError, match=r"apt-get install .* catatonit"):
        doctor.preflight(tmp_path)
    ok = doctor.Check(name="ports", status="ok", required=True)
    monkeypatch.setattr(doctor, "lab_checks", lambda lab_dir, engine, **_: _fixed(ok))
    assert doctor.preflight(tmp_path).ok


def test_the_process_engine_skips_the_container_checks(tmp_path: Path) -> None:
    auto = len(doctor.lab_checks(tmp_path, engine="auto"))
    process = len(doctor.lab_checks(tmp_path, engine="process"))
    assert process == auto - 1 - len(doctor.CONTAINER_PROGRAMS)


# --------------------------------------------------------------------------- the command


def _app() -> typer.Typer:
    app = typer.Typer()
    cli_doctor.register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps `doctor` a sub-command
        """Nothing."""

    return app


@pytest.mark.parametrize("ok", [True, False])
def test_the_command_prints_a_table_and_exits_by_required_checks(
    monkeypatch: pytest.MonkeyPatch, ok: bool
) -> None:
    check = doctor.Check(
        name="program catatonit",
        status="ok" if ok else "fail",
        required=True,
        detail="not installed",
        fix="" if ok else "apt-get install -y --no-install-recommends catatonit",
    )
    report = doctor.DoctorReport(ok=ok, checks=[check], seconds=0.5)
    given: list[Any] = []
    monkeypatch.setattr(
        cli_doctor.doctor, "diagnose", lambda config: given.append(config) or report
    )
    result = CliRunner().invoke(_app(), ["doctor", "--config", "x.yaml"], env={"COLUMNS": "200"})
    assert result.exit_code == (0 if ok else 1), result.output
    assert given == [Path("x.yaml")]
    assert "program catatonit" in result.output
    if not ok:
        assert "apt-get install -y --no-install-recommends catatonit" in result.output
    as_json = CliRunner().invoke(_app(), ["doctor", "--json"])
    assert json.loads(as_json.output)["ok"] is ok
    assert as_json.exit_code == (0 if ok else 1)


def test_podman_errors_are_shortened_to_podmans_own_line() -> None:
    message = "podman run ... failed: Command '[...]' returned 125. Error: container-init binary"
    assert doctor._podman_error(message) == "container-init binary"
    assert doctor._podman_error("no such thing") == "no such thing"


def test_monitoring_makes_its_programs_required(tmp_path: Path) -> None:
    plain = {p.name: p for p in progs_for(doctor.lab_checks(tmp_path, engine="process"))}
    mon = {
        p.name: p for p in progs_for(doctor.lab_checks(tmp_path, engine="process", monitoring=True))
    }
    for name in doctor.MONITORING_PROGRAMS:
        assert not plain[name].required
        assert mon[name].required


def progs_for(checks: list) -> list:
    """The Program each program check closes over (its default argument)."""
    return [c.__defaults__[0] for c in checks if c.__defaults__]
