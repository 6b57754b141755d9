"""Benchmark: the project's backups against the raw tools with checksums, by hand.

Builds a temporary PostgreSQL cluster (never the machine's own server, never port 5432),
fills it with ``pgbench -i -s SCALE`` for each ``--scales`` entry, then times, in rotating
order:

- ``flow logical file://`` / ``s3``: ``flows/backup``'s logical backup (``pg_dump -Fd -j N``
  in a snapshot with row counts, manifest with every file's SHA-256, upload verified,
  retention) into a ``file://`` repository, and into an S3 stand-in (``moto.server`` on
  loopback, as tests/integration/storage/conftest.py starts it);
- ``pg_dump -Fd -j N + sha256sum``: the same dump and checksums by hand (the raw method
  for ``file://``: the dump already sits in a local folder, as a ``file://`` repository);
- ``flow base file://`` / ``s3``: the base backup (``pg_basebackup -Ft`` with its manifest);
- ``pg_basebackup -Ft + sha256sum``: the same by hand;
- ``... + sha256sum + upload``: for an ``s3://`` repository the raw method is the same tool
  output and checksums, then every file uploaded by hand to the same endpoint, as
  ``aws s3 cp`` would: a fresh boto3 client and ``upload_file`` with the project's own
  multipart threshold, part size and concurrency (:mod:`tasks.storage.s3`), no checksum
  metadata and no verification of what was stored. Comparing the project's S3 backup with
  a raw method that uploads nothing would charge the stand-in's upload speed to the
  project; this one charges the project only for what it does beyond a plain upload.

The flow's staging folder and the ``file://`` repository are on one filesystem here, as
``DR_STAGING_DIR`` can put them: the staged files are then hard-linked into the
repository (and hashed there) rather than copied; on another filesystem they are copied,
and the fair raw method would be the dump plus ``cp``.

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
    os.environ.update(BENCH_S3_KEY="testing", BENCH_S3_SECRET="testing", BENCH_S3_ENDPOINT=endpoint)
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

    def by_hand(argv: list[str], upload: bool = False) -> Callable[[Path], None]:
        def run(out: Path) -> None:
            subprocess.run([*argv, str(out / "raw")], capture_output=True, check=True)
            files = sorted(str(p) for p in (out / "raw").rglob("*") if p.is_file())
            subprocess.run(["sha256sum", *files], capture_output=True, check=True)
            if upload:
                upload_by_hand(out / "raw", f"raw/{out.name}")

        return run

    dump = [str(cluster.bin_dir / "pg_dump"), "-Fd", "-j", str(jobs), "-d", cluster.conninfo(DB)]
    base = [
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
    got: dict[str, Callable[[Path], None]] = {
        "flow logical file://": flow("file", BackupKind.logical),
        raw_name("logical", jobs, False): by_hand([*dump, "-f"]),
        "flow base file://": flow("file", BackupKind.base),
        raw_name("base", jobs, False): by_hand(base),
    }
    if s3:
        got["flow logical s3"] = flow("s3", BackupKind.logical)
        got[raw_name("logical", jobs, True)] = by_hand([*dump, "-f"], upload=True)
        got["flow base s3"] = flow("s3", BackupKind.base)
        got[raw_name("base", jobs, True)] = by_hand(base, upload=True)
    return got


def raw_name(kind: str, jobs: int, upload: bool) -> str:
    tool = f"pg_dump -Fd -j {jobs}" if kind == "logical" else "pg_basebackup -Ft"
    return f"{tool} + sha256sum" + (" + upload" if upload else "")


def upload_by_hand(folder: Path, prefix: str) -> None:
    """Every file of ``folder`` to the stand-in, as ``aws s3 cp --recursive`` would.

    A fresh client (``aws s3 cp`` starts one too) and boto3's ``upload_file`` with the
    project's multipart threshold, part size and concurrency, so that only what the project
    does beyond a plain upload (checksum metadata, verification, idempotence) is compared.
    """
    import boto3
    from boto3.s3.transfer import TransferConfig

    from tasks.storage.client import DEFAULT_MULTIPART_THRESHOLD_BYTES, DEFAULT_PART_SIZE_BYTES
    from tasks.storage.s3 import DEFAULT_MAX_CONCURRENCY

    client = boto3.session.Session().client(
        "s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
    )  # fmt: skip
    config = TransferConfig(
        multipart_threshold=DEFAULT_MULTIPART_THRESHOLD_BYTES,
        multipart_chunksize=DEFAULT_PART_SIZE_BYTES,
        max_concurrency=DEFAULT_MAX_CONCURRENCY,
    )
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.upload_file(str(path), "bench", key, Config=config)


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
    for kind in ("logical", "base"):
        for where in ("file://", "s3") if not args.no_s3 else ("file://",):
            project = f"flow {kind} {where}"
            raw = raw_name(kind, args.jobs, where == "s3")
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
