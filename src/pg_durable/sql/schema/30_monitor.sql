-- pg_durable: monitoring and control — status, results, listing, node inspection, waiting and
-- cancelling. Every function is SECURITY INVOKER and reads through row-level security, so a
-- role sees only its own instances (another role's ids look like they do not exist).

-- The engine's per-instance facts (execution count, output) are readable by the role that
-- owns the instance: the policy's subquery runs under df.instances' own RLS as the caller.
ALTER TABLE df._instance_state ENABLE ROW LEVEL SECURITY;
CREATE POLICY instance_state_user_isolation ON df._instance_state FOR SELECT
    USING (EXISTS (SELECT 1 FROM df.instances i
                    WHERE i.id OPERATOR(pg_catalog.=) instance_id));

CREATE FUNCTION df.status(instance_id text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.status FROM df.instances i WHERE i.id = status.instance_id
$$;

-- The parameter is qualified: in a SQL function a column of the same name (df.nodes has
-- instance_id) would win over it.
CREATE FUNCTION df.result(instance_id text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.result::text
      FROM df.instances i
      JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
     WHERE i.id = result.instance_id AND n.status = 'completed'
$$;

CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz;
    s        text;
BEGIN
    IF current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION 'df.await_instance() cannot be called inside a workflow - a step that waits for another instance would hold its worker slot; sequence the work in one workflow instead';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive';
    END IF;
    deadline := clock_timestamp() + make_interval(secs => timeout_seconds);
    LOOP
        -- A new snapshot per statement (READ COMMITTED): the worker's commits become visible.
        SELECT i.status INTO s FROM df.instances i WHERE i.id = instance_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'Instance not found: %', instance_id;
        END IF;
        IF s IN ('completed', 'failed', 'cancelled') THEN
            PERFORM df._mark_non_future_helper('df.await_instance()', s);
            RETURN s;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). Check if background worker is running.',
                timeout_seconds, instance_id, s;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds int DEFAULT 30)
RETURNS text LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance() instead';
    RETURN df.await_instance(instance_id, timeout_seconds);
END
$$;

-- pg_durable's df.run is a no-op; workers pick up work by themselves.
CREATE FUNCTION df.run(instance_id text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN instance_id IS NULL THEN 'Triggered run for all pending instances'
                ELSE 'Triggered run for instance: ' || instance_id END
$$;

-- Cancelling is a status change; workers stop a running step of the instance when they see
-- the NOTIFY (sent at commit), and discard whatever else remains of it.
CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user') RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = instance_id) THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id;
    END IF;
    UPDATE df.instances i SET status = 'cancelled', updated_at = now()
     WHERE i.id = instance_id AND i.status NOT IN ('completed', 'failed', 'cancelled');
    IF FOUND THEN
        PERFORM pg_notify('pg_durable', 'cancel:' || instance_id);
    END IF;
    RETURN format('Instance %s cancelled: %s', instance_id, reason);
END
$$;

-- -------------------------------------------------------------------------------------------
-- Listing.

CREATE FUNCTION df._check_list_limit(limit_count int) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    max_limit int := coalesce(nullif(current_setting('pg_durable.list_instances_max_limit', true), '')::int, 1000);
BEGIN
    IF limit_count IS NULL OR limit_count < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1';
    END IF;
    IF limit_count > max_limit THEN
        RAISE EXCEPTION 'df.list_instances: limit_count (%) exceeds pg_durable.list_instances_max_limit (%); request fewer rows, or use the paginated df.list_instances overload (after_cursor/next_cursor) for large result sets',
            limit_count, max_limit;
    END IF;
END
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count int DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text,
               execution_count bigint, output text, created_at timestamptz,
               completed_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM df._check_list_limit(limit_count);
    RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text,
           i.status, coalesce(s.execution_count, 1), s.output, i.created_at, i.completed_at
      FROM df.instances i
      LEFT JOIN df._instance_state s ON s.instance_id = i.id
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC, i.id
     LIMIT limit_count;
END
$$;

-- The keyset cursor: lowercase hex of 'v1|<created_at, microseconds and offset>|<id>'.
-- (Read back case-insensitively, as pg_durable's hex decoder does.)
CREATE FUNCTION df._list_cursor(created_at timestamptz, id text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(convert_to('v1|' || to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS.USOF')
                             || '|' || id, 'UTF8'), 'hex')
$$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count int, label_filter text,
                                  after_cursor text DEFAULT NULL)
RETURNS TABLE (instance_id text, label text, function_name text, status text,
               execution_count bigint, output text, created_at timestamptz,
               completed_at timestamptz, next_cursor text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c_parts text[];
    c_at    timestamptz;
    c_id    text;
BEGIN
    PERFORM df._check_list_limit(limit_count);
    IF after_cursor IS NOT NULL THEN
        BEGIN
            IF length(after_cursor) > 512 OR length(after_cursor) % 2 <> 0
               OR after_cursor !~ '^[0-9a-fA-F]*$' THEN
                RAISE EXCEPTION 'bad cursor';
            END IF;
            c_parts := string_to_array(convert_from(decode(after_cursor, 'hex'), 'UTF8'), '|');
            IF array_length(c_parts, 1) IS DISTINCT FROM 3 OR c_parts[1] <> 'v1'
               OR c_parts[2] = '' OR c_parts[3] = ''
               OR c_parts[2] !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d(:\d\d)?$' THEN
                RAISE EXCEPTION 'bad cursor';
            END IF;
            c_at := c_parts[2]::timestamptz;
            c_id := c_parts[3];
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'df.list_instances: invalid after_cursor';
        END;
    END IF;
    -- One row more than asked for tells whether there is a next page.
    RETURN QUERY
    WITH page AS (
        SELECT i.id::text AS id, i.label, i.status, coalesce(s.execution_count, 1) AS n,
               s.output, i.created_at, i.completed_at,
               row_number() OVER (ORDER BY i.created_at DESC, i.id) AS ord
          FROM df.instances i
          LEFT JOIN df._instance_state s ON s.instance_id = i.id
         WHERE i.created_at IS NOT NULL
           AND (status_filter IS NULL OR i.status = status_filter)
           AND (label_filter IS NULL OR i.label = label_filter)
           AND (c_at IS NULL OR i.created_at < c_at OR (i.created_at = c_at AND i.id > c_id))
         ORDER BY i.created_at DESC, i.id
         LIMIT limit_count + 1
    ), cursor_ AS (
        SELECT CASE WHEN EXISTS (SELECT 1 FROM page WHERE ord > limit_count)
                    THEN (SELECT df._list_cursor(p.created_at, p.id)
                            FROM page p WHERE p.ord = limit_count) END AS c
    )
    SELECT p.id, p.label, 'pg_durable::orchestration::execute-function-graph'::text, p.status,
           p.n, p.output, p.created_at, p.completed_at, cursor_.c
      FROM page p CROSS JOIN cursor_
     WHERE p.ord <= limit_count
     ORDER BY p.ord;
END
$$;

CREATE FUNCTION df.instance_info(instance_id text)
RETURNS TABLE (instance_id text, label text, function_name text, function_version text,
               current_execution_id bigint, status text, output text)
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text,
           coalesce((SELECT m.value FROM df._meta m WHERE m.key = 'schema_version'), ''),
           coalesce(s.execution_count, 1), i.status, s.output
      FROM df.instances i
      LEFT JOIN df._instance_state s ON s.instance_id = i.id
     WHERE i.id = instance_info.instance_id
$$;

-- One row per generation of the root execution, newest first. This engine keeps only the
-- current generation's facts: earlier generations (root-loop iterations) are reported as
-- ContinuedAsNew without event counts or durations; the current one counts its node
-- executions as events.
CREATE FUNCTION df.instance_executions(instance_id text, limit_count int DEFAULT 5)
RETURNS TABLE (execution_id bigint, status text, event_count bigint, duration_ms bigint,
               output text)
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    inst record;
BEGIN
    IF limit_count < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1';
    END IF;
    -- Events of the current generation: the node executions stamped in it, in the root
    -- scope or in any child scope started from it.
    SELECT i.status, coalesce(s.execution_count, 1) AS n, s.output, s.started_at, s.finished_at,
           (SELECT count(*) FROM df.nodes x
             WHERE x.instance_id = i.id
               AND (x.status_details->>'execution_id' = i.id || '::' || coalesce(s.execution_count, 1)
                    OR x.status_details->>'execution_id'
                       LIKE i.id || '::' || coalesce(s.execution_count, 1) || '::%')) AS events
      INTO inst
      FROM df.instances i
      LEFT JOIN df._instance_state s ON s.instance_id = i.id
     WHERE i.id = instance_executions.instance_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT g::bigint,
           CASE WHEN g < inst.n THEN 'ContinuedAsNew'
                WHEN inst.status = 'completed' THEN 'Completed'
                WHEN inst.status IN ('failed', 'cancelled') THEN 'Failed'
                ELSE 'Running' END,
           CASE WHEN g = inst.n THEN inst.events END,
           CASE WHEN g = inst.n AND inst.finished_at IS NOT NULL
                THEN (extract(epoch FROM inst.finished_at - inst.started_at) * 1000)::bigint END,
           CASE WHEN g = inst.n THEN inst.output END
      FROM generate_series(inst.n, greatest(1, inst.n - least(limit_count, 10000) + 1), -1) g;
END
$$;

-- Engine-wide counts, for administrators (EXECUTE is granted by df.grant_usage(…, with_grant
-- => true)); SECURITY DEFINER so they count every role's instances.
CREATE FUNCTION df.metrics()
RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint,
               failed_instances bigint, total_executions bigint, total_events bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*),
           count(*) FILTER (WHERE i.status IN ('pending', 'running')),
           count(*) FILTER (WHERE i.status = 'completed'),
           count(*) FILTER (WHERE i.status IN ('failed', 'cancelled')),
           coalesce(sum(s.execution_count), 0)::bigint,
           (SELECT count(*) FROM df.nodes n WHERE n.status <> 'pending')
      FROM df.instances i
      LEFT JOIN df._instance_state s ON s.instance_id = i.id
$$;
REVOKE ALL ON FUNCTION df.metrics() FROM PUBLIC;

-- -------------------------------------------------------------------------------------------
-- Node inspection with inferred status (SPEC §2.13), shared by df.instance_nodes and
-- df.explain. A node's stamp is '<scope>::<generation>'; a stamp is superseded when a later
-- generation of its scope, or of any enclosing scope, has been stamped since.

CREATE FUNCTION df._try_jsonb(t text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- Linear in the number of nodes whatever the graph's shape or the number of scopes: two
-- single-scan queries gather the facts (each node's status, stamp and children; the highest
-- generation per scope), maps keyed by node id and by scope are jsonb objects (binary-searched),
-- and the rest is PL/pgSQL over arrays, which it keeps expanded (O(1) subscripts). No join:
-- a join would be planned from df.nodes' row estimate, which is far off for a fresh instance,
-- and a nested loop over thousands of nodes is quadratic. A node is visited once, so a
-- hand-built graph with a cycle cannot make the walk loop.
CREATE FUNCTION df._infer_nodes(p_instance text)
RETURNS TABLE (node_id text, inferred_status text, inferred_status_from_ancestor_id text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ids      text[];
    v_st       text[];
    v_stamp    text[];
    v_kids     text[];
    v_ix       jsonb;      -- node id → index
    v_smax     jsonb;      -- scope → highest generation stamped
    v_root     int;
    v_gen      int[] := '{}';
    v_sup      boolean[] := '{}';
    -- Per node, what its ancestors say: the nearest terminal (not superseded) ancestor, the
    -- highest-generation ancestor and that generation.
    v_term     int[] := '{}';
    v_hg_anc   int[] := '{}';
    v_hg       int[] := '{}';
    v_reached  boolean[] := '{}';
    v_queue    int[];
    v_head     int := 1;
    v_tail     int := 1;
    v_out      text[] := '{}';
    v_from     text[] := '{}';
    v_n        int;
    v_p        int;
    v_c        int;
    v_t        int;
    v_ha       int;
    v_hv       int;
    v_k        int;
    v_len      int;
    v_max      int;
    v_seg      text[];
    v_kid      text;
    v_terminal boolean;
BEGIN
    -- Children per node type: THEN/RACE left, right; JOIN also its extras; IF its
    -- condition, then, else; LOOP its body and condition.
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.status ORDER BY x.id),
           array_agg(x.stamp ORDER BY x.id), array_agg(x.kids ORDER BY x.id),
           jsonb_object_agg(x.id, x.ix)
      INTO v_ids, v_st, v_stamp, v_kids, v_ix
      FROM (SELECT y.id::text AS id, y.status, y.status_details->>'execution_id' AS stamp,
                   row_number() OVER (ORDER BY y.id) AS ix,
                   concat_ws(',',
                       CASE WHEN y.node_type = 'IF' THEN y.cfg->>'condition_node' END,
                       y.left_node, y.right_node,
                       CASE WHEN y.node_type = 'LOOP' THEN y.cfg->>'condition_node' END,
                       CASE WHEN y.node_type = 'JOIN' AND jsonb_typeof(y.cfg->'extra_nodes') = 'array'
                            THEN (SELECT string_agg(e, ',')
                                    FROM jsonb_array_elements_text(y.cfg->'extra_nodes') e) END)
                       AS kids
              FROM (SELECT z.*, CASE WHEN z.node_type IN ('IF', 'LOOP', 'JOIN')
                                     THEN df._try_jsonb(z.query) END AS cfg
                      FROM df.nodes z
                     WHERE z.instance_id = p_instance) y) x;
    v_n := coalesce(array_length(v_ids, 1), 0);
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(jsonb_object_agg(s.scope, s.mg), '{}') INTO v_smax
      FROM (SELECT array_to_string(t.seg[1:array_length(t.seg, 1) - 1], '::') AS scope,
                   max(t.seg[array_length(t.seg, 1)]::int) AS mg
              FROM (SELECT string_to_array(z.status_details->>'execution_id', '::') AS seg
                      FROM df.nodes z
                     WHERE z.instance_id = p_instance) t
             WHERE array_length(t.seg, 1) >= 2 AND t.seg[array_length(t.seg, 1)] ~ '^\d{1,9}$'
             GROUP BY 1) s;
    SELECT (v_ix->>i.root_node)::int INTO v_root FROM df.instances i WHERE i.id = p_instance;

    -- Generation of each stamp, and whether a later generation of its scope, or of a scope
    -- enclosing it ('<parent scope>::<parent generation>::<node>'), has been stamped since.
    FOR v_p IN 1 .. v_n LOOP
        v_seg := string_to_array(v_stamp[v_p], '::');
        v_len := coalesce(array_length(v_seg, 1), 0);
        v_gen[v_p] := NULL;
        v_sup[v_p] := false;
        IF v_len >= 2 AND v_seg[v_len] ~ '^\d{1,9}$' THEN
            v_gen[v_p] := v_seg[v_len]::int;
            v_max := (v_smax->>array_to_string(v_seg[1:v_len - 1], '::'))::int;
            v_sup[v_p] := v_gen[v_p] < v_max;
            v_k := 1;
            WHILE NOT v_sup[v_p] AND v_k <= v_len - 3 LOOP
                IF v_seg[v_k + 1] ~ '^\d{1,9}$' THEN
                    v_max := (v_smax->>array_to_string(v_seg[1:v_k], '::'))::int;
                    v_sup[v_p] := coalesce(v_seg[v_k + 1]::int < v_max, false);
                END IF;
                v_k := v_k + 2;
            END LOOP;
        END IF;
    END LOOP;

    IF v_root IS NOT NULL THEN
        v_queue := ARRAY[v_root];
        v_reached[v_root] := true;
        WHILE v_head <= v_tail LOOP
            v_p := v_queue[v_head];
            v_head := v_head + 1;
            v_t := CASE WHEN v_st[v_p] IN ('completed', 'failed') AND NOT v_sup[v_p]
                        THEN v_p ELSE v_term[v_p] END;
            IF v_gen[v_p] IS NOT NULL AND (v_hg[v_p] IS NULL OR v_gen[v_p] >= v_hg[v_p]) THEN
                v_ha := v_p;
                v_hv := v_gen[v_p];
            ELSE
                v_ha := v_hg_anc[v_p];
                v_hv := v_hg[v_p];
            END IF;
            FOREACH v_kid IN ARRAY coalesce(string_to_array(v_kids[v_p], ','), '{}') LOOP
                v_c := (v_ix->>v_kid)::int;
                IF v_c IS NOT NULL AND v_reached[v_c] IS NULL THEN
                    v_reached[v_c] := true;
                    v_term[v_c] := v_t;
                    v_hg_anc[v_c] := v_ha;
                    v_hg[v_c] := v_hv;
                    v_tail := v_tail + 1;
                    v_queue[v_tail] := v_c;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    -- Nodes the walk did not reach (a hand-built graph's strays) keep their physical status.
    -- Computed here, where the arrays are expanded; a query would get them flattened, and
    -- subscripting a flat array of text is linear.
    FOR v_p IN 1 .. v_n LOOP
        v_terminal := v_st[v_p] IN ('completed', 'failed');
        IF v_reached[v_p] IS NULL OR (v_terminal AND NOT v_sup[v_p]) THEN
            v_out[v_p] := v_st[v_p];
            v_from[v_p] := NULL;
        ELSIF v_terminal THEN
            v_out[v_p] := CASE WHEN v_term[v_p] IS NOT NULL THEN 'skipped' ELSE 'pending' END;
            v_from[v_p] := v_ids[coalesce(v_term[v_p], v_hg_anc[v_p])];
        ELSE
            v_out[v_p] := CASE WHEN v_term[v_p] IS NOT NULL THEN 'skipped'
                               WHEN v_st[v_p] = 'running' THEN 'running'
                               ELSE 'pending' END;
            v_from[v_p] := v_ids[v_term[v_p]];
        END IF;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_ids, v_out, v_from);
END
$$;

CREATE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text,
               right_node text, status text, result text, status_details text,
               inferred_status text, inferred_status_from_ancestor_id text,
               updated_at timestamptz, execution_id bigint)
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.id::text, n.node_type, n.query, n.result_name, n.left_node::text,
           n.right_node::text, n.status, n.result::text, n.status_details::text,
           f.inferred_status, f.inferred_status_from_ancestor_id, n.updated_at,
           coalesce(substring(n.status_details->>'execution_id' FROM '::(\d+)$')::bigint, 1)
      FROM df.nodes n
      JOIN df._infer_nodes(instance_id_param) f ON f.node_id = n.id
     WHERE n.instance_id = instance_id_param
$$;

-- pg_durable's legacy projection (the second argument is ignored).
CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions int)
RETURNS TABLE (execution_id bigint, node_id text, node_type text, query text,
               result_name text, left_node text, right_node text, status text, result text,
               updated_at timestamptz)
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT 1::bigint, n.id::text, n.node_type, n.query, n.result_name, n.left_node::text,
           n.right_node::text, n.status, n.result::text, n.updated_at
      FROM df.nodes n
     WHERE n.instance_id = instance_id_param
$$;
