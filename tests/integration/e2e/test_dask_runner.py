"""The Dask task runner option: verification-like tasks fanned out on a local Dask cluster.

A flow verifies a dozen "backups" (a file and the SHA-256 its manifest records) as
independent tasks on ``prefect-dask``'s ``DaskTaskRunner`` with a ``LocalCluster`` of two
workers (threads, to stay light), against the session's Prefect server. One backup is
damaged: its task must say so while the others pass, and the work must have been spread
over both Dask workers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

N_BACKUPS = 12
DAMAGED = 5


def _verify_copy(name: str, path: str, expected_sha256: str) -> dict[str, Any]:
    """What a verification branch does, in small: read the backup, hash it, compare."""
    import distributed

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return {
        "name": name,
        "ok": digest.hexdigest() == expected_sha256,
        "worker": distributed.get_worker().address,  # raises outside a Dask worker
    }


def test_verification_fans_out_over_a_local_dask_cluster(e2e_prefect: Any, tmp_path: Path) -> None:
    from prefect import flow, task
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from deployments.task_runners import configured_task_runner

    backups = []
    for i in range(N_BACKUPS):
        data = (f"db{i}:".encode() + bytes(range(256))) * 4096  # ~1 MiB each
        path = tmp_path / f"db{i}.dump"
        path.write_bytes(data)
        expected = hashlib.sha256(data).hexdigest()
        if i == DAMAGED:
            with path.open("r+b") as fh:  # a flipped byte in the middle: silent corruption
                fh.seek(len(data) // 2)
                fh.write(b"\x00" if data[len(data) // 2] else b"\x01")
        backups.append((f"db{i}", str(path), expected))

    verify = task(_verify_copy, name="verify-copy")
    runner = configured_task_runner({"DR_TASK_RUNNER": "dask", "DR_DASK_WORKERS": "2"})

    @flow(name="dask-verification-fan-out", task_runner=runner)
    def verify_all() -> list[dict[str, Any]]:
        futures = [verify.submit(*b) for b in backups]
        return [f.result() for f in futures]

    updates = {PREFECT_API_URL: e2e_prefect.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(updates=updates):
        results = verify_all()

    assert [r["name"] for r in results] == [b[0] for b in backups]
    assert [r["name"] for r in results if not r["ok"]] == [f"db{DAMAGED}"]
    workers = {r["worker"] for r in results}
    assert len(workers) == 2, workers
