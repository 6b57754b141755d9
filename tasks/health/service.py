"""A service's own health endpoint, waited for after it is started (a stack's start order).

A stack starts in order (the api before the worker that needs it): each next service
starts only once the previous one answers its ``health_url`` with 2xx.
"""

from __future__ import annotations

import time

from dr.errors import PreconditionError
from dr.tasking import dr_task
from tasks.health.client import HTTPError, describe_http_error, open_http_client

__all__ = ["wait_service_healthy", "wait_service_healthy_task"]

POLL_SECONDS = 0.2


def wait_service_healthy(name: str, url: str, timeout_seconds: float = 60.0) -> float:
    """Poll ``GET url`` until it answers 2xx; return the seconds it took.

    Raises:
        PreconditionError: no 2xx answer within ``timeout_seconds`` (the last answer said).
    """
    started = time.monotonic()
    last = "no answer"
    with open_http_client() as client:
        while True:
            try:
                resp = client.get(url, timeout=min(5.0, timeout_seconds))
                if 200 <= resp.status_code < 300:
                    return round(time.monotonic() - started, 3)
                last = f"HTTP {resp.status_code}"
            except HTTPError as exc:
                last = describe_http_error(exc)
            if time.monotonic() - started >= timeout_seconds:
                raise PreconditionError(
                    f"service {name} is not healthy at {url} after {timeout_seconds:g} s: {last}"
                )
            time.sleep(POLL_SECONDS)


wait_service_healthy_task = dr_task(
    wait_service_healthy, name="health-wait-service-healthy", retries=0, timeout_seconds=900
)
