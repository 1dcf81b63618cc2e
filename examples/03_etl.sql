-- ETL: extract the rows not loaded yet, transform them, load the totals — each step
-- checkpointed, so a crash resumes at the step it stopped at. Named results carry the data
-- between steps: $batch.* is a whole result used as a table.
--
--   psql "$DATABASE_URL" -f examples/03_etl.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.raw_sales, demo.sales_by_region, demo.etl_runs;
CREATE TABLE demo.raw_sales (
    id     int PRIMARY KEY,
    region text NOT NULL,
    amount numeric NOT NULL,
    loaded boolean NOT NULL DEFAULT false
);
CREATE TABLE demo.sales_by_region (region text PRIMARY KEY, total numeric NOT NULL);
CREATE TABLE demo.etl_runs (instance text, rows_loaded bigint, regions bigint);
INSERT INTO demo.raw_sales (id, region, amount)
VALUES (1, 'north', 10), (2, 'south', 5.5), (3, 'north', 7.25), (4, 'east', 3);

-- A workflow can be built by a function: this one is started twice below.
--  * extract:   the rows not loaded yet, named 'batch' (at most 10,000 rows fit in $batch.*;
--               keep bulk data in tables and pass keys or counts between steps);
--  * if_rows:   nothing to do when the batch is empty;
--  * transform: totals per region, computed FROM $batch.* and named 'totals'. Numbers that are
--               not integers (numeric) travel as JSON strings, so cast them (amount::numeric);
--  * load:      upsert the totals, mark the batch loaded, and record the run. {sys_instance_id}
--               is a built-in variable: the instance's own id.
CREATE OR REPLACE FUNCTION demo.etl() RETURNS text LANGUAGE sql AS $fn$
SELECT ('SELECT id, region, amount FROM demo.raw_sales WHERE NOT loaded' |=> 'batch')
    ~> df.if_rows('batch',
          ('SELECT region, sum(amount::numeric) AS total FROM $batch.* GROUP BY region'
              |=> 'totals')
          ~> 'INSERT INTO demo.sales_by_region (region, total)
              SELECT region, total::numeric FROM $totals.*
              ON CONFLICT (region) DO UPDATE SET total = sales_by_region.total + EXCLUDED.total'
          ~> 'UPDATE demo.raw_sales SET loaded = true WHERE id IN (SELECT id FROM $batch.*)'
          ~> 'INSERT INTO demo.etl_runs
              VALUES (''{sys_instance_id}'', (SELECT count(*) FROM $batch.*),
                      (SELECT count(*) FROM $totals.*))',
          'SELECT ''nothing to load'' AS outcome')
$fn$;

-- What the workflow looks like, without running it (a dry run):
SELECT df.explain(demo.etl());

SELECT df.start(demo.etl(), 'etl') AS first \gset
SELECT df.await_instance(:'first', 30);

-- New data arrives; the next run loads only that.
INSERT INTO demo.raw_sales (id, region, amount) VALUES (5, 'south', 4.5);
SELECT df.start(demo.etl(), 'etl') AS second \gset
SELECT df.await_instance(:'second', 30);

-- And a run with nothing new takes the other branch.
SELECT df.start(demo.etl(), 'etl') AS third \gset
SELECT df.await_instance(:'third', 30);
SELECT df.result(:'third')::jsonb #>> '{rows,0,outcome}' AS third_run;

SELECT region, total FROM demo.sales_by_region ORDER BY region;
SELECT rows_loaded, regions FROM demo.etl_runs ORDER BY rows_loaded DESC;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- nothing to load
-- east|3
-- north|17.25
-- south|10.0
-- 4|3
-- 1|1
