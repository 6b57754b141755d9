"""A killed run never blocks the next one: its lock is taken over, its flow run marked Crashed.

Two real processes on a real Prefect server: the first holds ``dr-target-<name>`` and is
killed with SIGKILL; the second must get the lock within 15 s, say whose lock it took over
and why, and not spam the log while it waits for a live holder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _start(env: dict[str, str], target: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.crash.lock_holder", target, str(seconds)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> tuple[str, str]:
    """Read ``proc``'s output until a line starts with ``prefix``; (that line, all so far).

    A ``prefix`` starting with ``*`` matches a line containing the rest.
    """
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix) or (prefix.startswith("*") and prefix[1:] in line):
            return line.strip(), "".join(seen)
    raise AssertionError(f"no {prefix!r} line within {timeout} s:\n{''.join(seen)}")


def _flow_run_state(env: dict[str, str], flow_run_id: str) -> str:
    response = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]["type"]


def test_killed_holder_is_taken_over_within_15_s_and_marked_crashed(prefect_api):
    target = f"crash-{uuid.uuid4().hex[:6]}"
    first = _start(prefect_api, target, 600)
    held, _ = _wait_for_line(first, "HELD", 120)
    dead_run = held.split()[1]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    second = _start(prefect_api, target, 0)
    try:
        _, begun = _wait_for_line(second, "*Beginning flow run", 90)
        began_at = time.monotonic()
        _, rest = _wait_for_line(second, "HELD", 60)
        output = begun + rest
        # The lock's part: from the new run's start to holding the lock. (The process's own
        # start-up, ``import prefect``, is the machine's: seconds when idle, more when loaded.)
        assert time.monotonic() - began_at < 15, output
        assert time.monotonic() - killed_at < 90, output
        assert "taken over" in output and dead_run in output, output
        assert "is gone" in output or "CRASHED" in output, output
        assert _flow_run_state(prefect_api, dead_run) == "CRASHED"
        _wait_for_line(second, "RELEASED", 30)
    finally:
        second.kill()
        second.wait()


def test_waiting_for_a_live_holder_logs_one_line_then_progress(prefect_api):
    target = f"busy-{uuid.uuid4().hex[:6]}"
    first = _start(prefect_api, target, 25)
    try:
        _wait_for_line(first, "HELD", 120)
        second = _start(prefect_api, target, 0)
        _, output = _wait_for_line(second, "HELD", 90)
        _wait_for_line(first, "RELEASED", 30)
    finally:
        first.kill()
        first.wait()
    second.wait(timeout=60)
    assert "taken over" not in output, output
    assert output.count("is busy") == 1, output
    assert output.count("still waiting") <= 4, output
    assert "failed to process item" not in output, output


def test_the_silent_run_automation_exists_after_a_run(prefect_api):
    """Prefect's own mechanism too: heartbeats that stop mark the run Crashed."""
    from flows.lifecycle.lock_holders import CRASH_AUTOMATION

    first = _start(prefect_api, f"auto-{uuid.uuid4().hex[:6]}", 0)
    _wait_for_line(first, "RELEASED", 120)
    first.wait(timeout=60)
    response = httpx.post(
        f"{prefect_api['PREFECT_API_URL']}/automations/filter",
        json={"automations": {"name": {"any_": [CRASH_AUTOMATION]}}},
        timeout=10,
    )
    response.raise_for_status()
    (automation,) = response.json()
    assert automation["trigger"]["posture"] == "Proactive"
    assert automation["actions"][0]["state"] == "CRASHED"
