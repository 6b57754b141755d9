"""``dr doctor`` on this machine: green as set up, and naming the fix when a program is missing.

Nothing is uninstalled (other work shares the machine): a missing program is simulated
with a ``PATH`` that lacks it, a missing init binary with a Podman configuration that
points at one that does not exist.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli import doctor as cli_doctor
from dr.errors import PreconditionError
from lab import doctor
from lab import programs as progs

pytestmark = pytest.mark.integration

#: Generous for a loaded 2-core machine; about 1-2 s when idle.
DIAGNOSE_SECONDS = 20.0


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without a config or a lab, no Prefect API configured."""
    monkeypatch.chdir(tmp_path)
    for name in ("DR_CONFIG", "PREFECT_API_URL", "DR_LAB_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def path_without_podman(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``$PATH`` as one folder linking every program this machine has, except podman."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in progs.PROGRAMS:
        found = shutil.which(program.name)
        if found and program.name != "podman":
            (bin_dir / program.name).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def _app() -> typer.Typer:
    app = typer.Typer()
    cli_doctor.register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps `doctor` a sub-command
        """Nothing."""

    return app


def test_this_machine_is_green(clean_env: Path) -> None:
    report = doctor.diagnose(lab_dir=clean_env / ".lab")
    failed = [c for c in report.checks if c.status == "fail"]
    assert report.ok, failed
    assert not failed
    names = {c.name for c in report.checks}
    assert {f"program {p.name}" for p in progs.PROGRAMS} <= names
    assert {"container engine", "ports", "disk: lab", "disk: staging", "config"} <= names
    engine = next(c for c in report.checks if c.name == "container engine")
    assert "--init" in engine.detail
    assert report.seconds < DIAGNOSE_SECONDS


def test_the_command_is_green_and_prints_json(clean_env: Path) -> None:
    result = CliRunner().invoke(_app(), ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert all(c["fix"] == "" for c in data["checks"] if c["status"] == "ok")


def test_preflight_passes_here(clean_env: Path) -> None:
    assert doctor.preflight(clean_env / ".lab").ok


def test_a_program_missing_from_path_is_named_with_its_fix(
    clean_env: Path, path_without_podman: Path
) -> None:
    result = CliRunner().invoke(_app(), ["doctor", "--json"], env={"PATH": os.environ["PATH"]})
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["program podman"]["status"] == "fail"
    assert checks["program podman"]["fix"] == "apt-get install -y --no-install-recommends podman"
    assert checks["container engine"]["status"] == "fail"
    assert "podman" in checks["container engine"]["fix"]
    assert checks["program psql"]["status"] == "ok"  # found under /usr/lib/postgresql
    table = CliRunner().invoke(_app(), ["doctor"], env={"COLUMNS": "250"})
    assert table.exit_code == 1
    assert "apt-get install -y --no-install-recommends podman" in table.output


def test_preflight_stops_naming_the_fix(clean_env: Path, path_without_podman: Path) -> None:
    with pytest.raises(PreconditionError, match=r"program podman.*apt-get install") as caught:
        doctor.preflight(clean_env / ".lab")
    assert "bash scripts/setup.sh" in str(caught.value)


def test_podman_without_its_init_binary_names_catatonit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Podman's own error for init=True without catatonit (issue 13) maps to the fix."""
    # Let the static look-up pass so that Podman itself meets the missing binary.
    monkeypatch.setattr(doctor, "find_init_binary", lambda init_path=None: Path("/bin/true"))
    check = doctor.check_container_engine(
        folder=tmp_path / "podman", init_path=str(tmp_path / "no" / "catatonit")
    )
    assert (check.status, check.required) == ("fail", True), check
    assert "podman run --init failed" in check.detail
    assert check.fix == "apt-get install -y --no-install-recommends catatonit"


def test_the_static_init_check_names_catatonit(tmp_path: Path) -> None:
    check = doctor.check_container_engine(init_path=str(tmp_path / "catatonit"))
    assert check.status == "fail"
    assert check.fix == "apt-get install -y --no-install-recommends catatonit"
