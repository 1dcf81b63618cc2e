-- Approvals, a human in the loop: a workflow files an expense, then waits for a 'decision'
-- signal — for a limited time — and records the verdict, or marks the expense expired.
--
--   psql "$DATABASE_URL" -f examples/04_approval.sql
--
-- Its tables live in schema demo, which the examples share: run them in a scratch database.
\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS demo;
DROP TABLE IF EXISTS demo.expenses;
CREATE TABLE demo.expenses (
    id         serial PRIMARY KEY,
    employee   text NOT NULL,
    amount     numeric NOT NULL,
    status     text NOT NULL DEFAULT 'submitted',
    decided_by text
);

-- The workflow, built by a function so that each expense gets its own instance. Values go
-- into step text with format(%L): quote what you did not write yourself.
--  * df.wait_for_signal('decision', wait_seconds) results in
--      {"signal_name": "decision", "timed_out": false, "data": {...the signal's data...}}
--    or, when nobody signals in time, {"timed_out": true, "data": null};
--  * '$sig.timed_out' becomes true or false, and a condition that is an expression runs as
--    SELECT <expression>; $sig.data is the data as JSON text (cast it with ::jsonb).
CREATE OR REPLACE FUNCTION demo.expense_approval(employee text, amount numeric, wait_seconds int)
RETURNS text LANGUAGE sql AS $fn$
SELECT (format('INSERT INTO demo.expenses (employee, amount) VALUES (%L, %s) RETURNING id',
               employee, amount) |=> 'expense')
    ~> (df.wait_for_signal('decision', wait_seconds) |=> 'sig')
    ~> ('$sig.timed_out'
        ?> 'UPDATE demo.expenses SET status = ''expired'' WHERE id = $expense'
        !> 'UPDATE demo.expenses
               SET status = ($sig.data)::jsonb->>''verdict'',
                   decided_by = ($sig.data)::jsonb->>''by''
             WHERE id = $expense')
$fn$;

SELECT df.start(demo.expense_approval('ann', 250, 600), 'expense: ann') AS ann \gset
SELECT df.start(demo.expense_approval('bob', 900, 3), 'expense: bob') AS bob \gset

-- A manager decides on Ann's expense — from any session of the same role, at any time. A signal
-- sent before the workflow reaches its wait is kept until it does.
SELECT df.signal(:'ann', 'decision', '{"verdict": "approved", "by": "carol"}');

-- Nobody answers for Bob's: its wait ends after 3 seconds, with timed_out true.
SELECT df.await_instance(:'ann', 30) AS ann, df.await_instance(:'bob', 30) AS bob;

SELECT employee, amount, status, decided_by FROM demo.expenses ORDER BY employee;

-- Expected output, as `psql -At` prints it (tests/acceptance/test_examples.py checks it):
-- ann|250|approved|carol
-- bob|900|expired|
