"""A private Podman service speaking the Docker Engine API, for the lab and the tests.

There is no Docker engine on the project's machines, but Podman runs real containers and
serves the Docker API, which ``tasks/containers.py`` speaks through the docker SDK. This
module starts one Podman API service inside a folder of its own (configuration, storage,
runtime state, socket, log and PID file all live there), so it never touches the machine's
default Podman storage or any service it did not start.

Facts this relies on (``shared/lab/podman.md``, measured on Debian 12 as root):

- crun fails here on cgroups and on raising RLIMIT_NOFILE: use runc, cgroupfs, and explicit
  ``nofile``/``nproc`` limits at or below the machine's hard limits;
- the vfs storage driver avoids overlay mounts;
- setting ``static_dir`` makes every wait, kill or run stall for exactly 20 s: never set it;
- no image can be pulled: :func:`ensure_busybox_image` imports one built from the host's
  static busybox;
- a container can run the host's Python by bind-mounting ``/usr``, ``/lib``, ``/lib64`` and
  the virtual environment read-only with host networking (:func:`run_python_container`);
  ``init=True`` is needed, else a Python PID 1 ignores SIGTERM and every stop waits 10 s.

Typical use::

    service = PodmanService(Path(".lab/podman"))
    base_url = service.start()                    # "unix:///…/podman.sock"
    client = tasks.containers.make_client(base_url)
    ensure_busybox_image(client)
    run_python_container(client, "heartbeat", [host_python(), "-m", "lab.heartbeat"])
    ...
    service.stop()                                # removes containers, kills the service
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the docker SDK is imported by tasks/containers.py only
    pass

__all__ = ["DEFAULT_IMAGE", "PodmanError", "PodmanService", "available"]

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "localhost/dr-busybox:latest"
BUSYBOX_PATH = Path("/bin/busybox")
RUNC_PATH = Path("/usr/sbin/runc")
# At or below the machine's hard limits, else runc fails to raise them (podman.md).
ULIMIT_NOFILE = 1024
ULIMIT_NPROC = 1024
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# Host folders a container needs to run the host's dynamically linked Python.
SYSTEM_PYTHON_MOUNTS = ("/usr", "/lib", "/lib64")


class PodmanError(RuntimeError):
    """The lab's Podman service could not be started, reached or stopped."""


def available() -> tuple[bool, str]:
    """Tell whether this machine can run the lab's containers.

    Returns:
        ``(True, "")`` when podman, runc and a static busybox are installed, else
        ``(False, reason)`` with a reason a person can act on.
    """
    missing = []
    if shutil.which("podman") is None:
        missing.append("podman")
    if shutil.which("runc") is None and not RUNC_PATH.exists():
        missing.append("runc")
    if not BUSYBOX_PATH.exists() or not _is_static_elf(BUSYBOX_PATH):
        missing.append("busybox-static (a static /bin/busybox)")
    if missing:
        return False, (
            f"not installed: {', '.join(missing)} "
            "(Debian/Ubuntu: apt-get install -y podman runc busybox-static)"
        )
    return True, ""


def _is_static_elf(path: Path) -> bool:
    """Tell whether ``path`` is an ELF binary without a program interpreter (static)."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF":
                return False
            is64 = header[4] == 2
            endian = "<" if header[5] == 1 else ">"
            if is64:
                phoff = struct.unpack_from(endian + "Q", header, 32)[0]
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
            else:
                phoff = struct.unpack_from(endian + "I", header, 28)[0]
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 42)
            for index in range(phnum):
                f.seek(phoff + index * phentsize)
                (p_type,) = struct.unpack(endian + "I", f.read(4))
                if p_type == 3:  # PT_INTERP: dynamically linked
                    return False
            return True
    except OSError:
        return False


class PodmanService:
    """One ``podman system service`` with its own configuration, storage and socket.

    Everything lives under ``base_dir``: ``containers.conf``, ``storage.conf``, ``storage/``
    (images and containers, vfs), ``run/`` (runtime state), ``tmp/`` (Podman's tmp_dir),
    ``podman.sock``, ``podman.pid`` and ``podman.log``. The PID file lets another process
    (``dr lab down``) stop a service started earlier by ``dr lab up``.

    Args:
        base_dir: the folder to keep everything in (created if missing).
        podman: the podman executable.
        runc: the runc executable.
    """

    def __init__(
        self, base_dir: Path, *, podman: str = "podman", runc: Path | str = RUNC_PATH
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.podman_bin = podman
        self.runc = str(runc)
        self.containers_conf = self.base_dir / "containers.conf"
        self.storage_conf = self.base_dir / "storage.conf"
        self.socket_path = self.base_dir / "podman.sock"
        self.pid_file = self.base_dir / "podman.pid"
        self.log_file = self.base_dir / "podman.log"

    def __repr__(self) -> str:
        return f"PodmanService({str(self.base_dir)!r})"

    @property
    def base_url(self) -> str:
        """The Docker API address, for ``docker.DockerClient(base_url=...)``."""
        return f"unix://{self.socket_path}"

    @property
    def env(self) -> dict[str, str]:
        """Environment that points podman commands at this service's configuration."""
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }

    def write_config(self) -> None:
        """Write ``containers.conf`` and ``storage.conf`` (see the module docstring for why).

        ``tmp_dir`` is kept inside ``base_dir`` so two services (the lab's and the tests')
        never share Podman's runtime state; ``static_dir`` is deliberately not set.
        """
        for sub in ("storage", "run", "tmp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self.containers_conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={ULIMIT_NOFILE}:{ULIMIT_NOFILE}", '
            f'"nproc={ULIMIT_NPROC}:{ULIMIT_NPROC}"]\n'
            'netns = "none"\n'
            'log_driver = "k8s-file"\n'
            "\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{self.base_dir / "tmp"}"\n'
            "\n"
            "[engine.runtimes]\n"
            f'runc = ["{self.runc}"]\n'
        )
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{self.base_dir / "run"}"\n'
            f'graphroot = "{self.base_dir / "storage"}"\n'
        )

    def podman(
        self, *args: str, timeout_seconds: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a podman command against this service's storage (e.g. ``"ps", "-a"``).

        Raises:
            PodmanError: the command failed.
        """
        cmd = [self.podman_bin, *args]
        try:
            return subprocess.run(
                cmd,
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout_seconds,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            stderr = getattr(exc, "stderr", "") or ""
            raise PodmanError(f"{' '.join(cmd)} failed: {exc} {stderr.strip()}") from exc

    def pid(self) -> int | None:
        """The service's PID if its PID file names a live podman service of this folder."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # Guard against PID reuse: only a podman serving *our* socket counts.
        if any(part.endswith(b"podman") for part in cmdline[:1]) and any(
            str(self.socket_path).encode() in part for part in cmdline
        ):
            return pid
        return None

    def running(self) -> bool:
        """Tell whether the service is up and answers the Docker API's ``/_ping``."""
        return self.pid() is not None and self._ping()

    def _ping(self) -> bool:
        conn = UnixHTTPConnection(str(self.socket_path), timeout=2.0)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def start(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> str:
        """Start the service in the background (idempotent) and wait until the API answers.

        The service runs in its own session, so it outlives the calling process until
        :meth:`stop` (possibly from another process) ends it.

        Returns:
            The Docker API base URL (``unix://…/podman.sock``).

        Raises:
            PodmanError: podman is missing, exited early or did not answer in time.
        """
        if self.running():
            log.info("podman service already running in %s", self.base_dir)
            return self.base_url
        ok, reason = available()
        if not ok:
            raise PodmanError(f"cannot start the podman service: {reason}")
        stale = self.pid()
        if stale is not None:  # ours, alive, but not answering: replace it
            log.warning(
                "podman service pid %s in %s does not answer: restarting", stale, self.base_dir
            )
            self._kill(stale)
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        started = time.monotonic()
        with self.log_file.open("ab") as log_out:
            proc = subprocess.Popen(
                [self.podman_bin, "system", "service", "--time=0", self.base_url],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = started + timeout_seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PodmanError(
                    f"podman system service exited with {proc.returncode}; "
                    f"see {self.log_file}: {self._log_tail()}"
                )
            if self._ping():
                log.info(
                    "podman service started in %.2f s at %s (pid %s)",
                    time.monotonic() - started,
                    self.base_url,
                    proc.pid,
                )
                return self.base_url
            time.sleep(0.05)
        self._kill(proc.pid)
        raise PodmanError(
            f"podman service did not answer within {timeout_seconds:.0f} s; "
            f"see {self.log_file}: {self._log_tail()}"
        )

    def stop(
        self, *, remove_containers: bool = True, timeout_seconds: float = STOP_TIMEOUT_SECONDS
    ) -> None:
        """Remove this service's containers, kill the service by PID and remove its socket.

        Containers are removed first because their monitor processes (conmon) outlive the
        API service. Images and the configuration stay, so the next start is fast; delete
        ``base_dir`` to remove everything.

        Args:
            remove_containers: force-remove every container in this service's storage.
            timeout_seconds: how long to wait for the service to exit before SIGKILL.
        """
        if remove_containers and self.storage_conf.exists():
            try:
                self.podman("rm", "--all", "--force", "--time", "0")
            except PodmanError as exc:
                log.warning("could not remove containers in %s: %s", self.base_dir, exc)
        pid = self.pid()
        if pid is not None:
            self._kill(pid, timeout_seconds=timeout_seconds)
            log.info("podman service stopped (pid %s)", pid)
        # Container monitors and cleanup helpers of this folder finish on their own
        # within a moment; wait for them so the folder can be deleted afterwards.
        deadline = time.monotonic() + timeout_seconds
        while self._helper_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for leftover in self._helper_pids():
            log.warning("killing leftover podman helper %s of %s", leftover, self.base_dir)
            self._kill(leftover, timeout_seconds=1.0)
        for path in (self.pid_file, self.socket_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _helper_pids(self) -> list[int]:
        """PIDs of conmon/podman processes working on this folder (never anyone else's)."""
        needle = str(self.base_dir).encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and Path(argv[0].decode(errors="replace")).name in ("conmon", "podman")
                and any(needle in arg for arg in argv)
                and _alive(int(proc.name))
            ):
                pids.append(int(proc.name))
        return pids

    def _kill(self, pid: int, *, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.02)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> PodmanService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (reaping it first if it is our own exited child)."""
    with contextlib.suppress(ChildProcessError):
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that is not our child still answers kill(0); it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, to ping the API without building an SDK client."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


#: Moved to lab.podman_image; still importable from here (compatibility, removed when the
#: layout lands). A lazy lookup: lab.podman_image imports this module.
_MOVED = frozenset(
    {
        "BindMount",
        "default_python_paths",
        "ensure_busybox_image",
        "host_python",
        "python_container_mounts",
        "run_python_container",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from lab import podman_image

        return getattr(podman_image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
