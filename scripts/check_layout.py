#!/usr/bin/env python3
"""Check the layout rules of docs/architecture.md (issue 11); exit 1 and print each violation.

Rules, over the packages dr, cli, tasks, flows, deployments and lab (not tests, bench):

- ``size``: no module over 500 lines;
- ``function``: no function over 80 lines, decorators included (:data:`LONG_FUNCTIONS`
  names the few whose body is a literal table of data, each with its reason);
- ``tasks``: a module of ``tasks/<system>/`` imports ``dr``, its own package, and of
  another system only its ``client`` module (``tasks.<other>.client``);
- ``dr``: ``dr/`` imports nothing above it (cli, flows, tasks, lab, deployments);
- ``scenario``: a scenario package under ``flows/`` never imports another scenario
  (what two share lives in ``flows/common`` or ``flows/lifecycle``);
- ``connect``: ``psycopg.connect`` only in ``tasks/postgres/client.py`` and in the
  modules of :data:`CONNECT_ALLOWED`.

Usage: ``python scripts/check_layout.py [--report] [--root DIR]``. ``--report`` prints the
violations and exits 0 (while the layout is being moved); the default is strict.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCOPE = ("dr", "cli", "tasks", "flows", "deployments", "lab")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
ABOVE_DR = ("cli", "flows", "tasks", "lab", "deployments")
#: Packages under flows/ that every scenario shares (not scenarios themselves).
SHARED_FLOW_PACKAGES = frozenset({"common", "lifecycle"})
POSTGRES_CLIENT = "tasks/postgres/client.py"

#: "path::function" -> why it may be longer than MAX_FUNCTION_LINES (a literal data table).
LONG_FUNCTIONS: dict[str, str] = {}

#: Modules besides tasks/postgres/client.py that may call psycopg.connect, and why.
CONNECT_ALLOWED: dict[str, str] = {
    "lab/db.py": "the lab connects to the servers it starts, before any dr.yaml exists",
    "lab/heartbeat_app.py": "the lab's application: a separate program, not part of dr",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule at one place."""

    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def python_files(root: Path) -> Iterator[Path]:
    """Every ``.py`` file of the checked packages, in a stable order."""
    for top in SCOPE:
        folder = root / top
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(rel: Path) -> str:
    """``tasks/postgres/client.py`` -> ``tasks.postgres.client`` (a package: its folder)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.Module, rel: Path) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, names) of every import, relative ones resolved.

    ``import a.b`` gives ``("a.b", ())``; ``from a import b, c`` gives ``("a", ("b", "c"))``.
    Imports inside functions count too.
    """
    package = module_name(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target, tuple(alias.name for alias in node.names)


def reached(module: str, names: tuple[str, ...]) -> list[list[str]]:
    """The module paths an import reaches: ``from tasks import a, b`` reaches tasks.a, tasks.b."""
    parts = module.split(".")
    if len(parts) == 1 and names:
        return [[*parts, name] for name in names]
    if len(parts) == 2 and names and all(name == "client" for name in names):
        return [[*parts, "client"]]
    return [parts]


def check_size(rel: str, text: str) -> list[Violation]:
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        return [Violation(rel, 1, "size", f"{lines} lines (max {MAX_MODULE_LINES})")]
    return []


def check_functions(rel: str, tree: ast.Module) -> list[Violation]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        length = (node.end_lineno or node.lineno) - first + 1
        if length > MAX_FUNCTION_LINES and f"{rel}::{node.name}" not in LONG_FUNCTIONS:
            found.append(
                Violation(
                    rel,
                    node.lineno,
                    "function",
                    f"{node.name} is {length} lines (max {MAX_FUNCTION_LINES})",
                )
            )
    return found


def check_imports(rel: Path, tree: ast.Module) -> list[Violation]:
    """The import rules: tasks across systems, dr upwards."""
    found = []
    parts = rel.parts
    for line, module, names in imports_of(tree, rel):
        for path in reached(module, names):
            target = ".".join(path)
            if parts[0] == "dr" and path[0] in ABOVE_DR:
                found.append(Violation(str(rel), line, "dr", f"dr/ imports {target}"))
            if parts[0] != "tasks" or path[0] != "tasks" or len(path) < 2:
                continue
            own = Path(parts[1]).stem if len(parts) > 1 else ""
            if path[1] != own and (len(path) < 3 or path[2] != "client"):
                message = f"imports {target} (of another system only tasks.{path[1]}.client)"
                found.append(Violation(str(rel), line, "tasks", message))
    return found


def scenario_packages(root: Path) -> set[str]:
    """The scenario packages: folders of flows/ with an __init__.py, shared ones excluded."""
    flows = root / "flows"
    if not flows.is_dir():
        return set()
    return {
        p.name
        for p in flows.iterdir()
        if (p / "__init__.py").is_file() and p.name not in SHARED_FLOW_PACKAGES
    }


def check_scenarios(rel: Path, tree: ast.Module, scenarios: set[str]) -> list[Violation]:
    parts = rel.parts
    if parts[0] != "flows" or len(parts) < 3 or parts[1] not in scenarios:
        return []
    own = parts[1]
    found = []
    for line, module, names in imports_of(tree, rel):
        for path in reached(module, names):
            if path[0] == "flows" and len(path) > 1 and path[1] in scenarios - {own}:
                message = f"{own} imports scenario {path[1]}"
                found.append(Violation(str(rel), line, "scenario", message))
    return found


def _is_psycopg_connect(node: ast.AST) -> bool:
    """psycopg.connect / psycopg.Connection.connect / psycopg.AsyncConnection.connect."""
    if not isinstance(node, ast.Attribute) or node.attr != "connect":
        return False
    value = node.value
    if isinstance(value, ast.Name):
        return value.id == "psycopg"
    return (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and value.value.id == "psycopg"
    )


def check_connect(rel: str, tree: ast.Module) -> list[Violation]:
    if rel == POSTGRES_CLIENT or rel in CONNECT_ALLOWED:
        return []
    found = []
    for node in ast.walk(tree):
        if _is_psycopg_connect(node):
            found.append(Violation(rel, node.lineno, "connect", "psycopg.connect"))
        elif isinstance(node, ast.ImportFrom) and node.module == "psycopg":
            if any(alias.name == "connect" for alias in node.names):
                found.append(Violation(rel, node.lineno, "connect", "from psycopg import connect"))
    return found


def check(root: Path) -> list[Violation]:
    """Every violation under ``root`` (a repository checkout), in file order."""
    scenarios = scenario_packages(root)
    found: list[Violation] = []
    for path in python_files(root):
        rel = path.relative_to(root)
        text = path.read_text()
        try:
            tree = ast.parse(text, filename=str(rel))
        except SyntaxError as exc:
            found.append(Violation(str(rel), exc.lineno or 1, "syntax", str(exc.msg)))
            continue
        found += check_size(str(rel), text)
        found += check_functions(str(rel), tree)
        found += check_imports(rel, tree)
        found += check_scenarios(rel, tree, scenarios)
        found += check_connect(str(rel), tree)
    return found


def main(argv: list[str] | None = None) -> int:
    """Print every violation; 1 when there is one (0 with ``--report``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--report", action="store_true", help="print only; always exit 0")
    args = parser.parse_args(argv)
    violations = check(args.root)
    for v in violations:
        print(v)
    print(f"{len(violations)} layout violation(s)", file=sys.stderr)
    return 0 if args.report or not violations else 1


if __name__ == "__main__":
    sys.exit(main())
