"""The real backup-verification flow on Dask: N databases, same checks, progress and result.

A private cluster (not the lab) holds three databases; the project's backup flow backs them
up into a file:// repository; then ``flows/backup_verification`` runs once on Prefect's
threads and once on a Dask ``LocalCluster`` of two workers (``DR_TASK_RUNNER=dask``,
:mod:`deployments.task_runners`). Both must pass with the same checks and the same final
progress, and on Dask the branches must really have run on both Dask workers.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.pgcluster import temporary_cluster

pytestmark = pytest.mark.integration

DATABASES = ["v1", "v2", "v3"]


@pytest.fixture(scope="module")
def verification_setup() -> Iterator[Path]:
    """A cluster with three databases, backed up by the backup flow; the config's path."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.backup import backup_flow

    root = Path(tempfile.mkdtemp(prefix="dr-dask-verify-"))
    root.chmod(0o755)
    try:
        with (
            prefect_test_harness(server_startup_timeout=120),
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
            temporary_cluster(root, "dask-verify", archive_mode="off") as cluster,
        ):
            cluster.psql(f"CREATE DATABASE {DATABASES[0]}")
            subprocess.run(
                [str(cluster.bin_dir / "pgbench"), "-i", "-q", "-s", "1", "-d",
                 cluster.conninfo(DATABASES[0])],
                capture_output=True, check=True,
            )  # fmt: skip
            for db in DATABASES[1:]:
                cluster.psql(f"CREATE DATABASE {db} TEMPLATE {DATABASES[0]}")
            config = {
                "version": 1,
                "targets": {
                    "dask": {
                        "drills_allowed": True,
                        "postgres": {
                            "primary": {"name": "pg", "host": "127.0.0.1", "port": cluster.port},
                            "user": "postgres",
                            "databases": DATABASES,
                        },
                        "backup": {"repository": f"file://{root / 'repo'}"},
                    }
                },
            }
            path = root / "dr.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            backup_flow("dask", config_path=str(path), staging_dir=str(root / "staging"))
            yield path
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_on(runner: str, config: Path) -> dict[str, Any]:
    """The flow on ``runner``; the Dask workers the branches ran on; the final progress."""
    from deployments.task_runners import configured_task_runner, with_task_runner
    from flows.backup_verification import backup_verification_flow, parallel, restore

    seen: dict[str, Any] = {"workers": set(), "progress": []}
    fetch = restore.fetch_backup_files
    wait = parallel._wait

    def fetch_and_note_worker(*args: Any, **kwargs: Any) -> Any:
        import distributed

        try:
            seen["workers"].add(distributed.get_worker().address)
        except ValueError:  # not on a Dask worker: the thread runner
            pass
        return fetch(*args, **kwargs)

    def wait_and_note_progress(ctx: Any, board: Any, futures: Any) -> None:
        wait(ctx, board, futures)  # in the flow's thread: what the flow shows at the end
        seen["progress"].append((board.overall, board.latest()))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(restore, "fetch_backup_files", fetch_and_note_worker)
        mp.setattr(parallel, "_wait", wait_and_note_progress)
        env = {"DR_TASK_RUNNER": runner, "DR_DASK_WORKERS": "2"}
        flow = with_task_runner(backup_verification_flow, configured_task_runner(env))
        result = flow("dask", config_path=str(config))
    return {**seen, "result": result}


def test_verification_of_n_databases_is_the_same_on_threads_and_on_dask(
    verification_setup: Path,
) -> None:
    on_threads = run_on("thread", verification_setup)
    on_dask = run_on("dask", verification_setup)

    for got in (on_threads, on_dask):
        result = got["result"]
        assert result["outcome"] == "passed", result["reason"]
        assert sorted(d["database"] for d in result["details"]["databases"]) == DATABASES
        assert all(c["ok"] for c in result["checks"]), result["checks"]
        assert got["progress"] == [(1.0, "; ".join(f"{db} 100% done" for db in DATABASES))]

    def names(got: dict[str, Any]) -> list[str]:
        return sorted(c["name"] for c in got["result"]["checks"])

    assert names(on_dask) == names(on_threads)
    assert on_threads["workers"] == set()
    assert len(on_dask["workers"]) == 2, on_dask["workers"]
