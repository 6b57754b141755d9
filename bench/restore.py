"""Benchmark: the drill's restore path against restoring the same data by hand.

Builds a temporary PostgreSQL cluster (never the machine's own server, never port 5432),
fills it with ``pgbench -i -s SCALE`` (scale 50 is about 750 MiB, one table holding almost
all of it), dumps it once as the drill does (``pg_dump -Fd``) and once as plain SQL (the
seeds' way, also gzipped), then restores each into a fresh database, timing:

- ``drill``: :func:`tasks.backups.restore_dump`, the drill's restore (job count chosen from
  the dump's table sizes);
- ``pg_restore -j 1`` and ``pg_restore -j N`` (N = CPU cores) of the same directory dump;
- ``psql < plain.sql`` and ``gunzip -c plain.sql.gz | psql`` (seed 003's restore).

``CHECKPOINT`` and ``sync`` run before every timing (runs vary 1.5x without them,
shared/lab/postgres.md); one untimed restore warms the cluster up; methods rotate order
each round. Reported: each method's median, and the drill's time divided by each
method's *in the same round* (median over rounds): pairing cancels the slow drifts of a
shared machine's load. Target: the drill within 1.10x of the fastest. On a machine
shared with other work, run it under ``nice -n -15`` (as root) with more rounds: there
timings vary 2x with the load.

Usage::

    .venv/bin/python bench/restore.py [--scale 50] [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import many
from common import Point, growth_table, int_list, load_note, machine

from lab.pgcluster import Cluster, temporary_cluster
from tasks.backups import dump as backups_dump
from tasks.backups import restore as backups_restore
from tasks.backups import toc as backups_toc

TARGET_RATIO = 1.10
RESTORE_DB = "bench_restore"
#: No WAL archive in the bench cluster: with archive_mode on and no command, WAL would pile up.
BENCH_SETTINGS = {"archive_mode": "off", "max_wal_size": "2GB"}


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def fresh_db(cluster: Cluster) -> str:
    cluster.psql(f"DROP DATABASE IF EXISTS {RESTORE_DB} WITH (FORCE)")
    cluster.psql(f"CREATE DATABASE {RESTORE_DB} TEMPLATE template0")
    cluster.psql("CHECKPOINT")
    os.sync()
    return cluster.conninfo(RESTORE_DB)


def check_restored(cluster: Cluster, rows: int) -> None:
    got = int(cluster.psql("SELECT count(*) FROM pgbench_accounts", RESTORE_DB))
    if got != rows:
        raise SystemExit(f"restore produced {got} rows, expected {rows}")


def load(cluster: Cluster, base: Path, scale: int, cores: int) -> dict[str, Any]:
    """pgbench data at ``scale``, dumped once as the drill does and once as plain SQL."""
    pgbin = cluster.bin_dir
    cluster.psql("DROP DATABASE IF EXISTS bench WITH (FORCE)")
    cluster.psql("CREATE DATABASE bench")
    t0 = time.perf_counter()
    _run(
        [str(pgbin / "pgbench"), "-i", "-q", "-s", str(scale), "-d", cluster.conninfo("bench")],
        capture_output=True,
    )
    mib = int(cluster.psql("SELECT pg_database_size('bench')")) / 2**20
    rows = int(cluster.psql("SELECT count(*) FROM pgbench_accounts", "bench"))
    print(f"pgbench -i -s {scale}: {mib:.0f} MiB, {rows} accounts, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    shutil.rmtree(base / "dump.dir", ignore_errors=True)  # the previous scale's
    dump_dir = base / "dump.dir"
    t0 = time.perf_counter()
    info = backups_dump.dump_database(cluster.conninfo(), "bench", dump_dir, jobs=cores)
    print(f"pg_dump -Fd -j {cores}: {info.bytes / 2**20:.0f} MiB in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    plain = base / "plain.sql"
    with open(plain, "wb") as out:
        _run([str(pgbin / "pg_dump"), "-d", cluster.conninfo("bench")], stdout=out)
    plain_gz = base / "plain.sql.gz"
    with open(plain, "rb") as src, open(plain_gz, "wb") as out:
        _run(["gzip", "-c", "-6"], stdin=src, stdout=out)
    return {"dump_dir": dump_dir, "plain": plain, "plain_gz": plain_gz, "rows": rows, "mib": mib}


def methods(cluster: Cluster, data: dict[str, Any], cores: int) -> dict[str, Callable[[str], None]]:
    """The drill's restore first, then the by-hand ways of the runbooks."""
    dump_dir, plain, plain_gz = data["dump_dir"], data["plain"], data["plain_gz"]
    sizes = backups_toc.table_data_sizes(dump_dir)
    chosen = backups_toc.choose_restore_jobs(sizes)
    print(f"drill job choice from table sizes: -j {chosen} "
          f"({len(sizes)} tables, largest {max(sizes.values()) / 2**20:.0f} MiB)")  # fmt: skip
    psql = str(cluster.bin_dir / "psql")
    pg_restore = str(cluster.bin_dir / "pg_restore")

    def drill(conn: str) -> None:
        backups_restore.restore_dump(dump_dir, conn)

    def by_hand(jobs: int) -> Callable[[str], None]:
        return lambda conn: _run(
            [pg_restore, "-j", str(jobs), "-d", conn, str(dump_dir)], capture_output=True
        )

    def plain_psql(conn: str) -> None:
        _run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conn, "-f", str(plain)],
             capture_output=True)  # fmt: skip

    def gunzip_psql(conn: str) -> None:
        gz = subprocess.Popen(["gunzip", "-c", str(plain_gz)], stdout=subprocess.PIPE)
        _run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conn], stdin=gz.stdout,
             capture_output=False, stdout=subprocess.DEVNULL)  # fmt: skip
        if gz.wait() != 0:
            raise SystemExit("gunzip failed")

    return {
        f"drill (restore_dump, -j {chosen} chosen)": drill,
        "pg_restore -j 1": by_hand(1),
        f"pg_restore -j {cores} (cores)": by_hand(cores),
        "psql < plain.sql": plain_psql,
        "gunzip -c plain.sql.gz | psql": gunzip_psql,
    }


def time_methods(
    cluster: Cluster, table: dict[str, Callable[[str], None]], rows: int, rounds: int
) -> dict[str, list[float]]:
    """Every method ``rounds`` times, order rotating, after one untimed warm-up restore."""
    timings: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    # The first restore into a new cluster is slower (WAL segments created, caches cold).
    table[names[1]](fresh_db(cluster))
    for rnd in range(rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            conn = fresh_db(cluster)
            t0 = time.perf_counter()
            table[name](conn)
            elapsed = time.perf_counter() - t0
            check_restored(cluster, rows)
            timings[name].append(elapsed)
            load = os.getloadavg()[0]
            print(f"  round {rnd + 1}: {name:<36} {elapsed:7.2f} s  (load {load:.1f})",
                  flush=True)  # fmt: skip
    return timings


def report(timings: dict[str, list[float]], rounds: int) -> tuple[float, float, float]:
    """The per-method table; returns (drill median, fastest median, worst paired ratio)."""
    medians = {name: statistics.median(ts) for name, ts in timings.items()}
    fastest = min(medians.values())
    names = list(timings)
    drill_name = names[0]
    # Paired: the drill against each method within the same round, so slow drifts in the
    # machine's load cancel out.
    paired = {
        name: statistics.median(timings[drill_name][r] / timings[name][r] for r in range(rounds))
        for name in names[1:]
    }
    print()
    print(f"{'method':<38} {'median s':>9} {'min s':>7} {'max s':>7} {'x fastest':>10}"
          f" {'drill/this':>11}")  # fmt: skip
    for name in names:
        ts = timings[name]
        pair = f"{paired[name]:11.2f}" if name in paired else f"{'':>11}"
        print(f"{name:<38} {medians[name]:9.2f} {min(ts):7.2f} {max(ts):7.2f} "
              f"{medians[name] / fastest:10.2f} {pair}")  # fmt: skip
    worst_pair = max(paired.values())
    verdict = "met" if worst_pair <= TARGET_RATIO else "MISSED"
    print(f"\ndrill / fastest: {medians[drill_name] / fastest:.2f} by medians; paired (median "
          f"of per-round ratios, worst method): {worst_pair:.2f}; target <= {TARGET_RATIO:.2f}: "
          f"{verdict}\n")  # fmt: skip
    return medians[drill_name], fastest, worst_pair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int_list, default=[50], help="pgbench scales: 10,50")
    parser.add_argument("--scale", type=int, default=None, help="one scale (old spelling)")
    parser.add_argument("--rounds", type=int, default=5, help="timings per method")
    parser.add_argument("--databases", type=int_list, default=None,
                        help="also verify N databases at once, e.g. 1,4,16 (at --db-scale)")  # fmt: skip
    parser.add_argument("--db-scale", type=int, default=1, help="pgbench scale of each of the N")
    parser.add_argument("--runners", default="thread,dask", help="task runners for --databases")
    parser.add_argument("--workdir", default=None, help="where the cluster and dumps go")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="dr-bench-", dir=args.workdir))
    base.chmod(0o755)  # the server runs as the postgres user and must reach its folder
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}", flush=True)
    points, worst = [], 0.0
    try:
        with temporary_cluster(base, "bench", **BENCH_SETTINGS) as cluster:
            print(f"server: {cluster.psql('SHOW server_version')}, port {cluster.port}")
            for scale in [args.scale] if args.scale else args.scales:
                data = load(cluster, base, scale, cores)
                timings = time_methods(cluster, methods(cluster, data, cores), data["rows"],
                                       args.rounds)  # fmt: skip
                drill, fastest, pair = report(timings, args.rounds)
                points.append(Point(scale, data["mib"], drill, fastest))
                worst = max(worst, pair)
            print(growth_table("verification restore", "drill", "fastest by hand", points))
            if args.databases:
                runners = [r for r in args.runners.split(",") if r]
                with many.prefect_server():
                    rows = many.run_counts(cluster, base, args.databases, args.db_scale,
                                           max(1, args.rounds // 2), runners)  # fmt: skip
                print("\nN databases verified at once (flow) vs one after another by hand")
                print(many.table(rows, runners))
            if note := load_note():
                print(note)
            return 0 if worst <= TARGET_RATIO else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
