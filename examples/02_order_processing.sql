-- Order processing: the README's first workflow. Pick a pending order, mark it processing,
-- wait (a durable timer: a worker restart does not restart it), mark it completed.
--
--   psql "$DATABASE_URL" -f examples/02_order_processing.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.orders;
CREATE TABLE demo.orders (id int PRIMARY KEY, status text NOT NULL, total numeric NOT NULL);
INSERT INTO demo.orders VALUES (1, 'pending', 120.50), (2, 'shipped', 80.00), (3, 'pending', 42.00);

-- |=> names a result; $order_id puts its first value into later steps (as a SQL literal).
-- The operators all bind alike, left to right: this is ((a |=> 'order_id') ~> b) ~> …
SELECT df.start(
  'SELECT id FROM demo.orders WHERE status = ''pending'' ORDER BY id LIMIT 1' |=> 'order_id'
  ~> 'UPDATE demo.orders SET status = ''processing'' WHERE id = $order_id'
  ~> df.sleep(2)
  ~> 'UPDATE demo.orders SET status = ''completed'' WHERE id = $order_id',
  'process-order') AS id \gset

-- For the next two seconds order 1 is 'processing' (SELECT * FROM demo.orders; to see it),
-- and the instance shows where it stands:
SELECT node_type, status FROM df.instance_nodes(:'id') WHERE node_type = 'SLEEP';

SELECT df.await_instance(:'id', 30);

-- The tree of what ran, with a marker on every node:  \pset format unaligned  reads best.
SELECT df.explain(:'id');

SELECT id, status FROM demo.orders ORDER BY id;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- 1|completed
-- 2|shipped
-- 3|pending
