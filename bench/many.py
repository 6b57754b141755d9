"""N databases verified at once by the real backup-verification flow, vs one after another.

Shared by ``bench/restore.py --databases 1,4,16``: a temporary cluster holds N pgbench
databases, the project's backup flow backs them up into a ``file://`` repository, then:

- ``flow (thread)`` / ``flow (dask)``: ``flows/backup_verification``'s flow, one parallel
  branch per database (download + SHA-256 + pg_restore + row counts, schema, amcheck),
  on Prefect's thread pool or on a Dask ``LocalCluster`` of two workers
  (``deployments/task_runners.py``);
- ``by hand``: the same N dumps, one after another: ``sha256sum`` of the files,
  ``createdb``, ``pg_restore``, a row count, ``dropdb``.

Prefect runs against a temporary local server (``prefect_test_harness``).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lab.pgcluster import Cluster

TARGET = "bench"


@contextmanager
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for the flows (never the machine's own)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


def make_databases(cluster: Cluster, count: int, scale: int) -> list[str]:
    """``count`` databases of ``pgbench -i -s scale`` (the first one copied by template)."""
    names = [f"db{i + 1}" for i in range(count)]
    cluster.psql(f"CREATE DATABASE {names[0]}")
    subprocess.run(
        [str(cluster.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "-d",
         cluster.conninfo(names[0])],
        capture_output=True, check=True,
    )  # fmt: skip
    for name in names[1:]:
        cluster.psql(f"CREATE DATABASE {name} TEMPLATE {names[0]}")
    return names


def write_config(folder: Path, cluster: Cluster, databases: list[str]) -> Path:
    """A dr.yaml with one target: this cluster, these databases, a file:// repository."""
    config = {
        "version": 1,
        "targets": {
            TARGET: {
                "drills_allowed": True,
                "postgres": {
                    "primary": {"name": "bench", "host": "127.0.0.1", "port": cluster.port},
                    "user": "postgres",
                    "databases": databases,
                },
                "backup": {"repository": f"file://{folder / 'repo'}"},
            }
        },
        "concurrency": {"on_busy": "wait", "wait_timeout_seconds": 600},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dr.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def backup_all(config: Path, staging: Path) -> dict[str, Any]:
    from flows.backup import backup_flow

    return backup_flow(TARGET, config_path=str(config), staging_dir=str(staging))


def verify_with_flow(config: Path, runner: str) -> tuple[float, dict[str, Any]]:
    """The real backup-verification flow on ``runner`` (``thread`` or ``dask``)."""
    from deployments.task_runners import make_task_runner, with_task_runner
    from flows.backup_verification import backup_verification_flow

    flow = with_task_runner(backup_verification_flow, make_task_runner(runner, n_workers=2))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    result = flow(TARGET, config_path=str(config))
    return time.perf_counter() - t0, result


def verify_by_hand(cluster: Cluster, repo: Path, databases: list[str]) -> float:
    """The runbook's monthly test restore, one database after another."""
    t0 = time.perf_counter()
    for db in databases:
        dump = max(p for p in (repo / TARGET / db).iterdir() if p.is_dir())
        files = sorted(str(p) for p in dump.rglob("*") if p.is_file() and p.name != "manifest.json")
        subprocess.run(["sha256sum", *files], capture_output=True, check=True)
        cluster.psql("DROP DATABASE IF EXISTS by_hand WITH (FORCE)")
        cluster.psql("CREATE DATABASE by_hand TEMPLATE template0")
        data = next(dump.rglob("toc.dat")).parent
        subprocess.run(
            [str(cluster.bin_dir / "pg_restore"), "-d", cluster.conninfo("by_hand"), str(data)],
            capture_output=True, check=True,
        )  # fmt: skip
        cluster.psql("SELECT count(*) FROM pgbench_accounts", "by_hand")
        cluster.psql("DROP DATABASE by_hand WITH (FORCE)")
    return time.perf_counter() - t0


def summary(result: dict[str, Any]) -> tuple[str, list[str]]:
    """The outcome and the sorted check names: equal on threads and on Dask."""
    return result["outcome"], sorted(c["name"] for c in result["checks"])


def run_counts(
    cluster: Cluster, root: Path, counts: list[int], scale: int, rounds: int, runners: list[str]
) -> list[dict[str, Any]]:
    """For each N: the flow on each runner and by hand, medians over ``rounds``."""
    rows = []
    for n in counts:
        for i in range(1, 100):
            cluster.psql(f"DROP DATABASE IF EXISTS db{i} WITH (FORCE)")
        dbs = make_databases(cluster, n, scale)
        folder = root / f"n{n}"
        config = write_config(folder, cluster, dbs)
        backup_all(config, folder / "staging")
        names = ", ".join(f"'{db}'" for db in dbs)
        mib = (
            int(
                cluster.psql(
                    f"SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datname IN ({names})"
                )
            )
            / 2**20
        )
        row: dict[str, Any] = {"databases": n, "mib": mib}
        shapes = set()
        for runner in runners:
            times = []
            for _ in range(rounds):
                seconds, result = verify_with_flow(config, runner)
                if result["outcome"] != "passed":
                    raise SystemExit(f"{runner}: drill {result['outcome']}: {result['reason']}")
                shapes.add(repr(summary(result)))
                times.append(seconds)
            row[runner] = statistics.median(times)
        row["by hand"] = statistics.median(
            verify_by_hand(cluster, folder / "repo", dbs) for _ in range(rounds)
        )
        row["same result"] = len(shapes) == 1
        rows.append(row)
        print(f"  N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                                      if isinstance(v, float)), flush=True)  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]], runners: list[str]) -> str:
    head = f"{'N':>3} {'MiB':>7} " + " ".join(f"{'flow ' + r + ' s':>15}" for r in runners)
    lines = [head + f" {'by hand s':>10} {'hand/flow':>10} {'same checks':>12}"]
    for row in rows:
        best = min(row[r] for r in runners)
        lines.append(
            f"{row['databases']:>3} {row['mib']:>7.0f} "
            + " ".join(f"{row[r]:>15.2f}" for r in runners)
            + f" {row['by hand']:>10.2f} {row['by hand'] / best:>10.2f} "
            f"{'yes' if row['same result'] else 'NO':>12}"
        )
    return "\n".join(lines)
