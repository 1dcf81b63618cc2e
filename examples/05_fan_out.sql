-- Fan-out: independent steps run in parallel branches (JOIN, the & operator); the step after
-- the JOIN runs once all of them have finished, and sees every branch's named results.
--
--   psql "$DATABASE_URL" -f examples/05_fan_out.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.shop_orders, demo.shop_customers, demo.dashboard;
CREATE TABLE demo.shop_orders (id int PRIMARY KEY, customer int NOT NULL, total numeric NOT NULL);
CREATE TABLE demo.shop_customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE demo.dashboard (
    orders       bigint,
    customers    bigint,
    revenue      numeric,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO demo.shop_customers VALUES (1, 'ann'), (2, 'bob');
INSERT INTO demo.shop_orders VALUES (1, 1, 120.50), (2, 2, 80), (3, 1, 42);

-- Three slow queries (pg_sleep(1) stands for real work), each in a branch of its own: the JOIN
-- takes about one second, not three, when the worker has free slots. Parenthesise each named
-- branch: the operators bind alike, left to right.
SELECT df.start(
  ('SELECT count(*) AS n FROM demo.shop_orders, pg_sleep(1)' |=> 'orders')
  & ('SELECT count(*) AS n FROM demo.shop_customers, pg_sleep(1)' |=> 'customers')
  & ('SELECT sum(total) AS total FROM demo.shop_orders, pg_sleep(1)' |=> 'revenue')
  ~> 'INSERT INTO demo.dashboard (orders, customers, revenue)
      VALUES ($orders, $customers, $revenue)',
  'dashboard') AS id \gset
SELECT df.await_instance(:'id', 30);

-- A JOIN's own result is the array of its branches' results, in branch order.
SELECT df.start(df.join3('SELECT 1 AS a', 'SELECT 2 AS b', 'SELECT 3 AS c'), 'join3') AS j \gset
SELECT df.await_instance(:'j', 30);
SELECT df.result(:'j');

SELECT orders, customers, revenue FROM demo.dashboard;
SELECT jsonb_path_query_array(df.result(:'j')::jsonb, '$[*].rows[0].*') AS branch_values;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- 3|2|242.50
-- [1, 2, 3]
