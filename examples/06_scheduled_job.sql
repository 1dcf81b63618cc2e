-- A scheduled job: a loop whose body does the work, then waits for the next tick of a cron
-- schedule. It runs at once, then at every tick, until it is cancelled — for months if need
-- be: a loop keeps the same rows however often it iterates, and the wait survives restarts.
--
--   psql "$DATABASE_URL" -f examples/06_scheduled_job.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.heartbeats;
CREATE TABLE demo.heartbeats (at timestamptz NOT NULL DEFAULT now());

-- Every minute ('* * * * *'; a real job might say '0 3 * * *', 03:00 UTC every night).
-- @> is a loop without a condition; parenthesise its body.
SELECT df.start(
  @> ('INSERT INTO demo.heartbeats DEFAULT VALUES'
      ~> df.wait_for_schedule('* * * * *')),
  'heartbeat') AS id \gset

-- The first iteration runs at once, then the loop waits for the next whole minute. psql cannot
-- loop, so a DO block waits (up to 30 s) until the first heartbeat is there.
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN EXISTS (SELECT FROM demo.heartbeats);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

-- Still running: the loop never ends by itself. df.list_instances counts its iterations in
-- execution_count, df.explain(:'id') draws it.
SELECT df.status(:'id');

-- Stop it. No further node runs; a wait under way is dropped.
SELECT df.cancel(:'id', 'example over');

SELECT df.status(:'id') AS status, count(*) >= 1 AS ran FROM demo.heartbeats;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- cancelled|t
