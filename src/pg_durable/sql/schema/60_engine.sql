-- pg_durable: the engine's state transitions. The worker decides in Python what a step changes
-- (graph/interpreter.py builds a plan); df._commit_step is the one place that writes it, in the
-- same transaction as the step's own statement. Nothing here is granted to anyone.

-- Raises SQLSTATE PD001 unless the instance still runs and every ancestor of the fiber still
-- waits for it (a losing RACE branch or a fiber of a cancelled instance is stale: its step
-- must not commit).
CREATE FUNCTION df._assert_alive(p_instance text, p_scope text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status      text;
    v_parent      text;
    v_at_node     text;
    v_parent_gen  int;
    p_status      text;
    p_node        text;
    p_gen         int;
    p_parent      text;
    p_at_node     text;
    p_parent_gen  int;
BEGIN
    SELECT status INTO v_status FROM df.instances WHERE id = p_instance;
    IF v_status IS NULL OR v_status NOT IN ('pending', 'running') THEN
        RAISE EXCEPTION 'instance % is %', p_instance, coalesce(v_status, 'gone')
            USING ERRCODE = 'PD001';
    END IF;
    SELECT parent_scope, spawned_at_node, parent_generation
      INTO v_parent, v_at_node, v_parent_gen
      FROM df._fibers WHERE scope = p_scope;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fiber % is gone', p_scope USING ERRCODE = 'PD001';
    END IF;
    WHILE v_parent IS NOT NULL LOOP
        SELECT status, node_id, generation, parent_scope, spawned_at_node, parent_generation
          INTO p_status, p_node, p_gen, p_parent, p_at_node, p_parent_gen
          FROM df._fibers WHERE scope = v_parent;
        IF NOT FOUND OR p_status <> 'waiting' OR p_node <> v_at_node
           OR p_gen <> v_parent_gen THEN
            RAISE EXCEPTION 'fiber % no longer waits for %', v_parent, p_scope
                USING ERRCODE = 'PD001';
        END IF;
        v_parent := p_parent;
        v_at_node := p_at_node;
        v_parent_gen := p_parent_gen;
    END LOOP;
END
$$;

-- Apply one step's plan (see engine/plan.py for its JSON shape).
CREATE FUNCTION df._commit_step(p jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_instance text := p->>'instance_id';
    v_scope    text := p->>'scope';
    f          jsonb := p->'fiber';
    inst       jsonb := p->'instance';
    v_notify   boolean := coalesce((p->>'notify')::boolean, false);
    v_parent   text;
    v_woke     text;
    c          text;
BEGIN
    PERFORM df._assert_alive(v_instance, v_scope);

    IF coalesce((p->>'mark_running')::boolean, false) THEN
        UPDATE df.instances SET status = 'running', updated_at = now()
         WHERE id = v_instance AND status = 'pending';
        UPDATE df._instance_state SET started_at = now() WHERE instance_id = v_instance;
    END IF;

    IF jsonb_array_length(coalesce(p->'stamps', '[]')) > 0 THEN
        UPDATE df.nodes n
           SET status = s.status,
               result = s.result::jsonb,
               status_details = jsonb_build_object('execution_id', s.execution_id),
               updated_at = now()
          FROM jsonb_to_recordset(p->'stamps')
               AS s(id text, status text, result text, execution_id text)
         WHERE n.instance_id = v_instance AND n.id = s.id;
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
         WHERE scope IN (SELECT jsonb_array_elements_text(p->'deletes'));
    END IF;

    -- Losing RACE branches: remove what is not running right now (a running step finds its
    -- fiber stale at commit and cleans up after itself), and tell workers to cancel them.
    FOR c IN SELECT jsonb_array_elements_text(coalesce(p->'cancel_scopes', '[]')) LOOP
        DELETE FROM df._fibers
         WHERE scope IN (SELECT x.scope FROM df._fibers x
                          WHERE x.instance_id = v_instance
                            AND (x.scope = c OR left(x.scope, length(c) + 2) = c || '::')
                            FOR UPDATE SKIP LOCKED);
        PERFORM pg_notify('pg_durable', 'cancel-scope:' || c);
    END LOOP;

    IF f IS NULL OR jsonb_typeof(f) = 'null' THEN
        DELETE FROM df._fibers WHERE scope = v_scope;
    ELSE
        UPDATE df._fibers
           SET node_id = f->>'node_id',
               status = f->>'status',
               run_at = greatest(clock_timestamp() + make_interval(secs => (f->>'delay')::float8),
                                 coalesce(to_timestamp((f->>'not_before')::float8), '-infinity')),
               generation = (f->>'generation')::int,
               results = f->'results',
               state = f->'state',
               pending = (f->>'pending')::int,
               wake_at_pending = (f->>'wake_at_pending')::int,
               first_done = NULL,
               outcome = f->'outcome',
               version = version + 1,
               updated_at = now()
         WHERE scope = v_scope
        RETURNING parent_scope INTO v_parent;
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
            IF v_woke = 'ready' THEN
                v_notify := true;
            END IF;
        END IF;
    END IF;

    IF inst IS NOT NULL AND jsonb_typeof(inst) = 'object' THEN
        UPDATE df.instances
           SET status = inst->>'status',
               updated_at = now(),
               completed_at = CASE WHEN inst->>'status' = 'completed' THEN now() END
         WHERE id = v_instance AND status NOT IN ('completed', 'failed', 'cancelled');
        UPDATE df._instance_state
           SET output = inst->>'output',
               execution_count = (inst->>'execution_count')::bigint,
               finished_at = now()
         WHERE instance_id = v_instance;
        -- Whatever else is left of the instance (nothing, unless a stale step still runs).
        DELETE FROM df._fibers
         WHERE scope IN (SELECT x.scope FROM df._fibers x WHERE x.instance_id = v_instance
                            FOR UPDATE SKIP LOCKED);
    END IF;

    IF v_notify THEN
        PERFORM pg_notify('pg_durable', 'work');
    END IF;
END
$$;

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
      FROM df.instances i
     WHERE i.id = p_instance AND n.instance_id = i.id AND n.id = i.root_node;
    DELETE FROM df._fibers
     WHERE scope IN (SELECT x.scope FROM df._fibers x WHERE x.instance_id = p_instance
                        FOR UPDATE SKIP LOCKED);
END
$$;

REVOKE ALL ON FUNCTION df._assert_alive(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._commit_step(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._fail_instance(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._on_instance_insert() FROM PUBLIC;
