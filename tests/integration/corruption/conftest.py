"""Fixtures for the data-corruption tests: a private PITR setup, and the shared lab.

- ``pitr``: a cluster of the tests' own (data checksums on, 1 MiB WAL segments) archiving
  into its own folder, a base backup of it in its own file repository (with the same
  manifest the backup flow writes), and a table whose rows the tests compare. The recovery
  machinery (tasks/pitr/) is exercised against it without the lab: gaps are made in
  COPIES of its archive, never in the archive itself.
- ``corruption_lab``: the session's lab with this process's Prefect pointed at the lab's
  server (settings and environment, so background threads see it too), a folder for
  recovered clusters, and :meth:`CorruptionLab.restore` to leave the lab healthy after a
  drill that switched the application to a recovered cluster.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import up
from lab.pgcluster import Cluster, free_port
from tasks.backups.manifest import BASE_KIND, MANIFEST_NAME, build_manifest
from tasks.pitr.archiving import switch_wal_and_wait
from tasks.pitr.base_backup import BaseBackup, base_backup, list_base_backups
from tasks.pitr.cluster import remove_cluster
from tasks.storage import client as storage_client

TARGET = "pitr"
ROWS = 20_000


def traversable_dir(prefix: str, parent: Path | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


@dataclass
class Pitr:
    """A private cluster with its archive, repository and one base backup."""

    root: Path
    cluster: Cluster
    archive: Path
    repo: Any
    backup: BaseBackup

    @property
    def conninfo(self) -> str:
        return self.cluster.conninfo()

    def wal_repo(self, folder: Path | None = None) -> Any:
        return storage_client.open_repository(f"file://{folder or self.archive}")

    def work(self) -> Path:
        return traversable_dir("w-", self.root)

    def archive_copy(self, dest: Path) -> Path:
        """A copy of the archive the test may damage."""
        shutil.copytree(self.archive, dest)
        return dest

    def switch_wal(self, times: int = 1) -> None:
        for _ in range(times):
            self.cluster.psql("UPDATE public.t SET v = v WHERE id = 1")
            switch_wal_and_wait(self.conninfo)


def take_base_backup(cluster: Cluster, repo: Any, stage: Path, backup_id: str) -> None:
    """A base backup uploaded like flows/backup.py does (files, then the manifest last)."""
    folder = stage / backup_id
    info = base_backup(cluster.conninfo(), folder)
    manifest = build_manifest(
        folder,
        target=TARGET,
        database="*",
        server_version="15",
        tool_version=info.tool_version,
        started_at=info.started_at,
        ended_at=info.ended_at,
        wal_lsn=info.start_lsn,
        wal_stop_lsn=info.stop_lsn,
        timeline=info.timeline,
        row_counts={},
        backup_id=backup_id,
        kind=BASE_KIND,
    )
    for entry in manifest.files:
        repo.put_file(f"{TARGET}/base/{backup_id}/{entry.path}", folder / entry.path)
    repo.put_bytes(
        f"{TARGET}/base/{backup_id}/{MANIFEST_NAME}", manifest.model_dump_json().encode()
    )


@pytest.fixture(scope="module")
def pitr() -> Iterator[Pitr]:
    root = traversable_dir("dr-pitr-")
    cluster = Cluster(root / "pg", free_port(), name="pitr")
    cluster.initdb()
    cluster.set_archive_dir(root / "wal")
    cluster.start()
    try:
        cluster.psql(
            "CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL);"
            f"INSERT INTO public.t SELECT g, g FROM generate_series(1, {ROWS}) g"
        )
        repo = storage_client.open_repository(f"file://{root / 'repo'}")
        take_base_backup(cluster, repo, root / "stage", "20000101T000000Z-first")
        backup = list_base_backups(repo, TARGET)[0]
        yield Pitr(root=root, cluster=cluster, archive=root / "wal", repo=repo, backup=backup)
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the lab


@dataclass
class CorruptionLab:
    """The shared lab as these tests use it."""

    state: Any
    raw_config: dict[str, Any]
    root: Path
    work_dirs: list[Path] = field(default_factory=list)
    last_result: dict[str, Any] | None = None
    _docker: Any = None

    @property
    def config_path(self) -> Path:
        return Path(self.state.config_path)

    @property
    def primary(self) -> Cluster:
        node = self.raw_config["targets"]["lab"]["postgres"]["primary"]
        return Cluster(Path(node["data_directory"]), int(node["port"]), name=node["name"])

    def psql(self, sql: str, dbname: str = "app") -> str:
        return self.primary.psql(sql, dbname)

    def conninfo(self, dbname: str = "app") -> str:
        return self.primary.conninfo(dbname)

    def options(self, **kw: Any) -> dict[str, Any]:
        """Drill options with this session's folders (recovered clusters, staging)."""
        folder = traversable_dir("run-", self.root)
        self.work_dirs.append(folder)
        return {
            "recovery_dir": str(folder / "recovery"),
            "staging_dir": str(folder / "staging"),
            **kw,
        }

    def write_config(self, folder: Path, **backup: Any) -> Path:
        """A copy of the lab's config with the target's backup section changed."""
        data = copy.deepcopy(self.raw_config)
        data["targets"]["lab"]["backup"].update(backup)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "dr.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def app_container(self) -> Any:
        if self._docker is None:
            import docker

            self._docker = docker.DockerClient(base_url=self.state.podman_base_url)
        return self._docker.containers.get(self.state.app_container)

    def app_env(self) -> dict[str, str]:
        env = self.app_container().attrs["Config"]["Env"] or []
        return dict(item.split("=", 1) for item in env)

    def newest_heartbeat_age(self) -> float:
        return float(
            self.psql(
                "SELECT extract(epoch FROM clock_timestamp() - max(ts)) FROM public.dr_heartbeat "
                "WHERE writer = 'app'"
            )
        )

    def app_writing(self, within_seconds: float = 15) -> bool:
        deadline = time.monotonic() + within_seconds
        while time.monotonic() < deadline:
            if self.newest_heartbeat_age() < 1.0:
                return True
            time.sleep(0.2)
        return False

    def damaged_databases(self) -> list[str]:
        out = self.psql(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE '%\\_damaged\\_%' "
            "OR datname LIKE 'dr\\_drill\\_undo\\_%'",
            "postgres",
        )
        return [line for line in out.splitlines() if line]

    def restore(self, result: dict[str, Any] | None = None) -> None:
        """Leave the lab as the next test expects it: app on the primary, no leftovers."""

        recovery = ((result or {}).get("details") or {}).get("recovery") or {}
        # Heal first (the app back on the primary), then remove the recovered cluster.
        if self.app_env().get("DB_PORT") != str(self.primary.port) or not self.app_writing(5):
            up.heal(self.state.base_dir)
        if recovery.get("data_dir") and Path(recovery["data_dir"]).exists():
            remove_cluster(recovery["data_dir"])
        for name in self.damaged_databases():
            self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


@pytest.fixture(scope="session")
def corruption_lab(lab: Any) -> Iterator[CorruptionLab]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    assert lab.prefect_api_url, "the lab runs without its Prefect server"
    raw = yaml.safe_load(Path(lab.config_path).read_text())
    root = traversable_dir("dr-corruption-")
    with (
        pytest.MonkeyPatch.context() as mp,
        temporary_settings(
            updates={
                PREFECT_API_URL: lab.prefect_api_url,
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
            }
        ),
    ):
        # Background threads (Slack) read settings from the environment, not the context.
        mp.setenv("PREFECT_API_URL", lab.prefect_api_url)
        mp.delenv("DR_CONFIG", raising=False)
        env = CorruptionLab(state=lab, raw_config=raw, root=root)
        try:
            yield env
        finally:
            env.restore()
            if env._docker is not None:
                env._docker.close()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def healthy_lab(corruption_lab: CorruptionLab) -> Iterator[CorruptionLab]:
    """The lab, put back (app on the primary, no damaged copies) after the test."""
    corruption_lab.last_result = None
    yield corruption_lab
    corruption_lab.restore(corruption_lab.last_result)
    corruption_lab.last_result = None
