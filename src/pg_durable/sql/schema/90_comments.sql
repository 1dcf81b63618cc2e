-- Descriptions of the public API (COMMENT ON), installed last: psql shows them (\df+ df.*,
-- \do+ ~>, \d+ df.instances) and docs/reference.md is generated from them
-- (python -m pg_durable.reference).
--
-- One description per object, one line each, keyed by the object's signature. An entry whose
-- object does not exist (a signature changed elsewhere in the schema) is skipped rather than
-- failing the install; tests/integration/test_reference.py fails instead, naming it, and also
-- when a public function, operator, table or view has no description here.

DO $$
DECLARE
    entry record;
BEGIN
    FOR entry IN SELECT * FROM (VALUES
        -- Building workflows: the constructors (each returns a JSON envelope; nothing runs yet)
        ('df.sql(text)',
         'A SQL step: one statement, run as the submitting role, whose result is {"rows": [...], "row_count": n}; query is never read as an envelope.'),
        ('df.seq(text,text)',
         'THEN: a, then b; the result is b''s, and b is skipped if a fails. Operator ~>.'),
        ('df.as(text,text)',
         'Names the result of fut so that later steps can use it as $name. Operator |=>.'),
        ('df.sleep(bigint)',
         'SLEEP: a durable timer of seconds (0 or more) that survives restarts.'),
        ('df.loop(text,text)',
         'LOOP: runs body again and again — forever, or while condition (checked after each iteration) is true; df.break leaves it. Operator @> (no condition).'),
        ('df.break(text)',
         'BREAK: leaves the innermost loop, which results in value (JSON if it parses, else a string; NULL: JSON null).'),
        ('df.if(text,text,text)',
         'IF: runs then_branch when the result of the condition node is true, else else_branch. Operators ?> and !>.'),
        ('df.if_rows(text,text,text)',
         'IF on a named result: then_branch when result_name had rows, else else_branch (no SQL runs for the test).'),
        ('df.join(text,text)',
         'JOIN: runs a and b in parallel and waits for both; the result is the array of their results. Operator &.'),
        ('df.join3(text,text,text)',
         'JOIN of three branches, run in parallel; the result is the array of their results.'),
        ('df.race(text,text)',
         'RACE: runs a and b in parallel; the first to finish decides and the other is cancelled. Operator |.'),
        ('df.wait_for_signal(text,integer)',
         'SIGNAL: waits for df.signal(instance, name), or until timeout_seconds pass; the result has signal_name, timed_out and data.'),
        ('df.wait_for_schedule(text)',
         'WAIT_SCHEDULE: waits for the next tick of a five-field cron expression (UTC unless pg_durable.cron_timezone says otherwise).'),
        ('df.http(text,text,text,jsonb,integer)',
         'HTTP: one request whose result is the response (status, body, headers, ok); refused until pg_durable.http_policy allows it.'),
        ('df.http_multipart(text,text,jsonb,jsonb,integer)',
         'HTTP_MULTIPART: a multipart/form-data request of base64 parts; refused until pg_durable.http_policy allows it.'),
        ('df.retry(text,integer,double precision,double precision)',
         'RETRY: runs node again from its start when it fails, max_attempts in all, after durable waits of backoff_seconds × backoff_factor^(n−1).'),
        ('df.timeout(text,integer)',
         'TIMEOUT: fails node once it has run for seconds, stopping what of it still runs.'),
        -- The functions behind the operators
        ('df.as_op(text,text)',
         'The function of operator |=> (df.as).'),
        ('df.if_then_op(text,text)',
         'The function of operator ?>: a partial IF that !> completes.'),
        ('df.if_else_op(text,text)',
         'The function of operator !>: completes the partial IF of ?> into df.if.'),
        ('df.loop_prefix_op(text)',
         'The function of prefix operator @> (df.loop without a condition).'),
        -- Starting and steering
        ('df.start(text,text,text,text)',
         'Stores a workflow as a new instance, in the caller''s transaction, and returns its 8-hex id; its steps run as the calling role.'),
        ('df.signal(text,text,text)',
         'Sends a signal (a name and JSON data) to a pending or running instance; it is kept until a wait for that name takes it.'),
        ('df.cancel(text,text)',
         'Cancels an instance: no further node runs, and a step running at that moment does not commit.'),
        ('df.await_instance(text,integer)',
         'Waits, polling, until an instance finishes, and returns its status (completed, failed or cancelled).'),
        ('df.wait_for_completion(text,integer)',
         'Deprecated name of df.await_instance (with a WARNING).'),
        ('df.run(text)',
         'Does nothing, kept for compatibility: workers pick up instances by themselves.'),
        -- Monitoring
        ('df.status(text)',
         'The status of an instance: pending, running, completed, failed or cancelled (NULL when unknown or another role''s).'),
        ('df.result(text)',
         'The result of the root node of an instance, as JSON text, once it completed; else NULL.'),
        ('df.list_instances(text,integer)',
         'Your instances, newest first, optionally only those of one status.'),
        ('df.list_instances(text,integer,text,text)',
         'Your instances, a keyset-paginated page at a time (after_cursor, next_cursor), with status and label filters.'),
        ('df.instance_info(text)',
         'One instance: label, status, current execution and output (its result or its error).'),
        ('df.instance_executions(text,integer)',
         'The generations of the root execution of an instance, newest first: one per iteration when the root is a loop.'),
        ('df.instance_nodes(text)',
         'One row per node of an instance: its physical and inferred status, result and details.'),
        ('df.instance_nodes(text,integer)',
         'Legacy form of df.instance_nodes, without inferred status; the second argument is ignored.'),
        ('df.metrics()',
         'Engine-wide counts over all roles: instances by status, root executions and node executions.'),
        ('df.explain(text)',
         'Draws a workflow (DSL expression, envelope or SQL text: a dry run) or a live instance as a text tree.'),
        -- Variables
        ('df.setvar(text,text)',
         'Sets your variable name, substituted as {name} in the steps of the instances you start afterwards.'),
        ('df.getvar(text)',
         'The value of your variable name, or NULL.'),
        ('df.unsetvar(text)',
         'Deletes your variable name.'),
        ('df.clearvars()',
         'Deletes all your variables.'),
        -- Administration
        ('df.grant_usage(text,boolean,boolean)',
         'Grants a role what it needs to start and watch its own workflows; include_http adds HTTP steps, with_grant makes it a delegated admin.'),
        ('df.revoke_usage(text)',
         'Revokes, with CASCADE, what the caller granted a role with df.grant_usage.'),
        ('df.version()',
         'The version of the installed df schema and when its files were built.'),
        ('df.target_database()',
         'The server setting pg_durable.database, else the current database.'),
        ('df.enable_new_transaction_mode(text,integer)',
         'Sets up df.start(…, transaction_mode => ''new'') in this database: dblink and a loopback role that can only start instances.'),
        ('df.disable_new_transaction_mode()',
         'Turns transaction_mode => ''new'' off in this database and drops its loopback role.')
    ) AS t(signature, description) LOOP
        IF to_regprocedure(entry.signature) IS NOT NULL THEN
            EXECUTE format('COMMENT ON FUNCTION %s IS %L',
                           to_regprocedure(entry.signature), entry.description);
        END IF;
    END LOOP;

    -- The DSL operators, wherever the install put them (pg_catalog, public or df: 10_dsl.sql).
    FOR entry IN SELECT o.oid::regoperator AS op, t.description
                   FROM (VALUES
        ('~>', 'df.seq', 'a ~> b: a, then b (df.seq).'),
        ('|=>', 'df.as_op', 'fut |=> ''name'': names the result of fut (df.as).'),
        ('&', 'df.join', 'a & b: a and b in parallel, wait for both (df.join).'),
        ('|', 'df.race', 'a | b: a and b in parallel, the first to finish wins (df.race).'),
        ('?>', 'df.if_then_op', 'condition ?> then_branch: a partial IF, completed by !>.'),
        ('!>', 'df.if_else_op', 'condition ?> then_branch !> else_branch: an IF (df.if).'),
        ('@>', 'df.loop_prefix_op', '@> body: a loop without a condition (df.loop).')
                   ) AS t(name, fn, description)
                   JOIN pg_catalog.pg_operator o
                     ON o.oprname = t.name AND o.oprcode = to_regproc(t.fn) LOOP
        EXECUTE format('COMMENT ON OPERATOR %s IS %L', entry.op, entry.description);
    END LOOP;

    -- Tables and views a role granted df usage reads (the rest of schema df is the engine's).
    FOR entry IN SELECT * FROM (VALUES
        ('df.instances', 'TABLE',
         'One row per workflow instance; each role sees its own (row-level security).'),
        ('df.nodes', 'TABLE',
         'The nodes of each instance''s graph as df.start stored them, with their status and result; each role sees its own.'),
        ('df.vars', 'TABLE',
         'Each role''s variables (df.setvar), substituted as {name} in steps; each role sees its own.'),
        ('df.workers', 'VIEW',
         'The workers serving this database and their heartbeats; for administrators.')
    ) AS t(relation, kind, description) LOOP
        IF to_regclass(entry.relation) IS NOT NULL THEN
            EXECUTE format('COMMENT ON %s %s IS %L',
                           entry.kind, to_regclass(entry.relation), entry.description);
        END IF;
    END LOOP;

    FOR entry IN SELECT * FROM (VALUES
        ('df.instances', 'id', 'The instance id: 8 lowercase hex characters.'),
        ('df.instances', 'label', 'The label given to df.start (not unique).'),
        ('df.instances', 'root_node', 'The id of the root node in df.nodes.'),
        ('df.instances', 'status', 'pending, running, completed, failed or cancelled.'),
        ('df.instances', 'submitted_by', 'The role that called df.start; the steps run as this role.'),
        ('df.instances', 'database', 'The database the SQL steps run in (NULL: this one).'),
        ('df.instances', 'created_at', 'When df.start''s transaction began.'),
        ('df.instances', 'updated_at', 'When the status last changed.'),
        ('df.instances', 'completed_at', 'When the instance completed (NULL unless completed).'),
        ('df.nodes', 'id', 'The node id: 8 hex characters, unique within its instance.'),
        ('df.nodes', 'instance_id', 'The instance the node belongs to.'),
        ('df.nodes', 'node_type', 'SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, RETRY or TIMEOUT.'),
        ('df.nodes', 'query', 'The SQL text of a SQL node, else the node''s JSON configuration (or NULL).'),
        ('df.nodes', 'result_name', 'The name given with |=> (df.as), or NULL.'),
        ('df.nodes', 'left_node', 'The first child''s id.'),
        ('df.nodes', 'right_node', 'The second child''s id.'),
        ('df.nodes', 'status', 'Physical status: pending, running, completed or failed (df.instance_nodes also infers skipped).'),
        ('df.nodes', 'result', 'The node''s result, or its error as a JSON string when it failed.'),
        ('df.nodes', 'error', 'Always NULL (kept for compatibility; errors are in result).'),
        ('df.nodes', 'submitted_by', 'The role that called df.start.'),
        ('df.nodes', 'database', 'The database the node runs in (NULL: this one).'),
        ('df.nodes', 'created_at', 'When df.start''s transaction began.'),
        ('df.nodes', 'updated_at', 'When the node''s status last changed.'),
        ('df.nodes', 'status_details', 'Which execution ran the node ({"execution_id": …}), and a RETRY''s attempts.'),
        ('df.vars', 'name', 'The variable name, written {name} in steps.'),
        ('df.vars', 'value', 'The value, substituted as it is (no quoting).'),
        ('df.vars', 'owner', 'The role the variable belongs to.'),
        ('df.workers', 'worker_id', 'The worker''s id, new at each start.'),
        ('df.workers', 'hostname', 'The machine the worker runs on.'),
        ('df.workers', 'pid', 'The worker''s process id.'),
        ('df.workers', 'version', 'The worker''s pg-durable version.'),
        ('df.workers', 'concurrency', 'How many steps the worker runs at once.'),
        ('df.workers', 'started_at', 'When the worker started.'),
        ('df.workers', 'last_seen_at', 'The worker''s last heartbeat.'),
        ('df.workers', 'stopped_at', 'When the worker stopped gracefully (NULL while it runs).'),
        ('df.workers', 'alive', 'Running, with a heartbeat in the last 30 seconds.')
    ) AS t(relation, col, description) LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = to_regclass(entry.relation) AND a.attname = entry.col
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L',
                           to_regclass(entry.relation), entry.col, entry.description);
        END IF;
    END LOOP;
END
$$;
