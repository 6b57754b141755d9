"""scripts/check_layout.py on small synthetic trees: each rule fires, a clean tree passes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "check_layout.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = module
    spec.loader.exec_module(module)
    return module


layout = _load()

CLEAN = {
    "dr/__init__.py": "",
    "dr/config.py": "import os\nfrom dr.errors import ConfigError\n",
    "dr/errors.py": "class ConfigError(Exception):\n    pass\n",
    "cli/main.py": "from flows.failover.flow import run\nfrom lab.up import up\n",
    "tasks/__init__.py": "",
    "tasks/postgres/__init__.py": "",
    "tasks/postgres/client.py": "import psycopg\n\n\ndef connect():\n    return psycopg.connect('')\n",
    "tasks/postgres/admin.py": "from tasks.postgres.client import connect\nfrom . import client\n",
    "tasks/history/__init__.py": "",
    "tasks/history/store.py": (
        "from dr.errors import ConfigError\n"
        "from tasks.history import model\n"
        "from tasks.postgres.client import connect\n"
        "from tasks.postgres import client\n"
        "import tasks.postgres.client\n"
    ),
    "tasks/history/model.py": "X = 1\n",
    "flows/__init__.py": "",
    "flows/common/__init__.py": "",
    "flows/lifecycle/__init__.py": "",
    "flows/failover/__init__.py": "",
    "flows/failover/flow.py": (
        "from flows.common import systems\nfrom flows.lifecycle import run\n"
        "from flows.failover import steps\nfrom tasks.postgres import admin\n"
    ),
    "flows/failback/__init__.py": "",
    "flows/failback/flow.py": "from flows.common.systems import Systems\n",
    "lab/db.py": "import psycopg\n\n\ndef connect():\n    return psycopg.connect('')\n",
    "tests/test_x.py": "import psycopg\npsycopg.connect('')\n" + "x = 1\n" * 600,
    "bench/b.py": "from flows.failover import flow\nfrom flows.failback import flow as f\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def rules(root: Path) -> list[tuple[str, str]]:
    return [(v.rule, v.path) for v in layout.check(root)]


def test_clean_tree_passes(tmp_path: Path) -> None:
    root = write_tree(tmp_path, CLEAN)
    assert layout.check(root) == []
    assert layout.main(["--root", str(root)]) == 0


def test_module_over_500_lines(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {**CLEAN, "lab/big.py": "x = 1\n" * 501})
    assert rules(root) == [("size", "lab/big.py")]
    write_tree(tmp_path, {"lab/big.py": "x = 1\n" * 500})
    assert rules(root) == []


def _function(lines: int, decorators: int = 0) -> str:
    head = "@staticmethod\n" * decorators + "def long():\n"
    return head + "    x = 1\n" * (lines - 1 - decorators)


def test_function_over_80_lines_decorators_counted(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {**CLEAN, "cli/long.py": _function(80)})
    assert rules(root) == []
    write_tree(tmp_path, {"cli/long.py": _function(81, decorators=2)})
    found = layout.check(root)
    assert [(v.rule, v.path, v.line) for v in found] == [("function", "cli/long.py", 3)]
    assert "long is 81 lines" in str(found[0])


def test_long_function_whitelisted_with_reason(tmp_path: Path, monkeypatch) -> None:
    root = write_tree(tmp_path, {**CLEAN, "lab/table.py": _function(120)})
    monkeypatch.setitem(layout.LONG_FUNCTIONS, "lab/table.py::long", "a literal table")
    assert rules(root) == []


@pytest.mark.parametrize(
    "source",
    [
        "from tasks.postgres.admin import fence\n",
        "from tasks.postgres import admin\n",
        "from tasks import postgres\n",
        "import tasks.postgres\n",
        "def f():\n    from tasks.storage.s3 import S3\n",
    ],
)
def test_tasks_import_of_another_system_beyond_its_client(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {**CLEAN, "tasks/history/bad.py": source})
    assert rules(root) == [("tasks", "tasks/history/bad.py")]


def test_flat_tasks_module_is_its_own_system(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {**CLEAN, "tasks/recovery.py": "from tasks import postgres\n"})
    assert rules(root) == [("tasks", "tasks/recovery.py")]


@pytest.mark.parametrize(
    "source",
    [
        "from flows.failover.flow import run\n",
        "import cli.main\n",
        "def f():\n    from lab import up\n",
        "from tasks.postgres.client import connect\n",
        "from deployments import deploy\n",
    ],
)
def test_dr_importing_above_it(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {**CLEAN, "dr/bad.py": source})
    assert rules(root) == [("dr", "dr/bad.py")]


@pytest.mark.parametrize(
    "source",
    [
        "from flows.failover.flow import run\n",
        "from flows.failover import steps\n",
        "from flows import failover\n",
        "from ..failover import flow\n",
    ],
)
def test_scenario_importing_another_scenario(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {**CLEAN, "flows/failback/bad.py": source})
    assert rules(root) == [("scenario", "flows/failback/bad.py")]


@pytest.mark.parametrize(
    "source",
    [
        "import psycopg\n\npsycopg.connect('')\n",
        "import psycopg\n\npsycopg.Connection.connect('')\n",
        "from psycopg import connect\n",
    ],
)
def test_psycopg_connect_outside_the_postgres_client(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {**CLEAN, "tasks/history/store.py": source})
    assert rules(root) == [("connect", "tasks/history/store.py")]
    write_tree(tmp_path, {"tasks/history/store.py": "", "lab/other.py": source})
    assert rules(root) == [("connect", "lab/other.py")]


def test_strict_exits_1_and_report_exits_0(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {**CLEAN, "dr/bad.py": "import lab.up\n"})
    argv = [sys.executable, str(SCRIPT), "--root", str(root)]
    strict = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert strict.returncode == 1
    assert strict.stdout == "dr/bad.py:1: dr: dr/ imports lab.up\n"
    report = subprocess.run([*argv, "--report"], capture_output=True, text=True, check=False)
    assert report.returncode == 0
    assert report.stdout == strict.stdout
