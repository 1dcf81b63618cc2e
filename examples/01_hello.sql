-- Hello, durable world: one SQL step, started, awaited, and its result read back.
--
--   psql "$DATABASE_URL" -f examples/01_hello.sql
--
-- Needs a worker serving this database (`pg-durable up` runs one; else `pg-durable worker`).
\set ON_ERROR_STOP on

-- df.start stores the workflow and returns its id; psql keeps it in :id (\gset).
SELECT df.start('SELECT ''Hello, durable world!'' AS greeting', 'hello') AS id \gset

-- df.start ran in this session's (autocommit) transaction, so a worker can see the instance.
-- Wait for it to finish: completed, failed or cancelled.
SELECT df.await_instance(:'id', 30);

-- The result of a SQL step is its rows as JSON: {"rows": [...], "row_count": n}.
SELECT df.result(:'id');
SELECT df.status(:'id') AS status,
       df.result(:'id')::jsonb #>> '{rows,0,greeting}' AS greeting;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- completed|Hello, durable world!
