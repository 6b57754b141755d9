"""Breach response logic without I/O: options, deadlines, services, networks, stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dr.config import Deadline, parse_config
from dr.errors import ConfigError
from flows.breach_response.assess import _users_of, deadlines_from, select_services
from flows.breach_response.options import BreachOptions, DatabaseCredential, SecretStore
from flows.breach_response.state import BreachRun
from tasks.postgres import hba


def _config(**target: Any) -> Any:
    base: dict[str, Any] = {
        "postgres": {
            "primary": {"name": "p", "host": "127.0.0.1", "port": 6000},
            "databases": ["app"],
        },
        "backup": {"repository": "file:///tmp/repo"},
        "services": [
            {"kind": "docker", "name": "api"},
            {"kind": "docker", "name": "worker"},
            {"kind": "kubernetes", "namespace": "shop", "deployment": "web"},
        ],
    }
    base.update(target)
    return parse_config({"targets": {"t": base}})


def test_deadlines_are_absolute_utc_times_from_detection() -> None:
    cfg = _config()
    detected = datetime(2025, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    [gdpr] = deadlines_from(cfg.target("t"), detected)
    assert gdpr == {"name": "GDPR notification", "hours": 72, "due_at": "2025-03-04T08:30:00+00:00"}
    target = cfg.target("t")
    target.regulatory_deadlines = [
        Deadline(name="regulator", hours=24),
        Deadline(name="SEC", hours=96),
    ]
    due = deadlines_from(target, datetime(2025, 1, 1, tzinfo=UTC))
    assert [d["due_at"] for d in due] == ["2025-01-02T00:00:00+00:00", "2025-01-05T00:00:00+00:00"]


def test_select_services_all_named_or_refused() -> None:
    target = _config().target("t")
    assert [s.name for s in select_services(target, None)] == ["api", "worker", "shop/web"]
    assert [s.name for s in select_services(target, ["web", "api"])] == ["shop/web", "api"]
    assert [s.name for s in select_services(target, ["shop/web"])] == ["shop/web"]
    assert select_services(target, []) == []
    with pytest.raises(ConfigError) as info:
        select_services(target, ["api", "ghost", "phantom"])
    assert "ghost, phantom" in str(info.value) and "api, worker, shop/web" in str(info.value)
    assert [p for p, _ in info.value.problems] == ["options.services", "options.services"]


def test_secret_store_needs_exactly_one_place() -> None:
    assert SecretStore(prefect_secret="b").describe() == "prefect-secret:b"
    assert SecretStore(file=Path("/x")).describe() == "file:/x"
    assert (
        SecretStore(kubernetes_secret="ns/name/key").describe() == "kubernetes-secret:ns/name/key"
    )
    for bad in ({}, {"prefect_secret": "a", "aws_secret": "b"}, {"kubernetes_secret": "ns/name"}):
        with pytest.raises(ValidationError):
            SecretStore.model_validate(bad)


def test_options_from_the_command_line_shapes() -> None:
    opts = BreachOptions.model_validate(
        {
            "compromised_roles": ["evil"],
            "credentials": [{"role": "app", "stores": [{"prefect_secret": "app-pw"}]}],
            "tokens": [{"name": "bot", "kind": "slack", "new_value": {"env": "NEW"},
                        "stores": [{"aws_secret": "bot"}]}],
            "dump_tables": ["shop.orders"],
        }
    )  # fmt: skip
    assert opts.credentials[0].password_env == "DB_PASSWORD" and opts.resume
    assert opts.drill_block_cidrs == ["192.0.2.0/24"]
    with pytest.raises(ValidationError, match=r"schema\.table"):
        BreachOptions(dump_tables=["orders"])
    with pytest.raises(ValidationError):
        BreachOptions.model_validate(
            {"tokens": [{"name": "x", "new_value": {"env": "N"}, "stores": []}]}
        )
    with pytest.raises(ValidationError):
        BreachOptions.model_validate({"no_such_option": 1})


def test_leaked_credentials_found_in_container_environments() -> None:

    envs = {
        "api": {"DB_USER": "app", "DB_PASSWORD": "leaked-password-123"},
        "worker": {"DB_USER": "app", "DB_PASSWORD": "leaked-password-123"},
        "report": {"DB_USER": "reporter", "DB_PASSWORD": "other-password-456"},
        "cache": {"REDIS_URL": "redis://x"},
    }
    names, old = _users_of(envs, DatabaseCredential(role="app"))
    assert names == ["api", "worker"] and old is not None
    assert old.get_secret_value() == "leaked-password-123" and "leaked" not in repr(old)
    names, old = _users_of(envs, DatabaseCredential(role="nobody"))
    assert names == [] and old is None


def test_networks_are_normalized_and_checked() -> None:
    assert hba.normalize_cidrs(["10.1.2.3", "10.1.2.0/24", "10.1.2.3/32", "2001:db8::1"]) == [
        "10.1.2.3/32",
        "10.1.2.0/24",
        "2001:db8::1/128",
    ]
    with pytest.raises(ConfigError) as info:
        hba.normalize_cidrs(["10.0.0.300", "::/0", "ok"])
    assert len(info.value.problems) == 3


def test_hba_markers_are_found_only_on_our_lines() -> None:
    lines = [
        "# a comment",
        f"{hba.HBA_MARKER} 192.0.2.0/24 (x)",
        "host    all    all    192.0.2.0/24    reject",
        f"{hba.HBA_MARKER} 198.51.100.0/24",
        "host all all 10.0.0.0/8 reject",  # a marker followed by someone else's line
        "local all all trust",
    ]
    ours = hba._ours(lines)
    assert ours == {"192.0.2.0/24": [1, 2]}
    assert hba._first_foreign_rule(lines, ours) == 4
    assert hba._first_rule_index(lines) == 2


class _Ctx:
    def __init__(self, is_drill: bool) -> None:
        self.is_drill = is_drill
        self.recorded: list[tuple[Any, Any]] = []

    def record_change(self, change: Any, undo: Any = None) -> None:
        self.recorded.append((change, undo))


@pytest.mark.parametrize(("is_drill", "queued"), [(True, True), (False, False)])
def test_isolation_is_compensated_in_drills_only(is_drill: bool, queued: bool) -> None:
    """An incident that fails keeps its containment (fail closed); a drill puts the lab back."""
    from dr.changes import Change

    run = BreachRun.__new__(BreachRun)
    run.ctx = _Ctx(is_drill)  # type: ignore[assignment]
    change = Change(system="docker", action="stop", object="app", outcome="changed")
    run.record(change, lambda: None)
    [(recorded, undo)] = run.ctx.recorded  # type: ignore[attr-defined]
    assert recorded is change and (undo is not None) is queued


# ---------------------------------------------------------------------- measured, not stamped


class _Run:
    """Just what the breach clock reads of a run."""

    def __init__(self, writes_before: dict[str, Any] | None) -> None:
        self.compromised = ["dr_intruder_x"]
        self.pgc = type("P", (), {"primary": object(), "heartbeat_db": "app"})()
        self.info: dict[str, Any] = {}
        if writes_before is not None:
            self.info["writes_before"] = writes_before
        self.restored = None
        self.restore_to = None
        self.files_restored: list[dict[str, Any]] = []

    def ci(self, node: Any, dbname: str | None = None) -> str:
        return "host=x"


def test_breach_detection_is_when_the_rogue_session_is_seen(monkeypatch) -> None:
    from flows.breach_response import clock

    answers = iter([[], [{"pid": 1, "user": "dr_app"}], [{"pid": 7, "user": "dr_intruder_x"}]])

    class Task:
        def with_options(self, **kw: Any) -> Any:
            return lambda conninfo: next(answers)

    monkeypatch.setattr(clock.postgres_security, "session_snapshot_task", Task())
    monkeypatch.setattr(clock, "OBSERVE_POLL_SECONDS", 0.0)
    run = _Run(None)
    seen = clock.observe_intrusion(run)  # type: ignore[arg-type]
    assert seen is not None
    assert run.info["detection"]["sessions"] == [{"pid": 7, "user": "dr_intruder_x"}]


def test_breach_rpo_is_counted_from_the_heartbeat_rows(monkeypatch) -> None:
    from flows.breach_response import clock

    t = datetime(2026, 3, 1, tzinfo=UTC)
    before = {"app": {"max_seq": 100, "max_ts": t.isoformat(), "rows": 100}}
    monkeypatch.setattr(
        clock.postgres_heartbeat, "count_heartbeat_rows_through_task", lambda c, w, last: 100
    )
    assert clock.rpo(_Run(before))["lost_rows"] == 0  # type: ignore[arg-type]
    assert clock.rpo(_Run(before))["rpo_seconds"] == 0.0  # type: ignore[arg-type]
    monkeypatch.setattr(
        clock.postgres_heartbeat, "count_heartbeat_rows_through_task", lambda c, w, last: 96
    )
    monkeypatch.setattr(
        clock.postgres_heartbeat,
        "newest_heartbeat_between_task",
        lambda c, w, first, last: (96, t - timedelta(seconds=0.2)),
    )
    lost = clock.rpo(_Run(before))  # type: ignore[arg-type]
    assert lost["lost_rows"] == 4 and lost["rpo_seconds"] == pytest.approx(0.2)
    unknown = clock.rpo(_Run(None))  # type: ignore[arg-type]
    assert "rpo_seconds" not in unknown and unknown["rpo_basis"].startswith("not measured")
