-- Seed 004, "BT2C blockchain": the data its runbook restores and checks.
--
-- Database bt2c (the runbook's `psql -U bt2c`, 004 line 66): the validators, the chain of
-- blocks they produced and the transactions in them. The runbook checks a restore with
-- `SELECT MAX(height) FROM blocks` (004 line 66) and its integrity scripts
-- (verify_integrity.sh, verify_chain.sh, 004 lines 107 and 150) become validation queries:
-- heights run from the genesis block without a gap, every block links to its parent's
-- hash, a block's tx_count is the number of its transactions, and every block was
-- produced by a known validator.
--
-- 21 validators, 3,000 blocks (heights 0-2,999), 8,400 transactions; deterministic.
-- Loaded by lab.seeds in one transaction.

CREATE TABLE public.validators (
    address    text          PRIMARY KEY,
    moniker    text          NOT NULL,
    stake      numeric(30,8) NOT NULL CHECK (stake >= 0),
    status     text          NOT NULL CHECK (status IN ('active', 'jailed', 'inactive')),
    joined_at  timestamptz   NOT NULL
);

CREATE TABLE public.blocks (
    height     bigint      PRIMARY KEY,
    hash       text        NOT NULL UNIQUE,
    prev_hash  text        NOT NULL,
    validator  text        NOT NULL REFERENCES public.validators (address),
    produced_at timestamptz NOT NULL,
    tx_count   int         NOT NULL
);

CREATE TABLE public.transactions (
    tx_hash       text          PRIMARY KEY,
    block_height  bigint        NOT NULL REFERENCES public.blocks (height),
    sender        text          NOT NULL,
    recipient     text          NOT NULL,
    amount        numeric(30,8) NOT NULL CHECK (amount > 0),
    fee           numeric(30,8) NOT NULL,
    nonce         bigint        NOT NULL
);

INSERT INTO public.validators
SELECT 'bt2c' || substr(md5('validator-' || g), 1, 38),
       'validator' || g,
       1000 * (1 + g % 9),
       CASE WHEN g % 10 = 0 THEN 'jailed' ELSE 'active' END,
       timestamptz '2025-01-01 00:00:00+00' + g * interval '1 hour'
FROM pg_catalog.generate_series(1, 21) AS g;

-- Block h: hash = sha256('bt2c-block-' || h); the genesis block's parent is 64 zeros.
-- Blocks with h % 5 = 0 hold no transaction, the others hold (h % 4) + 2.
INSERT INTO public.blocks
SELECT h,
       encode(pg_catalog.sha256(('bt2c-block-' || h)::bytea), 'hex'),
       CASE WHEN h = 0 THEN repeat('0', 64)
            ELSE encode(pg_catalog.sha256(('bt2c-block-' || (h - 1))::bytea), 'hex') END,
       'bt2c' || substr(md5('validator-' || (1 + h % 21)), 1, 38),
       timestamptz '2025-02-01 00:00:00+00' + h * interval '5 seconds',
       CASE WHEN h % 5 = 0 THEN 0 ELSE h % 4 + 2 END
FROM pg_catalog.generate_series(0, 2999) AS h;

INSERT INTO public.transactions
SELECT encode(pg_catalog.sha256(('bt2c-tx-' || b.height || '-' || n)::bytea), 'hex'),
       b.height,
       'bt2c' || substr(md5('account-' || (b.height + n) % 900), 1, 38),
       'bt2c' || substr(md5('account-' || (b.height * 7 + n) % 900), 1, 38),
       (1 + (b.height * 31 + n) % 10000) / 100.0,
       0.001,
       b.height * 10 + n
FROM public.blocks AS b,
     pg_catalog.generate_series(1, 5) AS n
WHERE n <= b.tx_count;

CREATE INDEX transactions_block_idx ON public.transactions (block_height);
CREATE INDEX blocks_validator_idx ON public.blocks (validator);
