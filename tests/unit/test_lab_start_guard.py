"""lab/nodes.py never starts a second primary: a former standby needs its signal file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import nodes


@dataclass
class FakeCluster:
    name: str
    data_dir: Path
    running: bool = False

    def is_running(self) -> bool:
        return self.running


@pytest.fixture
def pair(tmp_path, monkeypatch):
    a = FakeCluster("replica1", tmp_path / "a")
    b = FakeCluster("primary", tmp_path / "b")
    a.data_dir.mkdir()
    b.data_dir.mkdir()
    states = {a.name: "shut down in recovery", b.name: "shut down"}
    monkeypatch.setattr(nodes, "_control_state", lambda c: states[c.name])
    monkeypatch.setattr(nodes, "in_recovery", lambda c: False)
    return a, b, states


def test_former_standby_without_signal_file_is_not_started(pair):
    a, b, _ = pair
    assert "no standby.signal" in nodes._why_not_start(a, (b,))


def test_former_standby_with_signal_file_starts(pair):
    a, b, _ = pair
    (a.data_dir / "standby.signal").write_text("")
    assert nodes._why_not_start(a, (b,)) is None


def test_the_only_node_may_start_whatever_it_was(pair):
    a, _, _ = pair
    assert nodes._why_not_start(a, ()) is None


def test_former_primary_waits_while_another_primary_runs(pair):
    a, b, states = pair
    states[a.name] = "shut down"
    b.running = True
    assert "already runs as the primary" in nodes._why_not_start(a, (b,))
    b.running = False
    assert nodes._why_not_start(a, (b,)) is None
