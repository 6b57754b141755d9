"""dr.changes.Change: the shared record of what a step changed and how to undo it."""

from __future__ import annotations

from datetime import UTC

import pytest
from pydantic import ValidationError

from dr.changes import Change


def test_undo_data_never_serialized_or_shown():
    change = Change(
        system="kubernetes",
        action="replace-secret-key",
        object="prod/db",
        outcome="updated",
        before={"key": "password", "existed": True},
        undo="put back the previous value",
        undo_data={"secret_value": "hunter2-old"},
    )
    assert change.undo_data["secret_value"] == "hunter2-old"
    for text in (repr(change), str(change), str(change.model_dump()), change.model_dump_json()):
        assert "hunter2-old" not in text
    assert "undo_data" not in change.model_dump()
    assert Change.model_validate_json(change.model_dump_json()).undo_data == {}


def test_defaults_and_summary():
    change = Change(
        system="docker", action="stop", object="app", outcome="changed", undo="docker start app"
    )
    assert change.at.tzinfo is UTC
    assert change.compensable and change.changed
    assert change.summary() == "docker stop app: changed (undo: docker start app)"
    same = Change(system="docker", action="stop", object="app", outcome="unchanged")
    assert not same.changed
    assert same.summary() == "docker stop app: unchanged"


def test_rejects_unknown_outcomes_and_fields():
    with pytest.raises(ValidationError):
        Change(system="docker", action="stop", object="app", outcome="done")
    with pytest.raises(ValidationError):
        Change(system="docker", action="stop", object="app", outcome="changed", secret="x")
