"""Issue 13 item 4 on the lab: every bad input exits 2 before a flow run, history row or Slack
message exists (each counted on the lab's Prefect server, history database and Slack stand-in
before and after)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from prefect import get_client
from typer.testing import CliRunner

from cli.runs import register
from dr.config import load_config
from tasks.history import store as history_store


@pytest.fixture(scope="module")
def cli() -> Callable[..., tuple[int, str, str]]:
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def _counts(env: Any, config: Any) -> tuple[int, int, int]:
    """(flow runs, history rows, Slack messages) as the lab has them now."""
    with get_client(sync_client=True) as client:
        flow_runs = len(client.read_flow_runs(limit=200))
    cfg = load_config(config)
    rows = len(history_store.query_runs(cfg.history)) if cfg.history.dsn else 0
    return flow_runs, rows, len(env.slack.messages)


FUTURE = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

CASES = [
    ("drill", "data-corruption", "--option", "variant=nonsense"),
    ("drill", "data-corruption", "--option", "no_such_option=1"),
    ("drill", "data-corruption", "--inject", "nonsense"),
    ("drill", "region-failover", "--inject", "nonsense"),
    ("drill", "data-corruption", "--option", "recovery_time=yesterday"),
    ("run", "data-corruption", "--option", f"recovery_time={FUTURE}"),
    ("drill", "data-corruption", "--option", "drill_table=public.no_such_table"),
    ("drill", "region-failover", "--severity", "SEV99"),
    ("run", "breach-response", "--option", "severity=SEV99"),
]


def case_id(case: tuple[str, ...]) -> str:
    """The case's arguments, with the moving future time named (pytest-xdist workers
    collect a second apart, and their test ids must match)."""
    return " ".join(case[1:]).replace(FUTURE, "<tomorrow>")


@pytest.mark.parametrize("args", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_exits_2_before_anything_exists(lifecycle_env, cli, args) -> None:
    config = lifecycle_env.write_config()
    before = _counts(lifecycle_env, config)
    code, out, err = cli(*args, "--target", "lc", "--json", "--config", str(config))
    assert code == 2, (out, err)
    obj = json.loads(out)
    assert obj["outcome"] == "refused" and obj["problems"], obj
    for problem in obj["problems"]:
        assert problem["key"] in err, err  # one line per problem, named by its flag
    assert _counts(lifecycle_env, config) == before
