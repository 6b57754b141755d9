"""The HTTP client for health checks: the one place this package builds it and reads its errors.

An HTTP health check never retries by itself: the health wait polls in rounds, and each
round's answer is what counts (a retry inside a round would distort ``restored_at``).
"""

from __future__ import annotations

import httpx

from dr.errors import redact

__all__ = ["HTTPError", "describe_http_error", "open_http_client"]

#: What an HTTP check may raise (transport errors, timeouts, invalid URLs).
HTTPError = httpx.HTTPError


def open_http_client() -> httpx.Client:
    """A client for one health wait (close it, or use it as a context manager)."""
    return httpx.Client()


def describe_http_error(exc: httpx.HTTPError) -> str:
    """``ErrorType: message``, redacted: what a failed HTTP check reports."""
    return f"{type(exc).__name__}: {redact(str(exc))}"
