"""Local PostgreSQL clusters from the machine's own binaries, for the lab and the tests.

A :class:`Cluster` is one data directory and one server process. It never uses port 5432
and never touches a server it did not create: every cluster gets its own folder, its own
socket directory and a free loopback port. When invoked as root, server tools run as the
``postgres`` OS user (PostgreSQL refuses to run as root).

Authentication in lab clusters: the superuser ``postgres`` is trusted on loopback (the lab
is one machine and one person); every other role needs its password (scram-sha-256), so
the breach drill can prove that a rotated password is really refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from dr.localexec import chown_for_server
from lab.host import (  # noqa: F401 - re-exported: lab.pgcluster is where tests find them
    FORBIDDEN_PORTS,
    PG_BIN_CANDIDATES,
    ClusterError,
    free_port,
    pg_bin_dir,
    port_open,
    run_as_server,
    server_user,
)

log = logging.getLogger(__name__)


#: Written into every lab cluster. Small WAL segments make archive_timeout cheap.
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "60",
    "shared_buffers": "64MB",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "256MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",
    "archive_mode": "on",
    "archive_timeout": "30",
    "logging_collector": "on",
    "log_directory": "'log'",
    "log_filename": "'postgresql-%Y-%m-%d.log'",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_line_prefix": "'%m [%p] %q%u@%d from %h '",
    "fsync": "on",
    "synchronous_commit": "on",
    "checkpoint_timeout": "5min",
    "max_wal_size": "512MB",
    "password_encryption": "'scram-sha-256'",
    "shared_preload_libraries": "''",
}


class Cluster:
    """One local PostgreSQL server: its folder, port and process.

    Args:
        data_dir: the data directory (created by :meth:`initdb` or :meth:`clone_from`).
        port: TCP port on 127.0.0.1 (never 5432).
        name: a short name used in logs, application_name and replication slot names.
        bin_dir: PostgreSQL binaries; defaults to the newest on the machine.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        name: str = "pg",
        bin_dir: Path | None = None,
    ) -> None:
        if port in FORBIDDEN_PORTS:
            raise ClusterError(f"port {port} belongs to the machine's own PostgreSQL")
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.name = name
        self.bin_dir = bin_dir or pg_bin_dir()
        self.socket_dir = self.data_dir.parent / f"{self.data_dir.name}.sock"

    # ------------------------------------------------------------------ info

    def __repr__(self) -> str:
        return f"Cluster({self.name!r}, port={self.port}, data_dir={str(self.data_dir)!r})"

    def bin(self, tool: str) -> Path:
        return self.bin_dir / tool

    def conninfo(self, dbname: str = "postgres", user: str = "postgres", **extra: str) -> str:
        """A libpq conninfo for this server on loopback TCP."""
        parts = {"host": "127.0.0.1", "port": str(self.port), "dbname": dbname, "user": user}
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def pid(self) -> int | None:
        """The postmaster's PID if the server is running, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_ready(self) -> bool:
        proc = subprocess.run(
            [str(self.bin("pg_isready")), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    # ------------------------------------------------------------------ create

    def _prepare_parent(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        chown_for_server(self.socket_dir)

    def initdb(self, settings: Mapping[str, str] | None = None, *, wal_segsize_mb: int = 1) -> None:
        """Create a new cluster with data checksums on and the lab's settings."""
        if self.exists():
            raise ClusterError(f"{self.data_dir} already holds a cluster")
        self._prepare_parent()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        chown_for_server(self.data_dir)
        run_as_server(
            [
                self.bin("initdb"),
                "-D",
                self.data_dir,
                "--data-checksums",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                f"--wal-segsize={wal_segsize_mb}",
            ]
        )
        self.write_hba()
        self.set_settings({**BASE_SETTINGS, **(settings or {})})

    def write_hba(self) -> None:
        """Loopback only: superuser trusted, replication trusted, everyone else by password."""
        hba = (
            "# written by DR pipelines' lab\n"
            "local   all          all                          trust\n"
            "host    all          postgres     127.0.0.1/32    trust\n"
            "host    replication  postgres     127.0.0.1/32    trust\n"
            "host    all          all          127.0.0.1/32    scram-sha-256\n"
        )
        self._write_server_file(self.data_dir / "pg_hba.conf", hba)

    def set_settings(self, settings: Mapping[str, str]) -> None:
        """Write settings into ``conf.d/lab.conf`` (port and sockets always included)."""
        conf_dir = self.data_dir / "conf.d"
        merged = dict(self.read_settings())
        merged.update(settings)
        merged["port"] = str(self.port)
        merged["unix_socket_directories"] = f"'{self.socket_dir}'"
        merged["cluster_name"] = f"'{self.name}'"
        body = "".join(f"{k} = {v}\n" for k, v in sorted(merged.items()))
        if not conf_dir.exists():
            conf_dir.mkdir()
            chown_for_server(conf_dir)
        self._write_server_file(conf_dir / "lab.conf", body)
        main_conf = self.data_dir / "postgresql.conf"
        text = main_conf.read_text()
        if "include_dir = 'conf.d'" not in text:
            self._write_server_file(main_conf, text + "\ninclude_dir = 'conf.d'\n")

    def read_settings(self) -> dict[str, str]:
        path = self.data_dir / "conf.d" / "lab.conf"
        if not path.exists():
            return {}
        out: dict[str, str] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out

    def _write_server_file(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        chown_for_server(tmp)
        os.replace(tmp, path)

    def set_archive_dir(self, archive_dir: Path) -> None:
        """Archive WAL into ``archive_dir``; an identical file already there is success.

        Why ``cmp``: after a failover the promoted node re-archives a segment the old
        primary already archived; the documented ``test ! -f`` command would then fail
        forever (shared/lab/postgres.md).
        """
        archive_dir.mkdir(parents=True, exist_ok=True)
        chown_for_server(archive_dir)
        d = str(archive_dir)
        cmd = (
            f"test -f {d}/%f && cmp -s %p {d}/%f || "
            f"(test ! -f {d}/%f && cp %p {d}/%f.tmp && mv {d}/%f.tmp {d}/%f)"
        )
        self.set_settings({"archive_command": f"'{cmd}'", "restore_command": f"'cp {d}/%f %p'"})

    # ------------------------------------------------------------------ run

    def start(self, *, timeout_seconds: float = 60) -> None:
        """Start the server and wait until it accepts connections (no-op if running)."""
        if self.is_running() and self.is_ready():
            return
        self._prepare_parent()
        self.log_dir.mkdir(exist_ok=True)
        chown_for_server(self.log_dir)
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and not self.is_running():
            stale.unlink()
        run_as_server(
            [
                self.bin("pg_ctl"),
                "start",
                "-D",
                self.data_dir,
                "-w",
                "-t",
                str(int(timeout_seconds)),
                "-l",
                self.data_dir / "log" / "startup.log",
            ],
            timeout=timeout_seconds + 10,
        )
        deadline = time.monotonic() + timeout_seconds
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not accept connections on {self.port}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast", *, timeout_seconds: float = 60) -> bool:
        """Stop the server. ``mode`` is pg_ctl's: smart, fast or immediate (a crash).

        Returns:
            True when a running server was stopped, False when it was not running.
        """
        if not self.is_running():
            return False
        run_as_server(
            [
                self.bin("pg_ctl"),
                "stop",
                "-D",
                self.data_dir,
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout_seconds)),
            ],
            timeout=timeout_seconds + 10,
            check=False,
        )
        deadline = time.monotonic() + timeout_seconds
        while self.is_running():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not stop")
            time.sleep(0.05)
        return True

    def kill(self) -> bool:
        """SIGKILL the postmaster: the harshest crash, for drills."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    def destroy(self) -> None:
        """Stop the server (immediately) and remove its folder."""
        with contextlib.suppress(ClusterError):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # ------------------------------------------------------------------ sql

    def psql(self, sql: str, dbname: str = "postgres", *, check: bool = True) -> str:
        """Run SQL through psql as the superuser; returns unaligned, tuples-only output."""
        proc = subprocess.run(
            [
                str(self.bin("psql")),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"psql on {self.name}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # ------------------------------------------------------------------ replicas

    def create_replica(
        self,
        data_dir: Path,
        port: int,
        *,
        name: str,
        slot: bool = True,
        archive_dir: Path | None = None,
    ) -> Cluster:
        """Make a streaming hot standby of this (running) server and start it.

        ``pg_basebackup`` copies the primary's configuration, port included, so the copy's
        port, sockets and name are overridden before it starts (shared/lab/postgres.md).
        """
        replica = Cluster(data_dir, port, name=name, bin_dir=self.bin_dir)
        if replica.exists():
            raise ClusterError(f"{data_dir} already holds a cluster")
        replica._prepare_parent()
        replica.data_dir.mkdir(mode=0o700)
        chown_for_server(replica.data_dir)
        slot_name = name.replace("-", "_")
        args: list[str | os.PathLike[str]] = [
            self.bin("pg_basebackup"),
            "-D",
            replica.data_dir,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
        ]
        if slot:
            exists = self.psql(
                f"SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot_name}'"
            )
            if exists:
                self.psql(f"SELECT pg_catalog.pg_drop_replication_slot('{slot_name}')")
            args += ["-C", "-S", slot_name]
        run_as_server(args, timeout=600)
        replica.configure_as_standby(self, slot_name if slot else None)
        if archive_dir is not None:
            replica.set_archive_dir(archive_dir)
        replica.start()
        return replica

    def configure_as_standby(self, primary: Cluster, slot_name: str | None) -> None:
        """Point this data directory at ``primary`` as a streaming standby."""
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres application_name={self.name}"
        settings = {"primary_conninfo": f"'{conninfo}'"}
        settings["primary_slot_name"] = f"'{slot_name}'" if slot_name else "''"
        # The copy inherited the primary's port and names; set_settings overrides them.
        self.set_settings(settings)
        signal = self.data_dir / "standby.signal"
        if not signal.exists():
            self._write_server_file(signal, "")
        auto = self.data_dir / "postgresql.auto.conf"
        if auto.exists():
            # Only our conf.d decides: drop what pg_basebackup -R may have written.
            self._write_server_file(auto, "# managed by DR pipelines' lab (conf.d/lab.conf)\n")

    def promote(self, *, timeout_seconds: float = 30) -> None:
        """Promote a standby and wait until it leaves recovery."""
        self.psql(f"SELECT pg_catalog.pg_promote(true, {int(timeout_seconds)})")


@contextlib.contextmanager
def temporary_cluster(base_dir: Path, name: str = "pg", **settings: str) -> Iterator[Cluster]:
    """A started cluster in ``base_dir`` that is destroyed afterwards (for tests)."""
    cluster = Cluster(base_dir / name, free_port(), name=name)
    cluster.initdb(settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
