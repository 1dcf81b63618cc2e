-- HTTP steps: fetch exchange rates from an API that fails now and then (df.retry gets
-- through), store them, and post a report with a header built from a variable.
--
--   python examples/http_server.py &        # the local API, on http://127.0.0.1:8765
--   psql "$DATABASE_URL" -v base_url=http://127.0.0.1:8765 -f examples/08_http.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on
\if :{?base_url}
\else
    \set base_url http://127.0.0.1:8765
\endif

-- !! FOR THIS EXAMPLE ONLY. HTTP steps are off until the server setting pg_durable.http_policy
-- !! allows them. 'allow-all' lets steps reach any host, this machine and internal networks
-- !! included; it is set here only for this session (where df.http builds the steps) and this
-- !! scratch database (where the worker sends them), and reset at the end. On a real database
-- !! use 'allow-list' with pg_durable.http_allowed_hosts, and grant roles HTTP steps with
-- !! df.grant_usage(role, include_http => true) — see docs/http.md.
SET pg_durable.http_policy = 'allow-all';
SELECT format('ALTER DATABASE %I SET pg_durable.http_policy = %L', current_database(), 'allow-all')
\gexec

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.rates;
CREATE TABLE demo.rates (currency text PRIMARY KEY, rate numeric NOT NULL);

-- {api_token} in the step text is replaced, when the step runs, by the variable's value.
SELECT df.setvar('api_token', 'example-token');

-- * The GET fails with 503 the first time (a 5xx fails the step; a 4xx does not): df.retry
--   sends it again after 0.5 s, with the same Idempotency-Key.
-- * The response is {"status", "body", "headers", "ok", ...}: $rates.body is the body.
-- * The POST's body gets the number of rows loaded ($loaded.n).
SELECT df.start(
  (df.retry(df.http(:'base_url' || '/rates', 'GET'), 3, 0.5) |=> 'rates')
  ~> ('WITH loaded AS (
         INSERT INTO demo.rates (currency, rate)
         SELECT key, value::numeric FROM jsonb_each_text($rates.body::jsonb)
         RETURNING 1)
       SELECT count(*) AS n FROM loaded' |=> 'loaded')
  ~> df.http(:'base_url' || '/reports', 'POST', '{"loaded": $loaded.n}',
             '{"Authorization": "Bearer {api_token}", "Content-Type": "application/json"}'),
  'fetch-rates') AS id \gset
SELECT df.await_instance(:'id', 30);

-- Back to the default: HTTP steps off in this database.
SELECT format('ALTER DATABASE %I RESET pg_durable.http_policy', current_database())
\gexec

SELECT currency, rate FROM demo.rates ORDER BY currency;
-- The workflow's result is its last step's: the POST's response.
SELECT status_details::jsonb ->> 'attempt' AS get_attempts,
       df.result(:'id')::jsonb ->> 'status' AS post_status,
       df.result(:'id')::jsonb ->> 'body' AS post_body
  FROM df.instance_nodes(:'id') WHERE node_type = 'RETRY';

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- EUR|0.92
-- GBP|0.79
-- JPY|151.3
-- 2|201|{"received": {"loaded": 3}, "authorized": true}
