"""Fixtures for the backup tests: the lab, its Prefect server, and private repositories.

Most tests back the lab's ``app`` database up into a repository of their own (a copy of the
lab's config whose target ``lab`` points at a temporary folder), so that corrupting,
emptying or deleting backups never touches the lab's real repository or another test's.
The target keeps its name ``lab`` (manifests say ``lab``; the per-target lock is the lab's).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.pgcluster import Cluster


def _traversable_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class BackupLab:
    """The lab as the backup tests see it."""

    state: Any
    raw_config: dict[str, Any]
    root: Path

    @property
    def config_path(self) -> Path:
        return Path(self.state.config_path)

    @property
    def primary(self) -> Cluster:
        node = self.raw_config["targets"]["lab"]["postgres"]["primary"]
        return Cluster(Path(node["data_directory"]), int(node["port"]), name=node["name"])

    def psql(self, sql: str, dbname: str = "app") -> str:
        return self.primary.psql(sql, dbname)

    def scratch_databases(self) -> list[str]:
        out = self.psql(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'dr\\_verify\\_%'",
            "postgres",
        )
        return [line for line in out.splitlines() if line]

    def write_config(
        self,
        folder: Path,
        *,
        repository: str | None = None,
        foreign: list[dict[str, Any]] | None = None,
        retention: dict[str, int] | None = None,
        files: bool = True,
    ) -> Path:
        """A copy of the lab's config whose target ``lab`` uses a private repository.

        ``files=False``: a database-only target (no ``files:`` or ``links:``).
        """
        data = copy.deepcopy(self.raw_config)
        if not files:
            data["targets"]["lab"].pop("files", None)
            data["targets"]["lab"].pop("links", None)
        backup = data["targets"]["lab"]["backup"]
        backup["repository"] = repository or f"file://{folder / 'repo'}"
        if foreign is not None:
            backup["foreign"] = foreign
        if retention is not None:
            backup["retention"] = retention
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "dr.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def repo_checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under a file:// repository folder (to prove nothing changed)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def backup_lab(lab: Any) -> Iterator[BackupLab]:
    """The lab, with this process's Prefect pointed at the lab's server (secret blocks)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    raw = yaml.safe_load(Path(lab.config_path).read_text())
    root = _traversable_dir("dr-backup-tests-")
    updates: dict[Any, Any] = {
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    if lab.prefect_api_url:
        updates[PREFECT_API_URL] = lab.prefect_api_url
    try:
        with temporary_settings(updates=updates):
            yield BackupLab(state=lab, raw_config=raw, root=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def work(backup_lab: BackupLab) -> Iterator[Path]:
    """A per-test folder the postgres user can traverse; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=backup_lab.root))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def seed_backup(backup_lab: BackupLab) -> dict[str, Any]:
    """One real backup of the lab's ``app`` in a private repository, taken once.

    Tests that damage a repository work on a copy of it (:func:`seed_copy`).
    """
    from flows.backup.flow import backup_flow

    folder = backup_lab.root / "seed"
    config = backup_lab.write_config(folder)
    result = backup_flow("lab", config_path=str(config), staging_dir=str(folder / "staging"))
    backup = result["backups"][0]
    return {
        "repo": folder / "repo",
        "backup_id": backup["backup_id"],
        "prefix": f"lab/app/{backup['backup_id']}",
        "result": result,
    }


@pytest.fixture
def seed_copy(seed_backup: dict[str, Any], work: Path) -> dict[str, Any]:
    """A private copy of the seed repository, to damage without touching the seed."""
    repo = work / "repo"
    shutil.copytree(seed_backup["repo"], repo)
    return {**seed_backup, "repo": repo, "backup_dir": repo / seed_backup["prefix"]}


@pytest.fixture
def checksums() -> Any:
    """``checksums(folder)``: SHA-256 of every file under it."""
    return repo_checksums
