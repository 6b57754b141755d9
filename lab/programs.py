"""Every external program the code runs, where it is found, and the package that provides it.

One table for ``dr doctor`` (which checks each program and its version) and for
``tests/unit/test_programs_installed.py`` (which checks that ``scripts/setup.sh`` installs
the package of each one, so a program installed by hand on one machine cannot hide a
missing step). PostgreSQL programs are looked up the way the code runs them: the newest
``/usr/lib/postgresql/*/bin`` first, then ``$PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "PG_LIB_DIR",
    "PG_MIN_MAJOR",
    "PROGRAMS",
    "Program",
    "apt_fix",
    "find_program",
    "package_for",
    "pg_major_of",
    "pg_major_to_install",
    "program_version",
    "short_version",
]

PG_LIB_DIR = Path("/usr/lib/postgresql")
PG_MIN_MAJOR = 14
#: Debian release (VERSION_ID) -> its PostgreSQL major, when none is installed yet.
DEBIAN_PG_MAJOR = {"12": "15", "13": "17"}
#: Package templates for the versioned PostgreSQL families.
PG_SERVER = "postgresql-{major}"
PG_CLIENT = "postgresql-client-{major}"
VERSION_TIMEOUT_SECONDS = 5.0


class Program(NamedTuple):
    """One external program the code runs.

    Attributes:
        name: the executable's name.
        package: the Debian package providing it (``postgresql-{major}`` for the families).
        required: False for programs only an optional part needs (the UI browser test).
        purpose: what needs it, for the doctor's table.
        places: fixed paths tried after the lookup (Podman's helper folder, /sbin, ...).
        version_args: the arguments that print its version on the first line.
        essential: the package is Essential on Debian (always installed).
    """

    name: str
    package: str
    required: bool
    purpose: str
    places: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ("--version",)
    essential: bool = False


def _server(name: str, purpose: str) -> Program:
    return Program(name, PG_SERVER, True, purpose)


def _client(name: str, purpose: str) -> Program:
    return Program(name, PG_CLIENT, True, purpose)


PROGRAMS: tuple[Program, ...] = (
    _server("initdb", "lab clusters"),
    _server("pg_ctl", "start/stop/promote local servers"),
    _server("pg_rewind", "failback of an old primary"),
    _server("pg_controldata", "timeline and checkpoint of a data directory"),
    _server("pg_waldump", "damage finder (WAL records)"),
    _server("pg_checksums", "page checksums of a restored cluster"),
    _client("psql", "restores of plain dumps, lab SQL"),
    _client("pg_dump", "logical backups"),
    _client("pg_restore", "restore drills"),
    _client("pg_basebackup", "base backups, standby rebuilds"),
    _client("pg_verifybackup", "base backup verification"),
    _client("pg_amcheck", "index and heap checks"),
    _client("pg_isready", "lab readiness"),
    Program("podman", "podman", True, "lab container engine (Docker API)"),
    Program("runc", "runc", True, "Podman's OCI runtime", ("/usr/sbin/runc",)),
    Program(
        "catatonit",
        "catatonit",
        True,
        "init of containers started with init=True",
        ("/usr/libexec/podman/catatonit", "/usr/lib/podman/catatonit"),
    ),
    Program(
        "busybox",
        "busybox-static",
        True,
        "the lab's container image",
        ("/bin/busybox",),
        ("--help",),
    ),
    Program("chromium", "chromium", False, "browser test of the Prefect UI"),
    Program("redis-server", "redis-server", True, "the lab's cache (never the machine's 6379)"),
    Program(
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        False,
        "lab monitoring (dr lab up --monitoring) and the alert receiver's test",
    ),
    Program("prometheus", "prometheus", False, "lab monitoring (dr lab up --monitoring)"),
    Program(
        "prometheus-postgres-exporter",
        "prometheus-postgres-exporter",
        False,
        "lab monitoring: one exporter per PostgreSQL server",
    ),
    Program(
        "runuser",
        "util-linux",
        True,
        "tools as the data directory's owner",
        ("/sbin/runuser", "/usr/sbin/runuser"),
        essential=True,
    ),
    Program("env", "coreutils", True, "environment of tools run as another user", essential=True),
    Program(
        "test",
        "coreutils",
        True,
        "can the server user reach the lab folder",
        version_args=(),  # /usr/bin/test prints no version
        essential=True,
    ),
    Program("tar", "tar", True, "base backup archives", essential=True),
)


def _pg_bin_dirs(lib_dir: Path) -> list[Path]:
    """``<lib_dir>/<major>/bin`` folders, newest major first (numerically: 17 before 9.6)."""

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    return sorted(lib_dir.glob("*/bin"), key=major, reverse=True)


def find_program(
    program: Program, *, path: str | None = None, pg_lib_dir: Path | None = None
) -> Path | None:
    """Where ``program`` is on this machine, or None.

    Args:
        program: an entry of :data:`PROGRAMS`.
        path: the search path (default ``$PATH``).
        pg_lib_dir: where PostgreSQL majors live (default :data:`PG_LIB_DIR`).
    """
    if program.package in (PG_SERVER, PG_CLIENT):
        for bin_dir in _pg_bin_dirs(pg_lib_dir or PG_LIB_DIR):
            if (bin_dir / program.name).is_file():
                return bin_dir / program.name
    found = shutil.which(program.name, path=path if path is not None else os.environ.get("PATH"))
    if found:
        return Path(found)
    for place in program.places:
        if os.access(place, os.X_OK):
            return Path(place)
    return None


def program_version(path: Path, args: tuple[str, ...] = ("--version",)) -> str:
    """The first line ``path`` prints for ``args`` (e.g. ``psql (PostgreSQL) 15.8``), or ""."""
    if not args:
        return ""
    try:
        proc = subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (proc.stdout or proc.stderr or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def pg_major_of(version_line: str) -> int | None:
    """The major of ``... (PostgreSQL) 15.8`` or ``... 17beta1``; None when not PostgreSQL's."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", version_line)
    return int(match.group(1)) if match else None


def short_version(version_line: str) -> str:
    """The version number in a ``--version`` line (``15.20``, ``1.1.5+ds1``), else the line."""
    match = re.search(r"(?<![\d.])\d+(?:\.\d+)+[\w.+~-]*", version_line)
    return match.group(0) if match else version_line


def pg_major_to_install(
    *, pg_lib_dir: Path | None = None, os_release: Path = Path("/etc/os-release")
) -> str:
    """The PostgreSQL major a fix should name: the newest installed, else the release's.

    Mirrors ``scripts/setup.sh``; ``"N"`` (a placeholder) when neither tells.
    """
    for bin_dir in _pg_bin_dirs(pg_lib_dir or PG_LIB_DIR):
        name = bin_dir.parent.name
        if name.isdigit() and int(name) >= PG_MIN_MAJOR:
            return name
    try:
        text = os_release.read_text()
    except OSError:
        return "N"
    match = re.search(r'^VERSION_ID="?([^"\n]+)"?$', text, re.MULTILINE)
    return DEBIAN_PG_MAJOR.get(match.group(1), "N") if match else "N"


def package_for(program: Program, major: str) -> str:
    """The package to install for ``program`` (the PostgreSQL families get ``major``)."""
    return program.package.format(major=major)


def apt_fix(packages: list[str]) -> str:
    """The exact command that installs ``packages`` (as setup.sh does it)."""
    unique = list(dict.fromkeys(packages))
    return f"apt-get install -y --no-install-recommends {' '.join(unique)}"
