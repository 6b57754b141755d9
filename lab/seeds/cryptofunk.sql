-- Seed 003, "CryptoFunk trading system": the data its runbook restores and checks.
--
-- Database cryptofunk (the runbook's `pg_dump ... cryptofunk`, 003 line 83): trading
-- sessions of the agents, their orders, the trades that filled them and the positions they
-- hold. The runbook verifies a restore with `SELECT COUNT(*) FROM trading_sessions` and
-- `... FROM trades` (003 lines 259, 739-740) and a point-in-time recovery with
-- `SELECT MAX(created_at) FROM trades` (003 line 324); the lab adds the invariants a
-- trading system lives by: a trade belongs to its order's session, and a position is the
-- sum of its session's trades.
--
-- 40 sessions, 3,000 orders, 3,000 trades, the positions they imply; deterministic.
-- Loaded by lab.seeds in one transaction.

SELECT pg_catalog.setseed(0.3);

CREATE TABLE public.trading_sessions (
    id               bigint         PRIMARY KEY,
    agent            text           NOT NULL,
    strategy         text           NOT NULL,
    mode             text           NOT NULL CHECK (mode IN ('paper', 'live')),
    initial_capital  numeric(20,2)  NOT NULL,
    started_at       timestamptz    NOT NULL,
    ended_at         timestamptz
);

CREATE TABLE public.orders (
    id          bigint         PRIMARY KEY,
    session_id  bigint         NOT NULL REFERENCES public.trading_sessions (id),
    symbol      text           NOT NULL,
    side        text           NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity    numeric(24,8)  NOT NULL CHECK (quantity > 0),
    price       numeric(24,8)  NOT NULL,
    status      text           NOT NULL CHECK (status IN ('filled', 'cancelled')),
    created_at  timestamptz    NOT NULL
);

CREATE TABLE public.trades (
    id          bigint         PRIMARY KEY,
    order_id    bigint         NOT NULL REFERENCES public.orders (id),
    session_id  bigint         NOT NULL REFERENCES public.trading_sessions (id),
    symbol      text           NOT NULL,
    side        text           NOT NULL,
    quantity    numeric(24,8)  NOT NULL,
    price       numeric(24,8)  NOT NULL,
    fee         numeric(24,8)  NOT NULL,
    created_at  timestamptz    NOT NULL
);

CREATE TABLE public.positions (
    session_id  bigint         NOT NULL REFERENCES public.trading_sessions (id),
    symbol      text           NOT NULL,
    quantity    numeric(24,8)  NOT NULL,
    updated_at  timestamptz    NOT NULL,
    PRIMARY KEY (session_id, symbol)
);

INSERT INTO public.trading_sessions
SELECT g,
       (ARRAY['technical-agent', 'orderbook-agent', 'sentiment-agent', 'trend-agent'])[1 + g % 4],
       (ARRAY['momentum', 'mean-reversion', 'breakout'])[1 + g % 3],
       CASE WHEN g % 5 = 0 THEN 'live' ELSE 'paper' END,
       10000 * (1 + g % 5),
       timestamptz '2025-09-01 00:00:00+00' + g * interval '1 day',
       CASE WHEN g < 40 THEN timestamptz '2025-09-01 00:00:00+00' + g * interval '1 day'
                             + interval '20 hours' END
FROM pg_catalog.generate_series(1, 40) AS g;

-- Order g: 3 in 4 filled (the third of every four in two trades), 1 in 4 cancelled.
INSERT INTO public.orders
SELECT g,
       1 + g % 40,
       (ARRAY['BTCUSDT', 'ETHUSDT', 'SOLUSDT'])[1 + g % 3],
       CASE WHEN g % 3 = 1 THEN 'sell' ELSE 'buy' END,
       round((0.01 + pg_catalog.random())::numeric, 8),
       round((100 + pg_catalog.random() * 60000)::numeric, 2),
       CASE WHEN g % 4 = 3 THEN 'cancelled' ELSE 'filled' END,
       timestamptz '2025-09-01 00:00:00+00' + (1 + g % 40) * interval '1 day'
           + (g / 40) * interval '1 minute'
FROM pg_catalog.generate_series(1, 3000) AS g;

INSERT INTO public.trades
SELECT row_number() OVER (ORDER BY o.id, n),
       o.id, o.session_id, o.symbol, o.side,
       CASE WHEN o.id % 4 = 2 THEN o.quantity / 2 ELSE o.quantity END,
       o.price,
       round(o.price * o.quantity * 0.001, 8),
       o.created_at + n * interval '200 milliseconds'
FROM public.orders AS o,
     pg_catalog.generate_series(1, 2) AS n
WHERE o.status = 'filled' AND (n = 1 OR o.id % 4 = 2);

INSERT INTO public.positions
SELECT session_id, symbol,
       sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END),
       max(created_at)
FROM public.trades
GROUP BY session_id, symbol;

CREATE INDEX orders_session_idx ON public.orders (session_id, created_at);
CREATE INDEX trades_order_idx ON public.trades (order_id);
CREATE INDEX trades_created_idx ON public.trades (created_at);
