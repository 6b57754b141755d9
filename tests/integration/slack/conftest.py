"""Fixtures for the Slack tests: a fresh Slack stand-in on loopback for each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from slack_sdk import WebClient

from lab.slack_standin import SlackStandIn
from tasks.notify.client import make_client
from tasks.notify.thread import SlackThread

SLACK_TOKEN = "xoxb-standin-0000-test"  # the stand-in's own fake token


@pytest.fixture
def standin() -> Iterator[SlackStandIn]:
    """A Slack Web API stand-in on a free 127.0.0.1 port, stopped after the test."""
    server = SlackStandIn(token=SLACK_TOKEN, port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slack_client(standin: SlackStandIn) -> WebClient:
    """A client built by the production factory, pointed at the stand-in."""
    return make_client(SLACK_TOKEN, standin.base_url, timeout_seconds=5)


@pytest.fixture
def make_thread(standin: SlackStandIn) -> Iterator[Callable[..., SlackThread]]:
    """Build SlackThreads on the stand-in with quick backoff; closed after the test."""
    threads: list[SlackThread] = []

    def build(channel: str = "#dr-drills", **options: Any) -> SlackThread:
        options.setdefault("first_backoff_seconds", 0.05)
        options.setdefault("max_backoff_seconds", 0.2)
        thread = SlackThread(
            lambda: make_client(SLACK_TOKEN, standin.base_url, timeout_seconds=5),
            channel,
            **options,
        )
        threads.append(thread)
        return thread

    yield build
    for thread in threads:
        thread.close(0.0)
