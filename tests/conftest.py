"""Fixtures for the whole suite: a guard against the machine's own servers, and the lab.

- ``no_foreign_servers`` (autouse, session): connecting to port 5432 (the machine's
  PostgreSQL) or 6379 (its Redis) fails loudly, whether through Python sockets (httpx,
  asyncio, redis clients) or through libpq (psycopg). Tests start their own servers on
  free ports; reaching the machine's would mean a test is pointed at the wrong place.
- ``lab`` (session, lazy): the whole lab, brought up once per session by
  :func:`lab.manager.up` in a fresh temporary folder (with the Prefect server), yielded as
  its :class:`lab.manager.LabState`, and taken down at the end. Only tests that ask for it
  pay for it (~20 s).
- Parallel runs (``pytest -n 2``, what ``scripts/test.sh`` does): every test gets an
  ``xdist_group`` (see :func:`pytest_collection_modifyitems`) so one folder's tests, which
  share that folder's session fixtures, stay on one worker, and the lab's tests split into
  two groups, each on its own lab. Each pytest process has its own Prefect home, so
  ephemeral-mode runs in two workers never share one SQLite database.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before anything imports Prefect: this process's own Prefect home (ephemeral-mode runs keep
# their SQLite database there), never the user's ~/.prefect and never another worker's.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dr-tests-prefect-home-")

FORBIDDEN_PORTS = frozenset({5432, 6379})
#: libpq falls back to this socket folder when no host is given: make that fail visibly.
GUARD_PGHOST = "/nonexistent-dr-tests-never-use-the-machines-postgres"


class ForeignServerConnection(AssertionError):
    """A test tried to reach a server it did not start (the machine's PostgreSQL or Redis)."""


def _forbidden(address: Any) -> bool:
    if isinstance(address, tuple) and len(address) >= 2:
        return address[1] in FORBIDDEN_PORTS
    if isinstance(address, (str, bytes)):
        text = address.decode(errors="replace") if isinstance(address, bytes) else address
        return any(text.endswith(f".s.PGSQL.{port}") for port in FORBIDDEN_PORTS)
    return False


def _refuse(address: Any) -> None:
    raise ForeignServerConnection(
        f"test tried to connect to {address!r}: ports {sorted(FORBIDDEN_PORTS)} belong to "
        "the machine's own servers; start your own on a free port"
    )


def _effective_ports(conninfo: str) -> list[int]:
    """The ports libpq would try for ``conninfo`` (its default: $PGPORT, else 5432)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo or "")
    raw = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    return [int(part) if part.strip().isdigit() else 5432 for part in raw.split(",")]


@pytest.fixture(scope="session", autouse=True)
def no_foreign_servers() -> Iterator[None]:
    """Make connections to 5432 and 6379 raise ForeignServerConnection for the session."""
    mp = pytest.MonkeyPatch()
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if _forbidden(address):
            _refuse(address)
        return original_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if _forbidden(address):
            _refuse(address)
        return original_connect_ex(self, address)

    mp.setattr(socket.socket, "connect", guarded_connect)
    mp.setattr(socket.socket, "connect_ex", guarded_connect_ex)

    # psycopg connects through libpq (C), below Python's sockets: check each connection
    # attempt's conninfo where every psycopg connection (sync, async, pools) passes.
    from psycopg._connection_base import BaseConnection

    original_gen = BaseConnection.__dict__["_connect_gen"].__func__

    def guarded_connect_gen(klass: Any, conninfo: str = "") -> Any:
        ports = _effective_ports(conninfo)
        if FORBIDDEN_PORTS.intersection(ports):
            _refuse(f"libpq {conninfo!r} (port {ports})")
        return original_gen(klass, conninfo)

    mp.setattr(BaseConnection, "_connect_gen", classmethod(guarded_connect_gen))
    # Tools and libraries that fall back to libpq's defaults get a folder that cannot exist.
    mp.setenv("PGHOST", os.environ.get("PGHOST") or GUARD_PGHOST)
    try:
        yield
    finally:
        mp.undo()


def _new_lab_dir(prefix: str) -> Path:
    """A fresh folder the ``postgres`` user can traverse (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def lab_pids(state: Any) -> set[int]:
    """Every PID the lab in ``state`` runs: its processes, postmasters, podman and conmon."""
    from lab import procs
    from lab import state as lab_state

    pids = {p.pid for p in state.processes.values()}
    for cluster in lab_state.clusters(state).values():
        pid = cluster.pid()
        if pid is not None:
            pids.add(pid)
    pids.update(pids_mentioning(str(state.base_dir)))
    pids.update(procs.owner_pids(state.base_dir))
    return pids


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def pids_mentioning(text: str) -> list[int]:
    """Running processes whose command line contains ``text`` (never this process)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def assert_lab_gone(base_dir: Path, pids: set[int]) -> None:
    """After ``down``: no folder, no PID of the lab alive, nothing naming its folder."""
    from lab import procs

    assert not base_dir.exists(), f"{base_dir} still exists after down"
    alive = sorted(pid for pid in pids if pid_alive(pid))
    assert alive == [], f"lab processes still running after down: {alive}"
    assert pids_mentioning(str(base_dir)) == [], "processes still name the lab folder"
    assert procs.owner_pids(base_dir) == [], "processes still carry the lab's marker"


@pytest.fixture(scope="session")
def lab() -> Iterator[Any]:
    """The whole lab (with its Prefect server), once per session; down at the end.

    The teardown checks that ``down`` left no process and no folder (with the Podman
    engine where it is installed), so every session exercises the real ``down``.
    """
    from lab import down, up
    from lab import state as lab_state

    base_dir = _new_lab_dir("dr-lab-test-")
    try:
        state = up.up(base_dir, prefect=True)
    except BaseException:
        down.down(base_dir)
        raise
    try:
        yield state
    finally:
        final = lab_state.load_state(base_dir) or state
        pids = lab_pids(final)
        down.down(base_dir)
        assert_lab_gone(base_dir, pids)


@pytest.fixture
def new_lab_dir() -> Iterator[Path]:
    """A fresh, traversable folder for a test's own lab; removed afterwards if still there."""
    import shutil

    path = _new_lab_dir("dr-lab-own-")
    try:
        yield path
    finally:
        if (path / "state.json").exists():
            from lab import down

            down.down(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_secret_registry() -> Iterator[None]:
    """Secrets registered by one test (a Kubernetes secret's DB_HOST, say) must not make
    another test's text redacted: the registry is process-wide, so restore it after each."""
    from dr.errors import forget_secrets, registered_secrets

    before = registered_secrets()
    yield
    forget_secrets(keep=before)


#: Integration folders whose tests use the lab, split over two labs so two workers share
#: the drills. Balanced by measured time (``pytest --durations=0``); a folder not named
#: here whose tests ask for ``lab`` joins ``lab-1``.
LAB_GROUPS = {
    "failover": "lab-1",
    "crash": "lab-1",
    "e2e": "lab-1",
    "backups": "lab-2",
    "corruption": "lab-2",
    "breach": "lab-2",
}


def xdist_group_of(item: pytest.Item) -> str:
    """The worker group of a test: its lab, or its integration folder, or its file."""
    parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
    if parts[0] == "integration" and len(parts) > 2:
        folder = parts[1]
        if folder in LAB_GROUPS:
            return LAB_GROUPS[folder]
        return "lab-1" if "lab" in getattr(item, "fixturenames", ()) else folder
    if "lab" in getattr(item, "fixturenames", ()):
        return "lab-1"
    return "/".join(parts)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test its ``xdist_group`` (used by ``--dist loadgroup``; harmless without)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
