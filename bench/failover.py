"""Benchmark: the region-failover drill's RTO against the bare minimum done by hand.

On a lab of its own (``lab.manager.up`` in a temporary folder, with its Prefect server; or
an existing lab with ``--lab-dir``), it alternates two ways of losing the primary and
getting writes going again:

- ``drill``: ``region_failover_flow(target="lab", mode="drill")`` with default options:
  preflight, heartbeat probe, crash of the primary, assess, fence and prove, choose,
  promote, repoint the application's container, verify, measure, then fail back (not
  timed). Its RTO is the flow's own: the failure to the application's first write on the
  new primary, with the breakdown (assessed, fenced, promoted, repointed, first write of
  the probe, first write of the application);
- ``manual``: one script doing only what cannot be skipped: ``pg_ctl stop -m immediate``
  on the primary, ``pg_promote(true)`` on the replica, then connect to the replica and
  insert a row until it is acknowledged. Its RTO is the stop to that acknowledgement. The
  lab is put back with the failback flow afterwards (not timed).

The overhead ratio is the drill's median RTO over the manual median. The drill also
repoints a container (the manual script writes through its own connection instead), so a
second, like-for-like ratio compares the drill's first *probe* write on the new primary
(the database part) with the manual one. Target from the issue: the drill's median under
5 s with default settings.

Run::

    .venv/bin/python bench/failover.py [--runs 5] [--inject kill|immediate] [--lab-dir DIR]
        [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from lab import down, up
from lab import state as lab_state
from lab.pgcluster import pg_bin_dir, server_user

MILESTONES = (
    "assessed",
    "fenced",
    "promoted",
    "first_probe_write",
    "repointed",
    "first_app_write",
)
RTO_TARGET_SECONDS = 5.0
WRITE_RETRY_SECONDS = 0.01


def _as_server(argv: list[str]) -> subprocess.CompletedProcess[str]:
    user = server_user()
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, cwd="/", capture_output=True, text=True, check=False)


def manual_failover(state: lab_state.LabState) -> dict[str, float]:
    """Stop the primary, promote the replica, write through a new connection: timed."""
    bins = pg_bin_dir()
    replica = f"host=127.0.0.1 port={state.replica.port} user=postgres dbname=app"
    with psycopg.connect(replica, autocommit=True) as conn:
        conn.execute("SELECT 1")  # warm: the replica answers before the clock starts
    t0 = time.perf_counter()
    stop = _as_server(
        [str(bins / "pg_ctl"), "stop", "-D", str(state.primary.data_dir), "-m", "immediate", "-w"]
    )
    if stop.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed: {stop.stderr}")
    t_stopped = time.perf_counter()
    with psycopg.connect(replica, autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.pg_promote(true, 60)")
    t_promoted = time.perf_counter()
    seq = time.time_ns()
    while True:
        try:
            with psycopg.connect(
                replica, autocommit=True, connect_timeout=2, target_session_attrs="read-write"
            ) as conn:
                conn.execute(
                    "INSERT INTO public.dr_heartbeat (writer, seq) VALUES ('bench-manual', %s)",
                    (seq,),
                )
            break
        except psycopg.Error:
            time.sleep(WRITE_RETRY_SECONDS)
    t_written = time.perf_counter()
    return {
        "stopped": round(t_stopped - t0, 3),
        "promoted": round(t_promoted - t0, 3),
        "first_write": round(t_written - t0, 3),
    }


def drill_failover(state: lab_state.LabState, inject: str) -> dict[str, Any]:
    from flows.region_failover.flow import region_failover_flow
    from flows.region_failover.options import FailoverOptions

    started = time.perf_counter()
    result = region_failover_flow(
        target="lab",
        mode="drill",
        options=FailoverOptions(inject=inject),  # type: ignore[arg-type]
        config_path=str(state.config_path),
    )
    wall = time.perf_counter() - started
    if result["outcome"] != "passed":
        raise RuntimeError(f"drill {result['outcome']}: {result['reason']}")
    breakdown = result["details"]["failover"]["rto_breakdown"]
    return {
        "rto": result["rto_seconds"],
        "rpo": result["rpo_seconds"],
        "lost_rows": result["lost_rows"],
        "wall_with_failback": round(wall, 2),
        **{m: breakdown.get(m) for m in MILESTONES},
    }


def put_back(state: lab_state.LabState) -> str:
    """After a manual failover: the failback flow (rewind, switch back), else heal."""
    from flows.failback import failback_flow

    report = failback_flow(target="lab", config_path=str(state.config_path))
    if report["ok"] and report["roles_as_configured"]:
        return "failback"
    up.heal(state.base_dir)
    return f"heal (failback: {report['reason']})"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each method")
    parser.add_argument("--inject", choices=["kill", "immediate"], default="kill")
    parser.add_argument("--lab-dir", type=Path, help="use this lab (brought up if needed)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    own = args.lab_dir is None
    base = args.lab_dir or Path(tempfile.mkdtemp(prefix="dr-bench-failover-"))
    base.chmod(0o755)
    state = up.up(base, prefect=True)
    if not state.prefect_api_url:
        raise SystemExit("the lab has no Prefect server: bring it up with Prefect")
    # Prefect was imported by the lab (tasks.containers): its settings are overridden here.
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    os.environ["PREFECT_API_URL"] = state.prefect_api_url
    drills: list[dict[str, Any]] = []
    manuals: list[dict[str, float]] = []
    put_backs: list[str] = []
    settings = temporary_settings(
        updates={PREFECT_API_URL: state.prefect_api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    )
    try:
        settings.__enter__()
        for i in range(args.runs):
            # Alternate the order so neither method always runs on a warmer lab.
            for method in ("drill", "manual") if i % 2 == 0 else ("manual", "drill"):
                if method == "drill":
                    drills.append(drill_failover(state, args.inject))
                    print(f"run {i + 1} drill: {drills[-1]}", file=sys.stderr)
                else:
                    manuals.append(manual_failover(state))
                    put_backs.append(put_back(state))
                    print(f"run {i + 1} manual: {manuals[-1]}", file=sys.stderr)
    finally:
        settings.__exit__(None, None, None)
        if own and not args.keep:
            down.down(base)
    summary = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "inject": args.inject,
        "engine": state.engine,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "drill_median": {
            "rto_app": _median([d["rto"] for d in drills]),
            **{m: _median([d[m] for d in drills]) for m in MILESTONES},
            "rpo": _median([d["rpo"] for d in drills]),
            "wall_with_failback": _median([d["wall_with_failback"] for d in drills]),
        },
        "manual_median": {
            k: _median([m[k] for m in manuals]) for k in ("stopped", "promoted", "first_write")
        },
        "drills": drills,
        "manuals": manuals,
        "put_back": put_backs,
    }
    manual = summary["manual_median"]["first_write"]
    drill_app = summary["drill_median"]["rto_app"]
    drill_db = summary["drill_median"]["first_probe_write"]
    summary["overhead_ratio"] = round(drill_app / manual, 2) if drill_app and manual else None
    summary["overhead_ratio_database"] = (
        round(drill_db / manual, 2) if drill_db and manual else None
    )
    summary["target_met"] = drill_app is not None and drill_app < RTO_TARGET_SECONDS
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"region failover, {args.runs} runs each (inject={args.inject}, engine {state.engine})")
    print(f"{'step (s after the failure)':<34}{'drill median':>14}{'manual median':>15}")
    rows = [
        ("assessed", summary["drill_median"]["assessed"], None),
        (
            "fenced (proven)",
            summary["drill_median"]["fenced"],
            manual and summary["manual_median"]["stopped"],
        ),
        ("promoted", summary["drill_median"]["promoted"], summary["manual_median"]["promoted"]),
        ("first write, database", drill_db, manual),
        ("repointed (container)", summary["drill_median"]["repointed"], None),
        ("first application write = RTO", drill_app, None),
    ]
    for name, d, m in rows:
        print(f"{name:<34}{_fmt(d):>14}{_fmt(m):>15}")
    print(
        f"overhead ratio: {summary['overhead_ratio']} (drill RTO / manual first write); "
        f"database part: {summary['overhead_ratio_database']}"
    )
    print(
        f"target (median RTO < {RTO_TARGET_SECONDS:g} s): "
        f"{'met' if summary['target_met'] else 'MISSED'}; RPO median {summary['drill_median']['rpo']} s"
    )
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
