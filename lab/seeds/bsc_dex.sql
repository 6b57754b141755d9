-- Seed 000, "BSC DEX Integration Platform": the data its runbook restores and checks.
--
-- Database bsc_dex (the runbook's `psql -d bsc_dex`, 000 line 239): listed BEP-20 tokens,
-- the trading pairs (liquidity pools) between them, users by wallet, the swaps they made on
-- BNB Smart Chain, and the files users uploaded (kept in S3 with MD5 checksums, 000 lines
-- 338-341). Pairs carry denormalised counters the API serves (swap_count, volume_in): the
-- runbook's "compare key metrics with expectations" (000 line 254) is a validation query
-- comparing them with the swaps.
--
-- 60 tokens, 240 pairs, 1,500 users, 6,000 swaps, 400 uploads; deterministic. Loaded by
-- lab.seeds in one transaction; the last statement marks the load complete.

SELECT pg_catalog.setseed(0.0);

CREATE TABLE public.tokens (
    token_id   int         PRIMARY KEY,
    address    text        NOT NULL UNIQUE CHECK (address ~ '^0x[0-9a-f]{40}$'),
    symbol     text        NOT NULL,
    decimals   int         NOT NULL CHECK (decimals BETWEEN 0 AND 36),
    listed_at  timestamptz NOT NULL
);

CREATE TABLE public.trading_pairs (
    pair_id         int            PRIMARY KEY,
    base_token_id   int            NOT NULL REFERENCES public.tokens (token_id),
    quote_token_id  int            NOT NULL REFERENCES public.tokens (token_id),
    pool_address    text           NOT NULL UNIQUE,
    fee_bps         int            NOT NULL CHECK (fee_bps > 0),
    swap_count      int            NOT NULL DEFAULT 0,
    volume_in       numeric(38,18) NOT NULL DEFAULT 0,
    CHECK (base_token_id <> quote_token_id)
);

CREATE TABLE public.users (
    user_id         bigint      PRIMARY KEY,
    wallet_address  text        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL
);

CREATE TABLE public.swaps (
    swap_id       bigint         PRIMARY KEY,
    tx_hash       text           NOT NULL UNIQUE,
    block_number  bigint         NOT NULL,
    pair_id       int            NOT NULL REFERENCES public.trading_pairs (pair_id),
    user_id       bigint         NOT NULL REFERENCES public.users (user_id),
    side          text           NOT NULL CHECK (side IN ('buy', 'sell')),
    amount_in     numeric(38,18) NOT NULL,
    amount_out    numeric(38,18) NOT NULL,
    executed_at   timestamptz    NOT NULL
);

CREATE TABLE public.uploads (
    upload_id    bigint      PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES public.users (user_id),
    s3_key       text        NOT NULL UNIQUE,
    bytes        bigint      NOT NULL,
    md5          text        NOT NULL,
    uploaded_at  timestamptz NOT NULL
);

INSERT INTO public.tokens
SELECT g,
       '0x' || substr(md5('token-' || g) || md5('addr-' || g), 1, 40),
       (ARRAY['WBNB', 'BUSD', 'USDT', 'CAKE', 'ETH', 'BTCB', 'XRP', 'ADA', 'DOT', 'LINK'])[1 + g % 10]
           || CASE WHEN g > 10 THEN g::text ELSE '' END,
       CASE WHEN g % 7 = 0 THEN 8 ELSE 18 END,
       timestamptz '2023-06-01 00:00:00+00' + g * interval '1 day'
FROM pg_catalog.generate_series(1, 60) AS g;

-- Pair p trades token 1 + p % 60 against one of the first four (quote) tokens.
INSERT INTO public.trading_pairs (pair_id, base_token_id, quote_token_id, pool_address, fee_bps)
SELECT p,
       5 + p % 56,
       1 + p % 4,
       '0x' || substr(md5('pool-' || p) || md5('lp-' || p), 1, 40),
       (ARRAY[25, 30, 100])[1 + p % 3]
FROM pg_catalog.generate_series(1, 240) AS p;

INSERT INTO public.users
SELECT g,
       '0x' || substr(md5('wallet-' || g) || md5('user-' || g), 1, 40),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes'
FROM pg_catalog.generate_series(1, 1500) AS g;

INSERT INTO public.swaps
SELECT g,
       '0x' || md5('tx-a-' || g) || md5('tx-b-' || g),
       38000000 + g * 20,
       1 + (g * 7) % 240,
       1 + (g * 13) % 1500,
       CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END,
       round((1 + pg_catalog.random() * 999)::numeric, 6),
       round((1 + pg_catalog.random() * 999)::numeric, 6),
       timestamptz '2024-06-01 00:00:00+00' + g * interval '60 seconds'
FROM pg_catalog.generate_series(1, 6000) AS g;

-- The counters the application maintains on every swap.
UPDATE public.trading_pairs AS p
SET swap_count = s.n, volume_in = s.volume
FROM (SELECT pair_id, count(*) AS n, sum(amount_in) AS volume
      FROM public.swaps GROUP BY pair_id) AS s
WHERE s.pair_id = p.pair_id;

INSERT INTO public.uploads
SELECT g,
       1 + (g * 11) % 1500,
       'files/2025/' || lpad(g::text, 6, '0') || '.png',
       1024 + (g * 7919) % 500000,
       md5('upload-content-' || g),
       timestamptz '2025-01-01 00:00:00+00' + g * interval '3 hours'
FROM pg_catalog.generate_series(1, 400) AS g;

CREATE INDEX swaps_pair_idx ON public.swaps (pair_id, executed_at);
CREATE INDEX swaps_user_idx ON public.swaps (user_id);
CREATE INDEX uploads_user_idx ON public.uploads (user_id);
