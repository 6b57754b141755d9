"""Benchmark: from an incident run created through the API to its flow code running.

Against a running lab (``dr lab up``; its Prefect server and ``dr.yaml``), after ``dr
deploy``: for each worker in turn, start it, wait until it is registered with the work
pool, then create ``--runs`` runs one after another on ``region-failover-incident`` the
way ``dr serve-alerts`` does (``create_flow_run_from_deployment``, mode ``dry-run``: the
real flow, its real imports and config, nothing changed on the lab), wait for each to
finish, and stop the worker. The workers, side by side in one run:

- ``prefect worker``: ``prefect worker start --pool dr-process`` as the README said
  (Prefect's defaults: polls every 10 s, new interpreter per run);
- ``prefect worker, fast poll``: the same with ``PREFECT_WORKER_QUERY_SECONDS=0.25`` and
  ``--prefetch-seconds 10`` (polling alone);
- ``dr worker``: polls every 0.25 s and forks each run from a warm interpreter.

Every figure comes from the server's own records of each run, measured from the run's
``created`` time: *picked up* (its Pending state: the worker's poll found it),
*process started* (the worker's "submitted to infrastructure" log: the run's process
exists), *flow code* (its Running state: the engine calls the flow function right
after), *first step* (the flow's own first log line: the lifecycle has read dr.yaml).

Run::

    DR_LAB_DIR=/tmp/dr-lab-x .venv/bin/python bench/dispatch.py [--runs 5]
        [--workers prefect,prefect-fast,dr] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "dr-process"
DEPLOYMENT = "region-failover/region-failover-incident"
STAGES = ("picked up", "process started", "flow code", "first step")

#: name -> (argv after the bin dir, extra environment)
WORKERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "prefect": (["prefect", "worker", "start", "--pool", POOL], {}),
    "prefect-fast": (
        ["prefect", "worker", "start", "--pool", POOL, "--prefetch-seconds", "10"],
        {"PREFECT_WORKER_QUERY_SECONDS": "0.25"},
    ),
    "dr": (["dr", "worker", "--pool", POOL], {}),
}
LABELS = {
    "prefect": "prefect worker (defaults)",
    "prefect-fast": "prefect worker, 0.25 s poll",
    "dr": "dr worker (warm fork)",
}


@dataclass
class Sample:
    """One run's stages, in seconds after the run was created (None: not seen)."""

    stages: dict[str, float | None]
    state: str


def lab_config() -> Path:
    lab_dir = Path(os.environ.get("DR_LAB_DIR") or REPO / ".lab")
    path = lab_dir / "dr.yaml"
    if not path.exists():
        sys.exit(f"no lab at {lab_dir}: run `dr lab up` first (DR_LAB_DIR={lab_dir})")
    return path


def base_env(home: Path, api_url: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DR_CONFIG=str(config),
        PYTHONPATH=str(REPO),
    )
    return env


def _sigint_default() -> None:  # a background start may leave SIGINT ignored: Ctrl-C works
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def worker_process(kind: str, name: str, env: dict[str, str], log: Path) -> Any:
    argv, extra = WORKERS[kind]
    argv = [str(BIN / argv[0]), *argv[1:], "--name", name]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env={**env, **extra}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_sigint_default,
        )  # fmt: skip
        try:
            yield proc
        finally:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)


async def wait_registered(client: Any, name: str, proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 120:
        if proc.poll() is not None:
            sys.exit(f"worker {name} exited ({proc.returncode}) before registering")
        workers = await client.read_workers_for_work_pool(POOL)
        if any(w.name == name and w.status.value == "ONLINE" for w in workers):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    sys.exit(f"worker {name} did not register within 120 s")


async def one_run(client: Any, deployment_id: Any, worker: str) -> Sample:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    run = await client.create_flow_run_from_deployment(
        deployment_id,
        parameters={"target": "lab", "mode": "dry-run", "options": {"severity": "SEV1"}},
        tags=["dr", "bench-dispatch"],
    )
    deadline = time.monotonic() + 180
    while True:
        flow_run = await client.read_flow_run(run.id)
        if flow_run.state.is_final() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    states = await client.read_flow_run_states(run.id)
    # The run's logs reach the server in batches (every ~2 s), often after its final state.
    logs_deadline = time.monotonic() + 10
    while True:
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
            sort=LogSort.TIMESTAMP_ASC,
            limit=200,
        )
        if any(" declared at " in x.message for x in logs) or time.monotonic() > logs_deadline:
            break
        await asyncio.sleep(0.5)
    created = flow_run.created

    def since(ts: Any) -> float | None:
        return None if ts is None else round((ts - created).total_seconds(), 3)

    def first(pred: Any) -> Any:
        return next((x.timestamp for x in logs if pred(x)), None)

    pending = next((s.timestamp for s in states if s.name == "Pending"), None)
    running = next((s.timestamp for s in states if s.type.value == "RUNNING"), None)
    submitted = first(lambda x: "submitted to infrastructure" in x.message)
    step = first(lambda x: x.name == "prefect.flow_runs" and " declared at " in x.message)
    took = first(lambda x: x.message.startswith(f"Worker '{worker}' submitting"))
    if took is None:
        print(f"  warning: run {run.id} was not taken by {worker}", file=sys.stderr)
    figures = (since(pending), since(submitted), since(running), since(step))
    stages = dict(zip(STAGES, figures, strict=True))
    return Sample(stages=stages, state=flow_run.state.type.value)


async def bench_worker(kind: str, runs: int, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    from prefect import get_client

    name = f"bench-{kind}-{os.getpid()}"
    with worker_process(kind, name, env, tmp / f"{kind}.log") as proc:
        async with get_client() as client:
            ready = await wait_registered(client, name, proc)
            deployment = await client.read_deployment_by_name(DEPLOYMENT)
            await asyncio.sleep(1.0)  # let its first polls settle
            samples = [await one_run(client, deployment.id, name) for _ in range(runs)]
    return {"worker": kind, "ready_seconds": round(ready, 1), "samples": samples}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"worker": result["worker"], "ready_seconds": result["ready_seconds"]}
    for stage in STAGES:
        values = [s.stages[stage] for s in result["samples"] if s.stages[stage] is not None]
        out[stage] = (
            {"median": round(statistics.median(values), 2), "worst": round(max(values), 2)}
            if values
            else None
        )
    out["states"] = sorted({s.state for s in result["samples"]})
    out["runs"] = [s.stages for s in result["samples"]]
    return out


def _cell(figures: dict[str, float] | None) -> str:
    return f"{figures['median']:.2f} / {figures['worst']:.2f}" if figures else "-"


def print_table(rows: list[dict[str, Any]], runs: int) -> None:
    print(f"\ncreated -> stage, seconds, median / worst of {runs} runs each")
    header = f"{'worker':30s}" + "".join(f"{s:>18s}" for s in STAGES) + "  states"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "".join(f"{_cell(row[s]):>18s}" for s in STAGES)
        print(f"{LABELS[row['worker']]:30s}{cells}  {','.join(row['states'])}")
    by = {r["worker"]: r for r in rows}
    if "prefect" in by and "dr" in by and by["dr"]["flow code"] and by["prefect"]["flow code"]:
        ratio = by["prefect"]["flow code"]["median"] / by["dr"]["flow code"]["median"]
        print(f"\ncreated -> flow code: dr worker {ratio:.1f}x faster (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", default="prefect,prefect-fast,dr")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.workers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in WORKERS]
    if unknown:
        sys.exit(f"unknown worker(s) {unknown}: choose from {sorted(WORKERS)}")
    config = lab_config()
    api_url = yaml.safe_load(config.read_text())["prefect_api_url"]
    with tempfile.TemporaryDirectory(prefix="dr-bench-dispatch-") as tmp_name:
        tmp = Path(tmp_name)
        env = base_env(tmp, api_url, config)
        os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
        subprocess.run(
            [str(BIN / "dr"), "deploy", "--config", str(config), "--json"],
            env=env, cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        rows = [summary(asyncio.run(bench_worker(k, args.runs, env, tmp))) for k in kinds]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"runs": args.runs, "load": load, "workers": rows}, indent=2))
        return
    print_table(rows, args.runs)
    print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
