"""Benchmark: the data-corruption flow's point-in-time recovery against the same by hand.

Builds a temporary PostgreSQL cluster (never the machine's own server, never port 5432)
archiving WAL into its own folder, fills it with ``pgbench -i -s SCALE`` (scale 50 is about
750 MiB), takes a base backup (``pg_basebackup -Ft``, uploaded with its manifest to a
``file://`` repository exactly as ``flows/backup.py`` lays it out), then runs pgbench for a
while, stamps a recovery time in the middle of that run, and archives everything.

Each round recovers to the stamp twice, in rotating order:

- ``flow``: what ``flows/data_corruption/pitr.py`` runs in its *recover* phase, through
  ``tasks/recovery.py``: list and choose the base backup, prove the WAL archive continuous
  (``plan_wal``), stream ``base.tar`` into ``tar -x`` while checking its SHA-256 against the
  manifest (a ``file://`` repository is read once; an ``s3://`` one is downloaded first,
  resumably), ``pg_verifybackup`` (every file present with its size; ``--verify full``
  re-reads every file for its checksum), write the recovery settings, start, poll until
  promoted;
- ``by hand``: what the runbooks say (seeds 000 and 003): untar ``base.tar`` from the
  repository folder, append ``restore_command``, ``recovery_target_time`` and
  ``recovery_target_action = 'promote'``, touch ``recovery.signal``, ``pg_ctl start -w``,
  poll ``pg_is_in_recovery()`` until false.

Both must bring back the same rows (``pgbench_history`` count at the stamp). ``CHECKPOINT``
and ``sync`` run before every timing. The report is the ratio flow / by hand (medians),
with the flow's time split into its steps.

Usage::

    .venv/bin/python bench/pitr.py [--scale 50] [--rounds 3] [--pgbench-seconds 20]
        [--wal-segsize 16] [--workdir DIR]
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import Point, growth_table, int_list, load_note, machine

from dr.localexec import chown_for_server
from lab.pgcluster import Cluster, free_port, run_as_server
from tasks.backups import manifest as backups_manifest
from tasks.pitr import archiving, base_backup, one_pass, wal
from tasks.pitr import cluster as pitr_cluster
from tasks.pitr import recovery as pitr_recovery
from tasks.pitr import target as pitr_target
from tasks.storage import client as storage_client

TARGET = "bench"
STEPS = ("plan", "restore", "wal", "untar", "replay")
SETTINGS = {"max_wal_size": "4GB", "archive_timeout": "0", "checkpoint_timeout": "15min"}


def settle(cluster: Cluster) -> None:
    cluster.psql("CHECKPOINT")
    os.sync()


def upload_base_backup(cluster: Cluster, repo: Any, stage: Path) -> base_backup.BaseBackup:
    backup_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-bench"
    folder = stage / backup_id
    info = base_backup.base_backup(cluster.conninfo(), folder)
    manifest = backups_manifest.build_manifest(
        folder,
        target=TARGET,
        database="*",
        server_version=cluster.psql("SHOW server_version"),
        tool_version=info.tool_version,
        started_at=info.started_at,
        ended_at=info.ended_at,
        wal_lsn=info.start_lsn,
        wal_stop_lsn=info.stop_lsn,
        timeline=info.timeline,
        row_counts={},
        backup_id=backup_id,
        kind=backups_manifest.BASE_KIND,
    )
    for entry in manifest.files:
        repo.put_file(f"{TARGET}/base/{backup_id}/{entry.path}", folder / entry.path)
    repo.put_bytes(
        f"{TARGET}/base/{backup_id}/{backups_manifest.MANIFEST_NAME}",
        manifest.model_dump_json().encode(),
    )
    shutil.rmtree(folder)
    return next(b for b in base_backup.list_base_backups(repo, TARGET) if b.backup_id == backup_id)


def history_rows(port: int) -> int:
    conninfo = f"host=127.0.0.1 port={port} dbname=bench user=postgres"
    out = subprocess.run(
        ["psql", "-X", "-At", "-d", conninfo, "-c", "SELECT count(*) FROM pgbench_history"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def flow_recovery(
    repo: Any, wal_url: str, when: datetime, work: Path, bin_dir: Path, verify: str = "sizes"
) -> dict[str, Any]:
    """The recover phase in one pass: choose, then stream + prove the WAL at once, replay."""
    t0 = time.perf_counter()
    target = pitr_target.RecoveryTarget(time=when)
    backup = base_backup.choose_base_backup(base_backup.list_base_backups(repo, TARGET), target)
    t_plan = time.perf_counter()
    prepared = one_pass.prepare_recovery(
        repo,
        backup,
        work / "data",
        wal_repo=storage_client.open_repository(wal_url),
        target=target,
        work_dir=work / "restore",
        bin_dir=bin_dir,
        verify=verify,  # type: ignore[arg-type]
    )
    plan = prepared["plan"]
    t_extract = time.perf_counter()
    recovered = pitr_recovery.start_recovery(
        work / "data",
        target.model_copy(update={"timeline": plan.target_timeline}),
        restore_command=wal.restore_command_for(wal_url),
        bin_dir=bin_dir,
    )
    t_end = time.perf_counter()
    rows = history_rows(recovered.port)
    pitr_cluster.remove_cluster(recovered.data_dir, bin_dir=bin_dir)
    return {
        "total": t_end - t0,
        "plan": t_plan - t0,
        "restore": t_extract - t_plan,
        "wal": prepared["wal_seconds"],
        "replay": t_end - t_extract,
        "segments": len(plan.needed),
        "rows": rows,
        "streamed": prepared["restored"]["streamed"],
    }


def by_hand(
    repo_dir: Path, archive: Path, when: datetime, work: Path, bin_dir: Path
) -> dict[str, Any]:
    """The runbook's recovery: untar, set the target, start, wait for promotion."""
    base_tar = max(repo_dir.glob(f"{TARGET}/base/*/base.tar"))
    data = work / "data"
    t0 = time.perf_counter()
    data.mkdir(mode=0o700)
    chown_for_server(data)
    run_as_server(["tar", "-xf", base_tar, "-C", data])
    t_untar = time.perf_counter()
    port = free_port()
    sock = work / "sock"
    sock.mkdir()
    chown_for_server(sock)
    settings = (
        f"\nport = {port}\nunix_socket_directories = '{sock}'\narchive_mode = off\n"
        f"restore_command = 'cp {archive}/%f %p'\n"
        f"recovery_target_time = '{when.isoformat(sep=' ')}'\n"
        "recovery_target_action = 'promote'\nrecovery_target_inclusive = off\n"
    )
    with open(data / "postgresql.auto.conf", "a") as auto:
        auto.write(settings)
    (data / "recovery.signal").touch()
    log = work / "server.log"
    log.touch()
    chown_for_server(work)
    run_as_server([bin_dir / "pg_ctl", "start", "-D", data, "-w", "-l", log], timeout=600)
    conninfo = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
    while True:
        out = subprocess.run(
            ["psql", "-X", "-At", "-d", conninfo, "-c", "SELECT pg_is_in_recovery()"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout.strip() == "f":
            break
        time.sleep(0.1)
    t_end = time.perf_counter()
    rows = history_rows(port)
    run_as_server([bin_dir / "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"])
    shutil.rmtree(work, ignore_errors=True)
    return {"total": t_end - t0, "untar": t_untar - t0, "replay": t_end - t_untar, "rows": rows}


def build(base: Path, scale: int, args: argparse.Namespace) -> dict[str, Any]:
    """The cluster, its base backup in a file:// repository, WAL after it, the stamp."""
    cluster = Cluster(base / "pg", free_port(), name="bench-pitr")
    cluster.initdb(SETTINGS, wal_segsize_mb=args.wal_segsize)
    archive = base / "wal"
    cluster.set_archive_dir(archive)
    cluster.start()
    bin_dir = cluster.bin_dir
    cluster.psql("CREATE DATABASE bench")
    t0 = time.perf_counter()
    subprocess.run(
        [str(bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "-d",
         cluster.conninfo("bench")],
        capture_output=True, check=True,
    )  # fmt: skip
    size = cluster.psql("SELECT pg_size_pretty(pg_database_size('bench'))")
    print(f"pgbench -i -s {scale}: {size} in {time.perf_counter() - t0:.1f} s", flush=True)
    repo_dir = base / "repo"
    repo = storage_client.open_repository(f"file://{repo_dir}")
    t0 = time.perf_counter()
    backup = upload_base_backup(cluster, repo, base / "stage")
    print(
        f"base backup: {backup.total_bytes / 2**20:.0f} MiB uploaded in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    half = args.pgbench_seconds / 2
    pgbench = [str(bin_dir / "pgbench"), "-c", "2", "-j", "2", "-n", "-T", str(int(half))]
    subprocess.run([*pgbench, "-d", cluster.conninfo("bench")], capture_output=True, check=True)
    when = archiving.server_position(cluster.conninfo())["at"]
    expected = int(cluster.psql("SELECT count(*) FROM pgbench_history", "bench"))
    time.sleep(0.05)
    subprocess.run([*pgbench, "-d", cluster.conninfo("bench")], capture_output=True, check=True)
    archiving.switch_wal_and_wait(cluster.conninfo(), timeout_seconds=300)
    wal_mib = sum(p.stat().st_size for p in archive.iterdir()) / 2**20
    print(
        f"WAL archived: {wal_mib:.0f} MiB ({args.wal_segsize} MiB segments); recovery target "
        f"{when.isoformat()} ({expected} pgbench_history rows then)",
        flush=True,
    )
    return {"cluster": cluster, "archive": archive, "repo": repo, "repo_dir": repo_dir,
            "backup": backup, "when": when, "expected": expected, "wal_mib": wal_mib}  # fmt: skip


def run_rounds(base: Path, env: dict[str, Any], args: argparse.Namespace) -> dict[str, list]:
    """Both methods ``args.rounds`` times, in rotating order; each must find the rows."""
    timings: dict[str, list[dict[str, Any]]] = {"flow": [], "by hand": []}
    cluster, archive = env["cluster"], env["archive"]
    for rnd in range(args.rounds):
        for method in ["flow", "by hand"] if rnd % 2 == 0 else ["by hand", "flow"]:
            settle(cluster)
            work = Path(tempfile.mkdtemp(prefix="r-", dir=base))
            work.chmod(0o755)
            if method == "flow":
                got = flow_recovery(env["repo"], f"file://{archive}", env["when"], work,
                                    cluster.bin_dir, args.verify)  # fmt: skip
            else:
                got = by_hand(env["repo_dir"], archive, env["when"], work, cluster.bin_dir)
            shutil.rmtree(work, ignore_errors=True)
            if got["rows"] != env["expected"]:
                raise SystemExit(
                    f"{method}: {got['rows']} rows at the target, {env['expected']} expected"
                )
            timings[method].append(got)
            print(
                f"  round {rnd + 1}: {method:<8} {got['total']:7.2f} s  "
                + "  ".join(f"{k} {v:.2f}" for k, v in got.items() if k in STEPS),
                flush=True,
            )
    return timings


def report(timings: dict[str, list], env: dict[str, Any], verify: str) -> None:
    flow_med = statistics.median(t["total"] for t in timings["flow"])
    hand_med = statistics.median(t["total"] for t in timings["by hand"])
    print()
    print(f"{'method':<10} {'median s':>9} {'min s':>7} {'max s':>7}  median steps")
    for method, runs in timings.items():
        totals = [r["total"] for r in runs]
        steps = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k in STEPS}
        print(
            f"{method:<10} {statistics.median(totals):9.2f} {min(totals):7.2f} "
            f"{max(totals):7.2f}  " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
        )
    print(
        f"\nflow / by hand (medians) = {flow_med / hand_med:.2f}; the flow also verifies "
        f"SHA-256 of {env['backup'].total_bytes / 2**20:.0f} MiB, runs pg_verifybackup "
        f"({verify}) and proves {timings['flow'][0]['segments']} archived segment(s) "
        "present before starting\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int_list, default=[50], help="pgbench scales: 10,50")
    parser.add_argument("--scale", type=int, default=None, help="one scale (old spelling)")
    parser.add_argument("--rounds", type=int, default=3, help="recoveries per method")
    parser.add_argument("--pgbench-seconds", type=float, default=20, help="WAL after the backup")
    parser.add_argument("--wal-segsize", type=int, default=16, help="WAL segment size, MiB")
    parser.add_argument("--workdir", default=None, help="where the cluster and copies go")
    parser.add_argument(
        "--verify", default="sizes", choices=["sizes", "full", "off"], help="pg_verifybackup"
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    points = []
    for scale in [args.scale] if args.scale else args.scales:
        base = Path(tempfile.mkdtemp(prefix="dr-bench-pitr-", dir=args.workdir))
        base.chmod(0o755)
        env: dict[str, Any] = {}
        try:
            env = build(base, scale, args)
            timings = run_rounds(base, env, args)
            report(timings, env, args.verify)
            mib = env["backup"].total_bytes / 2**20 + env["wal_mib"]
            points.append(Point(scale, mib, *(statistics.median(t["total"] for t in timings[m])
                                              for m in ("flow", "by hand"))))  # fmt: skip
        finally:
            if "cluster" in env:
                env["cluster"].destroy()
            else:
                Cluster(base / "pg", 1, name="bench-pitr").destroy()
            shutil.rmtree(base, ignore_errors=True)
    print(growth_table("point-in-time recovery", "flow", "by hand", points))
    if note := load_note():
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
