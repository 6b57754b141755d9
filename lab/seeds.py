"""The five runbooks of ``shared/seeds`` as targets of the lab, each with its own database.

Every team's markdown runbook becomes a target in the lab's ``dr.yaml``, named after its
system, so each scenario runs against a database shaped like that system's data:

- 000 ``bsc-dex``, database ``bsc_dex``: tier ``critical`` (RTO 15 min, RPO 5 min);
- 001 ``bun-trading``, ``bun_trading``: ``seed-001`` (RTO 15 min, RPO 1 h);
- 002 ``fusion-bridge``, ``fusion_bitcoin``: ``seed-002`` (RTO 4 h, RPO 1 h);
- 003 ``cryptofunk``, ``cryptofunk``: ``seed-003`` (RTO 30 min, RPO 5 min);
- 004 ``bt2c``, ``bt2c``: ``seed-004`` (RTO 30 min, RPO 5 min).

What one machine can hold of each system: its PostgreSQL data (``lab/seeds/<db>.sql``, a
few thousand rows generated in SQL, loaded in one transaction) on the lab's primary, with
the lab's streaming replica, WAL archive and application container standing in for the
system's own; its backups in the lab's file repository or in the lab's S3 (moto) where the
runbook keeps them in S3; its validation queries taken from the runbook's verification
steps; its Slack channel and regulatory deadlines where the runbook names them. Seed 001's
cron-made dumps (``backups/db_backup_*.sql.gz``) are played by a gzip'd plain ``pg_dump``
in ``<lab>/seed-backups/``, declared as ``backup.foreign`` so the backup-verification drill
proves backups it did not make. ``docs/runbooks.md`` maps every runbook step to what runs
it, and lists what does not exist on one machine.

The lab's heartbeat lives in database ``app``: every seed target names it as its
``heartbeat_database``, so drills measure data loss on the cluster the seeds share, and the
lab's app container (the writer every failover repoints) stands in for the seed's services.

This module does no I/O at import. :func:`ensure` is what ``dr lab up`` and ``heal`` call.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from lab.db import connect
from lab.host import ClusterError
from lab.pgcluster import Cluster
from lab.seed_catalogue import SEED_DIR, SEEDS, SQL_DIR, Seed  # noqa: F401 - re-exported

__all__ = [
    "FOREIGN_FOLDER",
    "FOREIGN_PATTERN",
    "FOREIGN_REFRESH_SECONDS",
    "SEEDS",
    "SEED_DIR",
    "Seed",
    "annotate",
    "dataset_marker",
    "ensure",
    "ensure_databases",
    "ensure_foreign_dump",
    "seed",
    "targets",
    "tiers",
]

log = logging.getLogger(__name__)

#: Where seed 001's cron-made dumps are played, inside the lab folder.
FOREIGN_FOLDER = "seed-backups"
#: Seed 001's dump names (001 lines 30 and 121: ``backups/db_backup_*.sql.gz``).
FOREIGN_PATTERN = "db_backup_*.sql.gz"
#: ``up``/``heal`` take a new dump when the newest is older than this. Seed 001's RPO is
#: 1 h ("last backup"): a quarter of it leaves a drill right after ``up`` well inside, and a
#: dump left alone for over an hour turns the drill's age check red, as a dead cron should.
FOREIGN_REFRESH_SECONDS = 15 * 60
#: Dumps kept in the folder (the oldest beyond these are removed).
FOREIGN_KEEP = 3
#: S3 prefixes under the lab's buckets for the seeds that keep their backups in S3.
S3_PREFIX = "seeds"
#: Folder under the lab's file repository for the others.
FILE_PREFIX = "seeds"
#: The lab's database holding ``dr_heartbeat`` (written by the lab's app).
HEARTBEAT_DATABASE = "app"


def seed(target: str) -> Seed:
    """The seed behind a target name (``bun-trading``).

    Raises:
        KeyError: no seed has that target.
    """
    for s in SEEDS:
        if s.target == target:
            return s
    raise KeyError(target)


# --------------------------------------------------------------------------- dr.yaml


def tiers() -> dict[str, dict[str, float]]:
    """The custom tiers the seeds need (runbook objectives that differ from the defaults)."""
    return {
        s.tier: {"rto_seconds": s.rto_seconds, "rpo_seconds": s.rpo_seconds}
        for s in SEEDS
        if s.custom_tier
    }


def targets(
    lab_target: Mapping[str, Any],
    *,
    file_repository: str,
    s3_bucket: str,
    evidence_bucket: str,
    base_dir: Path,
) -> dict[str, dict[str, Any]]:
    """One target per seed, built on the lab's own target.

    What the seed targets share with ``lab_target``: the PostgreSQL nodes, the WAL archive
    and the services (the lab's app container stands in for the system's own). What is the
    seed's: database, tier, backup repository, validation queries, Slack channel, deadlines.

    Args:
        lab_target: the lab's ``lab`` target as a mapping (it is not modified).
        file_repository: the lab's ``file://`` repository.
        s3_bucket: the lab's backup bucket in moto.
        evidence_bucket: the lab's Object Lock bucket for breach evidence.
        base_dir: the lab folder (seed 001's dumps live in ``<base_dir>/seed-backups``).

    Returns:
        ``{target name: target mapping}``, valid under :class:`dr.config.Target`.
    """
    out: dict[str, dict[str, Any]] = {}
    for s in SEEDS:
        t = copy.deepcopy(dict(lab_target))
        t["tier"] = s.tier
        t["description"] = (
            f"Seed {s.number} ({s.source_path}), {s.system}. Objectives: {s.objectives_cite}."
        )
        t["production"] = False
        t["drills_allowed"] = True
        pg = t["postgres"]
        pg["databases"] = [s.database]
        pg["heartbeat_database"] = HEARTBEAT_DATABASE
        repository = (
            f"s3://{s3_bucket}/{S3_PREFIX}"
            if s.storage == "s3"
            else f"{file_repository.rstrip('/')}/{FILE_PREFIX}"
        )
        backup: dict[str, Any] = {"repository": repository}
        if "wal_archive" in t.get("backup", {}):
            backup["wal_archive"] = t["backup"]["wal_archive"]
        if s.foreign_dumps:
            backup["foreign"] = [
                {
                    "location": f"file://{base_dir / FOREIGN_FOLDER}",
                    "pattern": FOREIGN_PATTERN,
                    "database": s.database,
                }
            ]
        t["backup"] = backup
        t["health_checks"] = {
            # The lab's api stands in for the seed's own HTTP health endpoint (curl .../health).
            "http": copy.deepcopy(lab_target.get("health_checks", {}).get("http", [])),
            "sql": [{"name": n, "sql": q, "database": s.database} for n, q in s.health_sql],
        }
        t["validation_queries"] = [
            {"name": n, "sql": q, "database": s.database, "expect": expect}
            for n, expect, q in s.validation
        ]
        t["slack_channel"] = s.slack_channel
        t["evidence_repository"] = f"s3://{evidence_bucket}/{s.target}"
        if s.deadlines is not None:
            t["regulatory_deadlines"] = [{"name": n, "hours": h} for n, h in s.deadlines]
        else:
            t.pop("regulatory_deadlines", None)
        out[s.target] = t
    return out


def annotate(yaml_text: str) -> str:
    """Cite the runbook behind every seed tier and target in comments of the dumped YAML.

    PyYAML writes no comments, so the lines ``  <tier>:`` under ``tiers:`` and
    ``  <target>:`` under ``targets:`` (two-space indent, unique) get one appended.
    """
    notes: dict[str, str] = {}
    for s in SEEDS:
        if s.custom_tier:
            notes[f"  {s.tier}:"] = f"{s.source_path} {s.objectives_cite}"
        tier_note = f"tier {s.tier}" + ("" if s.custom_tier else f" ({s.objectives_cite})")
        notes[f"  {s.target}:"] = f"seed {s.number}, {s.system}: {tier_note}; {s.storage_cite}"
    lines = []
    for line in yaml_text.splitlines():
        note = notes.pop(line, None)
        lines.append(f"{line}  # {note}" if note else line)
    return "\n".join(lines) + ("\n" if yaml_text.endswith("\n") else "")


# --------------------------------------------------------------------------- databases


def dataset_marker(s: Seed) -> str:
    """The comment a loaded seed database carries: its seed and the SQL file's digest.

    A database whose comment differs (a crashed load, an older SQL file) is loaded again.
    """
    digest = hashlib.sha256(s.sql_file.read_bytes()).hexdigest()[:12]
    return f"dr-lab seed {s.number} {digest}"


def _ensure_database(cluster: Cluster, s: Seed) -> str:
    """One seed database: reopen it if a drill closed it, load it if missing or stale."""
    marker = dataset_marker(s)
    ident = sql.Identifier(s.database)
    actions: list[str] = []
    with connect(cluster, timeout_seconds=5) as conn:
        row = conn.execute(
            "SELECT datallowconn, pg_catalog.shobj_description(oid, 'pg_database') "
            "FROM pg_catalog.pg_database WHERE datname = %s",
            (s.database,),
        ).fetchone()
        if row is not None and not row[0]:
            # A failover drill that fenced this node by closing its databases, then died.
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident))
            actions.append(f"reopened {s.database}")
            log.info("seed %s: reopened database %s", s.number, s.database)
        if row is not None and row[1] == marker:
            return ", ".join(actions)
        started = time.monotonic()
        if row is not None:
            log.info("seed %s: database %s is incomplete or stale: reloading", s.number, s.database)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    with connect(cluster, s.database, timeout_seconds=5) as conn:
        with conn.transaction():
            conn.execute(s.sql_file.read_text())  # type: ignore[arg-type] - the lab's own SQL
            # Last, in the same transaction: the marker says the load finished.
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(marker)))
    elapsed = time.monotonic() - started
    log.info("seed %s: loaded database %s in %.2f s", s.number, s.database, elapsed)
    actions.append(f"loaded {s.database}")
    return ", ".join(actions)


def ensure_databases(cluster: Cluster) -> list[str]:
    """Every seed database on ``cluster`` (the lab's primary), loaded in parallel.

    Args:
        cluster: the current primary.

    Returns:
        What was done (``loaded bsc_dex``, ``reopened bt2c``...); empty when nothing was.

    Raises:
        psycopg.Error: a database could not be created or loaded (the others still are).
    """
    with ThreadPoolExecutor(max_workers=len(SEEDS), thread_name_prefix="lab-seeds") as pool:
        futures = [pool.submit(_ensure_database, cluster, s) for s in SEEDS]
    done = [f.result() for f in futures]  # re-raises the first failure
    return [d for d in done if d]


def _newest_dump(folder: Path) -> Path | None:
    found = [p for p in folder.glob(FOREIGN_PATTERN) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def ensure_foreign_dump(
    cluster: Cluster,
    folder: Path,
    database: str,
    *,
    refresh_seconds: float = FOREIGN_REFRESH_SECONDS,
    keep: int = FOREIGN_KEEP,
    now: float | None = None,
) -> str:
    """Play seed 001's cron job: a gzip'd plain ``pg_dump`` named ``db_backup_<UTC>.sql.gz``.

    A new dump is taken only when the newest is older than ``refresh_seconds``; it is
    written under a hidden name and renamed, so a drill never picks a half-written file.
    Beyond ``keep`` dumps, the oldest are removed.

    Args:
        cluster: the current primary.
        folder: where the dumps live (created if missing).
        database: the database to dump.
        refresh_seconds: the newest dump's age that calls for a new one.
        keep: dumps kept.
        now: the current time (epoch seconds), for tests.

    Returns:
        What was done, in a few words.

    Raises:
        ClusterError: pg_dump failed (nothing is left behind).
    """
    folder.mkdir(parents=True, exist_ok=True)
    current = time.time() if now is None else now
    newest = _newest_dump(folder)
    if newest is not None and current - newest.stat().st_mtime < refresh_seconds:
        age = current - newest.stat().st_mtime
        return f"unchanged ({newest.name}, {age:.0f} s old)"
    name = f"db_backup_{datetime.now(UTC):%Y%m%d_%H%M%S}.sql.gz"
    tmp = folder / f".{name}.tmp"
    argv = [
        str(cluster.bin("pg_dump")),
        "--no-password",
        f"--dbname={cluster.conninfo(database)}",
    ]
    started = time.monotonic()
    try:
        with (
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
            gzip.open(tmp, "wb", compresslevel=6) as out,
        ):
            assert proc.stdout is not None
            shutil.copyfileobj(proc.stdout, out, 1 << 20)
            stderr = proc.stderr.read() if proc.stderr else b""
            code = proc.wait()
        if code != 0:
            raise ClusterError(
                f"pg_dump of {database} failed ({code}): {stderr.decode(errors='replace').strip()}"
            )
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    size = (folder / name).stat().st_size
    log.info("seed 001: dumped %s to %s (%s bytes)", database, folder / name, size)
    dumps = sorted(folder.glob(FOREIGN_PATTERN), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in dumps[keep:]:
        old.unlink(missing_ok=True)
        log.info("seed 001: removed old dump %s", old)
    return f"dumped {name} ({size / 1024:.0f} KiB in {time.monotonic() - started:.1f} s)"


def ensure(cluster: Cluster, base_dir: Path) -> str:
    """Everything of the seeds on the lab: their databases, then seed 001's foreign dump.

    Args:
        cluster: the lab's current primary.
        base_dir: the lab folder.

    Returns:
        One line for ``dr lab up``'s progress: ``unchanged`` or what was done.
    """
    actions = ensure_databases(cluster)
    dumps = [
        ensure_foreign_dump(cluster, base_dir / FOREIGN_FOLDER, s.database)
        for s in SEEDS
        if s.foreign_dumps
    ]
    actions += [d for d in dumps if not d.startswith("unchanged")]
    names = ", ".join(s.target for s in SEEDS)
    return f"{', '.join(actions) or 'unchanged'} ({len(SEEDS)} seed targets: {names})"
