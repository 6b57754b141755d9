"""The warm interpreter runs the worker's main script once, not once per forked run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_main_script(tmp_path: Path, preload: tuple[str, ...]) -> tuple[str, str]:
    counter = tmp_path / "runs"
    script = tmp_path / "worker_main.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, os, sys
            sys.path.insert(0, {str(REPO)!r})
            with open({str(counter)!r}, "a") as f:
                f.write("x")

            def frozen():
                sys.exit(0 if gc.get_freeze_count() > 0 else 7)

            if __name__ == "__main__":
                from deployments.dispatch.warm import WarmInterpreter

                warm = WarmInterpreter(preload={preload!r})
                warm.start()
                codes = []
                for _ in range(3):
                    p = warm._ctx.Process(target=frozen)
                    p.start()
                    p.join()
                    codes.append(p.exitcode)
                print(codes)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    return counter.read_text(), done.stdout.strip()


def test_forks_do_not_run_the_main_script_again_and_find_the_heap_frozen(tmp_path: Path) -> None:
    runs, codes = _run_main_script(tmp_path, ("json", "deployments.dispatch.preload"))
    assert runs == "xx", "the worker and the forkserver; no fork ran it (check + 3 runs)"
    assert codes == "[0, 0, 0]", "each fork finds the preloaded objects frozen"


def test_without_the_preload_every_fork_runs_it(tmp_path: Path) -> None:
    """The cost the preload removes (the control: this is what multiprocessing does)."""
    runs, codes = _run_main_script(tmp_path, ("json",))
    assert runs == "x" * 5 and codes == "[7, 7, 7]"
