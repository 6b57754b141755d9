"""``dr doctor``: can this machine run the lab and the flows? Checked in a second or two.

Each check is a plain function returning one :class:`Check` (status, detail and the exact
command that fixes a problem); :func:`diagnose` runs them in parallel and collects them
into a :class:`DoctorReport`, Barman-style: every problem reported together, each marked
required or not. ``ok`` means every required check passed. :func:`preflight` runs the
checks ``dr lab up`` depends on and raises before anything is started.

The container check really starts a container with ``--init`` (as the lab does with
``init=True``), so a missing init binary (catatonit, issue 13) is caught here and not
half-way through ``dr lab up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from dr.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, load_config
from dr.errors import ConfigError, PreconditionError
from lab import podman
from lab import programs as progs

__all__ = [
    "Check",
    "DoctorReport",
    "check_config",
    "check_container_engine",
    "check_disk",
    "check_ports",
    "check_prefect_api",
    "check_program",
    "diagnose",
    "preflight",
]

Status = Literal["ok", "warn", "fail", "skip"]

LAB_DIR_ENV = "DR_LAB_DIR"  # lab.manager's; the lab's folder
STAGING_ENV = "DR_STAGING_DIR"  # flows.backup's; where backups are staged
DEFAULT_STAGING = Path.home() / ".cache" / "dr-pipelines" / "staging"
#: The doctor's own Podman folder (keeps the imported image between runs).
DOCTOR_PODMAN_DIR = Path.home() / ".cache" / "dr-pipelines" / "doctor-podman"
#: Where Podman looks for its init binary when containers.conf sets no ``init_path``.
PODMAN_HELPER_DIRS = (
    "/usr/local/libexec/podman",
    "/usr/local/lib/podman",
    "/usr/libexec/podman",
    "/usr/lib/podman",
)
#: Programs only the container engine needs (``--engine process`` does without them).
CONTAINER_PROGRAMS = {"podman", "runc", "catatonit", "busybox"}
#: What ``dr lab up --monitoring`` runs (lab/monitoring.py).
MONITORING_PROGRAMS = {"prometheus", "prometheus-alertmanager", "prometheus-postgres-exporter"}
CONTAINERS_CONFS = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
#: The lab's components on loopback ports: primary, replica, control, moto, prefect, slack.
LAB_PORT_COUNT = 6
LAB_MIN_FREE_BYTES = 2 << 30  # three small clusters, WAL archive, repositories, images
STAGING_MIN_FREE_BYTES = 1 << 30
LOW_FREE_BYTES = 5 << 30
CONTAINER_TIMEOUT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 2.0
SETUP_HINT = "bash scripts/setup.sh"


class Check(BaseModel):
    """One check's outcome: ``fix`` is the exact command (or edit) that resolves it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    status: Status
    required: bool
    detail: str = ""
    fix: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """False only for a failed check (a warning or a skip does not block)."""
        return self.status != "fail"


class DoctorReport(BaseModel):
    """Every check, in a fixed order; ``ok`` when every required check passed."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    checks: list[Check]
    seconds: float

    @property
    def problems(self) -> list[Check]:
        """The checks that failed or warned, required ones first."""
        bad = [c for c in self.checks if c.status in ("fail", "warn")]
        return sorted(bad, key=lambda c: (not c.required, c.status != "fail"))


# --------------------------------------------------------------------------- programs


def check_program(
    program: progs.Program, *, path: str | None = None, pg_lib_dir: Path | None = None
) -> Check:
    """Is ``program`` installed, and which version (PostgreSQL: at least 14)?

    Args:
        program: an entry of :data:`lab.programs.PROGRAMS`.
        path: the search path (default ``$PATH``).
        pg_lib_dir: where PostgreSQL majors live (default ``/usr/lib/postgresql``).
    """
    name = f"program {program.name}"
    major = progs.pg_major_to_install(pg_lib_dir=pg_lib_dir)
    fix = progs.apt_fix([progs.package_for(program, major)])
    found = progs.find_program(program, path=path, pg_lib_dir=pg_lib_dir)
    if found is None:
        detail = f"not installed (needed for {program.purpose})"
        return Check(name=name, status="fail", required=program.required, detail=detail, fix=fix)
    version = progs.program_version(found, program.version_args)
    if not program.version_args:
        return Check(name=name, status="ok", required=program.required, detail=str(found))
    detail = f"{progs.short_version(version) or 'version unknown'} — {found}"
    if program.package in (progs.PG_SERVER, progs.PG_CLIENT):
        pg_major = progs.pg_major_of(version)
        if pg_major is not None and pg_major < progs.PG_MIN_MAJOR:
            detail += f" (PostgreSQL {progs.PG_MIN_MAJOR} or later is needed)"
            return Check(name=name, status="fail", required=True, detail=detail, fix=fix)
    if not version:
        return Check(name=name, status="warn", required=program.required, detail=detail, fix=fix)
    return Check(name=name, status="ok", required=program.required, detail=detail)


# --------------------------------------------------------------------------- containers


def configured_init_path(confs: tuple[str, ...] = CONTAINERS_CONFS) -> str | None:
    """The ``init_path`` a containers.conf sets (the last one wins), else None."""
    found = None
    files = [Path(c) for c in confs]
    for conf in confs:
        files += sorted(Path(f"{conf}.d").glob("*.conf"))
    for conf_file in files:
        try:
            text = conf_file.read_text()
        except OSError:
            continue
        match = re.search(r'^\s*init_path\s*=\s*"([^"]+)"', text, re.MULTILINE)
        if match:
            found = match.group(1)
    return found


def find_init_binary(init_path: str | None = None) -> Path | None:
    """The init binary Podman will use for ``--init`` (catatonit), or None when missing."""
    configured = init_path or configured_init_path()
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    for folder in PODMAN_HELPER_DIRS:
        candidate = Path(folder) / "catatonit"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _prepare_service(folder: Path, init_path: str | None) -> podman.PodmanService:
    """The doctor's own Podman configuration in ``folder`` (written once, or for a test)."""
    service = podman.PodmanService(folder)
    conf = service.containers_conf
    stale = conf.exists() and "\ninit_path = " in conf.read_text()  # a test's override
    if init_path or stale or not service.storage_conf.exists():
        service.write_config()
        if init_path:  # tests: point Podman at another (missing) init binary
            text = conf.read_text()
            conf.write_text(
                text.replace("[containers]\n", f'[containers]\ninit_path = "{init_path}"\n', 1)
            )
    return service


def _podman_error(message: str) -> str:
    """Podman's own ``Error: ...`` line when there is one, else the whole message."""
    _, found, error = message.rpartition("Error: ")
    return error.strip() if found else message


def _container_fix(message: str) -> str:
    if "init binary" in message or "catatonit" in message:
        return progs.apt_fix(["catatonit"])
    if "runc" in message or "OCI runtime" in message:
        return progs.apt_fix(["runc"])
    if "busybox" in message:
        return progs.apt_fix(["busybox-static"])
    return f"{progs.apt_fix(['podman', 'runc', 'catatonit', 'busybox-static'])}; see the detail"


def check_container_engine(*, folder: Path | None = None, init_path: str | None = None) -> Check:
    """Can Podman really start a container with an init process, as the lab's app needs?

    The doctor keeps its own Podman folder (never the lab's: it touches nothing it did not
    start); the first run imports the busybox image there, later ones reuse it.

    Args:
        folder: the Podman folder (default :data:`DOCTOR_PODMAN_DIR`).
        init_path: an init binary to configure instead of Podman's (tests).
    """
    name = "container engine"
    ok, reason = podman.available()
    if not ok:
        fix = progs.apt_fix(["podman", "runc", "busybox-static", "catatonit"])
        return Check(name=name, status="fail", required=True, detail=reason, fix=fix)
    if find_init_binary(init_path) is None:
        where = init_path or configured_init_path() or " or ".join(PODMAN_HELPER_DIRS)
        detail = f"no container-init binary (catatonit) at {where}: init=True cannot work"
        return Check(
            name=name, status="fail", required=True, detail=detail, fix=progs.apt_fix(["catatonit"])
        )
    service = _prepare_service(folder or DOCTOR_PODMAN_DIR, init_path)
    try:
        podman.ensure_busybox_image(service)
        service.podman(
            "run", "--rm", "--init", podman.DEFAULT_IMAGE, "true",
            timeout_seconds=CONTAINER_TIMEOUT_SECONDS,
        )  # fmt: skip
    except podman.PodmanError as exc:
        detail = f"podman run --init failed: {_podman_error(str(exc))}"
        return Check(
            name=name, status="fail", required=True, detail=detail, fix=_container_fix(str(exc))
        )
    detail = f"podman run --rm --init {podman.DEFAULT_IMAGE} works ({service.base_dir})"
    return Check(name=name, status="ok", required=True, detail=detail)


# --------------------------------------------------------------------------- ports, disk


def _lab_ports(lab_dir: Path) -> dict[str, int]:
    try:
        state = json.loads((lab_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    ports = state.get("ports") if isinstance(state, dict) else None
    return {str(k): int(v) for k, v in (ports or {}).items() if isinstance(v, int)}


def _in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports(lab_dir: Path) -> Check:
    """Can the lab get its loopback ports? (It picks free ones, never 5432.)"""
    name = "ports"
    sockets: list[socket.socket] = []
    try:
        for _ in range(LAB_PORT_COUNT):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
    except OSError as exc:
        detail = f"cannot bind a loopback port: {exc}"
        fix = "bring up the loopback interface: ip link set lo up"
        return Check(name=name, status="fail", required=True, detail=detail, fix=fix)
    finally:
        for sock in sockets:
            sock.close()
    detail = f"{LAB_PORT_COUNT} free loopback ports available"
    taken = sorted(f"{key} {port}" for key, port in _lab_ports(lab_dir).items() if _in_use(port))
    if taken:
        detail += (
            f"; the lab's recorded ports in use (by the lab, or moved on up): {', '.join(taken)}"
        )
    return Check(name=name, status="ok", required=True, detail=detail)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (what will hold it once created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_disk(name: str, path: Path, min_free_bytes: int, env_var: str) -> Check:
    """Is there room under ``path`` (the lab folder, the backup staging folder)?"""
    where = _existing(path.absolute())
    free = shutil.disk_usage(where).free
    detail = f"{free / (1 << 30):.1f} GiB free for {path}"
    fix = f"free space under {where}, or set {env_var} to a folder on a bigger disk"
    if free < min_free_bytes:
        detail += f" (at least {min_free_bytes / (1 << 30):.0f} GiB needed)"
        return Check(name=name, status="fail", required=True, detail=detail, fix=fix)
    if free < LOW_FREE_BYTES:
        return Check(name=name, status="warn", required=True, detail=detail + " (low)", fix=fix)
    return Check(name=name, status="ok", required=True, detail=detail)


# --------------------------------------------------------------------------- config, Prefect


def find_config(config: Path | None, lab_dir: Path) -> tuple[Path | None, bool]:
    """The config to check and whether it was asked for (``--config`` or $DR_CONFIG).

    Same order as the commands: ``--config``, ``$DR_CONFIG``, ``./dr.yaml``, the lab's.
    """
    if config is not None:
        return config, True
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR]), True
    for candidate in (Path(DEFAULT_CONFIG_PATH), lab_dir / "dr.yaml"):
        if candidate.exists():
            return candidate, False
    return None, False


def check_config(config: Path | None, lab_dir: Path) -> Check:
    """Does the config load? Every problem is listed with its key path."""
    name = "config"
    path, asked = find_config(config, lab_dir)
    if path is None:
        detail = f"no config (./{DEFAULT_CONFIG_PATH}, ${CONFIG_ENV_VAR}); `dr lab up` writes one"
        return Check(name=name, status="skip", required=False, detail=detail)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems = "; ".join(f"{key}: {reason}" for key, reason in exc.problems)
        detail = f"{exc}: {problems}" if problems else str(exc)
        fix = f"edit {path} (list: dr config check {path})"
        return Check(name=name, status="fail", required=True, detail=detail, fix=fix)
    targets = ", ".join(f"{n} ({t.tier})" for n, t in cfg.targets.items()) or "none"
    note = "" if asked else " (found, not asked for)"
    return Check(name=name, status="ok", required=True, detail=f"{path}{note}: targets {targets}")


def _prefect_url(config: Path | None, lab_dir: Path) -> tuple[str | None, str]:
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url, "PREFECT_API_URL"
    path, _ = find_config(config, lab_dir)
    if path is not None:
        try:
            return load_config(path).prefect_api_url, str(path)
        except ConfigError:
            return None, ""
    return None, ""


def check_prefect_api(config: Path | None, lab_dir: Path) -> Check:
    """Does the configured Prefect API answer? (Unset: the flows use an ephemeral one.)"""
    name = "prefect api"
    url, source = _prefect_url(config, lab_dir)
    if not url:
        detail = "not configured: flows run against an ephemeral Prefect server"
        return Check(name=name, status="skip", required=False, detail=detail)
    health = url.rstrip("/") + "/health"
    fix = f"start it (`dr lab up` for the lab's), or fix {source}"
    try:
        response = httpx.get(health, timeout=HTTP_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        detail = f"{url} (from {source}) unreachable: {exc}"
        return Check(name=name, status="warn", required=False, detail=detail, fix=fix)
    if response.status_code != 200:
        detail = f"{health} answered {response.status_code}"
        return Check(name=name, status="warn", required=False, detail=detail, fix=fix)
    return Check(name=name, status="ok", required=False, detail=f"{url} (from {source}) healthy")


# --------------------------------------------------------------------------- running


def _timed(check: Callable[[], Check]) -> Check:
    started = time.monotonic()
    result = check()
    return result.model_copy(update={"seconds": round(time.monotonic() - started, 3)})


def lab_checks(
    lab_dir: Path, *, engine: str = "auto", monitoring: bool = False
) -> list[Callable[[], Check]]:
    """What ``dr lab up`` needs: programs, the container engine (unless ``process``), room.

    With ``auto`` the engine is required although the lab could fall back to a process:
    setup.sh installs it, and a half-working engine is what failed in issue 13. With
    ``monitoring`` (``dr lab up --monitoring``) Prometheus, Alertmanager and the exporter
    are required too.
    """
    skipped = {"chromium"} | (CONTAINER_PROGRAMS if engine == "process" else set())
    wanted = [
        p._replace(required=True) if monitoring and p.name in MONITORING_PROGRAMS else p
        for p in progs.PROGRAMS
        if p.name not in skipped
    ]
    checks: list[Callable[[], Check]] = [(lambda p=p: check_program(p)) for p in wanted]
    if engine != "process":
        checks.append(check_container_engine)
    checks += [
        lambda: check_ports(lab_dir),
        lambda: check_disk("disk: lab", lab_dir, LAB_MIN_FREE_BYTES, LAB_DIR_ENV),
    ]
    return checks


def diagnose(
    config: Path | None = None, lab_dir: Path | None = None, *, engine: str = "auto"
) -> DoctorReport:
    """Run every check in parallel (a second or two) and collect them in order.

    Args:
        config: the config to check (default as the commands find it).
        lab_dir: the lab folder (default ``$DR_LAB_DIR``, else ``./.lab``).
        engine: ``process`` skips the container check (the lab's app runs as a process).
    """
    lab_dir = default_lab_dir() if lab_dir is None else lab_dir.absolute()
    staging = Path(os.environ.get(STAGING_ENV) or DEFAULT_STAGING)
    checks = lab_checks(lab_dir, engine=engine)
    chromium = next(p for p in progs.PROGRAMS if p.name == "chromium")
    checks += [
        lambda: check_program(chromium),
        lambda: check_disk("disk: staging", staging, STAGING_MIN_FREE_BYTES, STAGING_ENV),
        lambda: check_prefect_api(config, lab_dir),
        lambda: check_config(config, lab_dir),
    ]
    return _run(checks)


def _run(checks: list[Callable[[], Check]]) -> DoctorReport:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="dr-doctor") as pool:
        results = list(pool.map(_timed, checks))
    ok = all(c.passed for c in results if c.required)
    return DoctorReport(ok=ok, checks=results, seconds=round(time.monotonic() - started, 3))


def default_lab_dir() -> Path:
    """The lab folder, as ``dr lab`` finds it: ``$DR_LAB_DIR``, else ``./.lab``."""
    return Path(os.environ.get(LAB_DIR_ENV) or ".lab").absolute()


def fix_all(report: DoctorReport) -> str:
    """One command for every failed required program check (apt), else ""."""
    apt = "apt-get install -y --no-install-recommends "
    packages = [
        c.fix.removeprefix(apt)
        for c in report.problems
        if c.required and c.status == "fail" and c.fix.startswith(apt)
    ]
    return progs.apt_fix(" ".join(packages).split()) if packages else ""


def preflight(
    lab_dir: Path | None = None, *, engine: str = "auto", monitoring: bool = False
) -> DoctorReport:
    """The checks ``dr lab up`` runs before it starts anything.

    Raises:
        PreconditionError: a required check failed; the message names each fix.
    """
    lab_dir = default_lab_dir() if lab_dir is None else lab_dir.absolute()
    report = _run(lab_checks(lab_dir, engine=engine, monitoring=monitoring))
    failed = [c for c in report.checks if c.required and c.status == "fail"]
    if failed:
        lines = "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed)
        combined = fix_all(report)
        hint = f"; all at once: {combined} or {SETUP_HINT}" if combined else ""
        raise PreconditionError(f"this machine cannot run the lab: {lines}{hint}")
    return report
