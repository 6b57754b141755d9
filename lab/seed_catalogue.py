"""The five runbooks of ``shared/seeds`` as data: one :class:`Seed` each (see :mod:`lab.seeds`).

A literal table: objectives, storage, channels and checks as the runbooks state them, each
with where the runbook says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: The runbooks these targets come from (in the shared folder, read-only).
SEED_DIR = "shared/seeds"
#: The seed databases' SQL, one file per database.
SQL_DIR = Path(__file__).with_name("seeds")


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
