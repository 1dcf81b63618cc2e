-- Every statement the worker runs, by name. Looked up by pg_durable.queries.

-- name: claim
-- This slot's share of the runnable fibers, locked for the transaction (df._claim).
SELECT * FROM df._claim(%(batch_size)s, %(slots)s, %(lane)s)

-- name: claim_scope
-- Claim a fiber again (to run it alone, or after its autocommit statement), if nobody took
-- it meanwhile.
SELECT f.scope, f.instance_id, f.parent_scope, f.branch, f.spawned_at_node, f.parent_generation,
       f.root_node, f.node_id, f.generation, f.results, f.state, f.first_done, f.version,
       i.status AS instance_status, extract(epoch FROM now())::float8 AS db_now
  FROM df._fibers f
  JOIN df.instances i ON i.id = f.instance_id
 WHERE f.scope = %(scope)s AND f.version = %(version)s AND f.status = 'ready'
   FOR UPDATE OF f SKIP LOCKED

-- name: claim_continued
-- The fibers the last commit left runnable at once, claimed again in the round trip of that
-- COMMIT, so that their next steps follow without a new search.
SELECT * FROM df._claim_fibers(%(scopes)s)

-- name: lease_fiber
-- Keep a fiber from being claimed while its autocommit statement runs outside any
-- transaction (engine/executor.py); claim_leased takes it back.
UPDATE df._fibers
   SET run_at = now() + make_interval(secs => %(seconds)s), version = version + 1
 WHERE scope = %(scope)s AND version = %(version)s AND status = 'ready'
RETURNING version

-- name: no_idle_timeout
-- For this transaction only (a step in another database runs meanwhile; engine/executor.py).
SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', '0', true)

-- name: renew_lease
-- Keep a leased fiber from other workers a while longer (its autocommit statement still runs);
-- the version stays: claim_scope takes it back at the version lease_fiber gave it.
UPDATE df._fibers SET run_at = now() + make_interval(secs => %(seconds)s)
 WHERE scope = %(scope)s AND version = %(version)s AND status = 'ready'

-- name: load_instances
-- Instances to run, with their graphs (a batch loads all it has not cached in one query).
SELECT * FROM df._load_instances(%(instance_ids)s)

-- name: children
SELECT scope, branch, root_node, outcome, results
  FROM df._fibers
 WHERE parent_scope = %(scope)s AND spawned_at_node = %(node_id)s
   AND parent_generation = %(generation)s AND status = 'done'

-- name: commit_steps
-- Returns the scopes whose plan was discarded because the fiber turned out to be stale.
SELECT df._commit_steps(%(plans)s::jsonb) AS scope

-- name: commit_steps_ahead
-- commit_steps for a lone step sent in the same round trip (step_ahead): the plans are JSON
-- text in which a marker stands for the step's result.
SELECT df._commit_steps(df._with_step_result(%(plans)s, %(marker)s)) AS scope

-- name: fail_instance
SELECT df._fail_instance(%(instance_id)s, %(message)s)

-- name: drop_fibers
-- A fiber nobody will run (its instance was cancelled or finished): it and its subtree go.
SELECT df._drop_fibers(%(instance_id)s, %(scope)s)

-- name: sweep
-- The next batch of fibers nobody will ever run (df._sweep_fibers); "last" is where the next
-- batch begins, NULL at the end of the table.
SELECT df._sweep_fibers(%(after)s, %(batch)s) AS last

-- name: sweep_signals
-- Signals of instances that ended (cancelled, say) while they were in the inbox. Each list is
-- an array made once, each row found by its key (60_engine.sql): "id IN (a subquery with
-- LIMIT)" may run the subquery again for every row, and a join may read every instance.
DELETE FROM df._signals
 WHERE id = ANY (ARRAY(
        SELECT s.id FROM df._signals s
         WHERE ((SELECT i.status FROM df.instances i WHERE i.id = s.instance_id)
                IN ('pending', 'running')) IS NOT TRUE
         LIMIT 1000))

-- name: wake_signalled
-- Fibers that still wait for a signal given to them: df.signal could not wake them (another
-- transaction held the fiber longer than it waits; df._wake_for_signal in 35_signals.sql).
-- Found from the signals, each fiber by its key.
UPDATE df._fibers SET run_at = now()
 WHERE scope = ANY (ARRAY(
        SELECT f.scope
          FROM df._fibers f
         WHERE f.scope = ANY (ARRAY(SELECT s.scope FROM df._signals s WHERE s.scope IS NOT NULL))
           AND f.run_at > now()
           AND EXISTS (SELECT 1 FROM df._signals s
                        WHERE s.scope = f.scope AND s.name = f.awaiting)
           FOR UPDATE OF f SKIP LOCKED))

-- name: prune_finished
-- One batch of finished instances past the retention period (70_retention.sql).
SELECT df._prune_finished(%(batch)s) AS removed

-- name: next_run_at
-- Seconds until the next timer (Infinity: none; df._next_run_at).
SELECT df._next_run_at() AS seconds

-- name: run_steps
SELECT step, result_rows, error, seconds FROM df_exec.run_steps(%s, %s, %s, %s)

-- name: step_ahead
-- One step, followed in the same query string by its checkpoint (commit_steps_ahead): run as
-- run_steps runs it (no window: it is the only one), then checked and its result text kept
-- for the checkpoint by df._step_ahead, which raises where the checkpoint must not follow.
SELECT df._step_ahead(result_rows, error, seconds, %(columns)s) AS seconds
  FROM df_exec.run_steps(%(steps)s, 0, %(max_bytes)s, %(max_rows)s)

-- name: signal_lock
SELECT df._signal_lock(%(instance_id)s)

-- name: take_signal
-- The oldest signal of this name for this fiber or for anyone (under the signal lock), that no
-- other fiber of this transaction took. It is deleted with the fiber's plan (_commit_steps).
SELECT s.id,
       s.data::text AS data  -- as text: nested deeper than Python parses, it is still data
  FROM df._signals s
 WHERE s.instance_id = %(instance_id)s AND s.name = %(name)s
   AND (s.scope = %(scope)s OR s.scope IS NULL)
   AND s.id <> ALL (%(taken)s::bigint[])
 ORDER BY s.id
 LIMIT 1

-- name: schedule_tick
SELECT df._schedule_tick(%(expr)s) AS tick

-- name: local_statement_timeout
-- The submitting role's statement_timeout, for the statement that runs its step alone.
SELECT pg_catalog.set_config('statement_timeout', %(value)s, true)

-- name: limit_statement_time
-- The statement_timeout of the next statement in this transaction (local) or session: the
-- tightest of the one that applies already (the role's own, the database's), the worker's
-- step_timeout (step_ms; 0: none) and the time left until a df.timeout's deadline (epoch
-- seconds on this clock; NULL: none), at least 1 ms. (A limit beyond what statement_timeout
-- holds, 24 days, is left to the timer of its df.timeout.) Returns which of the worker's
-- limits it set: 'deadline', 'step', or NULL for neither. The current value is read with
-- current_setting — as '0', '500ms', '5s', '1min', … which interval reads — not from
-- pg_settings, which builds every setting's row (a quarter of a millisecond).
SELECT CASE WHEN w.ms IS NULL OR w.ms > 2147483647 OR (w.now_ms > 0 AND w.now_ms <= w.ms)
                THEN NULL
            WHEN pg_catalog.set_config('statement_timeout', w.ms::text, %(local)s) IS NULL
                THEN NULL
            WHEN w.ms = w.deadline_ms THEN 'deadline'
            ELSE 'step' END AS applied
  FROM (SELECT d.ms AS deadline_ms,
               least(d.ms, nullif(%(step_ms)s::bigint, 0)) AS ms,
               CASE WHEN pg_catalog.current_setting('statement_timeout') = '0' THEN 0
                    ELSE (extract(epoch FROM pg_catalog.current_setting('statement_timeout')::interval)
                          * 1000)::bigint END AS now_ms
          -- (greatest would take 1 over a NULL: no deadline must stay NULL.)
          FROM (SELECT CASE WHEN %(deadline)s::float8 IS NOT NULL
                            THEN greatest(1, ceil((%(deadline)s::float8
                                                   - extract(epoch FROM pg_catalog.clock_timestamp()))
                                                  * 1000))::bigint END AS ms) d) w

-- name: role_settings
-- On the autocommit side connection: for the session, until RESET ALL.
SELECT df_exec.role_settings(%(settings)s, false)

-- name: exec_function
SELECT p.oid IS NOT NULL AS present
  FROM (SELECT to_regprocedure(%(signature)s)::oid AS oid) p

-- name: register_worker
INSERT INTO df._workers (id, hostname, pid, version, concurrency)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(version)s, %(concurrency)s)

-- name: heartbeat
UPDATE df._workers SET last_seen_at = now() WHERE id = %(id)s

-- name: stop_worker
UPDATE df._workers SET stopped_at = now(), last_seen_at = now() WHERE id = %(id)s

-- name: schema_version
SELECT value FROM df._meta WHERE key = 'schema_version'

-- name: create_exec_function
-- {function} and {role} are identifiers composed with psycopg.sql (engine/identity.py).
-- Runs statements of its role, one after the other (df_exec.run_steps passes it the steps of
-- a batch that are its role's, in a row), and returns per statement its rows (row_to_json
-- texts) or its error (caught, its subtransaction rolled back, the worker's transaction
-- intact: {"sqlstate", "message"}), the seconds it took and the bytes of its rows. A cancel
-- (query_canceled) is not caught: the worker asked for it and rolls back.
--
-- Between two statements the session is cleaned (settings, temporary tables, session locks,
-- LISTENs: what df_exec.reset_session cleans), here as the role: the next statement is
-- another instance's, of the same role. After the last, the worker cleans it itself, before
-- any other role's statement or its own.
--
-- A result is capped while it is read: the first row that takes it past max_bytes (of
-- row_to_json text) or max_rows ends the statement with an error of its own (SQLSTATE PDLIM),
-- so that neither this server nor the worker holds more. A row whose stored size is over eight
-- times what is left is refused before row_to_json copies it (no type's JSON is that much
-- smaller than its storage), so a gigantic value fails at once. A statement after the first
-- does not start past not_after, nor once the rows returned reach batch_bytes or batch_rows
-- (what is left of the batch's caps). The caps are arguments the worker passes: nothing a
-- statement does can change them.
CREATE OR REPLACE FUNCTION {function}(statements text[], returns_rows boolean[],
                                      max_bytes bigint, max_rows bigint,
                                      not_after timestamptz, batch_bytes bigint,
                                      batch_rows bigint)
RETURNS TABLE (step int, result_rows text[], error text, seconds float8, bytes bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    r     record;
    t     text;
    n     bigint;
    began timestamptz;
BEGIN
    FOR i IN 1 .. pg_catalog.cardinality(statements) LOOP
        IF i OPERATOR(pg_catalog.>) 1 THEN
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) not_after
               OR batch_bytes OPERATOR(pg_catalog.<=) 0 OR batch_rows OPERATOR(pg_catalog.<=) 0 THEN
                RETURN;
            END IF;
            RESET ALL;
            DISCARD TEMP;
            PERFORM pg_catalog.pg_advisory_unlock_all();
            UNLISTEN *;
        END IF;
        began := pg_catalog.clock_timestamp();
        step := i OPERATOR(pg_catalog.-) 1;
        result_rows := '{{}}';  -- (braces doubled: the text is composed with psycopg.sql)
        error := NULL;
        bytes := 0;
        n := 0;
        BEGIN
            IF returns_rows[i] THEN
                FOR r IN EXECUTE statements[i] LOOP
                    n := n OPERATOR(pg_catalog.+) 1;
                    IF n OPERATOR(pg_catalog.>) max_rows THEN
                        RAISE EXCEPTION USING ERRCODE = 'PDLIM', MESSAGE = pg_catalog.format(
                            'SQL step result exceeds pg_durable''s limit of %s rows (worker setting '
                            'max_result_rows); return fewer rows, e.g. with LIMIT or an aggregate, '
                            'or raise the limit', max_rows);
                    END IF;
                    IF (pg_catalog.pg_column_size(r) OPERATOR(pg_catalog./) 8)
                           OPERATOR(pg_catalog.>) (max_bytes OPERATOR(pg_catalog.-) bytes) THEN
                        bytes := max_bytes OPERATOR(pg_catalog.+) 1;
                    ELSE
                        t := pg_catalog.row_to_json(r)::text;
                        bytes := bytes OPERATOR(pg_catalog.+) pg_catalog.octet_length(t);
                    END IF;
                    IF bytes OPERATOR(pg_catalog.>) max_bytes THEN
                        RAISE EXCEPTION USING ERRCODE = 'PDLIM', MESSAGE = pg_catalog.format(
                            'SQL step result exceeds pg_durable''s limit of %s bytes (worker setting '
                            'max_result_bytes) at row %s; return fewer or smaller rows, e.g. with '
                            'LIMIT, or raise the limit', max_bytes, n);
                    END IF;
                    result_rows := result_rows OPERATOR(pg_catalog.||) t;
                END LOOP;
            ELSE
                EXECUTE statements[i];
            END IF;
        EXCEPTION WHEN OTHERS THEN
            result_rows := NULL;
            bytes := 0;
            error := pg_catalog.json_build_object('sqlstate', SQLSTATE, 'message', SQLERRM)::text;
        END;
        seconds := pg_catalog.date_part('epoch',
                                        pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) began);
        batch_bytes := batch_bytes OPERATOR(pg_catalog.-) bytes;
        batch_rows := batch_rows OPERATOR(pg_catalog.-)
                      coalesce(pg_catalog.cardinality(result_rows), 0);
        RETURN NEXT;
    END LOOP;
END
$body$

-- name: revoke_exec_function
REVOKE ALL ON FUNCTION {function}(text[], boolean[], bigint, bigint, timestamptz, bigint, bigint)
  FROM PUBLIC

-- name: lend_exec_schema
-- A new owner needs CREATE on the function's schema (unless the worker is a superuser). Lent
-- and taken back in the same transaction, so no other session ever sees the grant: a role
-- that could create in df_exec could plant another role's step function.
GRANT CREATE ON SCHEMA df_exec TO {role}

-- name: own_exec_function
ALTER FUNCTION {function}(text[], boolean[], bigint, bigint, timestamptz, bigint, bigint)
  OWNER TO {role}

-- name: take_back_exec_schema
REVOKE CREATE ON SCHEMA df_exec FROM {role}

-- name: role_exists
SELECT rolname FROM pg_catalog.pg_roles WHERE oid = %(oid)s

-- name: type_names
SELECT oid::int, typname::text FROM pg_catalog.pg_type WHERE oid = ANY(%(oids)s)

-- -------------------------------------------------------------------------------------------
-- Steps in another database of the cluster (engine/remote.py).

-- name: database_access
-- No row: the database does not exist (any more).
SELECT pg_catalog.has_database_privilege(%(role)s::oid, d.oid, 'CONNECT') AS can_connect
  FROM pg_catalog.pg_database d
 WHERE d.datname = %(database)s

-- name: exec_kit_lock
-- Serialises the installation of the step runner by several workers (same lock class as the
-- creation of step functions).
SELECT pg_catalog.pg_advisory_xact_lock(1346847814, 0)

-- name: exec_kit_version
SELECT pg_catalog.obj_description(pg_catalog.to_regclass('df_exec.remote_steps'), 'pg_class')
       AS version

-- name: exec_kit_mark
-- {version} is a literal composed with psycopg.sql.
COMMENT ON TABLE df_exec.remote_steps IS {version}

-- name: remote_receipt
SELECT outcome FROM df_exec.remote_steps WHERE key = %(key)s

-- name: remote_receipt_insert
INSERT INTO df_exec.remote_steps (key, outcome) VALUES (%(key)s, %(outcome)s)

-- name: remote_receipt_drop
-- With it go receipts left behind a day ago and more (their checkpoints were committed long
-- since: a fiber's next version never looks them up).
DELETE FROM df_exec.remote_steps
 WHERE key = %(key)s OR done_at < now() - interval '1 day'

-- name: lease_request
-- Keep a fiber from being claimed while its HTTP request is sent outside any transaction
-- (engine/executor.py): for the request's timeout and a margin, so that if this worker dies
-- mid-request another sends it again soon after. The request's idempotency key is kept in the
-- fiber's state the first time, so that the request sent again carries the same key.
UPDATE df._fibers
   SET run_at = now() + make_interval(secs => %(seconds)s), version = version + 1,
       state = CASE WHEN state->'request'->>'node' = %(node_id)s THEN state
                    ELSE state || jsonb_build_object('request',
                                      jsonb_build_object('node', %(node_id)s::text,
                                                         'key', %(key)s::text))
               END
 WHERE scope = %(scope)s AND version = %(version)s AND status = 'ready'
RETURNING version, state->'request'->>'key' AS key

-- name: http_settings
-- A fingerprint of the settings ALTER DATABASE … SET and ALTER ROLE … SET gave this database
-- and the worker's role: they reach only sessions that begin afterwards, so the session that
-- asks the HTTP policy is opened again when it changes (engine/http.py).
SELECT coalesce(md5(string_agg(s.setdatabase || '/' || s.setrole || '/'
                               || array_to_string(s.setconfig, chr(10)), chr(10)
                               ORDER BY s.setdatabase, s.setrole)), '') AS fingerprint
  FROM pg_catalog.pg_db_role_setting s
 WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                              WHERE datname = current_database()))
   AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))

-- name: http_gate
-- Whether an HTTP step may send its request, and the limits it must keep (12_http.sql).
-- host: the host the worker's URL parser found, so that the host checked is the one it
-- connects to.
SELECT df._http_request_error(%(node_type)s, %(role)s::oid::regrole, %(url)s, %(host)s) AS error,
       df._http_policy() AS policy,
       df._http_limit('pg_durable.http_max_timeout_seconds', 300) AS max_timeout,
       df._http_limit('pg_durable.http_max_request_bytes', 10485760, true) AS max_request_bytes

-- ---------------------------------------------------------------------------------------------
-- The client API (pg_durable.client) and the commands built on it (pg-durable ls, show, signal,
-- cancel, wait, start). They read and act only through the df SQL API, as the connecting role:
-- row-level security decides what a role sees, and another role's instance is "not found".
-- Parameters are cast: an untyped NULL would leave PostgreSQL guessing, and it picks overloads.

-- name: client_start
-- Start a workflow in the caller's transaction (or, with transaction_mode 'new', in its own).
SELECT df.start(%(envelope)s::text, label => %(label)s::text, database => %(database)s::text,
                transaction_mode => %(transaction_mode)s::text) AS instance_id

-- name: client_instance
-- One instance as the caller sees it. elapsed: seconds from its start to its end, or to now
-- while it runs. this_transaction: it is still pending and was created in this very
-- transaction (created_at is the inserting transaction's start), so no worker can see it yet.
-- frozen: this statement is not the first of a REPEATABLE READ or SERIALIZABLE transaction, so
-- it sees the snapshot of that first one and no progress made since.
SELECT i.id, i.label, i.status, i.root_node, i.created_at, i.completed_at,
       coalesce(info.current_execution_id, 1) AS execution_count, info.output,
       extract(epoch FROM coalesce(i.completed_at,
                                   CASE WHEN i.status IN ('failed', 'cancelled') THEN i.updated_at END,
                                   statement_timestamp()) - i.created_at)::float8 AS elapsed,
       i.status = 'pending' AND i.created_at = transaction_timestamp() AS this_transaction,
       current_setting('transaction_isolation') IN ('repeatable read', 'serializable')
           AND transaction_timestamp() <> statement_timestamp() AS frozen
  FROM df.instances i
  LEFT JOIN LATERAL df.instance_info(i.id) info ON true
 WHERE i.id = %(id)s::text

-- name: client_result
SELECT df.status(%(id)s::text) AS status, df.result(%(id)s::text) AS result

-- name: client_nodes
-- Every node with its inferred status (SPEC §2.13); the client orders them from the root.
SELECT n.node_id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status,
       n.inferred_status, n.result, n.status_details, n.updated_at, n.execution_id
  FROM df.instance_nodes(%(id)s::text) n

-- name: client_signal
-- df.signal, unless the instance is unknown or finished (status tells which).
SELECT s.status,
       CASE WHEN s.status IN ('pending', 'running')
            THEN df.signal(%(id)s::text, %(name)s::text, %(data)s::text) END AS reply
  FROM (SELECT df.status(%(id)s::text) AS status) s

-- name: client_cancel
-- df.cancel (with its own default reason when none is given), unless the instance is unknown;
-- status is the one it had before.
SELECT s.status,
       CASE WHEN s.status IS NULL THEN NULL
            WHEN %(reason)s::text IS NULL THEN df.cancel(%(id)s::text)
            ELSE df.cancel(%(id)s::text, %(reason)s::text) END AS reply
  FROM (SELECT df.status(%(id)s::text) AS status) s

-- name: client_list
-- One page, newest first, through the keyset-paginated overload.
SELECT l.instance_id, l.label, l.status, l.execution_count, l.output, l.created_at,
       l.completed_at, l.next_cursor
  FROM df.list_instances(%(status)s::text, %(limit)s::int, %(label)s::text,
                         %(after)s::text) l

-- name: client_explain
SELECT df.explain(%(input)s::text) AS tree

-- name: cli_time_ago
-- pg-durable ls --since/--until 30m: that long before the database's now().
SELECT now() - %(ago)s::interval AS at

-- name: cli_time_at
-- pg-durable ls --since/--until '2024-05-01 12:00': a time as PostgreSQL reads it.
SELECT %(at)s::timestamptz AS at

-- name: cli_start_expression
-- pg-durable start FILE: {expression} is the file's DSL expression, spliced in as SQL text —
-- what the user would type as df.start's argument in psql, run as the user's role. With
-- parameters the statement goes by the extended protocol, which takes exactly one statement.
SELECT df.start(
{expression}
, label => %(label)s::text, database => %(database)s::text) AS instance_id

-- == /metrics (engine/worker_metrics.py) ==================================================

-- name: metrics_queue
-- The queue gauges, each bounded by %(limit)s rows of the _fibers_ready index so a scrape
-- never walks a long queue: fibers runnable now; and among the first fibers due later (by
-- due time), those waiting for a signal and those waiting for a time (the rest).
SELECT (SELECT count(*)
          FROM (SELECT 1 FROM df._fibers
                 WHERE status = 'ready' AND run_at <= now()
                 ORDER BY run_at
                 LIMIT %(limit)s) r) AS runnable,
       count(*) FILTER (WHERE w.awaiting IS NULL) AS timers,
       count(*) FILTER (WHERE w.awaiting IS NOT NULL) AS signals
  FROM (SELECT awaiting FROM df._fibers
         WHERE status = 'ready' AND run_at > now()
         ORDER BY run_at
         LIMIT %(limit)s) w

-- -------------------------------------------------------------------------------------------
-- The dashboard (pg_durable/ui/, pg-durable ui): reads as the viewer's own role, beside the
-- client's statements above.

-- name: ui_viewer
-- Who the dashboard reads as; sees_all: row-level security does not apply to this role (a
-- superuser, or BYPASSRLS), so it sees every role's instances.
SELECT current_user AS role, r.rolsuper OR r.rolbypassrls AS sees_all,
       to_regnamespace('df') IS NOT NULL AS installed
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = current_user

-- name: ui_workers
-- The fleet (df.workers): alive workers first, then running ones by their last heartbeat, then
-- stopped ones; the counts are over the whole view.
SELECT w.worker_id::text AS worker_id, w.hostname, w.pid, w.version, w.concurrency,
       w.started_at, w.last_seen_at, w.stopped_at, w.alive,
       extract(epoch FROM now() - w.last_seen_at)::float8 AS seen_ago,
       count(*) FILTER (WHERE w.alive) OVER () AS alive_total,
       count(*) OVER () AS total
  FROM df.workers w
 ORDER BY w.alive DESC, w.stopped_at IS NOT NULL, w.last_seen_at DESC
 LIMIT %(limit)s
