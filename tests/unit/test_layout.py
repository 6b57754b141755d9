"""The repository keeps the layout of docs/architecture.md (scripts/check_layout.py, strict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tree_keeps_every_layout_rule() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_layout.py"), "--root", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
