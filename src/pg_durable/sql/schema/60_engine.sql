-- pg_durable: the engine's state transitions. The worker decides in Python what a step changes
-- (graph/interpreter.py builds a plan); df._commit_steps is the one place that writes it, in
-- the same transaction as the step's own statement. Nothing here is granted to anyone.
--
-- Three rules keep a step's cost flat, whatever the work in flight:
-- * Rows are found by primary key whatever the statistics say. They lag the work: tables
--   analyzed while little ran say that no instance is pending and no fiber ready, and planned
--   from that a join by primary key can turn into a scan of every pending instance for each
--   row of a batch (seen: 156 ms for a batch of 64 with 10,000 instances pending), or into a
--   scan of every fiber that probes the batch's list for each (120 ms a batch with 5,000
--   fibers): a table whose statistics say it holds a row or two is read whole rather than
--   probed, however large it has grown since. So the functions on the hot path run with
--   sequential scans, hash and merge joins off; a batch's rows are found by "key = ANY (the
--   list)" and take their values from the plans by their place in the list, never by a join
--   with the list; a single value is looked up by a scalar subquery; and statuses are tested
--   in a form that a status index cannot serve.
-- * Functions are PL/pgSQL, whose statements can be planned once per session, and are told
--   to be (plan_cache_mode = force_generic_plan): left to choose, PL/pgSQL keeps planning a
--   statement anew at each call whenever a plan made for its parameters' values looks cheaper
--   than the generic one, as the writes of a batch's plans always did — 60 to 80 µs each, a
--   fifth of a lone step's whole commit. A LANGUAGE sql function with a SET clause is never
--   inlined, and its statements are planned anew at every call.
-- * No JIT: statistics that lag the work (an instance with thousands of nodes, says a sample
--   of a burst) can put a statement's estimated cost past jit_above_cost, and compiling it
--   then takes 15-20 ms for a statement that runs in 0.1 ms — at every call.

-- Whether a fiber's step may still commit: the instance still runs and every ancestor of the
-- fiber still waits for it (a losing RACE branch, or a fiber of a cancelled or finished
-- instance, is stale).
CREATE FUNCTION df._fiber_alive(p_instance text, p_scope text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_parent     text;
    v_at_node    text;
    v_parent_gen int;
    p_status     text;
    p_node       text;
    p_gen        int;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM df.instances
                    WHERE id = p_instance AND (status IN ('pending', 'running')) IS TRUE) THEN
        RETURN false;
    END IF;
    SELECT parent_scope, spawned_at_node, parent_generation
      INTO v_parent, v_at_node, v_parent_gen
      FROM df._fibers WHERE scope = p_scope;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    WHILE v_parent IS NOT NULL LOOP
        SELECT status, node_id, generation
          INTO p_status, p_node, p_gen
          FROM df._fibers WHERE scope = v_parent;
        IF NOT FOUND OR p_status <> 'waiting' OR p_node <> v_at_node
           OR p_gen <> v_parent_gen THEN
            RETURN false;
        END IF;
        SELECT parent_scope, spawned_at_node, parent_generation
          INTO v_parent, v_at_node, v_parent_gen
          FROM df._fibers WHERE scope = v_parent;
    END LOOP;
    RETURN true;
END
$$;

-- Remove a fiber and every fiber below it, except rows another worker holds right now (their
-- own commit finds them stale and removes them).
CREATE FUNCTION df._drop_fibers(p_instance text, p_scope text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM df._fibers
     WHERE scope = ANY (ARRAY(
               SELECT x.scope FROM df._fibers x
                WHERE x.instance_id = p_instance
                  AND (x.scope = p_scope OR left(x.scope, length(p_scope) + 2) = p_scope || '::')
                  FOR UPDATE SKIP LOCKED));
END
$$;

-- The workers' sweep (engine/worker.py): fibers nobody will ever run — of a finished or
-- removed instance, or a child whose parent is gone or has moved on — are removed, except
-- rows another worker holds right now. A call examines the next p_batch fibers in the order of
-- their keys after p_after ('' for the first) and returns the last key it examined, where the
-- next call goes on (NULL: no fiber was left). Each call is a short statement whatever the
-- table holds, and finds the batch's rows by primary key (the rules at the top of this file):
-- a sweep that looked through every fiber at once, and one that read a range of keys through
-- whichever index statistics of an empty table made look as cheap, ran for minutes with
-- 100,000 fibers in flight, and for as long as it ran no dead row could be removed anywhere —
-- a fiber's update could no longer reuse its own page (HOT), and the claims walked hundreds
-- of thousands of dead entries of the ready queue (a step cost the server twice as much).
-- Whether a fiber is left behind does not change once it is: an instance that finished stays
-- finished, a parent that moved on never comes back to the same generation.
CREATE FUNCTION df._sweep_fibers(p_after text, p_batch int) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off SET jit = off AS $$
DECLARE
    v_scopes text[];
BEGIN
    v_scopes := ARRAY(SELECT f.scope FROM df._fibers f
                       WHERE f.scope > p_after ORDER BY f.scope LIMIT p_batch);
    IF cardinality(v_scopes) = 0 THEN
        RETURN NULL;
    END IF;
    DELETE FROM df._fibers
     WHERE scope = ANY (ARRAY(
               SELECT f.scope
                 FROM df._fibers f
                WHERE f.scope = ANY (v_scopes)
                  AND (((SELECT i.status FROM df.instances i WHERE i.id = f.instance_id)
                        IN ('pending', 'running')) IS NOT TRUE
                       OR (f.parent_scope IS NOT NULL AND f.status <> 'done'
                           AND (SELECT p.status = 'waiting' AND p.node_id = f.spawned_at_node
                                       AND p.generation = f.parent_generation
                                  FROM df._fibers p WHERE p.scope = f.parent_scope) IS NOT TRUE))
                  FOR UPDATE OF f SKIP LOCKED));
    RETURN v_scopes[cardinality(v_scopes)];
END
$$;

-- Write the node stamps of plans in one statement. A stamp is {"id", "status", "result",
-- "status_details"}, its result the node's result as a JSON value (no "result": none), and
-- status_details whole (execution_id, and a RETRY's attempts): nothing to parse or build per
-- row. Each stamp finds its row by primary key: the stamps are a subquery the planner keeps
-- apart (OFFSET 0), so that it loops over them — joined as a plain function scan, they were
-- planned the other way round, every node of an instance read and compared with every stamp
-- of it; one UPDATE per stamp pays the statement's set-up, CHECK constraints included, each
-- time. (A join, unlike the other writes of a batch, as a node's key has two columns; it
-- stays the right way round because df.nodes keeps the nodes of finished instances, so its
-- statistics never say it is nearly empty while a burst of work fills it.)
CREATE FUNCTION df._write_stamps(p_plans jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
BEGIN
    UPDATE df.nodes n
       SET status = s.status,
           result = s.result,
           status_details = s.status_details,
           updated_at = now()
      FROM (SELECT x->>'instance_id' AS instance_id, st->>'id' AS id, st->>'status' AS status,
                   st->'result' AS result, st->'status_details' AS status_details
              FROM unnest(p_plans) x, jsonb_array_elements(x->'stamps') st
            OFFSET 0) s
     WHERE n.instance_id = s.instance_id AND n.id = s.id;
END
$$;

-- Write the fibers of plans (their "fiber": where it stands now, what it holds) in one
-- statement; returns each fiber's scope and parent scope. A fiber that goes on at once keeps
-- its run_at: then no indexed column changes, and the update is a HOT one (no new entries in
-- the fiber's four indexes) where its page has room — most of them, with the table's
-- fillfactor. Where it stands in the queue does not change either: the worker claims it again
-- by its scope, at once (claim_continued).
--
-- No join: the fibers are found by "scope = ANY (the list)" and each takes its values from
-- the plans by its place in the list (array_position: a batch is at most a few dozen plans;
-- jsonb_object_agg, for a jsonb object to look them up in, takes 0.6 ms for 64). Joined with
-- the list, a table whose statistics say it holds a row or two — what they say after a burst
-- of work, its pages nearly empty, while the next burst fills them again — was read whole,
-- every fiber compared with the whole list (120 ms a batch with 5,000 fibers, 10 ms a batch
-- even at 100,000 with the usual statistics); disabling scans does not prevent it, the
-- planner then keeps a disabled plan.
CREATE FUNCTION df._write_fibers(p_plans jsonb[]) RETURNS TABLE (scope text, parent_scope text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
#variable_conflict use_column
DECLARE
    scopes text[];
    fibers jsonb[];
BEGIN
    SELECT array_agg(x->>'scope'), array_agg(x->'fiber')
      INTO scopes, fibers
      FROM unnest(p_plans) x
     WHERE jsonb_typeof(x->'fiber') = 'object';
    RETURN QUERY
    WITH written AS (
        UPDATE df._fibers f
           SET (node_id, status, run_at, generation, results, state, pending, wake_at_pending,
                outcome, awaiting) =
               (SELECT m.node_id, m.status,
                       CASE WHEN m.status = 'ready' AND m.delay = 0 AND m.not_before IS NULL
                                 AND f.status = 'ready' AND f.run_at <= now()
                            THEN f.run_at
                            ELSE greatest(clock_timestamp() + make_interval(secs => m.delay),
                                          coalesce(to_timestamp(m.not_before), '-infinity'))
                       END,
                       m.generation, m.results, m.state, m.pending, m.wake_at_pending,
                       m.outcome, m.awaiting
                  FROM jsonb_to_record(fibers[array_position(scopes, f.scope)])
                       AS m(node_id text, status text, delay float8, not_before float8,
                            generation int, results jsonb, state jsonb, pending int,
                            wake_at_pending int, outcome jsonb, awaiting text)),
               first_done = NULL,
               version = f.version + 1,
               updated_at = now()
         WHERE f.scope = ANY (scopes)
        RETURNING f.scope, f.parent_scope
    )
    SELECT w.scope, w.parent_scope FROM written w;
END
$$;

-- Apply one step's plan (see _plan_json in engine/executor.py for its JSON shape). Returns
-- whether it woke a parent fiber. Raises SQLSTATE PD001 when the fiber turns out to be stale.
CREATE FUNCTION df._apply_plan(p jsonb) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    v_instance text := p->>'instance_id';
    v_scope    text := p->>'scope';
    f          jsonb := p->'fiber';
    inst       jsonb := p->'instance';
    v_parent   text;
    v_woke     text;
    c          text;
BEGIN
    IF coalesce((p->>'mark_running')::boolean, false) THEN
        UPDATE df.instances SET status = 'running', updated_at = now()
         WHERE id = v_instance AND (status = 'pending') IS TRUE;
        UPDATE df._instance_state SET started_at = now() WHERE instance_id = v_instance;
    END IF;

    IF jsonb_array_length(coalesce(p->'stamps', '[]')) > 0 THEN
        PERFORM df._write_stamps(ARRAY[p]);
    END IF;

    IF jsonb_array_length(coalesce(p->'spawns', '[]')) > 0 THEN
        INSERT INTO df._fibers (scope, instance_id, parent_scope, branch, spawned_at_node,
                                parent_generation, root_node, node_id, status, run_at,
                                generation, results, state, pending, wake_at_pending, outcome)
        SELECT s.scope, v_instance, s.parent_scope, s.branch, s.spawned_at_node,
               s.parent_generation, s.root_node, s.node_id, s.status,
               greatest(clock_timestamp() + make_interval(secs => s.delay),
                        coalesce(to_timestamp(s.not_before), '-infinity')),
               s.generation, s.results, s.state, s.pending, s.wake_at_pending, s.outcome
          FROM jsonb_to_recordset(p->'spawns')
               AS s(scope text, parent_scope text, branch int, spawned_at_node text,
                    parent_generation int, root_node text, node_id text, status text,
                    delay float8, not_before float8, generation int, results jsonb,
                    state jsonb, pending int, wake_at_pending int, outcome jsonb);
    END IF;

    IF jsonb_array_length(coalesce(p->'deletes', '[]')) > 0 THEN
        DELETE FROM df._fibers
         WHERE scope = ANY (ARRAY(SELECT jsonb_array_elements_text(p->'deletes')));
    END IF;

    -- Losing RACE branches: remove what is not running right now (a running step finds its
    -- fiber stale at commit and cleans up after itself), and tell workers to cancel them.
    FOR c IN SELECT jsonb_array_elements_text(coalesce(p->'cancel_scopes', '[]')) LOOP
        PERFORM df._drop_fibers(v_instance, c);
        PERFORM pg_notify('pg_durable', 'cancel-scope:' || c);
    END LOOP;

    IF f IS NULL OR jsonb_typeof(f) = 'null' THEN
        DELETE FROM df._fibers WHERE scope = v_scope;
    ELSE
        SELECT w.parent_scope INTO v_parent FROM df._write_fibers(ARRAY[p]) w;
        IF f->>'status' = 'done' AND v_parent IS NOT NULL THEN
            -- Serialised by the parent's row lock: of two siblings finishing at once, the
            -- second sees the first's update (and, for a RACE, that it lost).
            UPDATE df._fibers
               SET pending = pending - 1,
                   first_done = coalesce(first_done, v_scope),
                   status = CASE WHEN pending - 1 <= wake_at_pending THEN 'ready' ELSE 'waiting' END,
                   run_at = now(),
                   version = version + 1,
                   updated_at = now()
             WHERE scope = v_parent AND status = 'waiting'
            RETURNING status INTO v_woke;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'fiber % no longer waits for %', v_parent, v_scope
                    USING ERRCODE = 'PD001';
            END IF;
        END IF;
    END IF;

    IF p ? 'execution_count' THEN
        UPDATE df._instance_state SET execution_count = (p->>'execution_count')::bigint
         WHERE instance_id = v_instance;
    END IF;

    IF inst IS NOT NULL AND jsonb_typeof(inst) = 'object' THEN
        -- completed_at is when the instance completed, not when its last transaction began
        -- (a batch's transaction can be older than its commit by the batch window).
        UPDATE df.instances
           SET status = inst->>'status',
               updated_at = now(),
               completed_at = CASE WHEN inst->>'status' = 'completed' THEN clock_timestamp() END
         WHERE id = v_instance AND status NOT IN ('completed', 'failed', 'cancelled');
        UPDATE df._instance_state
           SET output = inst->>'output',
               execution_count = (inst->>'execution_count')::bigint,
               finished_at = now()
         WHERE instance_id = v_instance;
        -- Whatever else is left of the instance (nothing, unless a stale step still runs),
        -- and signals nobody will wait for any more.
        PERFORM df._drop_fibers(v_instance, v_instance);
        DELETE FROM df._signals WHERE instance_id = v_instance;
    END IF;
    RETURN v_woke = 'ready';
END
$$;

-- The plans of a batch that create no fibers and finish no child — nearly all of them: a
-- fiber moves along, or a root fiber finishes its instance — written together: one statement
-- per table for the whole batch instead of several per plan. Rows are found by
-- "key = ANY (the list)" and take their values from the plans by their place in the list, as
-- in df._write_fibers: no join whose order the planner could turn round.
CREATE FUNCTION df._apply_moves(p_plans jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    -- The instances the plans finish, and beside each (same place) its "instance".
    finished text[];
    outcomes jsonb[];
    -- The instances whose loops report their iterations, and beside each the count.
    counted_ids text[];
    counts      bigint[];
    -- (An instance that starts and finishes here — one quick step — is written once, as
    -- finished.)
    starting text[] := ARRAY(SELECT x->>'instance_id' FROM unnest(p_plans) x
                              WHERE (x->>'mark_running')::boolean
                                AND jsonb_typeof(x->'instance') IS DISTINCT FROM 'object');
    -- What the plans hold besides stamps: a statement that would change nothing still costs
    -- its start-up, and a batch of one (a lone step) is the usual case.
    moving   boolean;
    consumed boolean;
    counted  boolean;
BEGIN
    SELECT coalesce(bool_or(jsonb_typeof(x->'fiber') = 'object'), false),
           coalesce(bool_or(jsonb_array_length(x->'deletes') > 0), false),
           coalesce(bool_or(x ? 'execution_count'), false)
      INTO moving, consumed, counted
      FROM unnest(p_plans) x;
    IF cardinality(starting) > 0 THEN
        -- (A status test idx_instances_status cannot serve: planned from statistics taken
        -- while nothing was pending, a plain one would read every pending instance.)
        UPDATE df.instances i SET status = 'running', updated_at = now()
         WHERE i.id = ANY (starting) AND (i.status = 'pending') IS TRUE;
        UPDATE df._instance_state st SET started_at = now()
         WHERE st.instance_id = ANY (starting);
    END IF;
    PERFORM df._write_stamps(p_plans);
    IF moving THEN
        PERFORM df._write_fibers(p_plans);
    END IF;
    IF consumed THEN
        -- Finished children their parents consumed.
        DELETE FROM df._fibers
         WHERE scope = ANY (ARRAY(SELECT jsonb_array_elements_text(x->'deletes')
                                    FROM unnest(p_plans) x));
    END IF;
    IF counted THEN
        -- Root loops report their iterations while they run (df.list_instances'
        -- execution_count).
        SELECT array_agg(x->>'instance_id'), array_agg((x->>'execution_count')::bigint)
          INTO counted_ids, counts
          FROM unnest(p_plans) x
         WHERE x ? 'execution_count';
        UPDATE df._instance_state s
           SET execution_count = counts[array_position(counted_ids, s.instance_id::text)]
         WHERE s.instance_id = ANY (counted_ids);
    END IF;
    SELECT array_agg(x->>'instance_id'), array_agg(x->'instance') INTO finished, outcomes
      FROM unnest(p_plans) x
     WHERE jsonb_typeof(x->'instance') = 'object';
    IF finished IS NULL THEN
        RETURN;
    END IF;
    -- Finished instances. completed_at is when the instance completed, not when its last
    -- transaction began (a batch's transaction can be older than its commit by the window).
    UPDATE df.instances i
       SET (status, completed_at) =
           (SELECT o->>'status',
                   CASE WHEN o->>'status' = 'completed' THEN clock_timestamp() END
              FROM (SELECT outcomes[array_position(finished, i.id::text)] AS o) x),
           updated_at = now()
     WHERE i.id = ANY (finished) AND (i.status NOT IN ('completed', 'failed', 'cancelled')) IS TRUE;
    UPDATE df._instance_state s
       SET (output, execution_count) =
           (SELECT o->>'output', (o->>'execution_count')::bigint
              FROM (SELECT outcomes[array_position(finished, s.instance_id::text)] AS o) x),
           started_at = coalesce(s.started_at, now()),
           finished_at = now()
     WHERE s.instance_id = ANY (finished);
    -- Their root fibers (a root fiber's scope is its instance id); any other fiber still
    -- left goes when it is next claimed or swept (its instance no longer runs). And signals
    -- nobody will wait for any more.
    DELETE FROM df._fibers WHERE scope = ANY (finished);
    DELETE FROM df._signals WHERE instance_id = ANY (finished);
END
$$;

-- Commit the plans of one transaction's steps (one per fiber) and return the scopes that
-- turned out to be stale: their plan is discarded and what is left of them removed. A step's
-- own statement has committed or will commit with this transaction either way — like a step
-- of pg_durable that was in flight when its instance was cancelled or its RACE decided.
CREATE FUNCTION df._commit_steps(p_plans jsonb) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    p        jsonb;
    v_notify boolean := false;
    v_stale  boolean;
    moves    jsonb[] := '{}';
    -- Root fibers (or what were ones: a plan has no fiber when it finished its instance) are
    -- locked by this transaction, so they are alive while their instances run: one look for
    -- all of them, each instance found by its primary key. (The status test is written so
    -- that idx_instances_status cannot serve it: planned from statistics taken while little
    -- ran, a plain IN read every pending and running instance through that index per plan.)
    running  text[] := ARRAY(SELECT i.id::text FROM df.instances i
                              WHERE i.id = ANY (ARRAY(SELECT x->>'instance_id'
                                                        FROM jsonb_array_elements(p_plans) x
                                                       WHERE x->'fiber'->>'parent_scope' IS NULL))
                                AND (i.status IN ('pending', 'running')) IS TRUE);
BEGIN
    FOR p IN SELECT jsonb_array_elements(p_plans) LOOP
        IF p->'fiber'->>'parent_scope' IS NULL THEN
            v_stale := NOT (p->>'instance_id') = ANY (running);
        ELSE
            v_stale := NOT df._fiber_alive(p->>'instance_id', p->>'scope');
        END IF;
        IF v_stale THEN
            NULL;
        ELSIF jsonb_array_length(p->'spawns') = 0 AND jsonb_array_length(p->'cancel_scopes') = 0
              AND (p->'fiber'->>'status' IS DISTINCT FROM 'done'
                   OR p->'fiber'->>'parent_scope' IS NULL) THEN
            moves := moves || p;
        ELSIF p->'fiber'->>'status' = 'done' AND p->'fiber'->>'parent_scope' IS NOT NULL THEN
            -- Only a finishing child can find its parent moved on while it committed (a
            -- sibling won the RACE meanwhile); undo its plan then.
            BEGIN
                v_notify := df._apply_plan(p) OR v_notify;
            EXCEPTION WHEN SQLSTATE 'PD001' THEN
                v_stale := true;
            END;
        ELSE
            v_notify := df._apply_plan(p) OR v_notify;
        END IF;
        IF v_stale THEN
            PERFORM df._drop_fibers(p->>'instance_id', p->>'scope');
            RETURN NEXT p->>'scope';
            CONTINUE;
        END IF;
        -- The signals its waits took leave the inbox with the plan, never without it.
        IF jsonb_array_length(coalesce(p->'signals', '[]')) > 0 THEN
            DELETE FROM df._signals
             WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(p->'signals')::bigint));
        END IF;
        IF coalesce((p->>'notify')::boolean, false) THEN
            v_notify := true;
        END IF;
    END LOOP;
    IF cardinality(moves) > 0 THEN
        PERFORM df._apply_moves(moves);
    END IF;
    IF v_notify THEN
        PERFORM pg_notify('pg_durable', 'work');
    END IF;
END
$$;

-- A lone step sent with its checkpoint (engine/executor.py, _commit): when a step's success
-- can only be recorded, not read — its result is not named, nor a condition — the worker
-- sends its statement, its plans and COMMIT in one query string, a marker standing for the
-- result in the plans. Called on the row df_exec.run_steps returned for that step (inside
-- SAVEPOINT step): a failure, or rows with other columns than the worker described, raises —
-- the string stops before the plans; the worker rolls back to the savepoint and records the
-- step as it always does. Else the result text, as the worker makes it from rows of types
-- whose row_to_json text is their value's (graph/sqlresult.py), is kept for
-- df._with_step_result, in this transaction only. Returns the seconds the statement took.
CREATE FUNCTION df._step_ahead(p_rows text[], p_error text, p_seconds float8, p_columns int)
RETURNS float8 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_error IS NOT NULL THEN
        RAISE EXCEPTION 'the step sent with its checkpoint failed'
            USING ERRCODE = 'PDAHD',
                  DETAIL = (p_error::jsonb || jsonb_build_object('seconds', p_seconds))::text;
    END IF;
    IF EXISTS (SELECT FROM unnest(p_rows) r
                WHERE (SELECT count(*) FROM jsonb_object_keys(r::jsonb)) <> p_columns) THEN
        RAISE EXCEPTION 'the rows of the step sent with its checkpoint have other columns than described'
            USING ERRCODE = 'PDAHS';
    END IF;
    -- (A setting set with is_local lasts until the transaction ends, past RELEASE SAVEPOINT.)
    PERFORM set_config('pg_durable.step_result',
                       '{"rows":[' || array_to_string(p_rows, ',') || '],"row_count":'
                       || cardinality(p_rows) || '}',
                       true);
    RETURN p_seconds;
END
$$;

-- The plans of a step sent with its checkpoint (p_plans: JSON text), with its result text,
-- kept by df._step_ahead, where p_marker stands for it: as a JSON string "<marker>" where the
-- plans hold the result as JSON (a node's stamp), and escaped inside a string where they hold
-- it as text (the instance's output, a fiber's outcome).
CREATE FUNCTION df._with_step_result(p_plans text, p_marker text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_result text := current_setting('pg_durable.step_result', true);
    v_quoted text;
BEGIN
    IF coalesce(v_result, '') = '' THEN
        RAISE EXCEPTION 'df._with_step_result(): no step ran ahead in this transaction';
    END IF;
    PERFORM set_config('pg_durable.step_result', '', true);
    v_quoted := to_json(v_result)::text;
    RETURN replace(replace(p_plans, '\"' || p_marker || '\"', substr(v_quoted, 2, length(v_quoted) - 2)),
                   '"' || p_marker || '"', v_result)::jsonb;
END
$$;

-- When a WAIT_SCHEDULE node reached now waits until (15_cron.sql): {"at": <epoch seconds>},
-- or {"error": <message>} — which fails the node, not the worker's transaction.
CREATE FUNCTION df._schedule_tick(p_expr text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN jsonb_build_object(
        'at', extract(epoch FROM df._cron_next(p_expr, now(), df._cron_timezone())));
EXCEPTION WHEN OTHERS THEN
    RETURN jsonb_build_object('error', SQLERRM);
END
$$;

-- Take the runnable fibers that are due first; the row locks last for the whole transaction.
-- How many: the backlog's share of this worker's slots, between 1 and the batch size — so
-- that a few runnable fibers (the branches of a JOIN) go to several slots and really run at
-- once, while a long queue is worked off in batches. Counting stops where the answer would,
-- but for one more: backlog tells the worker whether there is more than it took (then another
-- slot looks), which a count that stopped at a full batch could not (a burst of work announced
-- by one notification was run by the one slot that heard it, the others asleep until their
-- next poll).
-- With a long queue each slot takes from its own lane (a hash of the scope), so that slots
-- do not all queue up for the same first rows and skip each other's locks one by one; from
-- any lane if its own has nothing for it.
-- A function, so that its plan is made once per session, not at every claim (the worker's
-- step connections use no prepared statements: a step may DEALLOCATE ALL); a generic plan,
-- and rows of df.instances found by primary key whatever the statistics say. No bitmap
-- scans: one would read every ready fiber (100,000 of them, say) to keep the first few.
CREATE FUNCTION df._claim(p_batch_size int, p_slots int, p_lane int)
RETURNS TABLE (scope text, instance_id varchar, parent_scope text, branch int,
               spawned_at_node varchar, parent_generation int, root_node varchar,
               node_id varchar, generation int, results jsonb, state jsonb, first_done text,
               version bigint, instance_status text, db_now float8, backlog bigint,
               loaded jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_lanes int := p_slots;  -- one lane per slot, then (if its own was empty) one for all
BEGIN
    LOOP
        RETURN QUERY
        WITH share AS (
            SELECT greatest(1, least(p_batch_size, count(*) / p_slots)) AS n, count(*) AS backlog
              FROM (SELECT 1 FROM df._fibers
                     WHERE status = 'ready' AND run_at <= now()
                     ORDER BY run_at  -- by the index, not a scan through dead rows of past fibers
                     LIMIT p_batch_size * p_slots + 1) backlog
        ), claimed AS (
            SELECT f.scope, f.instance_id, f.parent_scope, f.branch, f.spawned_at_node,
                   f.parent_generation, f.root_node, f.node_id, f.generation, f.results, f.state,
                   f.first_done, f.version
              FROM df._fibers f
             WHERE f.status = 'ready' AND f.run_at <= now()
               AND (v_lanes = 1 OR (SELECT backlog FROM share) < 4 * v_lanes
                    OR mod(abs(hashtext(f.scope)::bigint), v_lanes) = p_lane)
             ORDER BY f.run_at
             LIMIT (SELECT n FROM share)
               FOR UPDATE OF f SKIP LOCKED
        )
        -- A new instance's graph comes with its first claim (see load_instances): no worker
        -- has it cached yet, and it saves a round trip between df.start and the first step.
        -- Loaded once the rows are locked, not while they are being found: the longer a claim
        -- takes from reading a row to locking it, the likelier the row has changed meanwhile,
        -- and a claim keeps the lock of a row it took but no longer wants (df._wake_for_signal
        -- in 35_signals.sql).
        SELECT c.scope, c.instance_id, c.parent_scope, c.branch, c.spawned_at_node,
               c.parent_generation, c.root_node, c.node_id, c.generation, c.results, c.state,
               c.first_done, c.version,
               (SELECT i.status FROM df.instances i WHERE i.id = c.instance_id),
               extract(epoch FROM now())::float8, (SELECT backlog FROM share),
               CASE WHEN c.parent_scope IS NULL AND c.state ? 'start' THEN
                   (SELECT to_jsonb(l) FROM df._load_instances(ARRAY[c.instance_id::text]) l)
               END
          FROM claimed c;
        -- Its lane was empty (the others' fibers held, say): any runnable fiber will do, in the
        -- same round trip.
        EXIT WHEN FOUND OR v_lanes = 1;
        v_lanes := 1;
    END LOOP;
END
$$;

-- Seconds until the next timer (Infinity: none): how long an idle slot may sleep (the
-- next_run_at query). Only future ones: a fiber due now that a claim did not get is held by
-- another slot, which carries it on or wakes this one when it lets it go. A function, so that
-- its plan is made once per session: planned at every call it cost fourteen times what it
-- took to run (70 µs against 5).
CREATE FUNCTION df._next_run_at() RETURNS float8
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET jit = off AS $$
BEGIN
    RETURN coalesce(extract(epoch FROM (SELECT min(f.run_at) FROM df._fibers f
                                         WHERE f.status = 'ready' AND f.run_at > now())
                                        - now())::float8,
                    'Infinity');
END
$$;

-- Claim the fibers of a list again, those still runnable and not held elsewhere (see the
-- claim_continued query), each by its primary key: the status test is one that the partial
-- index _fibers_ready cannot serve (a planner that believes few fibers are runnable would
-- rather read every runnable fiber through it).
CREATE FUNCTION df._claim_fibers(p_scopes text[])
RETURNS TABLE (scope text, instance_id varchar, parent_scope text, branch int,
               spawned_at_node varchar, parent_generation int, root_node varchar,
               node_id varchar, generation int, results jsonb, state jsonb, first_done text,
               version bigint, instance_status text, db_now float8)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET jit = off AS $$
BEGIN
    RETURN QUERY
    SELECT f.scope, f.instance_id, f.parent_scope, f.branch, f.spawned_at_node,
           f.parent_generation, f.root_node, f.node_id, f.generation, f.results, f.state,
           f.first_done, f.version,
           (SELECT i.status FROM df.instances i WHERE i.id = f.instance_id),
           extract(epoch FROM now())::float8
      FROM df._fibers f
     WHERE f.scope = ANY (p_scopes) AND (f.status = 'ready') IS TRUE AND f.run_at <= now()
       FOR UPDATE OF f SKIP LOCKED;
END
$$;

-- Instances as the worker runs them: graph, role, variables (the claim and load_instances
-- queries). The role's own settings (ALTER ROLE … SET, also … IN DATABASE — the database its
-- steps run in) apply to its steps as they would to a session of the role; the database's own
-- apply to the worker's connections to it already.
CREATE FUNCTION df._load_instances(p_ids text[])
RETURNS TABLE (id varchar, root_node varchar, label text, database text, same_database boolean,
               role_oid oid, rolname name, rolsuper boolean, vars jsonb,
               superuser_setting text, role_settings text[], nodes json)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT i.id, i.root_node, i.label, i.database,
           i.database = current_database() AS same_database,
           i.submitted_by::oid AS role_oid, r.rolname, r.rolsuper, s.vars,
           coalesce(current_setting('pg_durable.enable_superuser_instances', true), 'off')
               AS superuser_setting,
           ARRAY(SELECT c.setting
                   FROM pg_catalog.pg_db_role_setting d,
                        LATERAL unnest(d.setconfig) WITH ORDINALITY AS c(setting, n)
                  WHERE d.setrole = i.submitted_by::oid
                    AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                                               WHERE datname = coalesce(i.database,
                                                                        current_database())))
                  ORDER BY d.setdatabase, c.n) AS role_settings,
           (SELECT json_agg(json_build_array(n.id, n.node_type, n.query, n.result_name,
                                             n.left_node, n.right_node))
              FROM df.nodes n WHERE n.instance_id = i.id) AS nodes
      FROM df.instances i
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = i.submitted_by::oid
      LEFT JOIN df._instance_state s ON s.instance_id = i.id
     WHERE i.id = ANY (p_ids);
END
$$;

-- A cancelled instance (df.cancel) gives up, in the same transaction, everything that waits:
-- its fibers — a timer due next week, a wait for a signal — and its inbox. A fiber a worker
-- holds right now is skipped; that worker finds it stale when it commits, and the worker
-- cancels its statement when it hears the NOTIFY df.cancel sends.
CREATE FUNCTION df._on_instance_cancel() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM df._drop_fibers(NEW.id, NEW.id);
    DELETE FROM df._signals WHERE instance_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER instances_cancelled AFTER UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (NEW.status = 'cancelled' AND OLD.status IS DISTINCT FROM 'cancelled')
    EXECUTE FUNCTION df._on_instance_cancel();

-- The UPDATE (status, updated_at) a role holds on df.instances is there for df.cancel. Any
-- other change of status by a role — a running or waiting instance marked 'completed', a
-- finished one set back to 'running' — would leave the instance and the engine's state out of
-- step (a fiber waiting forever, a 'running' instance nothing runs), so only the engine (the
-- owner of df.instances, or a superuser) makes it. SECURITY INVOKER: current_user is whoever
-- updates.
CREATE FUNCTION df._guard_instance_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'Instance %: its status is the engine''s to change; a role may only cancel its own pending or running instance (df.cancel)',
        OLD.id
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = format('status %s → %s refused', OLD.status, NEW.status);
END
$$;
CREATE TRIGGER instances_status_guard BEFORE UPDATE OF status ON df.instances
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NOT (NEW.status = 'cancelled' AND OLD.status IN ('pending', 'running')))
    EXECUTE FUNCTION df._guard_instance_status();

-- Fail an instance the worker cannot run (malformed hand-built graph, dropped role, refused
-- superuser, internal error): the instance and its root node carry the reason.
CREATE FUNCTION df._fail_instance(p_instance text, p_message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE df.instances SET status = 'failed', updated_at = now()
     WHERE id = p_instance AND status NOT IN ('completed', 'failed', 'cancelled');
    UPDATE df._instance_state SET output = p_message, finished_at = now()
     WHERE instance_id = p_instance;
    UPDATE df.nodes n
       SET status = 'failed', result = to_jsonb(p_message), updated_at = now()
     WHERE n.instance_id = p_instance
       AND n.id = (SELECT i.root_node FROM df.instances i WHERE i.id = p_instance);
    PERFORM df._drop_fibers(p_instance, p_instance);
    DELETE FROM df._signals WHERE instance_id = p_instance;
END
$$;

REVOKE ALL ON FUNCTION df._fiber_alive(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._drop_fibers(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._sweep_fibers(text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._write_stamps(jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._write_fibers(jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._apply_plan(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._apply_moves(jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._commit_steps(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._step_ahead(text[], text, float8, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._with_step_result(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._claim(int, int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._next_run_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._claim_fibers(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._load_instances(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._on_instance_cancel() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._guard_instance_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._schedule_tick(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._fail_instance(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._on_instance_insert() FROM PUBLIC;
