-- The lab's demo dataset: a small shop, generated in SQL, loaded in one transaction.
--
-- Loaded by lab.manager into database "app" on the lab's primary. The whole script runs
-- in one transaction (lab.manager wraps it), so a crash mid-load leaves nothing behind and
-- the next `dr lab up` loads it again. The last statement records the dataset version in
-- public.dr_lab_meta: its presence is how `up` knows the load finished.
--
-- Sizes: 20,000 customers, 30,000 accounts, 100,000 orders, 250,000 order items
-- (400,000 rows), deterministic (setseed) so drills compare like with like.
-- Tables are filled first, then keys and indexes are built: faster than row-by-row checks.

SELECT pg_catalog.setseed(0.42);

CREATE SCHEMA shop;

CREATE TABLE shop.customers (
    customer_id  bigint      NOT NULL,
    email        text        NOT NULL,
    full_name    text        NOT NULL,
    country      char(2)     NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE TABLE shop.accounts (
    account_id   bigint        NOT NULL,
    customer_id  bigint        NOT NULL,
    kind         text          NOT NULL,
    balance      numeric(14,2) NOT NULL,
    opened_at    timestamptz   NOT NULL
);

CREATE TABLE shop.orders (
    order_id     bigint        NOT NULL,
    customer_id  bigint        NOT NULL,
    account_id   bigint        NOT NULL,
    status       text          NOT NULL,
    total        numeric(14,2) NOT NULL DEFAULT 0,
    ordered_at   timestamptz   NOT NULL
);

CREATE TABLE shop.order_items (
    order_id     bigint        NOT NULL,
    line_no      int           NOT NULL,
    sku          text          NOT NULL,
    quantity     int           NOT NULL,
    unit_price   numeric(12,2) NOT NULL
);

INSERT INTO shop.customers (customer_id, email, full_name, country, created_at)
SELECT g,
       'customer' || g || '@example.test',
       'Customer ' || g,
       (ARRAY['DE', 'FR', 'NL', 'US', 'GB', 'SE', 'ES', 'IT'])[1 + g % 8],
       timestamptz '2023-01-01 00:00:00+00' + (g * interval '23 minutes')
FROM pg_catalog.generate_series(1, 20000) AS g;

-- Every customer has one current account; every second one also a savings account.
INSERT INTO shop.accounts (account_id, customer_id, kind, balance, opened_at)
SELECT g,
       CASE WHEN g <= 20000 THEN g ELSE (g - 20000) * 2 END,
       CASE WHEN g <= 20000 THEN 'current' ELSE 'savings' END,
       round((pg_catalog.random() * 10000)::numeric, 2),
       timestamptz '2023-01-01 00:00:00+00' + (g * interval '17 minutes')
FROM pg_catalog.generate_series(1, 30000) AS g;

-- Orders are paid from the customer's current account (account_id = customer_id).
-- An order has 2 lines (odd ids) or 3 (even ids); its total is the sum of its lines,
-- computed here with the same formulas as the lines below (cheaper than an UPDATE after).
-- A validation query checks this invariant.
INSERT INTO shop.orders (order_id, customer_id, account_id, status, total, ordered_at)
SELECT g,
       1 + (g * 7919) % 20000,
       1 + (g * 7919) % 20000,
       (ARRAY['paid', 'paid', 'paid', 'shipped', 'shipped', 'delivered', 'refunded'])[1 + g % 7],
       (1 + (g + 1) % 4) * (5 + ((g * 13 + 7) % 9500) / 100.0)::numeric(12,2)
       + (1 + (g + 2) % 4) * (5 + ((g * 13 + 14) % 9500) / 100.0)::numeric(12,2)
       + CASE WHEN g % 2 = 0
              THEN (1 + (g + 3) % 4) * (5 + ((g * 13 + 21) % 9500) / 100.0)::numeric(12,2)
              ELSE 0 END,
       timestamptz '2024-01-01 00:00:00+00' + (g * interval '5 minutes')
FROM pg_catalog.generate_series(1, 100000) AS g;

-- 250,000 items.
INSERT INTO shop.order_items (order_id, line_no, sku, quantity, unit_price)
SELECT o, l,
       'SKU-' || lpad((1 + (o * 31 + l * 17) % 5000)::text, 5, '0'),
       1 + (o + l) % 4,
       (5 + ((o * 13 + l * 7) % 9500) / 100.0)::numeric(12,2)
FROM pg_catalog.generate_series(1, 100000) AS o,
     pg_catalog.generate_series(1, 3) AS l
WHERE l <= 2 + (o + 1) % 2;

ALTER TABLE shop.customers ADD PRIMARY KEY (customer_id);
ALTER TABLE shop.customers ADD CONSTRAINT customers_email_key UNIQUE (email);
ALTER TABLE shop.accounts ADD PRIMARY KEY (account_id);
ALTER TABLE shop.orders ADD PRIMARY KEY (order_id);
ALTER TABLE shop.order_items ADD PRIMARY KEY (order_id, line_no);

ALTER TABLE shop.accounts
    ADD CONSTRAINT accounts_customer_fk FOREIGN KEY (customer_id)
    REFERENCES shop.customers (customer_id);
ALTER TABLE shop.orders
    ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id)
    REFERENCES shop.customers (customer_id);
ALTER TABLE shop.orders
    ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id)
    REFERENCES shop.accounts (account_id);
ALTER TABLE shop.order_items
    ADD CONSTRAINT order_items_order_fk FOREIGN KEY (order_id)
    REFERENCES shop.orders (order_id) ON DELETE CASCADE;
ALTER TABLE shop.accounts
    ADD CONSTRAINT accounts_balance_check CHECK (balance >= 0);
ALTER TABLE shop.order_items
    ADD CONSTRAINT order_items_quantity_check CHECK (quantity > 0);

CREATE INDEX accounts_customer_idx ON shop.accounts (customer_id);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, ordered_at);
CREATE INDEX orders_account_idx ON shop.orders (account_id);
CREATE INDEX order_items_sku_idx ON shop.order_items (sku);

-- The heartbeat written by the lab application (and the drills' probes): one row every
-- 50 ms per writer; RPO is measured from it.
CREATE TABLE IF NOT EXISTS public.dr_heartbeat (
    writer text        NOT NULL DEFAULT 'app',
    seq    bigint      NOT NULL,
    ts     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (writer, seq)
);

GRANT USAGE ON SCHEMA shop TO dr_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO dr_app;
ALTER SCHEMA shop OWNER TO dr_app;
ALTER TABLE shop.customers OWNER TO dr_app;
ALTER TABLE shop.accounts OWNER TO dr_app;
ALTER TABLE shop.orders OWNER TO dr_app;
ALTER TABLE shop.order_items OWNER TO dr_app;
ALTER TABLE public.dr_heartbeat OWNER TO dr_app;

CREATE TABLE public.dr_lab_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO public.dr_lab_meta (key, value) VALUES ('dataset', 'shop-v1');
