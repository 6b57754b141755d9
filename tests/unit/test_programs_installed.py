"""Every external program the code runs comes from a package that scripts/setup.sh installs.

Three checks, so a program installed by hand on one machine cannot hide a missing set-up
step (issue 13: catatonit was one):

1. a scan of the source (dr/ tasks/ flows/ lab/ deployments/ cli/) finds every program
   the code names, and each is in :data:`PROGRAMS_RUN` below;
2. :data:`PROGRAMS_RUN` is what ``dr doctor`` checks (``lab.programs.PROGRAMS``);
3. ``dpkg -S`` names the package of each program on this machine, and that package (or
   its versioned ``postgresql-N`` / ``postgresql-client-N`` family) is in setup.sh's list,
   or is Essential (always installed on Debian).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import programs

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("dr", "tasks", "flows", "lab", "deployments", "cli")
SETUP = ROOT / "scripts" / "setup.sh"
#: The table the list is compared with (it names every program: scanning it proves nothing).
NOT_SCANNED = {"lab/programs.py"}

#: Every external program the code (and the UI browser test) runs.
PROGRAMS_RUN = {
    # PostgreSQL server package (postgresql-N)
    "initdb", "pg_ctl", "pg_rewind", "pg_controldata", "pg_waldump", "pg_checksums",
    # PostgreSQL client package (postgresql-client-N)
    "psql", "pg_dump", "pg_restore", "pg_basebackup", "pg_verifybackup", "pg_amcheck",
    "pg_isready",
    # the lab's container engine and its helpers
    "podman", "runc", "catatonit", "busybox",
    # tests/integration/e2e/test_ui_browser.py
    "chromium",
    # lab monitoring (lab/monitoring.py) and tests/integration/alerts/test_alertmanager.py
    "prometheus-alertmanager", "prometheus", "prometheus-postgres-exporter",
    # the lab's cache (lab/services.py)
    "redis-server",
    # Essential packages: util-linux, coreutils, tar
    "runuser", "env", "test", "tar",
}  # fmt: skip

#: PostgreSQL's programs, named anywhere as a string (``postgres`` is also a role and a
#: database name, so it is found only through the other rules).
PG_PROGRAM_NAMES = {
    "clusterdb", "createdb", "createuser", "dropdb", "dropuser", "initdb", "oid2name",
    "pg_amcheck", "pg_archivecleanup", "pg_basebackup", "pg_checksums", "pg_config",
    "pg_controldata", "pg_createsubscriber", "pg_ctl", "pg_combinebackup", "pg_dump",
    "pg_dumpall", "pg_isready", "pg_receivewal", "pg_recvlogical", "pg_resetwal",
    "pg_restore", "pg_rewind", "pg_test_fsync", "pg_test_timing", "pg_upgrade",
    "pg_verifybackup", "pg_waldump", "pg_walsummary", "pgbench", "psql", "reindexdb",
    "vacuumdb", "vacuumlo",
}  # fmt: skip
#: Calls whose first argument names a program: ``shutil.which("tar")``, ``find_tool(...)``.
LOOKUP_CALLS = {"which", "find_tool", "_tool", "bin", "_bin", "tool"}
#: Calls that run an argv: a list literal argument starting with a string names a program.
RUNNER_CALLS = {
    "run", "Popen", "check_output", "check_call", "call", "run_as_owner", "run_as_server",
    "_run_as_server", "_run", "_run_tool", "_spawn", "spawn", "execvp",
}  # fmt: skip
ARGV_NAMES = {"args", "argv", "cmd", "command"}
#: An absolute path to an executable (``/usr/sbin/runc``, ``/usr/libexec/podman/catatonit``).
EXEC_PATH = re.compile(
    r"^/(?:usr/)?(?:local/)?"
    r"(?:s?bin|libexec(?:/[\w.-]+)*|lib(?:/[\w.-]+)*/bin)"
    r"/([\w.+-]+)$"
)
PROGRAM_NAME = re.compile(r"^[a-z][\w.+-]*$")


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _argv_programs(seq: ast.List | ast.Tuple) -> set[str]:
    """The program an argv literal starts with, and the one after ``runuser ... --``."""
    consts = [e.value if isinstance(e, ast.Constant) else None for e in seq.elts]
    found: set[str] = set()
    if consts and isinstance(consts[0], str) and PROGRAM_NAME.match(consts[0]):
        found.add(consts[0])
    if "runuser" in consts and "--" in consts:
        after = consts.index("--") + 1
        if after < len(consts) and isinstance(consts[after], str):
            found.add(consts[after])
    return found


def _programs_in(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in PG_PROGRAM_NAMES:
                found.add(node.value)
            if match := EXEC_PATH.match(node.value):
                found.add(match.group(1))
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            first = node.args[0] if node.args else None
            if name in LOOKUP_CALLS and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    found.add(first.value)
            if name in RUNNER_CALLS:
                for arg in node.args:
                    if isinstance(arg, (ast.List, ast.Tuple)):
                        found |= _argv_programs(arg)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            if any(isinstance(t, ast.Name) and t.id in ARGV_NAMES for t in node.targets):
                found |= _argv_programs(node.value)
    return found


def scan_sources(root: Path = ROOT) -> dict[str, set[str]]:
    """Program name -> the source files that name it."""
    where: dict[str, set[str]] = {}
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            if str(path.relative_to(root)) in NOT_SCANNED:
                continue
            for name in _programs_in(ast.parse(path.read_text(), str(path))):
                where.setdefault(name, set()).add(str(path.relative_to(root)))
    return where


def setup_packages() -> set[str]:
    """setup.sh's package list, with ``${PG_MAJOR}`` as the ``{major}`` template."""
    match = re.search(r"^PKGS=\(([^)]*)\)", SETUP.read_text(), re.MULTILINE)
    assert match, f"no PKGS=(...) list in {SETUP}"
    text = re.sub(r"\$\{?PG_MAJOR\}?", "{major}", match.group(1))
    return set(text.split())


# --------------------------------------------------------------------------- the scan


def test_the_scan_finds_programs_named_in_every_way() -> None:
    source = """
import shutil, subprocess
RUNC = "/usr/sbin/runc"
shutil.which("tar")
subprocess.run(["podman", "ps"])
run_as_owner(user, ["runuser", "-u", user, "--", "env", "X=1"])
argv = ["chromium", "--headless"]
cluster.bin("pg_isready")
msg = _tool_failed("pg_checksums", proc)
folder = "pg_wal"
db = "postgres"
"""
    assert _programs_in(ast.parse(source)) == {
        "runc", "tar", "podman", "runuser", "env", "chromium", "pg_isready", "pg_checksums",
    }  # fmt: skip


def test_every_program_the_code_names_is_in_the_list() -> None:
    found = scan_sources()
    unlisted = {name: sorted(files) for name, files in found.items() if name not in PROGRAMS_RUN}
    assert not unlisted, (
        f"the code runs programs this test does not list: {unlisted}; add each to "
        "PROGRAMS_RUN, to lab/programs.py (dr doctor) and its package to scripts/setup.sh"
    )
    # The scan is not vacuous: it finds the PostgreSQL tools and the Podman helpers.
    assert {"pg_dump", "pg_ctl", "runuser", "runc", "busybox", "podman"} <= set(found)


def test_dr_doctor_checks_every_listed_program() -> None:
    assert {p.name for p in programs.PROGRAMS} == PROGRAMS_RUN


def test_setup_sh_picks_the_postgresql_major_instead_of_naming_one() -> None:
    pkgs = setup_packages()
    assert {"postgresql-{major}", "postgresql-client-{major}"} <= pkgs
    assert not [p for p in pkgs if re.fullmatch(r"postgresql(-client)?-\d+", p)]
    assert "create_main_cluster = false" in SETUP.read_text()


def test_no_fixed_postgresql_version_path_in_the_code() -> None:
    fixed = re.compile(r"/usr/lib/postgresql/\d+")
    hits = [
        str(path.relative_to(ROOT))
        for top in (*SCANNED, "tests", "bench", "scripts")
        for path in (ROOT / top).rglob("*")
        if path.suffix in (".py", ".sh") and fixed.search(path.read_text())
    ]
    assert hits == []


# --------------------------------------------------------------------------- dpkg


def _dpkg_owners(paths: list[str]) -> dict[str, str]:
    """Path -> owning package, for the paths dpkg knows (``dpkg -S`` in one call)."""
    proc = subprocess.run(
        ["dpkg", "-S", *paths], capture_output=True, text=True, check=False, timeout=60
    )
    owners: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if ": " not in line or line.startswith("diversion "):
            continue
        pkgs, path = line.split(": ", 1)
        owners[path.strip()] = pkgs.split(",")[0].strip().split(":")[0]
    return owners


def _candidates(path: Path) -> list[str]:
    """The path, its target, and their /bin <-> /usr/bin twins (merged /usr)."""
    out: list[str] = []
    for p in (str(path), os.path.realpath(path)):
        unmerged = re.sub(r"^/usr/(s?bin)/", r"/\1/", p)
        merged = re.sub(r"^/(s?bin)/", r"/usr/\1/", p)
        for twin in (p, unmerged, merged):
            if twin not in out:
                out.append(twin)
    return out


def _essential(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True
    )
    return proc.stdout.strip() == "yes"


def _family(package: str) -> str:
    """``postgresql-15`` -> ``postgresql-{major}``; other packages unchanged."""
    return re.sub(r"^(postgresql(?:-client)?)-\d+$", r"\1-{major}", package)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is absent: not a Debian machine")
def test_every_program_comes_from_a_package_setup_sh_installs() -> None:
    located = {p.name: programs.find_program(p) for p in programs.PROGRAMS}
    missing = sorted(name for name, path in located.items() if path is None)
    assert not missing, f"not installed on this machine: {missing} (run bash scripts/setup.sh)"
    candidates = {name: _candidates(path) for name, path in located.items() if path}
    owners = _dpkg_owners([c for paths in candidates.values() for c in paths])
    wanted = setup_packages()
    problems = []
    for program in programs.PROGRAMS:
        package = next((owners[c] for c in candidates[program.name] if c in owners), None)
        if package is None:
            problems.append(f"{program.name} ({located[program.name]}): no package owns it")
            continue
        if _family(package) != program.package:
            problems.append(f"{program.name}: from {package}, not {program.package}")
        if _family(package) not in wanted and not (program.essential and _essential(package)):
            problems.append(f"{program.name}: package {package} is not in setup.sh's PKGS")
    assert not problems, "; ".join(problems)


def _pg_major(tmp_path: Path, *, installed: str, depends: str, version_id: str) -> tuple[int, str]:
    """Run setup.sh's ``pg_major`` with faked dpkg-query, apt-cache and os-release."""
    body = re.search(r"^pg_major\(\) \{\n.*?^\}\n", SETUP.read_text(), re.MULTILINE | re.DOTALL)
    assert body, "no pg_major() in setup.sh"
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, output in (("dpkg-query", installed), ("apt-cache", depends)):
        (fake / name).write_text(f"#!/bin/sh\nprintf '%b' '{output}'\n")
        (fake / name).chmod(0o755)
    release = tmp_path / "os-release"
    release.write_text(f'VERSION_ID="{version_id}"\n')
    proc = subprocess.run(
        ["bash", "-c", f"{body.group(0)}pg_major"],
        env={"PATH": f"{fake}:/usr/bin:/bin", "OS_RELEASE": str(release)},
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, proc.stdout.strip() or proc.stderr.strip()


@pytest.mark.parametrize(
    ("installed", "depends", "version_id", "major"),
    [
        # an installed server wins (the newest >= 14), whatever the release says
        ("postgresql-13 hold ok installed\\npostgresql-16 install ok installed\\n", "", "12", "16"),
        ("postgresql-17 deinstall ok config-files\\n", "", "12", "15"),
        # else the metapackage's dependency (Debian 13: 17)
        ("", "postgresql\\n  Depends: postgresql-17\\n", "12", "17"),
        # else the release
        ("", "", "12", "15"),
        ("", "", "13", "17"),
    ],
)  # fmt: skip
def test_setup_sh_picks_the_distributions_postgresql(
    tmp_path: Path, installed: str, depends: str, version_id: str, major: str
) -> None:
    assert _pg_major(tmp_path, installed=installed, depends=depends, version_id=version_id) == (
        0,
        major,
    )


def test_setup_sh_refuses_an_unknown_release(tmp_path: Path) -> None:
    code, message = _pg_major(tmp_path, installed="", depends="", version_id="11")
    assert code == 1
    assert "PG_MAJOR" in message
