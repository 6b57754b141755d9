"""Benchmark: the project's backups against the raw tools with checksums, by hand.

Builds a temporary PostgreSQL cluster (never the machine's own server, never port 5432),
fills it with ``pgbench -i -s SCALE`` for each ``--scales`` entry, then times, in rotating
order:

- ``flow logical file://`` / ``s3``: ``flows/backup``'s logical backup (``pg_dump -Fd -j N``
  in a snapshot with row counts, manifest with every file's SHA-256, upload verified,
  retention) into a ``file://`` repository, and into an S3 stand-in (``moto.server`` on
  loopback, as tests/integration/storage/conftest.py starts it);
- ``pg_dump -Fd -j N + sha256sum``: the same dump and checksums by hand, no upload;
- ``flow base file://`` / ``s3``: the base backup (``pg_basebackup -Ft`` with its manifest);
- ``pg_basebackup -Ft + sha256sum``: the same by hand.

``CHECKPOINT`` and ``sync`` run before every timing. Per scale: medians, then the growth
table (project / raw, MB/s, the fit ``t = a + b * GiB``).

Usage::

    .venv/bin/python bench/backup.py [--scales 10,50,200] [--rounds 3] [--jobs N]
        [--no-s3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from common import Point, growth_table, int_list, load_note, machine
from many import prefect_server

from lab.pgcluster import Cluster, temporary_cluster

DB = "bench"


@contextmanager
def moto_server() -> Iterator[str]:
    """``moto.server`` on loopback with fake keys in the environment; its endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(BENCH_S3_KEY="testing", BENCH_S3_SECRET="testing")
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        ).create_bucket(Bucket="bench")  # fmt: skip
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_config(folder: Path, cluster: Cluster, endpoint: str | None) -> Path:
    """Targets ``file`` (a file:// repository) and ``s3`` (the stand-in), same cluster."""

    def target(repository: str) -> dict[str, Any]:
        return {
            "drills_allowed": True,
            "postgres": {
                "primary": {"name": "bench", "host": "127.0.0.1", "port": cluster.port},
                "user": "postgres",
                "databases": [DB],
            },
            "backup": {"repository": repository},
        }

    config: dict[str, Any] = {"version": 1, "targets": {"file": target(f"file://{folder}/repo")}}
    if endpoint:
        config["targets"]["s3"] = target("s3://bench/backups")
        config["aws"] = {
            "endpoint_url": endpoint,
            "access_key_id": {"env": "BENCH_S3_KEY"},
            "secret_access_key": {"env": "BENCH_S3_SECRET"},
        }
    path = folder / "dr.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def methods(
    cluster: Cluster, config: Path, work: Path, jobs: int, s3: bool
) -> dict[str, Callable[[Path], None]]:
    """Name -> a callable doing one backup into a fresh folder."""
    from flows.backup import backup_flow
    from flows.backup.models import BackupKind

    def flow(target: str, kind: BackupKind) -> Callable[[Path], None]:
        return lambda out: backup_flow(
            target, kind, config_path=str(config), staging_dir=str(out / "staging")
        )

    def by_hand(argv: list[str]) -> Callable[[Path], None]:
        def run(out: Path) -> None:
            subprocess.run([*argv, str(out / "raw")], capture_output=True, check=True)
            files = sorted(str(p) for p in (out / "raw").rglob("*") if p.is_file())
            subprocess.run(["sha256sum", *files], capture_output=True, check=True)

        return run

    conn = cluster.conninfo(DB)
    got: dict[str, Callable[[Path], None]] = {
        "flow logical file://": flow("file", BackupKind.logical),
        f"pg_dump -Fd -j {jobs} + sha256sum": by_hand(
            [str(cluster.bin_dir / "pg_dump"), "-Fd", "-j", str(jobs), "-d", conn, "-f"]
        ),
        "flow base file://": flow("file", BackupKind.base),
        "pg_basebackup -Ft + sha256sum": by_hand(
            [
                str(cluster.bin_dir / "pg_basebackup"),
                "-Ft",
                "-X",
                "stream",
                "-c",
                "fast",
                "--manifest-checksums=SHA256",
                "-d",
                cluster.conninfo(),
                "-D",
            ]
        ),
    }
    if s3:
        got["flow logical s3"] = flow("s3", BackupKind.logical)
        got["flow base s3"] = flow("s3", BackupKind.base)
    return got


def run_scale(
    cluster: Cluster, base: Path, scale: int, rounds: int, jobs: int, endpoint: str | None
) -> dict[str, float]:
    """Medians of every method at one scale, plus ``mib`` of each kind."""
    cluster.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    cluster.psql(f"CREATE DATABASE {DB}")
    subprocess.run(
        [str(cluster.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "-d",
         cluster.conninfo(DB)],
        capture_output=True, check=True,
    )  # fmt: skip
    db_mib = int(cluster.psql(f"SELECT pg_database_size('{DB}')")) / 2**20
    print(f"scale {scale}: database {db_mib:.0f} MiB", flush=True)
    folder = Path(tempfile.mkdtemp(prefix=f"s{scale}-", dir=base))
    folder.chmod(0o755)
    config = write_config(folder, cluster, endpoint)
    table = methods(cluster, config, folder, jobs, endpoint is not None)
    timings: dict[str, list[float]] = {name: [] for name in table}
    sizes = {"logical": db_mib}  # the dump is compressed: MB/s of the database's bytes
    names = list(table)
    for rnd in range(rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            out = Path(tempfile.mkdtemp(prefix="b-", dir=folder))
            out.chmod(0o755)
            cluster.psql("CHECKPOINT")
            os.sync()
            t0 = time.perf_counter()
            table[name](out)
            timings[name].append(time.perf_counter() - t0)
            if (out / "raw").exists() and "pg_basebackup" in name:
                files = [p for p in (out / "raw").rglob("*") if p.is_file()]
                sizes["base"] = sum(p.stat().st_size for p in files) / 2**20
            shutil.rmtree(out, ignore_errors=True)
            print(f"  round {rnd + 1}: {name:<34} {timings[name][-1]:7.2f} s", flush=True)
    shutil.rmtree(folder / "repo", ignore_errors=True)
    return {**{n: statistics.median(t) for n, t in timings.items()}, **sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int_list, default=[10], help="pgbench scales: 10,50")
    parser.add_argument("--rounds", type=int, default=3, help="timings per method and scale")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pg_dump -j")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 stand-in")
    parser.add_argument("--workdir", default=None, help="where the cluster and backups go")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="dr-bench-backup-", dir=args.workdir))
    base.chmod(0o755)
    print(f"machine: {machine()}", flush=True)
    results: dict[int, dict[str, float]] = {}
    try:
        with (
            prefect_server(),
            moto_server() if not args.no_s3 else _no_s3() as endpoint,
            temporary_cluster(base, "bench-backup", archive_mode="off") as cluster,
        ):
            for scale in args.scales:
                results[scale] = run_scale(cluster, base, scale, args.rounds, args.jobs, endpoint)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    pairs = [("logical", f"pg_dump -Fd -j {args.jobs} + sha256sum"),
             ("base", "pg_basebackup -Ft + sha256sum")]  # fmt: skip
    for kind, raw in pairs:
        for where in ("file://", "s3") if not args.no_s3 else ("file://",):
            project = f"flow {kind} {where}"
            points = [Point(s, r[kind], r[project], r[raw]) for s, r in results.items()]
            print(growth_table(f"{kind} backup", project, raw, points) + "\n")
    if note := load_note():
        print(note)
    return 0


@contextmanager
def _no_s3() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
