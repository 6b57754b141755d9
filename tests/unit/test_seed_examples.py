"""The seed runbooks as configuration: the production-shaped examples and the lab's targets.

Every ``examples/seeds/*.yaml`` must pass ``dr config check`` and carry its runbook's
objectives; the lab's seed targets (:mod:`lab.seeds`) must validate on top of a lab-shaped
target and agree with the examples. No I/O beyond reading files in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from dr.config import DEFAULT_TIERS, Target, load_config, parse_config
from lab import seeds

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "seeds"

#: file -> (production target, RTO seconds, RPO seconds, database) as the runbook states them.
EXPECTED = {
    "bsc-dex.yaml": ("bsc-dex", 15 * 60, 5 * 60, "bsc_dex"),  # 000 lines 19, 24
    "bun-trading.yaml": ("bun-trading", 15 * 60, 3600, "bun_trading"),  # 001 lines 7-8
    "fusion-bridge.yaml": ("fusion-bridge", 4 * 3600, 3600, "fusion_bitcoin"),  # 002 lines 42-43
    "cryptofunk.yaml": ("cryptofunk", 30 * 60, 5 * 60, "cryptofunk"),  # 003 lines 28, 39
    "bt2c.yaml": ("bt2c", 30 * 60, 5 * 60, "bt2c"),  # 004 lines 216, 225
}


def test_there_is_one_example_per_seed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)
    assert sorted(t for t, *_ in EXPECTED.values()) == sorted(s.target for s in seeds.SEEDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_and_carries_the_seeds_objectives(name: str) -> None:
    target_name, rto, rpo, database = EXPECTED[name]
    config = load_config(EXAMPLES / name)
    target = config.target(target_name)
    objectives = config.objectives(target_name)
    assert (objectives.rto_seconds, objectives.rpo_seconds) == (rto, rpo)
    assert target.production is True and target.drills_allowed is False
    assert target.postgres.databases == [database]
    assert target.validation_queries, "the runbook's verification steps are validation queries"
    assert target.slack_channel
    # The same objectives as the lab's target for this seed.
    s = seeds.seed(target_name)
    assert (s.rto_seconds, s.rpo_seconds) == (rto, rpo)
    assert s.database == database
    # Secrets are references ({env: ...} or {prefect_secret: ...}), never values.
    for line in (EXAMPLES / name).read_text().splitlines():
        if "password:" in line:
            assert line.split("password:", 1)[1].strip().startswith("{"), line


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_passes_dr_config_check(name: str) -> None:
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLES / name)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and EXPECTED[name][0] in result.output


def test_examples_name_what_the_runbooks_name() -> None:
    """Storage, services and deadlines follow the runbooks (spot checks on each file)."""
    bsc = load_config(EXAMPLES / "bsc-dex.yaml").target("bsc-dex")
    assert bsc.backup.repository.startswith("s3://bsc-dex-backups")
    assert {s.name for s in bsc.services} == {"bsc-dex-api-1", "bsc-dex-worker-1"}
    assert [(d.name, d.hours) for d in bsc.regulatory_deadlines] == [("GDPR notification", 72)]

    bun = load_config(EXAMPLES / "bun-trading.yaml").target("bun-trading")
    assert [f.pattern for f in bun.backup.foreign] == ["db_backup_*.sql.gz"]
    assert bun.postgres.replicas == []

    fusion_cfg = load_config(EXAMPLES / "fusion-bridge.yaml")
    fusion = fusion_cfg.target("fusion-bridge")
    assert fusion_cfg.slack.status_cadence_seconds == 30 * 60  # 002 line 134
    assert {s.region for s in fusion.services} == {"us-west-2", "us-east-1"}
    assert fusion.dns is not None and fusion.regulatory_deadlines[0].hours == 24
    assert fusion_cfg.objectives("fusion-bridge-staging").rto_seconds == 8 * 3600  # 002 line 80

    crypto = load_config(EXAMPLES / "cryptofunk.yaml").target("cryptofunk")
    assert crypto.backup.retention.model_dump() == {"hourly": 48, "daily": 30, "weekly": 52}
    assert crypto.backup.wal_archive == "s3://cryptofunk-backups/wal"
    assert all(s.kind == "kubernetes" for s in crypto.services)

    bt2c = load_config(EXAMPLES / "bt2c.yaml").target("bt2c")
    assert bt2c.backup.repository == "file:///var/backups/bt2c/db"
    assert {s.name for s in bt2c.services} == {"bt2c-validator1-1", "bt2c-validator2-1"}


# --------------------------------------------------------------------------- the lab's targets


def _lab_like_target(base: Path) -> dict[str, Any]:
    node = {"host": "127.0.0.1", "region": "primary-region"}
    return {
        "tier": "critical",
        "production": False,
        "drills_allowed": True,
        "postgres": {
            "primary": {"name": "primary", "port": 15432, **node},
            "replicas": [{"name": "replica1", "port": 15433, **node, "region": "dr-region"}],
            "databases": ["app"],
            "heartbeat_database": "app",
        },
        "backup": {"repository": f"file://{base}/repo", "wal_archive": f"file://{base}/wal"},
        "services": [{"kind": "docker", "name": "dr-lab-app", "role": "writer"}],
        "slack_channel": "#dr-lab",
        "evidence_repository": "s3://dr-lab-evidence/lab",
    }


def _lab_config(base: Path) -> dict[str, Any]:
    lab_target = _lab_like_target(base)
    return {
        "version": 1,
        "tiers": seeds.tiers(),
        "targets": {
            "lab": lab_target,
            **seeds.targets(
                lab_target,
                file_repository=f"file://{base}/repo",
                s3_bucket="dr-lab",
                evidence_bucket="dr-lab-evidence",
                base_dir=base,
            ),
        },
    }


def test_seed_targets_validate_with_the_runbooks_objectives() -> None:
    base = Path("/tmp/lab")
    data = _lab_config(base)
    lab_before = yaml.safe_dump(data["targets"]["lab"])
    config = parse_config(data)
    assert yaml.safe_dump(data["targets"]["lab"]) == lab_before  # the lab's target untouched
    for s in seeds.SEEDS:
        target: Target = config.target(s.target)
        objectives = config.objectives(s.target)
        assert (objectives.rto_seconds, objectives.rpo_seconds) == (s.rto_seconds, s.rpo_seconds)
        assert target.production is False and target.drills_allowed is True
        assert target.postgres.databases == [s.database]
        assert target.postgres.heartbeat_db == "app"
        assert target.backup.wal_archive == f"file://{base}/wal"
        scheme = "s3://dr-lab/seeds" if s.storage == "s3" else f"file://{base}/repo/seeds"
        assert target.backup.repository == scheme
        assert {q.database for q in target.validation_queries} == {s.database}
        assert len(target.validation_queries) >= 3
        assert target.slack_channel == s.slack_channel
        assert s.source in target.description
    # Objectives equal to a default tier use it; the others get a tier of their own.
    assert config.target("bsc-dex").tier == "critical"
    assert seeds.tiers().keys() == {"seed-001", "seed-002", "seed-003", "seed-004"}
    for name in seeds.tiers():
        assert name not in DEFAULT_TIERS


def test_seed_001_declares_its_cron_dumps_as_foreign_backups() -> None:
    base = Path("/tmp/lab")
    config = parse_config(_lab_config(base))
    foreign = config.target("bun-trading").backup.foreign
    assert [(f.location, f.pattern, f.database) for f in foreign] == [
        (f"file://{base}/seed-backups", "db_backup_*.sql.gz", "bun_trading")
    ]
    assert all(not config.target(s.target).backup.foreign for s in seeds.SEEDS if s.number != "001")


def test_deadlines_only_where_the_runbook_names_them() -> None:
    config = parse_config(_lab_config(Path("/tmp/lab")))
    deadlines = {
        s.target: [(d.name, d.hours) for d in config.target(s.target).regulatory_deadlines]
        for s in seeds.SEEDS
    }
    assert deadlines["bsc-dex"] == [("GDPR notification", 72)]  # 000 line 597
    assert deadlines["fusion-bridge"] == [("Regulatory notification (compliance, legal)", 24)]
    # The others keep the config's default.
    assert deadlines["bt2c"] == [("GDPR notification", 72)]


def test_annotate_cites_the_runbook_on_tier_and_target_lines() -> None:
    data = _lab_config(Path("/tmp/lab"))
    text = seeds.annotate(yaml.safe_dump(data, sort_keys=False))
    lines = text.splitlines()
    for s in seeds.SEEDS:
        (target_line,) = [ln for ln in lines if ln.startswith(f"  {s.target}:")]
        assert f"# seed {s.number}" in target_line
        if s.custom_tier:
            (tier_line,) = [ln for ln in lines if ln.startswith(f"  {s.tier}:")]
            assert f"# {s.source_path}" in tier_line
    # Comments do not change what the YAML says.
    assert yaml.safe_load(text) == data


def test_seed_sql_files_exist_and_markers_differ() -> None:
    markers = {seeds.dataset_marker(s) for s in seeds.SEEDS}
    assert len(markers) == len(seeds.SEEDS)
    for s in seeds.SEEDS:
        text = s.sql_file.read_text()
        assert f"Seed {s.number}" in text.splitlines()[0]
        assert "dr_heartbeat" not in text  # the heartbeat lives in the lab's app database
