"""A flow that takes a target's lock and holds it: the crash tests run it and kill it.

Usage: ``python -m tests.integration.crash.lock_holder TARGET SECONDS``; prints ``HELD``
once the lock is taken (and the flow run's id), ``RELEASED`` after.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

from prefect import flow
from prefect.runtime import flow_run

from dr.config import ConcurrencyPolicy
from flows.lifecycle.locks import target_lock

CONFIG = SimpleNamespace(targets={}, concurrency=ConcurrencyPolicy(wait_timeout_seconds=120))


@flow(name="lock-holder")
def hold(target: str, seconds: float) -> None:
    with target_lock(CONFIG, target):  # type: ignore[arg-type]
        print(f"HELD {flow_run.get_id()}", flush=True)
        time.sleep(seconds)
    print("RELEASED", flush=True)


if __name__ == "__main__":
    hold(sys.argv[1], float(sys.argv[2]))
