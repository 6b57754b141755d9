"""``dr lab down``: stop what the lab started (checked by PID and command line), remove it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from dr.errors import PreconditionError
from lab import procs
from lab.app import engine_request
from lab.monitoring_chain import PROCESS_NAMES as MONITORING_PROCESSES
from lab.pgcluster import Cluster
from lab.state import LAB_ENTRIES, default_base_dir, load_state, locked

log = logging.getLogger(__name__)


def _rmtree(path: Path) -> None:
    def onerror(func: Callable[..., Any], target: str, _exc: Any) -> None:
        # vfs layers hold read-only folders: make them writable, then retry.
        with contextlib.suppress(OSError):
            parent = os.path.dirname(target)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            os.chmod(target, os.stat(target).st_mode | stat.S_IWUSR)
        with contextlib.suppress(FileNotFoundError):
            func(target)

    shutil.rmtree(path, onerror=onerror)


def check_lab_folder(base_dir: Path) -> None:
    """Refuse to adopt or remove a folder that holds anything but a lab.

    Raises:
        PreconditionError: the folder has no ``state.json`` and holds foreign entries.
    """
    if not base_dir.is_dir() or (base_dir / "state.json").exists():
        return
    foreign = sorted(p.name for p in base_dir.iterdir() if p.name not in LAB_ENTRIES)
    if foreign:
        raise PreconditionError(
            f"{base_dir} is not a lab folder (it holds {', '.join(foreign[:5])}): "
            "choose an empty or new folder with --dir"
        )


def _remove_lab_containers(base_url: str) -> int:
    """Force-remove the containers labelled ``dr-lab=1`` on the lab's own engine."""
    query = urllib.parse.quote(json.dumps({"label": ["dr-lab=1"]}))
    code, listed = engine_request(base_url, "GET", f"/containers/json?all=true&filters={query}")
    removed = 0
    for item in listed if code == 200 and isinstance(listed, list) else []:
        rc, _ = engine_request(base_url, "DELETE", f"/containers/{item['Id']}?force=true&t=0")
        removed += rc in (200, 204)
    return removed


def down(base_dir: Path | None = None, *, console: Console | None = None) -> None:
    """Stop everything the lab started and remove its folder.

    Only the lab's own things are touched: processes by the PIDs in ``state.json`` (after
    checking their start time and command line), containers labelled ``dr-lab=1`` on the
    lab's own Podman service, PostgreSQL servers whose data directory is in the folder.
    Anything else still carrying the lab's ``DR_LAB_OWNER`` marker is stopped last.
    Components stop in parallel.

    Args:
        base_dir: the lab folder (default :func:`default_base_dir`).
        console: where progress goes (default: standard error).

    Raises:
        PreconditionError: the folder is not a lab's (it is left untouched).
    """
    base_dir = Path(base_dir or default_base_dir()).absolute()
    out = console or Console(stderr=True)
    if not base_dir.exists():
        out.print(f"no lab in {base_dir}")
        return
    check_lab_folder(base_dir)
    state = load_state(base_dir)
    started = time.monotonic()

    def stop_podman() -> str | None:
        podman_dir = base_dir / "podman"
        if not (podman_dir / "storage.conf").exists():
            return None
        from lab import podman

        service = podman.PodmanService(podman_dir)
        removed = _remove_lab_containers(service.base_url) if service.running() else 0
        service.stop()
        return f"podman service stopped ({removed} lab container(s) removed)"

    def stop_process(name: str) -> str | None:
        if state is not None and procs.kill(state.processes.get(name)):
            return f"{name} stopped"
        return None

    def stop_cluster(data_dir: Path) -> str | None:
        cluster = Cluster(data_dir, 1, name=data_dir.name)
        return f"postgres {data_dir.name} stopped" if cluster.stop("immediate") else None

    with locked(base_dir):
        jobs: list[Callable[[], str | None]] = [stop_podman]
        jobs += [
            lambda n=name: stop_process(n)
            for name in ("app", "api", "redis", "prefect", "moto", "slack", *MONITORING_PROCESSES)
        ]
        pg_dir = base_dir / "pg"
        if pg_dir.is_dir():
            jobs += [
                lambda d=d: stop_cluster(d)
                for d in sorted(pg_dir.iterdir())
                if (d / "PG_VERSION").exists()
            ]
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="lab-down") as pool:
            futures = [pool.submit(job) for job in jobs]
        for future in futures:
            try:
                said = future.result()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest, then report
                out.print(f"[yellow]![/] {exc}")
                continue
            if said:
                out.print(f"[green]✓[/] {said}")
        for pid in procs.owner_pids(base_dir):
            log.warning("stopping leftover lab process %s: %s", pid, procs.cmdline(pid)[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _rmtree(base_dir)
    out.print(f"[bold green]lab down[/] in {time.monotonic() - started:.1f} s: {base_dir} removed")
