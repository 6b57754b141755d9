"""Fixtures for the lifecycle tests: the lab (session), plus a "thing" the test scenario acts on.

The lab (``tests/conftest.py``) provides PostgreSQL (primary + streaming replica, the
``app`` database with the heartbeat and the shop data), the drill-history database, the
Prefect server and the Slack stand-in (a process, driven over its ``/_standin/`` controls).
The lifecycle tests add targets of their own to a copy of the lab's ``dr.yaml``: same
PostgreSQL, same checks, plus an HTTP check on a small loopback service ("the thing") that
the test scenario stops, promotes and starts.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dr.changes import Change
from dr.config import parse_config
from lab.pgcluster import free_port
from tasks.postgres.heartbeat import heartbeat_conninfo

LAB_TARGET = "lab"


class Thing:
    """A small HTTP service on loopback that a test scenario stops, promotes and starts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.promoted = False
        self.log: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._start_server()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _start_server(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self._server = server

    def _change(self, action: str, changed: bool, undo: str, **after: Any) -> Change:
        return Change(
            system="thing",
            action=action,
            object=self.name,
            outcome="changed" if changed else "unchanged",
            after=after,
            undo=undo if changed else "",
        )

    def stop(self) -> Change:
        with self._lock:
            if self._server is None:
                return self._change("stop", False, "", running=False)
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
            self.log.append("stop")
            return self._change("stop", True, f"start {self.name}", running=False)

    def start(self) -> Change:
        with self._lock:
            if self._server is not None:
                return self._change("start", False, "", running=True)
            self._start_server()
            self.log.append("start")
            return self._change("start", True, f"stop {self.name}", running=True)

    def promote(self) -> Change:
        with self._lock:
            changed = not self.promoted
            self.promoted = True
            if changed:
                self.log.append("promote")
            return self._change("promote", changed, f"demote {self.name}", promoted=True)

    def demote(self) -> Change:
        with self._lock:
            changed = self.promoted
            self.promoted = False
            if changed:
                self.log.append("demote")
            return self._change("demote", changed, f"promote {self.name}", promoted=False)

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None


class SlackControl:
    """The lab's Slack stand-in (a separate process), through its ``/_standin/`` controls."""

    def __init__(self, api_url: str) -> None:
        self.base = api_url.rstrip("/").removesuffix("/api")

    @property
    def messages(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/_standin/messages", timeout=10)
        response.raise_for_status()
        return response.json()["messages"]

    def set_down(self, down: bool, mode: str = "503") -> None:
        response = httpx.post(
            f"{self.base}/_standin/down", json={"down": down, "mode": mode}, timeout=10
        )
        response.raise_for_status()


@dataclass
class LifecycleEnv:
    """Everything the lifecycle tests share."""

    root: Path
    lab: Any
    slack: SlackControl
    prefect_api_url: str
    lab_config: dict[str, Any]
    things: dict[str, Thing] = field(default_factory=dict)

    @property
    def app_conninfo(self) -> str:
        """The lab's ``app`` database on whichever node is the primary now."""
        target = parse_config(self.lab_config).target(LAB_TARGET)
        return heartbeat_conninfo(target.postgres)

    def thing(self, name: str) -> Thing:
        if name not in self.things:
            self.things[name] = Thing(name)
        return self.things[name]

    def config_dict(self, **overrides: Any) -> dict[str, Any]:
        """The lab's dr.yaml plus targets lc, gate, busy (drillable) and prod (not)."""
        cfg = yaml.safe_load(yaml.safe_dump(self.lab_config))  # a deep copy
        base = cfg["targets"][LAB_TARGET]

        def target(thing: str, *, drills: bool = True, production: bool = False) -> dict:
            t = yaml.safe_load(yaml.safe_dump(base))
            t.update(production=production, drills_allowed=drills, services=[])
            t["health_checks"]["http"] = [
                {"name": thing, "url": self.thing(thing).url, "timeout_seconds": 1}
            ]
            t["slack_channel"] = f"dr-{thing}"
            return t

        cfg["targets"] = {
            "lc": target("app"),
            "gate": target("gate-app"),
            "busy": target("busy-app"),
            "prod": target("prod-app", drills=False, production=True),
        }
        cfg.pop("alerts", None)  # its routes name the lab target, which is not here
        cfg["slack"]["status_cadence_seconds"] = 0.2
        cfg["approval"] = {"timeout_seconds": 60}
        cfg["concurrency"] = {"on_busy": "wait", "wait_timeout_seconds": 60}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def write_config(self, name: str = "dr.yaml", **overrides: Any) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(self.config_dict(**overrides), sort_keys=False))
        return path


@pytest.fixture(scope="module")
def lifecycle_env(lab: Any) -> Iterator[LifecycleEnv]:
    """The lab, with Prefect pointed at its server for this module (threads included)."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    assert lab.prefect_api_url, "the lifecycle tests need the lab's Prefect server"
    root = Path(tempfile.mkdtemp(prefix="dr-lifecycle-tests-"))
    env = LifecycleEnv(
        root=root,
        lab=lab,
        slack=SlackControl(lab.slack_url),
        prefect_api_url=lab.prefect_api_url,
        lab_config=yaml.safe_load(Path(lab.config_path).read_text()),
    )
    with pytest.MonkeyPatch.context() as mp:
        # Background threads (Slack worker, lease renewal) read the process-wide settings.
        mp.setenv("PREFECT_API_URL", lab.prefect_api_url)
        mp.delenv("DR_CONFIG", raising=False)
        prefect.context.refresh_global_settings_context()
        try:
            with temporary_settings(
                updates={
                    PREFECT_API_URL: lab.prefect_api_url,
                    PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,  # warm runs ~0.2 s, not ~1.1 s
                }
            ):
                yield env
        finally:
            # Send queued run logs and events now, while the lab's server is still up;
            # at interpreter exit they would retry against a server that is gone.
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
            for thing in env.things.values():
                thing.close()
            shutil.rmtree(root, ignore_errors=True)
    prefect.context.refresh_global_settings_context()
