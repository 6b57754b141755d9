"""Config validation: every problem reported with its key path, nothing else runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from dr.config import (
    DEFAULT_TIERS,
    LAB_CONFIG_PATH,
    SecretRef,
    config_path,
    load_config,
    parse_config,
)
from dr.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "examples" / "dr.example.yaml"


def minimal() -> dict:
    return {
        "targets": {
            "db": {
                "postgres": {
                    "primary": {"name": "p", "host": "127.0.0.1", "port": 6000},
                    "databases": ["app"],
                },
                "backup": {"repository": "file:///var/backups/db"},
            }
        }
    }


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.target("trading").postgres.replicas[0].region == "eu-central-1"
    assert cfg.objectives("trading").rto_seconds == 1800
    # Overriding one tier keeps the others' defaults.
    assert cfg.tiers["important"] == DEFAULT_TIERS["important"]


def test_default_tiers_from_the_seeds() -> None:
    cfg = parse_config(minimal())
    assert cfg.tiers["critical"].rto_seconds == 900
    assert cfg.tiers["critical"].rpo_seconds == 300
    assert cfg.tiers["important"].rto_seconds == 3600
    assert cfg.tiers["non-critical"].rpo_seconds == 3600


def test_three_mistakes_three_errors_with_paths() -> None:
    data = minimal()
    t = data["targets"]["db"]
    t["postgres"]["primary"]["port"] = 70000
    t["backup"]["repository"] = "ftp://nope"
    t["colour"] = "blue"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = [p for p, _ in info.value.problems]
    assert paths == [
        "targets.db.postgres.primary.port",
        "targets.db.backup.repository",
        "targets.db.colour",
    ]


def test_unknown_tier_and_route_target_are_named() -> None:
    data = minimal()
    data["targets"]["db"]["tier"] = "gold"
    data["alerts"] = {"routes": [{"name": "r", "scenario": "region-failover", "target": "nope"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    problems = dict(info.value.problems)
    assert "unknown tier 'gold'" in problems["targets.db.tier"]
    assert "unknown target 'nope'" in problems["alerts.routes.0.target"]


def test_secret_ref_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError):
        SecretRef()
    with pytest.raises(ValueError):
        SecretRef(env="A", prefect_secret="b")


def test_inline_password_is_refused() -> None:
    data = minimal()
    data["targets"]["db"]["postgres"]["password"] = "hunter2"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems[0][0].startswith("targets.db.postgres.password")
    assert "hunter2" not in str(info.value)


def test_secret_from_env_is_redacted_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from dr.errors import DRError

    monkeypatch.setenv("DR_TEST_SECRET", "s3cr3t-value-xyz")
    value = SecretRef(env="DR_TEST_SECRET").resolve()
    assert value == "s3cr3t-value-xyz"
    assert "s3cr3t" not in str(DRError(f"login failed for password {value}"))


def test_unknown_target_lists_known_ones() -> None:
    cfg = parse_config(minimal())
    with pytest.raises(ConfigError, match="unknown target 'x' \\(known: db\\)"):
        cfg.target("x")


def test_cli_config_check(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    result = runner.invoke(app, ["config", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output

    data = minimal()
    data["targets"]["db"]["postgres"]["databases"] = []
    data["targets"]["db"]["backup"]["repository"] = "s3://"
    data["slack"] = {"base_url": "not-a-url"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    out = result.output
    for path in ("targets.db.postgres.databases", "targets.db.backup.repository", "slack.base_url"):
        assert path in out

    broken = tmp_path / "broken.yaml"
    broken.write_text("targets: [unclosed\n")
    result = runner.invoke(app, ["config", "check", str(broken)])
    assert result.exit_code == 2
    assert "not valid YAML at line" in result.output


def test_one_resolver_for_check_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dr config check` reads the file `dr run` would: the lab's when nothing else exists."""
    from flows.registry import find_config_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DR_CONFIG", raising=False)
    assert config_path() == Path("dr.yaml")
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "dr.yaml").write_text(yaml.safe_dump(minimal()))
    assert config_path() == LAB_CONFIG_PATH == find_config_path()
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{LAB_CONFIG_PATH}: valid")
    (tmp_path / "dr.yaml").write_text("{}")
    assert config_path() == Path("dr.yaml")
    monkeypatch.setenv("DR_CONFIG", "/etc/dr.yaml")
    assert config_path() == Path("/etc/dr.yaml")
    assert config_path("given.yaml") == Path("given.yaml")
