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
    SELECT i.status FROM df.instances i WHERE i.id = instance_id
$$;

CREATE FUNCTION df.result(instance_id text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.result::text
      FROM df.instances i
      JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
     WHERE i.id = instance_id AND n.status = 'completed'
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
    PERFORM df._mark_non_future_helper('df.await_instance()');
    deadline := clock_timestamp() + make_interval(secs => timeout_seconds);
    LOOP
        -- A new snapshot per statement (READ COMMITTED): the worker's commits become visible.
        SELECT i.status INTO s FROM df.instances i WHERE i.id = instance_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'Instance not found: %', instance_id;
        END IF;
        IF s IN ('completed', 'failed', 'cancelled') THEN
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
               OR after_cursor !~ '^[0-9a-f]*$' THEN
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
-- ContinuedAsNew without event counts or durations.
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
    SELECT i.status, coalesce(s.execution_count, 1) AS n, s.output, s.started_at, s.finished_at
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
           NULL::bigint,
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

CREATE FUNCTION df._infer_nodes(p_instance text)
RETURNS TABLE (node_id text, inferred_status text, inferred_status_from_ancestor_id text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH RECURSIVE
n AS (
    SELECT x.id::text AS id, x.node_type, x.status, x.left_node::text AS l,
           x.right_node::text AS r,
           CASE WHEN x.node_type IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(x.query) END AS cfg,
           string_to_array(x.status_details->>'execution_id', '::') AS seg
      FROM df.nodes x
     WHERE x.instance_id = p_instance
),
stamp AS (
    SELECT n.id, n.seg,
           array_to_string(n.seg[1:array_length(n.seg, 1) - 1], '::') AS scope,
           n.seg[array_length(n.seg, 1)]::int AS gen
      FROM n
     WHERE array_length(n.seg, 1) >= 2 AND n.seg[array_length(n.seg, 1)] ~ '^\d+$'
),
scope_max AS (
    SELECT scope, max(gen) AS mg FROM stamp GROUP BY scope
),
node AS (
    SELECT n.id, n.node_type, n.status, n.l, n.r, n.cfg, st.gen,
           -- A window, not a join with scope_max: with a stale row estimate for one big
           -- instance the planner picked a nested loop (quadratic in the number of scopes).
           coalesce(st.gen < max(st.gen) OVER (PARTITION BY st.scope)
                    OR EXISTS (SELECT 1
                                 FROM generate_series(1, array_length(st.seg, 1) - 3, 2) k
                                 JOIN scope_max a
                                   ON a.scope = array_to_string(st.seg[1:k], '::')
                                WHERE st.seg[k + 1] ~ '^\d+$' AND st.seg[k + 1]::int < a.mg),
                    false) AS superseded
      FROM n
      LEFT JOIN stamp st ON st.id = n.id
),
edge AS (
    SELECT p.id AS parent, c.child
      FROM node p
     CROSS JOIN LATERAL (
        SELECT p.cfg->>'condition_node' WHERE p.node_type = 'IF'
        UNION ALL SELECT p.l
        UNION ALL SELECT p.r
        UNION ALL SELECT p.cfg->>'condition_node' WHERE p.node_type = 'LOOP'
        UNION ALL SELECT e FROM jsonb_array_elements_text(
            CASE WHEN p.node_type = 'JOIN' AND jsonb_typeof(p.cfg->'extra_nodes') = 'array'
                 THEN p.cfg->'extra_nodes' ELSE '[]'::jsonb END) e
     ) AS c(child)
     WHERE c.child IS NOT NULL
),
walk AS (
    SELECT i.root_node::text AS id, NULL::text AS term_anc, NULL::text AS hg_anc,
           NULL::int AS hg, 0 AS depth
      FROM df.instances i WHERE i.id = p_instance
    UNION ALL
    SELECT e.child,
           CASE WHEN p.status IN ('completed', 'failed') AND NOT p.superseded
                THEN p.id ELSE w.term_anc END,
           CASE WHEN p.gen IS NOT NULL AND (w.hg IS NULL OR p.gen >= w.hg)
                THEN p.id ELSE w.hg_anc END,
           CASE WHEN p.gen IS NOT NULL AND (w.hg IS NULL OR p.gen >= w.hg)
                THEN p.gen ELSE w.hg END,
           w.depth + 1
      FROM walk w
      JOIN node p ON p.id = w.id
      JOIN edge e ON e.parent = w.id
     WHERE w.depth < 10001
)
SELECT node.id,
       CASE
           WHEN w.id IS NULL THEN node.status
           WHEN node.status IN ('completed', 'failed') AND NOT node.superseded THEN node.status
           WHEN node.status IN ('completed', 'failed') THEN
               CASE WHEN w.term_anc IS NOT NULL THEN 'skipped' ELSE 'pending' END
           WHEN w.term_anc IS NOT NULL THEN 'skipped'
           WHEN node.status = 'running' THEN 'running'
           ELSE 'pending'
       END,
       CASE
           WHEN w.id IS NULL THEN NULL
           WHEN node.status IN ('completed', 'failed') AND NOT node.superseded THEN NULL
           WHEN node.status IN ('completed', 'failed') THEN coalesce(w.term_anc, w.hg_anc)
           ELSE w.term_anc
       END
  FROM node
  LEFT JOIN (SELECT DISTINCT ON (walk.id) walk.* FROM walk ORDER BY walk.id, walk.depth) w
    ON w.id = node.id
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
