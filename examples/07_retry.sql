-- Retries and timeouts around a flaky step. df.retry(node, max_attempts, backoff_seconds,
-- backoff_factor) runs node again when it fails, after a durable wait; df.timeout(node,
-- seconds) fails node once it has run that long, cancelling its statement.
--
--   psql "$DATABASE_URL" -f examples/07_retry.sql
--
-- Its objects live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.payments;
CREATE TABLE demo.payments (order_id int PRIMARY KEY, attempt bigint NOT NULL);
DROP SEQUENCE IF EXISTS demo.gateway_calls;
CREATE SEQUENCE demo.gateway_calls;

-- A payment gateway that fails on its first two calls. A failed step's transaction rolls back,
-- so the calls are counted with a sequence, which a rollback does not undo.
CREATE OR REPLACE FUNCTION demo.charge_card(order_id int) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    call bigint := nextval('demo.gateway_calls');
BEGIN
    IF call < 3 THEN
        RAISE EXCEPTION 'payment gateway unavailable (call %)', call;
    END IF;
    INSERT INTO demo.payments VALUES (order_id, call);
    RETURN format('order %s charged on call %s', order_id, call);
END
$fn$;

-- Up to 5 attempts, waiting 0.5 s, then 1 s, ... between them. Wrap only the step that may
-- fail: a retry runs its whole subtree again.
SELECT df.start(df.retry('SELECT demo.charge_card(42) AS outcome', 5, 0.5), 'charge 42') AS id \gset
SELECT df.await_instance(:'id', 30);

-- The RETRY node tells how it went: attempt, max_attempts and the error of the attempt before.
SELECT status_details FROM df.instance_nodes(:'id') WHERE node_type = 'RETRY';

-- A step that hangs, with a deadline of 1 second per attempt and 2 attempts: it fails.
SELECT df.start(df.retry(df.timeout('SELECT pg_sleep(30)', 1), 2, 0), 'hangs') AS hangs \gset
SELECT df.await_instance(:'hangs', 30);
SELECT df.explain(:'hangs');

SELECT df.result(:'id')::jsonb #>> '{rows,0,outcome}' AS charged,
       (SELECT status_details::jsonb ->> 'attempt' FROM df.instance_nodes(:'id')
         WHERE node_type = 'RETRY') AS attempts;
SELECT status, output FROM df.instance_info(:'hangs');

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- order 42 charged on call 3|3
-- failed|RETRY failed after 2 attempts: Timed out after 1s
