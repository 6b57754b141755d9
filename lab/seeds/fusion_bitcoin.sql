-- Seed 002, "Fusion Bitcoin Bridge": the data its runbook restores and checks.
--
-- Database fusion_bitcoin (the runbook's `psql ... -d fusion_bitcoin`, 002 line 245): the
-- cross-chain swap orders the relayer announces, the resolvers that fill them, and the
-- hash-time-locked escrows (HTLCs) on each chain. The runbook's "Data Integrity: zero
-- tolerance for data corruption" (002 line 76) becomes validation queries: a completed swap
-- has both escrows redeemed for the announced amounts; a refunded one redeemed nothing;
-- every escrow belongs to an order; secret hashes are SHA-256.
--
-- 12 resolvers, 2,500 orders, 2,500 escrows; deterministic. Loaded by lab.seeds in one
-- transaction.

CREATE TABLE public.resolvers (
    resolver_id  int     PRIMARY KEY,
    address      text    NOT NULL UNIQUE,
    name         text    NOT NULL,
    active       boolean NOT NULL
);

CREATE TABLE public.swap_orders (
    order_hash     text           PRIMARY KEY,
    maker_address  text           NOT NULL,
    resolver_id    int            REFERENCES public.resolvers (resolver_id),
    src_chain      text           NOT NULL CHECK (src_chain IN ('bitcoin', 'ethereum')),
    dst_chain      text           NOT NULL CHECK (dst_chain IN ('bitcoin', 'ethereum')),
    src_amount     numeric(38,18) NOT NULL CHECK (src_amount > 0),
    dst_amount     numeric(38,18) NOT NULL CHECK (dst_amount > 0),
    secret_hash    text           NOT NULL,
    status         text           NOT NULL
        CHECK (status IN ('announced', 'src_locked', 'completed', 'refunded')),
    created_at     timestamptz    NOT NULL,
    CHECK (src_chain <> dst_chain)
);

CREATE TABLE public.htlc_escrows (
    escrow_id    bigint         PRIMARY KEY,
    order_hash   text           NOT NULL REFERENCES public.swap_orders (order_hash),
    leg          text           NOT NULL CHECK (leg IN ('src', 'dst')),
    chain        text           NOT NULL,
    tx_hash      text           NOT NULL UNIQUE,
    amount       numeric(38,18) NOT NULL,
    timelock_at  timestamptz    NOT NULL,
    state        text           NOT NULL CHECK (state IN ('locked', 'redeemed', 'refunded')),
    UNIQUE (order_hash, leg)
);

INSERT INTO public.resolvers
SELECT g, '0x' || substr(md5('resolver-' || g), 1, 40), 'resolver-' || g, g % 6 <> 0
FROM pg_catalog.generate_series(1, 12) AS g;

-- Order g: g % 4 = 0 announced (no escrow), 1 source locked, 2 completed, 3 refunded.
INSERT INTO public.swap_orders
SELECT '0x' || encode(pg_catalog.sha256(('order-' || g)::bytea), 'hex'),
       '0x' || substr(md5('maker-' || g % 700), 1, 40),
       CASE WHEN g % 4 = 0 THEN NULL ELSE 1 + g % 12 END,
       CASE WHEN g % 2 = 0 THEN 'bitcoin' ELSE 'ethereum' END,
       CASE WHEN g % 2 = 0 THEN 'ethereum' ELSE 'bitcoin' END,
       (1 + g % 50) / 100.0,
       (1 + g % 50) / 100.0 * CASE WHEN g % 2 = 0 THEN 16.5 ELSE 0.06 END,
       encode(pg_catalog.sha256(('secret-' || g)::bytea), 'hex'),
       (ARRAY['announced', 'src_locked', 'completed', 'refunded'])[1 + g % 4],
       timestamptz '2025-03-01 00:00:00+00' + g * interval '4 minutes'
FROM pg_catalog.generate_series(1, 2500) AS g;

INSERT INTO public.htlc_escrows
SELECT row_number() OVER (ORDER BY o.created_at, l.leg),
       o.order_hash,
       l.leg,
       CASE WHEN l.leg = 'src' THEN o.src_chain ELSE o.dst_chain END,
       encode(pg_catalog.sha256((o.order_hash || l.leg)::bytea), 'hex'),
       CASE WHEN l.leg = 'src' THEN o.src_amount ELSE o.dst_amount END,
       o.created_at + CASE WHEN l.leg = 'src' THEN interval '24 hours' ELSE interval '12 hours' END,
       CASE o.status WHEN 'completed' THEN 'redeemed' WHEN 'refunded' THEN 'refunded'
                     ELSE 'locked' END
FROM public.swap_orders AS o
CROSS JOIN (VALUES ('src'), ('dst')) AS l (leg)
WHERE o.status <> 'announced' AND (l.leg = 'src' OR o.status = 'completed');

CREATE INDEX swap_orders_status_idx ON public.swap_orders (status, created_at);
CREATE INDEX htlc_escrows_state_idx ON public.htlc_escrows (state);
