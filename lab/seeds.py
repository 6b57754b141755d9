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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg import sql

from lab.db import connect
from lab.pgcluster import Cluster, ClusterError

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

#: The runbooks these targets come from (in the shared folder, read-only).
SEED_DIR = "shared/seeds"
#: The seed databases' SQL, one file per database.
SQL_DIR = Path(__file__).with_name("seeds")
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


@dataclass(frozen=True)
class Seed:
    """One runbook of ``shared/seeds`` as a lab target.

    Attributes:
        number: the seed's number (``"001"``).
        source: its file name in ``shared/seeds``.
        target: the target's name in ``dr.yaml`` (the system's name).
        system: the system, as the runbook calls it.
        database: the database on the lab's primary.
        tier: the tier's name (a default tier when the runbook's objectives match one).
        rto_seconds / rpo_seconds: the objectives the runbook states.
        objectives_cite: where the runbook states them (for the YAML comment).
        storage: ``file`` (the lab's repository) or ``s3`` (the lab's moto) as the runbook.
        storage_cite: why that storage.
        slack_channel: the runbook's incident channel (or the lab's name for one).
        deadlines: regulatory deadlines the runbook names (None: the config's default).
        health_sql: SQL health checks (name, sql) from the runbook's "verify" steps.
        validation: validation queries (name, expect, sql) from its integrity checks.
        foreign_dumps: the runbook keeps dumps made by something else (seed 001's cron).
    """

    number: str
    source: str
    target: str
    system: str
    database: str
    tier: str
    rto_seconds: float
    rpo_seconds: float
    objectives_cite: str
    storage: Literal["file", "s3"]
    storage_cite: str
    slack_channel: str
    deadlines: tuple[tuple[str, float], ...] | None = None
    health_sql: tuple[tuple[str, str], ...] = ()
    validation: tuple[tuple[str, str, str], ...] = ()
    foreign_dumps: bool = False
    #: The default tiers (dr.config.DEFAULT_TIERS) need no entry in ``tiers:``.
    custom_tier: bool = True

    @property
    def sql_file(self) -> Path:
        return SQL_DIR / f"{self.database}.sql"

    @property
    def source_path(self) -> str:
        return f"{SEED_DIR}/{self.source}"


SEEDS: tuple[Seed, ...] = (
    Seed(
        number="000",
        source="000_eed8079a2b3dda07.txt",
        target="bsc-dex",
        system="BSC DEX Integration Platform",
        database="bsc_dex",
        tier="critical",
        rto_seconds=15 * 60,
        rpo_seconds=5 * 60,
        objectives_cite="lines 19 and 24: critical systems RTO 15 min, transaction data RPO 5 min",
        storage="s3",
        storage_cite="lines 338 and 877: backups in s3://bsc-dex-backups",
        slack_channel="#incidents",
        deadlines=(("GDPR notification", 72),),
        health_sql=(("swaps-readable", "SELECT count(*) > 0 FROM public.swaps"),),
        validation=(
            (
                "critical-table-counts",
                "true",
                "SELECT (SELECT count(*) FROM public.tokens) > 0 "
                "AND (SELECT count(*) FROM public.trading_pairs) > 0 "
                "AND (SELECT count(*) FROM public.users) > 0 "
                "AND (SELECT count(*) FROM public.swaps) > 0",
            ),
            (
                "swaps-reference-pairs-and-users",
                "no_rows",
                "SELECT s.swap_id FROM public.swaps s "
                "LEFT JOIN public.trading_pairs p ON p.pair_id = s.pair_id "
                "LEFT JOIN public.users u ON u.user_id = s.user_id "
                "WHERE p.pair_id IS NULL OR u.user_id IS NULL LIMIT 1",
            ),
            (
                "pair-metrics-match-swaps",
                "no_rows",
                "SELECT p.pair_id FROM public.trading_pairs p LEFT JOIN (SELECT pair_id, "
                "count(*) AS n, sum(amount_in) AS volume FROM public.swaps GROUP BY pair_id) s "
                "ON s.pair_id = p.pair_id WHERE p.swap_count <> coalesce(s.n, 0) "
                "OR p.volume_in <> coalesce(s.volume, 0) LIMIT 1",
            ),
            (
                "upload-checksums-well-formed",
                "no_rows",
                "SELECT upload_id FROM public.uploads WHERE md5 !~ '^[0-9a-f]{32}$' LIMIT 1",
            ),
        ),
        custom_tier=False,
    ),
    Seed(
        number="001",
        source="001_92fc2ae55fcdba4d.txt",
        target="bun-trading",
        system="a trading backend on Bun",
        database="bun_trading",
        tier="seed-001",
        rto_seconds=15 * 60,
        rpo_seconds=60 * 60,
        objectives_cite="lines 7-8: RTO 15 min, RPO 1 h (last backup)",
        storage="file",
        storage_cite="lines 30 and 121: local backups/db_backup_*.sql.gz",
        slack_channel="#bun-trading-oncall",
        health_sql=(("database-connection", "SELECT 1"),),
        validation=(
            ("trades-present", "true", 'SELECT count(*) > 0 FROM public."Trade"'),
            (
                "trades-match-their-order",
                "no_rows",
                'SELECT t."id" FROM public."Trade" t LEFT JOIN public."Order" o '
                'ON o."id" = t."orderId" WHERE o."id" IS NULL OR o."userId" <> t."userId" '
                'OR o."symbol" <> t."symbol" LIMIT 1',
            ),
            (
                "filled-quantity-is-sum-of-trades",
                "no_rows",
                'SELECT o."id" FROM public."Order" o LEFT JOIN (SELECT "orderId", '
                'sum("quantity") AS q FROM public."Trade" GROUP BY "orderId") t '
                'ON t."orderId" = o."id" WHERE o."filledQuantity" <> coalesce(t.q, 0) LIMIT 1',
            ),
            (
                "order-status-matches-fill",
                "no_rows",
                'SELECT "id" FROM public."Order" WHERE ("status" = \'FILLED\' '
                'AND "filledQuantity" <> "quantity") OR ("status" IN (\'OPEN\', \'CANCELLED\') '
                'AND "filledQuantity" <> 0) OR ("status" = \'PARTIALLY_FILLED\' '
                'AND NOT ("filledQuantity" > 0 AND "filledQuantity" < "quantity")) LIMIT 1',
            ),
        ),
        foreign_dumps=True,
    ),
    Seed(
        number="002",
        source="002_c8f5bee2a268f8eb.txt",
        target="fusion-bridge",
        system="Fusion Bitcoin Bridge",
        database="fusion_bitcoin",
        tier="seed-002",
        rto_seconds=4 * 3600,
        rpo_seconds=60 * 60,
        objectives_cite="lines 42-43 and 73-74: severity 1 / production RTO 4 h, RPO 1 h",
        storage="s3",
        storage_cite="lines 231 and 244: s3://fusion-bitcoin-backups-production/database/",
        slack_channel="#incident-response",
        deadlines=(("Regulatory notification (compliance, legal)", 24),),
        health_sql=(("orders-readable", "SELECT count(*) > 0 FROM public.swap_orders"),),
        validation=(
            (
                "completed-swaps-redeemed-on-both-chains",
                "no_rows",
                "SELECT o.order_hash FROM public.swap_orders o WHERE o.status = 'completed' "
                "AND (SELECT count(*) FROM public.htlc_escrows e WHERE e.order_hash = "
                "o.order_hash AND e.state = 'redeemed') <> 2 LIMIT 1",
            ),
            (
                "escrow-amounts-match-orders",
                "no_rows",
                "SELECT e.escrow_id FROM public.htlc_escrows e JOIN public.swap_orders o "
                "ON o.order_hash = e.order_hash WHERE e.amount <> CASE e.leg WHEN 'src' "
                "THEN o.src_amount ELSE o.dst_amount END LIMIT 1",
            ),
            (
                "refunded-swaps-redeemed-nothing",
                "no_rows",
                "SELECT e.escrow_id FROM public.htlc_escrows e JOIN public.swap_orders o "
                "ON o.order_hash = e.order_hash WHERE o.status = 'refunded' "
                "AND e.state <> 'refunded' LIMIT 1",
            ),
            (
                "secret-hashes-are-sha256",
                "no_rows",
                "SELECT order_hash FROM public.swap_orders "
                "WHERE secret_hash !~ '^[0-9a-f]{64}$' LIMIT 1",
            ),
        ),
    ),
    Seed(
        number="003",
        source="003_88d8532f74f26616.txt",
        target="cryptofunk",
        system="CryptoFunk trading system",
        database="cryptofunk",
        tier="seed-003",
        rto_seconds=30 * 60,
        rpo_seconds=5 * 60,
        objectives_cite="lines 28 and 39: RPO 5 min, RTO 30 min",
        storage="s3",
        storage_cite="lines 80 and 86: hourly pg_dump to s3://cryptofunk-backups/database",
        slack_channel="#incidents",
        health_sql=(
            ("trading-sessions-readable", "SELECT count(*) > 0 FROM public.trading_sessions"),
        ),
        validation=(
            (
                "trading-sessions-present",
                "true",
                "SELECT count(*) > 0 FROM public.trading_sessions",
            ),
            ("trades-present", "true", "SELECT count(*) > 0 FROM public.trades"),
            (
                "no-trade-after-now",
                "true",
                "SELECT max(created_at) <= pg_catalog.now() FROM public.trades",
            ),
            (
                "trades-in-their-orders-session",
                "no_rows",
                "SELECT t.id FROM public.trades t LEFT JOIN public.orders o ON o.id = t.order_id "
                "WHERE o.id IS NULL OR o.session_id <> t.session_id LIMIT 1",
            ),
            (
                "positions-match-trades",
                "no_rows",
                "SELECT p.session_id FROM public.positions p LEFT JOIN (SELECT session_id, "
                "symbol, sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) AS q "
                "FROM public.trades GROUP BY session_id, symbol) t ON t.session_id = "
                "p.session_id AND t.symbol = p.symbol WHERE p.quantity <> coalesce(t.q, 0) "
                "LIMIT 1",
            ),
        ),
    ),
    Seed(
        number="004",
        source="004_d0de5dbb47caa6c7.txt",
        target="bt2c",
        system="BT2C blockchain",
        database="bt2c",
        tier="seed-004",
        rto_seconds=30 * 60,
        rpo_seconds=5 * 60,
        objectives_cite="lines 216 and 225: database RTO 30 min, RPO 5 min",
        storage="file",
        storage_cite="line 268: /var/backups/bt2c/db/ on disk",
        slack_channel="#bt2c-incidents",
        health_sql=(("chain-height", "SELECT max(height) IS NOT NULL FROM public.blocks"),),
        validation=(
            (
                "heights-contiguous-from-genesis",
                "true",
                "SELECT min(height) = 0 AND max(height) = count(*) - 1 FROM public.blocks",
            ),
            (
                "blocks-link-to-parent-hash",
                "no_rows",
                "SELECT b.height FROM public.blocks b LEFT JOIN public.blocks p "
                "ON p.height = b.height - 1 WHERE (b.height = 0 AND b.prev_hash <> "
                "repeat('0', 64)) OR (b.height > 0 AND p.hash IS DISTINCT FROM b.prev_hash) "
                "LIMIT 1",
            ),
            (
                "tx-count-matches-transactions",
                "no_rows",
                "SELECT b.height FROM public.blocks b LEFT JOIN (SELECT block_height, count(*) "
                "AS n FROM public.transactions GROUP BY block_height) t ON t.block_height = "
                "b.height WHERE b.tx_count <> coalesce(t.n, 0) LIMIT 1",
            ),
            (
                "blocks-by-known-validators",
                "no_rows",
                "SELECT b.height FROM public.blocks b LEFT JOIN public.validators v "
                "ON v.address = b.validator WHERE v.address IS NULL LIMIT 1",
            ),
        ),
    ),
)


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
            "sql": [{"name": n, "sql": q, "database": s.database} for n, q in s.health_sql]
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
