"""Page checksums: ``pg_checksums --check`` on a stopped copy, and (drills) damaging a page."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import PreconditionError, UnsafeTargetError, redact
from dr.localexec import chown_for_server, run_as_server, server_tool, tool_failed
from dr.tasking import dr_task
from tasks.pitr.base_backup import file_sha256
from tasks.pitr.base_restore import prepare_dir
from tasks.pitr.cluster import (
    cluster_is_running,
    control_data,
    free_port,
    pg_ctl,
    server_log_file,
    system_identifier,
)
from tasks.pitr.recovery import COPY_OVERRIDES

log = logging.getLogger(__name__)


#: PostgreSQL's page size (``BLCKSZ``); every build this project meets uses the default.
BLOCK_SIZE = 8192


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BadBlock(_Model):
    """One page whose checksum does not match (as ``pg_checksums --check`` reports it)."""

    path: str
    relpath: str = Field(description="Relative to the data directory, e.g. base/16384/16397.")
    block: int
    detail: str = ""


class ChecksumReport(_Model):
    """The answer of ``pg_checksums --check`` on a stopped data directory."""

    data_dir: str
    ok: bool
    files_scanned: int | None = None
    blocks_scanned: int | None = None
    bad_checksums: int = 0
    bad_blocks: list[BadBlock] = Field(default_factory=list)
    seconds: float = 0.0

    def locators(self) -> list[str]:
        """Relation file locators (``base/<db oid>/<relfilenode>``) holding bad pages."""
        out = []
        for b in self.bad_blocks:
            loc = re.sub(r"\.\d+$", "", b.relpath)
            if loc not in out:
                out.append(loc)
        return out


_BAD_BLOCK_RE = re.compile(r'checksum verification failed in file "([^"]+)", block (\d+):?\s*(.*)$')


def parse_checksums_output(data_dir: str, stdout: str, stderr: str) -> ChecksumReport:
    """Parse ``pg_checksums --check`` output (summary on stdout, failures on stderr)."""

    def number(label: str) -> int | None:
        match = re.search(rf"^{label}:\s*(\d+)", stdout, re.M)
        return int(match[1]) if match else None

    prefix = str(Path(data_dir)).rstrip("/") + "/"
    bad = []
    for line in stderr.splitlines():
        match = _BAD_BLOCK_RE.search(line)
        if match:
            path = match[1]
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            bad.append(BadBlock(path=path, relpath=rel, block=int(match[2]), detail=match[3]))
    count = number("Bad checksums") or len(bad)
    return ChecksumReport(
        data_dir=data_dir,
        ok=count == 0 and not bad,
        files_scanned=number("Files scanned"),
        blocks_scanned=number("Blocks scanned"),
        bad_checksums=count,
        bad_blocks=bad,
    )


def check_checksums(data_dir: str | Path, *, bin_dir: str | Path | None = None) -> ChecksumReport:
    """Verify every data page's checksum with ``pg_checksums --check`` (server stopped).

    Why a stopped copy: pg_checksums refuses a running cluster, and reading pages through a
    live server (``ignore_checksum_failure``) is unsafe (shared/lab/postgres.md).

    Raises:
        UnsafeTargetError: the server on ``data_dir`` is running.
        PostgresError: the tool could not check (checksums disabled, not shut down cleanly).
    """
    data = Path(data_dir)
    if cluster_is_running(data):
        raise UnsafeTargetError(f"{data} is running: pg_checksums needs a stopped cluster")
    t0 = time.perf_counter()
    proc = run_as_server([server_tool("pg_checksums", bin_dir), "--check", "-D", data])
    report = parse_checksums_output(str(data), proc.stdout or "", proc.stderr or "")
    report.seconds = round(time.perf_counter() - t0, 3)
    if proc.returncode != 0 and report.ok:
        raise tool_failed("pg_checksums", proc)
    log.info(
        "pg_checksums %s: %s (%s blocks, %d bad)",
        data,
        "ok" if report.ok else "FAILED",
        report.blocks_scanned,
        report.bad_checksums,
    )
    return report


def make_stopped_copy(
    conninfo: str,
    dest_dir: str | Path,
    *,
    bin_dir: str | Path | None = None,
    password: str | None = None,
    timeout_seconds: float = 600,
) -> dict[str, Any]:
    """A cleanly stopped physical copy of a running server, to check or to damage in a drill.

    ``pg_basebackup -Fp -X stream`` (without its own checksum verification: finding bad
    pages is the next step's job), then the copy is started once on a free port with
    archiving off (crash recovery to its consistent point) and stopped cleanly, so
    ``pg_checksums`` accepts it. Nothing is written to the source.

    Returns:
        ``{"data_dir", "seconds", "system_identifier"}``.

    Raises:
        UnsafeTargetError: ``dest_dir`` is not empty.
        PostgresError: the copy or its start failed.
    """
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise UnsafeTargetError(f"{dest} is not empty; refusing to copy into it")
    prepare_dir(dest.parent)
    dest.mkdir(mode=0o700, exist_ok=True)
    chown_for_server(dest)
    t0 = time.perf_counter()
    env = {"PGPASSWORD": password} if password else None
    proc = run_as_server(
        [
            server_tool("pg_basebackup", bin_dir),
            "-D",
            dest,
            "-Fp",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-verify-checksums",
            "--no-password",
            f"--dbname={conninfo}",
        ],
        timeout=timeout_seconds,
        env=env,
    )
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise tool_failed("pg_basebackup", proc)
    _configure_copy(dest)
    _start_and_stop_copy(dest, bin_dir)
    control = control_data(dest, bin_dir=bin_dir)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("stopped copy of %s in %s (%.1f s)", redact(conninfo), dest, seconds)
    return {
        "data_dir": str(dest),
        "seconds": seconds,
        "system_identifier": system_identifier(control),
    }


def _configure_copy(dest: Path) -> None:
    """Settings for the copy's one start: a free port, its own socket, archiving off."""
    port = free_port()
    socket_dir = dest.parent / f"{dest.name}.sock"
    socket_dir.mkdir(exist_ok=True)
    chown_for_server(socket_dir)
    settings = dict(COPY_OVERRIDES)
    settings.update(
        {
            "port": str(port),
            "unix_socket_directories": f"'{socket_dir}'",
            "cluster_name": "'dr-copy'",
            "restore_command": "''",
        }
    )
    auto = dest / "postgresql.auto.conf"
    previous = auto.read_text() if auto.exists() else ""
    auto.write_text(
        previous
        + "\n# stopped copy by DR pipelines\n"
        + "".join(f"{k} = {v}\n" for k, v in settings.items())
    )
    (dest / "standby.signal").unlink(missing_ok=True)
    chown_for_server(dest)


def _start_and_stop_copy(dest: Path, bin_dir: str | Path | None) -> None:
    """Start once (crash recovery to the consistent point) and stop cleanly."""
    log_file = server_log_file(dest, fresh=True)
    started = pg_ctl("start", dest, bin_dir=bin_dir, extra=["-w", "-t", "120", "-l", str(log_file)])
    if started.returncode != 0:
        raise tool_failed("pg_ctl start (copy)", started)
    stopped = pg_ctl("stop", dest, bin_dir=bin_dir, extra=["-m", "fast", "-w", "-t", "120"])
    if stopped.returncode != 0:
        raise tool_failed("pg_ctl stop (copy)", stopped)


def damage_heap_page(
    data_dir: str | Path, relpath: str, *, block: int | None = None, count: int = 16
) -> dict[str, Any]:
    """Drill only: flip bytes in one heap page of a STOPPED COPY, as bit rot would.

    Refuses a running server, and a folder that is not a copy made by
    :func:`make_stopped_copy`: the live cluster's files are never touched.

    Args:
        data_dir: the stopped copy.
        relpath: relation file relative to it (``base/16384/16397``).
        block: page number in that file (default: the middle page).
        count: bytes to invert, from the middle of the page.

    Returns:
        ``{"path", "block", "offset", "count", "sha256_before", "sha256_after"}``.

    Raises:
        UnsafeTargetError: the server runs, or the folder is not a stopped copy.
        PreconditionError: the relation file is empty or the block is beyond it.
    """
    data = Path(data_dir)
    auto = data / "postgresql.auto.conf"
    if not auto.exists() or "stopped copy by DR pipelines" not in auto.read_text(errors="replace"):
        raise UnsafeTargetError(f"refusing to damage {data}: not a stopped copy made for a drill")
    if cluster_is_running(data):
        raise UnsafeTargetError(f"refusing to damage {data}: its server is running")
    path = data / relpath
    size = path.stat().st_size
    pages = size // BLOCK_SIZE
    if pages == 0:
        raise PreconditionError(f"{path} holds no page to damage")
    page = pages // 2 if block is None else block
    if not 0 <= page < pages:
        raise PreconditionError(f"block {page} is beyond {path} ({pages} pages)")
    offset = page * BLOCK_SIZE + BLOCK_SIZE // 2
    before = file_sha256(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in original))
        fh.flush()
        os.fsync(fh.fileno())
    after = file_sha256(path)
    log.warning("drill: inverted %d byte(s) of %s at block %d (a stopped copy)", count, path, page)
    return {
        "path": str(path),
        "block": page,
        "offset": offset,
        "count": count,
        "sha256_before": before,
        "sha256_after": after,
    }


check_checksums_task = dr_task(check_checksums, name="pitr-check-checksums", retries=0)
make_stopped_copy_task = dr_task(make_stopped_copy, name="pitr-make-stopped-copy", retries=0)
damage_heap_page_task = dr_task(
    damage_heap_page, name="pitr-damage-heap-page", retries=0, timeout_seconds=120
)
