-- Seed 001, a trading backend on Bun: the data its runbook restores and checks.
--
-- Database bun_trading, with the Prisma-style quoted tables the runbook queries
-- (`SELECT COUNT(*) FROM "Trade"`, 001 line 39): users, their orders, the trades that
-- filled them. The invariants a data validation script (`bun run scripts/validate-data.ts`,
-- 001 line 86) checks are the lab's validation queries: every trade belongs to an order of
-- the same user and symbol, an order's filled quantity is the sum of its trades, and its
-- status agrees with how much is filled.
--
-- 500 users, 4,000 orders (a quarter open, partly filled, filled, cancelled), 3,000 trades;
-- deterministic. Loaded by lab.seeds in one transaction.

CREATE TABLE public."User" (
    "id"          integer      PRIMARY KEY,
    "email"       text         NOT NULL UNIQUE,
    "apiKeyHash"  text         NOT NULL,
    "createdAt"   timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE public."Order" (
    "id"              integer       PRIMARY KEY,
    "userId"          integer       NOT NULL REFERENCES public."User" ("id"),
    "symbol"          text          NOT NULL,
    "side"            text          NOT NULL CHECK ("side" IN ('BUY', 'SELL')),
    "type"            text          NOT NULL CHECK ("type" IN ('LIMIT', 'MARKET')),
    "price"           numeric(20,8) NOT NULL CHECK ("price" > 0),
    "quantity"        numeric(20,8) NOT NULL CHECK ("quantity" > 0),
    "filledQuantity"  numeric(20,8) NOT NULL DEFAULT 0,
    "status"          text          NOT NULL
        CHECK ("status" IN ('OPEN', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED')),
    "createdAt"       timestamp(3)  NOT NULL,
    "updatedAt"       timestamp(3)  NOT NULL
);

CREATE TABLE public."Trade" (
    "id"          integer       PRIMARY KEY,
    "orderId"     integer       NOT NULL REFERENCES public."Order" ("id"),
    "userId"      integer       NOT NULL REFERENCES public."User" ("id"),
    "symbol"      text          NOT NULL,
    "side"        text          NOT NULL,
    "price"       numeric(20,8) NOT NULL,
    "quantity"    numeric(20,8) NOT NULL CHECK ("quantity" > 0),
    "fee"         numeric(20,8) NOT NULL,
    "executedAt"  timestamp(3)  NOT NULL
);

INSERT INTO public."User"
SELECT g,
       'trader' || g || '@example.test',
       md5('api-key-' || g),
       timestamp '2024-01-01 00:00:00' + g * interval '2 hours'
FROM pg_catalog.generate_series(1, 500) AS g;

-- Order g: g % 4 = 0 open, 1 partly filled (one trade of half), 2 filled (two trades of
-- half each), 3 cancelled.
INSERT INTO public."Order"
SELECT g,
       1 + (g * 7) % 500,
       (ARRAY['BTC/USDT', 'ETH/USDT', 'SOL/USDT', 'BNB/USDT', 'ETH/BTC'])[1 + g % 5],
       CASE WHEN g % 3 = 0 THEN 'SELL' ELSE 'BUY' END,
       CASE WHEN g % 5 = 0 THEN 'MARKET' ELSE 'LIMIT' END,
       (100 + (g * 37) % 60000)::numeric(20,8),
       (2 * (1 + g % 10))::numeric(20,8),
       CASE g % 4 WHEN 1 THEN (1 + g % 10) WHEN 2 THEN 2 * (1 + g % 10) ELSE 0 END,
       (ARRAY['OPEN', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED'])[1 + g % 4],
       timestamp '2025-01-01 00:00:00' + g * interval '90 seconds',
       timestamp '2025-01-01 00:00:00' + g * interval '90 seconds' + interval '5 seconds'
FROM pg_catalog.generate_series(1, 4000) AS g;

INSERT INTO public."Trade"
SELECT row_number() OVER (ORDER BY o."id", n),
       o."id", o."userId", o."symbol", o."side", o."price",
       o."quantity" / 2,
       round(o."price" * o."quantity" / 2 * 0.001, 8),
       o."createdAt" + n * interval '1 second'
FROM public."Order" AS o,
     pg_catalog.generate_series(1, 2) AS n
WHERE (o."id" % 4 = 1 AND n = 1) OR o."id" % 4 = 2;

CREATE INDEX "Order_userId_idx" ON public."Order" ("userId");
CREATE INDEX "Trade_orderId_idx" ON public."Trade" ("orderId");
CREATE INDEX "Trade_executedAt_idx" ON public."Trade" ("executedAt");
