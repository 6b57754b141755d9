"""The one place where task retries are decided.

Adapters in ``tasks/`` are plain functions; each gets a thin Prefect task with
:func:`dr_task`, which retries only transient errors (see :func:`dr.errors.retry_condition`)
with exponential backoff and jitter, and fails fast on everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from dr.errors import retry_condition

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_SECONDS = 1.0
JITTER_FACTOR = 0.5


def dr_task(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    timeout_seconds: float | None = None,
    tags: list[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Wrap a plain function as a Prefect task that retries transient errors only.

    Args:
        fn: the plain function (what unit tests call).
        name: task name shown in the UI; defaults to the function's name with dashes.
        retries: attempts after the first, for transient errors.
        backoff_seconds: first delay; doubles each attempt, with jitter.
        timeout_seconds: per-attempt timeout (Prefect marks the run TimedOut).
        tags: Prefect tags (used for concurrency limits).
        kwargs: more ``task`` options. Caching is off unless given: these tasks act on the
            world (promote, stop, upload), so a cached result would skip a real action.

    Returns:
        A Prefect ``Task``.
    """
    kwargs.setdefault("cache_policy", NO_CACHE)
    return task(
        fn,
        name=name or fn.__name__.replace("_", "-"),
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=backoff_seconds),
        retry_jitter_factor=JITTER_FACTOR,
        retry_condition_fn=retry_condition,
        timeout_seconds=timeout_seconds,
        tags=tags,
        persist_result=False,
        **kwargs,
    )
