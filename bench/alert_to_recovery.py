"""Benchmark: from a killed primary to the application writing again, through monitoring.

On a lab with ``--monitoring`` (its own in a temporary folder, or ``--lab-dir``), it
alternates, ``--runs`` times each, two ways of recovering from the same fault (every
process of the primary frozen then killed, as the region-failover drill does):

- ``chain``: ``dr drill region-failover --via-alert``: nothing but the kill; Prometheus
  (1 s scrapes and evaluations) fires the shipped rule, Alertmanager delivers it to
  ``dr serve-alerts``, which creates the incident run; the lab's worker starts it; the flow
  fails over (auto-approved by the lab's route);
- ``by hand``: the same failover started by a person who saw the kill at once:
  ``dr run region-failover --target lab --option auto_approve=true`` right after the kill
  (in its own process, as typed), with the DR alerts silenced in Alertmanager so the chain
  does not start a second run. The incident counts as declared at the kill (detection
  0); its "alert" stage is the ``dr run`` command starting up to its flow run created, its
  dispatch that run to its flow code running: the flow without monitoring or worker.

Each stage comes from the same measurement (:func:`lab.monitoring_drill.measure_recovery`):
detection (kill -> alert ``startsAt``), alert (-> run created), dispatch (-> flow code
running), recovery (-> promoted), first write (-> the first acknowledged application
write on the new primary), and the total, kill -> that write. Lost rows are counted from
the application's acknowledgement log; one primary at every 0.1 s sample is checked. The
lab is failed back between runs (not timed). The issue's target: median total under 10 s.

Run::

    .venv/bin/python bench/alert_to_recovery.py [--runs 5] [--lab-dir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import load_note, machine

from lab import down, monitoring, monitoring_runs, up
from lab.monitoring_drill import (
    PrimarySampler,
    check_ready,
    drill_via_alert,
    kill_primary,
    measure_recovery,
    put_back,
)
from lab.state import LabState, clusters, load_state

STAGES = ("detection", "alert", "dispatch", "recovery", "first_write", "total")
TARGET_SECONDS = 10.0
ROOT = Path(__file__).resolve().parent.parent


def by_hand(state: LabState) -> dict[str, Any]:
    """Kill the primary, then at once ``dr run region-failover`` (alerts silenced)."""
    check_ready(state)
    silence_id = monitoring.silence(state, minutes=15, comment="bench: failover by hand")
    sampler = PrimarySampler({n: clusters(state)[n] for n in monitoring.MONITORED})
    sampler.start()
    try:
        killed_at = kill_primary(state)
        done = subprocess.run(
            [sys.executable, "-c", "from cli.main import app; app()",
             "run", "region-failover", "--target", "lab", "--json",
             "--config", str(state.config_path), "--option", "auto_approve=true"],
            cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
    finally:
        sampler.stop()
    try:
        run_id = json.loads(done.stdout.strip().splitlines()[-1])["flow_run_id"]
    except (ValueError, IndexError, KeyError) as exc:
        raise SystemExit(f"dr run printed no result: {done.stderr[-2000:]}") from exc
    assert state.prefect_api_url is not None
    run = monitoring_runs.read_run(state.prefect_api_url, run_id)
    result = measure_recovery(state, killed_at, run, sampler, declared_at=killed_at)
    result["put_back"] = put_back(state)
    # Silenced alerts are still active in Prometheus until the old primary is back.
    deadline = time.monotonic() + 60
    while monitoring.firing_alerts(state) and time.monotonic() < deadline:
        time.sleep(0.5)
    monitoring.expire_silence(state, silence_id)
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median and worst of each stage (None when a stage was never reached)."""
    out: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        values = [r["stages"][stage] for r in results if r["stages"].get(stage) is not None]
        out[stage] = {
            "median": round(statistics.median(values), 3) if values else None,
            "worst": round(max(values), 3) if values else None,
        }
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(chain: dict[str, Any], hand: dict[str, Any], runs: int) -> str:
    """The side-by-side table printed at the end (and pasted in the README)."""
    labels = {
        "detection": "detection (kill -> startsAt)",
        "alert": "alert (-> run created)",
        "dispatch": "dispatch (-> flow code running)",
        "recovery": "recovery (-> promoted)",
        "first_write": "first write (-> app on new primary)",
        "total": "kill -> first application write",
    }
    lines = [
        f"alert chain vs by hand, {runs} kills each (seconds)",
        f"{'stage':<38}{'chain median':>13}{'worst':>8}{'hand median':>13}{'worst':>8}",
    ]
    for stage in STAGES:
        c, h = chain[stage], hand[stage]
        lines.append(
            f"{labels[stage]:<38}{_fmt(c['median']):>13}{_fmt(c['worst']):>8}"
            f"{_fmt(h['median']):>13}{_fmt(h['worst']):>8}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="kills of each method")
    parser.add_argument("--lab-dir", type=Path, help="use this lab (brought up if needed)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    own = args.lab_dir is None
    base = args.lab_dir or Path(tempfile.mkdtemp(prefix="dr-bench-alert-"))
    base.chmod(0o755)
    existing = load_state(base)
    if existing is None or not monitoring.enabled(existing):
        up.up(base, prefect=True, monitoring=True)
    chain: list[dict[str, Any]] = []
    hand: list[dict[str, Any]] = []
    try:
        for i in range(args.runs):
            # Alternate the order so neither method always runs on a warmer lab.
            for method in ("chain", "hand") if i % 2 == 0 else ("hand", "chain"):
                if method == "chain":
                    chain.append(drill_via_alert(base))
                    got = chain[-1]
                else:
                    state = load_state(base)
                    assert state is not None
                    hand.append(by_hand(state))
                    got = hand[-1]
                print(
                    f"run {i + 1} {method}: {got['outcome']} {got['stages']} lost "
                    f"{got['lost_rows']} max primaries {got['max_primaries']}",
                    file=sys.stderr,
                )
    finally:
        if own and not args.keep:
            down.down(base)
    summary = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": args.runs,
        "chain": summarize(chain),
        "by_hand": summarize(hand),
        "lost_rows": {
            "chain": [r["lost_rows"] for r in chain],
            "by_hand": [r["lost_rows"] for r in hand],
        },
        "max_primaries": max(r["max_primaries"] for r in chain + hand),
        "outcomes": {
            "chain": [r["outcome"] for r in chain],
            "by_hand": [r["outcome"] for r in hand],
        },
        "results": {"chain": chain, "by_hand": hand},
    }
    median_total = summary["chain"]["total"]["median"]
    summary["target_met"] = median_total is not None and median_total < TARGET_SECONDS
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    print(machine())
    print(table(summary["chain"], summary["by_hand"], args.runs))
    print(
        f"lost rows: chain {summary['lost_rows']['chain']}, by hand "
        f"{summary['lost_rows']['by_hand']}; most primaries at one sample: "
        f"{summary['max_primaries']}"
    )
    print(
        f"target (chain median kill -> first write < {TARGET_SECONDS:g} s): "
        f"{'met' if summary['target_met'] else 'MISSED'} ({_fmt(median_total)} s)"
    )
    note = load_note()
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
