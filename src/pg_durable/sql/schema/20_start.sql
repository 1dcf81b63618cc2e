-- pg_durable: df.start. It validates the envelope, flattens it into df.nodes rows and inserts
-- the df.instances row — all in the caller's transaction and through RLS as the caller
-- (SECURITY INVOKER), so a rolled-back start leaves nothing, and column grants limit what a
-- role may write. The AFTER INSERT trigger on df.instances (00_tables.sql) adds the engine's
-- state and wakes the workers at commit. With transaction_mode => 'new' the same start runs
-- in a transaction of its own, on a loopback connection (25_new_transaction.sql).

-- The graph as parallel arrays, in pre-order (node, left subtree, right subtree, condition
-- subtree, extra subtrees); children are referenced by their index in these arrays.
CREATE TYPE df._flat_graph AS (
    node_types   text[],
    queries      text[],
    result_names text[],
    lefts        int[],
    rights       int[],
    conditions   int[],
    extras       text[]   -- JOIN: comma-separated indexes of extra branches, else NULL
);

-- Validate and flatten an envelope. Errors name the offending node by its path from the root
-- (root.left.condition_node, root.extra_nodes[0]); a malformed root is reported as such, and
-- the two graph-wide limits (depth, node count) by themselves.
-- Nodes get their index when visited, so the arrays (and the df.nodes rows inserted from
-- them) are in pre-order; a child is linked into its parent's slot at that moment.
-- STABLE, not IMMUTABLE: an HTTP node's limits are settings (12_http.sql).
CREATE FUNCTION df._flatten(fut jsonb) RETURNS df._flat_graph
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    valid_types constant text[] := ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE',
        'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'RETRY', 'TIMEOUT'];
    valid_text  constant text := 'Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT';
    graph_err   constant text := 'Invalid durable function graph:';
    -- Separate arrays, not fields of a composite: PL/pgSQL updates a standalone array in
    -- place, but copies a composite's array field on every element assignment.
    a_types  text[] := '{}';
    a_query  text[] := '{}';
    a_name   text[] := '{}';
    a_left   int[] := '{}';
    a_right  int[] := '{}';
    a_cond   int[] := '{}';
    a_extra  text[] := '{}';
    -- Work stack of nodes still to visit: their json, path, depth, parent index and the
    -- parent's slot they fill (1 left, 2 right, 3 condition, 4 extra).
    s_json   jsonb[] := ARRAY[fut];
    s_path   text[] := ARRAY['root'];
    s_depth  int[] := ARRAY[0];
    s_parent int[] := ARRAY[NULL::int];
    s_slot   int[] := ARRAY[NULL::int];
    top      int := 1;
    n        int := 0;    -- indexes assigned so far
    j        jsonb;
    path     text;
    depth    int;
    idx      int;
    parent   int;
    kind     text;
    q        text;
    cfg      jsonb;
    field    text;
    child    jsonb;
    k        int;
    err      text;
    has      boolean[];   -- left, right, condition present
BEGIN
    WHILE top > 0 LOOP
        j := s_json[top]; path := s_path[top]; depth := s_depth[top];
        parent := s_parent[top];
        CASE s_slot[top]
            WHEN 1 THEN a_left[parent] := n + 1;
            WHEN 2 THEN a_right[parent] := n + 1;
            WHEN 3 THEN a_cond[parent] := n + 1;
            WHEN 4 THEN a_extra[parent] := coalesce(a_extra[parent] || ',', '') || (n + 1);
            ELSE NULL;
        END CASE;
        top := top - 1;
        n := n + 1;
        idx := n;
        -- Every array gets an element per node, so all are dense and 1-based.
        a_left[idx] := NULL;
        a_right[idx] := NULL;
        a_cond[idx] := NULL;
        a_extra[idx] := NULL;
        IF depth > 256 THEN
            RAISE EXCEPTION 'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.';
        END IF;
        IF n > 10000 THEN
            RAISE EXCEPTION 'Workflow exceeds maximum node count of 10000. Split it into several workflows (for example, one instance per batch).';
        END IF;
        kind := j->>'node_type';
        IF jsonb_typeof(j->'node_type') IS DISTINCT FROM 'string' OR NOT kind = ANY (valid_types) THEN
            IF path = 'root' THEN
                RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. %',
                    coalesce(kind, ''), valid_text;
            END IF;
            RAISE EXCEPTION '% %: Unknown node_type ''%''. %', graph_err, path, coalesce(kind, ''), valid_text;
        END IF;
        -- Field types, in serde's words.
        err := NULL;
        FOREACH field IN ARRAY ARRAY['query', 'result_name'] LOOP
            IF err IS NULL AND coalesce(jsonb_typeof(j->field), 'null') NOT IN ('null', 'string') THEN
                err := 'invalid type: ' || df._serde_unexpected(j->field) || ', expected a string';
            END IF;
        END LOOP;
        IF err IS NULL AND coalesce(jsonb_typeof(j->'extra_nodes'), 'null') NOT IN ('null', 'array') THEN
            err := 'invalid type: ' || df._serde_unexpected(j->'extra_nodes') || ', expected a sequence';
        END IF;
        IF err IS NOT NULL THEN
            IF path = 'root' THEN
                RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', kind, err;
            END IF;
            RAISE EXCEPTION '% %: %', graph_err, path, err;
        END IF;
        q := j->>'query';
        IF j->>'result_name' !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
            RAISE EXCEPTION '% %: result_name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*',
                graph_err, path, j->>'result_name';
        END IF;
        IF coalesce(jsonb_typeof(j->'condition_node'), 'null') <> 'null' AND kind NOT IN ('IF', 'LOOP') THEN
            RAISE EXCEPTION '% %: condition_node is not valid for % nodes', graph_err, path, kind;
        END IF;
        IF coalesce(jsonb_typeof(j->'extra_nodes'), 'null') <> 'null' AND kind <> 'JOIN' THEN
            RAISE EXCEPTION '% %: extra_nodes is not valid for % nodes', graph_err, path, kind;
        END IF;
        has := ARRAY[false, false, false];
        k := 0;
        FOREACH field IN ARRAY ARRAY['left_node', 'right_node', 'condition_node'] LOOP
            k := k + 1;
            child := j->field;
            IF coalesce(jsonb_typeof(child), 'null') <> 'null' THEN
                IF jsonb_typeof(child) <> 'object' THEN
                    IF field = 'condition_node' THEN
                        RAISE EXCEPTION '% %: condition_node must be a Durofut JSON object', graph_err, path;
                    END IF;
                    RAISE EXCEPTION '% %: Durofut children must be JSON objects', graph_err, path;
                END IF;
                has[k] := true;
            END IF;
        END LOOP;
        IF jsonb_typeof(j->'extra_nodes') = 'array'
           AND jsonb_path_exists(j->'extra_nodes', 'strict $[*] ? (@.type() != "object")') THEN
            RAISE EXCEPTION '% %: extra_nodes entries must be Durofut JSON objects', graph_err, path;
        END IF;

        -- Structure and configuration per node type.
        CASE
        WHEN kind = 'SQL' THEN
            IF q IS NULL THEN
                RAISE EXCEPTION '% %: SQL nodes need a query', graph_err, path;
            END IF;
            IF has[1] OR has[2] THEN
                RAISE EXCEPTION '% %: SQL nodes cannot have children', graph_err, path;
            END IF;
        WHEN kind IN ('THEN', 'JOIN', 'RACE') THEN
            IF NOT (has[1] AND has[2]) THEN
                RAISE EXCEPTION '% %: % nodes need a left_node and a right_node', graph_err, path, kind;
            END IF;
            q := NULL;   -- JOIN's query is rebuilt from its extra_nodes
        WHEN kind = 'IF' THEN
            IF NOT (has[1] AND has[2]) THEN
                RAISE EXCEPTION '% %: IF nodes need a left_node (then) and a right_node (else)', graph_err, path;
            END IF;
            IF q IS NOT NULL THEN
                BEGIN
                    cfg := q::jsonb;
                EXCEPTION WHEN invalid_text_representation THEN
                    RAISE EXCEPTION '% %: query in IF must be valid JSON config: %', graph_err, path, SQLERRM;
                END;
                IF jsonb_typeof(cfg) <> 'object' THEN
                    RAISE EXCEPTION '% %: query in IF must be a JSON config object', graph_err, path;
                END IF;
                IF cfg ? 'condition_node' THEN
                    RAISE EXCEPTION '% %: condition_node in IF must be a first-class Durofut field, not embedded in query', graph_err, path;
                END IF;
                IF cfg->>'condition_type' IS DISTINCT FROM 'result_has_rows'
                   OR jsonb_typeof(cfg->'result_name') IS DISTINCT FROM 'string' THEN
                    RAISE EXCEPTION '% %: query in IF must be {"condition_type":"result_has_rows","result_name":"<name>"}', graph_err, path;
                END IF;
                IF has[3] THEN
                    RAISE EXCEPTION '% %: an IF has either a condition_node or a result_has_rows query, not both', graph_err, path;
                END IF;
            ELSIF NOT has[3] THEN
                RAISE EXCEPTION '% %: IF nodes need a condition_node', graph_err, path;
            END IF;
        WHEN kind = 'LOOP' THEN
            IF NOT has[1] OR has[2] THEN
                RAISE EXCEPTION '% %: LOOP nodes need a left_node (the body) and no right_node', graph_err, path;
            END IF;
            q := NULL;   -- rebuilt from the condition_node, if any
        WHEN kind IN ('RETRY', 'TIMEOUT') THEN
            -- df.retry / df.timeout: one child, the settings as their JSON config (10_dsl.sql).
            IF NOT has[1] OR has[2] THEN
                RAISE EXCEPTION '% %: % nodes need a left_node (the node they wrap) and no right_node', graph_err, path, kind;
            END IF;
            cfg := df._try_jsonb(q);
            SELECT w.config, w.error INTO q, err FROM df._wrapper_config(kind, cfg) w;
            IF err IS NOT NULL THEN
                RAISE EXCEPTION '% %: %', graph_err, path, err;
            END IF;
        WHEN kind = 'SLEEP' THEN
            -- (Digits beyond bigint fail the cast: 'value "…" is out of range'.)
            IF q IS NULL OR q !~ '^\s*[0-9]+\s*$' THEN
                RAISE EXCEPTION '% %: query in SLEEP must be a non-negative whole number of seconds', graph_err, path;
            END IF;
            q := btrim(q)::bigint::text;
        ELSE  -- BREAK, WAIT_SCHEDULE, SIGNAL, HTTP, HTTP_MULTIPART: a JSON config object
            BEGIN
                cfg := q::jsonb;
            EXCEPTION WHEN invalid_text_representation THEN
                cfg := NULL;
            END;
            IF cfg IS NULL OR jsonb_typeof(cfg) <> 'object' THEN
                RAISE EXCEPTION '% %: query in % must be a JSON config object', graph_err, path, kind;
            END IF;
            IF has[1] OR has[2] THEN
                RAISE EXCEPTION '% %: % nodes cannot have children', graph_err, path, kind;
            END IF;
            IF kind = 'WAIT_SCHEDULE' THEN
                IF jsonb_typeof(cfg->'cron_expr') IS DISTINCT FROM 'string' THEN
                    RAISE EXCEPTION '% %: query in WAIT_SCHEDULE must be {"cron_expr":"<cron expression>"}', graph_err, path;
                END IF;
                err := df._cron_error(cfg->>'cron_expr');   -- 15_cron.sql
                IF err IS NOT NULL THEN
                    RAISE EXCEPTION '% %: %', graph_err, path, err;
                END IF;
            ELSIF kind = 'SIGNAL' THEN
                -- What df.wait_for_signal checks, for a hand-built node.
                IF jsonb_typeof(cfg->'signal_name') IS DISTINCT FROM 'string'
                   OR cfg->>'signal_name' = '' THEN
                    RAISE EXCEPTION '% %: Signal name cannot be empty', graph_err, path;
                END IF;
                IF coalesce(jsonb_typeof(cfg->'timeout_seconds'), 'null') <> 'null'
                   AND (jsonb_typeof(cfg->'timeout_seconds') <> 'number'
                        OR (cfg->>'timeout_seconds') !~ '^[0-9]+$'
                        OR (cfg->>'timeout_seconds')::numeric NOT BETWEEN 1 AND 2147483647) THEN
                    RAISE EXCEPTION '% %: Timeout must be positive', graph_err, path;
                END IF;
            ELSIF kind IN ('HTTP', 'HTTP_MULTIPART') THEN
                -- What df.http / df.http_multipart check (12_http.sql), stored as they store it.
                err := df._http_config_error(kind, cfg);
                IF err IS NOT NULL THEN
                    RAISE EXCEPTION '% %: %', graph_err, path, err;
                END IF;
                q := df._http_config_text(kind, cfg);
            END IF;
        END CASE;
        a_types[idx] := kind;
        a_query[idx] := q;
        a_name[idx] := j->>'result_name';

        -- Push the children so that they pop in pre-order: left, right, condition, extras.
        IF jsonb_typeof(j->'extra_nodes') = 'array' THEN
            FOR k IN REVERSE jsonb_array_length(j->'extra_nodes') - 1 .. 0 LOOP
                top := top + 1;
                s_json[top] := j->'extra_nodes'->k;
                s_path[top] := path || '.extra_nodes[' || k || ']';
                s_depth[top] := depth + 1;
                s_parent[top] := idx;
                s_slot[top] := 4;
            END LOOP;
        END IF;
        FOR k IN REVERSE 3 .. 1 LOOP
            IF has[k] THEN
                top := top + 1;
                s_json[top] := j->(ARRAY['left_node', 'right_node', 'condition_node'])[k];
                s_path[top] := path || '.' || (ARRAY['left', 'right', 'condition_node'])[k];
                s_depth[top] := depth + 1;
                s_parent[top] := idx;
                s_slot[top] := k;
            END IF;
        END LOOP;
    END LOOP;
    RETURN ROW(a_types, a_query, a_name, a_left, a_right, a_cond, a_extra)::df._flat_graph;
END
$$;

-- Whether the config of a lone SIGNAL or WAIT_SCHEDULE node is one df.wait_for_signal or
-- df.wait_for_schedule would build (df.start's fast path; df._flatten judges the rest).
CREATE FUNCTION df._plain_wait_config(kind text, q text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg jsonb;
BEGIN
    cfg := q::jsonb;
    IF jsonb_typeof(cfg) <> 'object' THEN
        RETURN false;
    END IF;
    IF kind = 'SIGNAL' THEN
        RETURN jsonb_typeof(cfg->'signal_name') = 'string' AND cfg->>'signal_name' <> ''
           AND (coalesce(jsonb_typeof(cfg->'timeout_seconds'), 'null') = 'null'
                OR (cfg->>'timeout_seconds' ~ '^[0-9]{1,10}$'
                    AND (cfg->>'timeout_seconds')::bigint BETWEEN 1 AND 2147483647));
    END IF;
    RETURN jsonb_typeof(cfg->'cron_expr') = 'string'
       AND df._cron_error(cfg->>'cron_expr') IS NULL;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN false;
END
$$;

-- The start itself, for df.start below. `submitter` NULL: the caller (current_user) submits,
-- and everything runs as the caller. Otherwise the owner of schema df starts the instance for
-- that role: df._start_on_behalf (25_new_transaction.sql), after its checks, runs as the owner;
-- nobody else may name another role (RLS would refuse the rows anyway).
-- No SET search_path here, on purpose: both callers set it (df.start, df._start_on_behalf),
-- and a second SET clause costs every df.start several microseconds (a GUC change on entry
-- and exit, and a fresh search path for every statement after each). Called directly, it
-- runs as the caller with the caller's own search path, so it can only mislead the caller.
CREATE FUNCTION df._start(fut text, label text, database text, submitter regrole)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    j        jsonb;
    g        df._flat_graph;   -- NULL for a lone node, given by kind, q and rname
    kind     text;
    q        text;
    rname    text;
    me       record;
    n        int := 1;
    u        text;
    seed     bigint;
    ids      text[];
    inst     text;
    tries    int := 0;
    me_regrole regrole := coalesce(submitter, quote_ident(current_user)::regrole);
    types    text[];
    queries  text[];
    lefts    int[];
    rights   int[];
    conds    int[];
    extras   text[];
    left_ids  text[] := '{}';
    right_ids text[] := '{}';
BEGIN
    IF submitter IS NOT NULL
       AND submitter::oid <> (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user)
       AND NOT pg_has_role((SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'df'), 'USAGE') THEN
        RAISE EXCEPTION 'df._start(): only the owner of schema df may start an instance for another role'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF fut IS NULL THEN
        RAISE EXCEPTION 'df.start(): the workflow is NULL';
    END IF;
    -- Before anything parses it: a graph this large would be held several times over here
    -- (text, jsonb, rows of df.nodes) and by every worker that loads it.
    IF octet_length(fut) > coalesce(nullif(current_setting('pg_durable.max_graph_bytes', true), '')::bigint,
                                    16777216) THEN
        RAISE EXCEPTION 'df.start(): the workflow is % bytes, more than pg_durable.max_graph_bytes (%); build it from fewer or smaller steps (keep bulk data in tables, not in statement text), or raise the setting',
            octet_length(fut),
            coalesce(nullif(current_setting('pg_durable.max_graph_bytes', true), ''), '16777216')
            USING ERRCODE = 'program_limit_exceeded';
    END IF;

    -- An envelope (a JSON object with a node_type) is validated as a graph; any other text
    -- is a single SQL step, as df._ensure makes it.
    IF left(ltrim(fut, E' \t\r\n'), 1) = '{' THEN
        BEGIN
            j := fut::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            j := NULL;
        END;
    END IF;
    IF j IS NULL OR jsonb_typeof(j) <> 'object' THEN
        kind := 'SQL';
        q := fut;
        IF current_setting('df.non_future_helper', true) <> '' THEN
            q := df._refuse_helper_result(fut);
        END IF;
    ELSIF NOT j ? 'node_type' THEN
        kind := 'SQL';
        q := fut;
    ELSE
        -- A lone SQL, SLEEP, SIGNAL or WAIT_SCHEDULE node that is plainly valid needs no
        -- graph walk (the common df.start('SELECT …'), df.start(df.sleep(n)),
        -- df.start(df.wait_for_signal(…))); anything else, and every error, is df._flatten's.
        kind := j->>'node_type';
        q := j->>'query';
        rname := j->>'result_name';
        IF kind IN ('SQL', 'SLEEP', 'SIGNAL', 'WAIT_SCHEDULE')
           AND jsonb_typeof(j->'query') = 'string'
           AND coalesce(jsonb_typeof(j->'result_name'), 'null') IN ('null', 'string')
           AND (rname IS NULL OR rname ~ '^[A-Za-z_][A-Za-z0-9_]*$')
           AND NOT j ?| ARRAY['left_node', 'right_node', 'condition_node', 'extra_nodes']
           AND (CASE kind WHEN 'SQL' THEN true
                          WHEN 'SLEEP' THEN q ~ '^\s*[0-9]{1,18}\s*$'
                          ELSE df._plain_wait_config(kind, q) END) THEN
            IF kind = 'SLEEP' THEN
                q := btrim(q)::bigint::text;
            END IF;
        ELSE
            g := df._flatten(j);
            n := array_length(g.node_types, 1);
        END IF;
    END IF;

    -- (Nested: an expression with a subquery runs as a query even when database is NULL.)
    IF database IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = database) THEN
            RAISE EXCEPTION 'database "%" does not exist', database;
        END IF;
        -- What connecting as the role would check: its steps run there as if it had.
        IF NOT has_database_privilege(me_regrole, database, 'CONNECT') THEN
            RAISE EXCEPTION 'permission denied for database "%"', database
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'User does not have CONNECT privilege.';
        END IF;
    END IF;

    SELECT r.rolname, r.rolcanlogin, r.rolsuper INTO me
      FROM pg_roles r WHERE r.oid = me_regrole::oid;
    IF NOT me.rolcanlogin THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.',
            me.rolname;
    END IF;
    IF me.rolsuper
       AND lower(coalesce(current_setting('pg_durable.enable_superuser_instances', true), ''))
           NOT IN ('on', 'true', 'yes', '1') THEN
        RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.',
            me.rolname;
    END IF;

    -- Ids: 8 hex digits. One random UUID gives the instance id (its last 8 digits) and a seed
    -- (its first 8) for the node ids: node i gets seed + i * 2654435761 (mod 2^32). That odd
    -- multiplier is invertible mod 2^32, so distinct nodes get distinct ids by construction
    -- and need no duplicate check.
    u := gen_random_uuid()::text;
    seed := ('x' || left(u, 8))::bit(32)::bigint;
    FOR i IN 1 .. n LOOP
        ids[i] := lpad(to_hex((seed + i * 2654435761) % 4294967296), 8, '0');
    END LOOP;

    -- The instance id: re-roll on collision (also with other roles' rows we cannot see).
    LOOP
        tries := tries + 1;
        INSERT INTO df.instances (id, label, root_node, submitted_by, database)
        VALUES (right(u, 8), label, ids[1], me_regrole, database)
        ON CONFLICT (id) DO NOTHING
        RETURNING id INTO inst;
        EXIT WHEN inst IS NOT NULL;
        IF tries >= 10 THEN
            RAISE EXCEPTION 'failed to start durable function: could not allocate a unique instance id';
        END IF;
        u := gen_random_uuid()::text;
    END LOOP;

    IF g IS NULL THEN
        INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, submitted_by, database)
        VALUES (ids[1], inst, kind, q, rname, me_regrole, database);
        RETURN inst;
    END IF;

    -- Resolve child indexes to ids in PL/pgSQL, where local arrays are expanded and
    -- subscripts O(1); then insert all rows at once from the zipped arrays (subscripting
    -- arrays inside the INSERT would re-read them in full for every row).
    types := g.node_types; queries := g.queries; lefts := g.lefts; rights := g.rights;
    conds := g.conditions; extras := g.extras;
    FOR i IN 1 .. n LOOP
        left_ids[i] := ids[lefts[i]];
        right_ids[i] := ids[rights[i]];
        IF conds[i] IS NOT NULL THEN
            queries[i] := '{"condition_node":"' || ids[conds[i]] || '"}';
        ELSIF extras[i] IS NOT NULL THEN
            queries[i] := '{"extra_nodes":["'
                || array_to_string(ARRAY(SELECT ids[x::int]
                                           FROM unnest(string_to_array(extras[i], ',')) x),
                                   '","')
                || '"]}';
        END IF;
    END LOOP;
    INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                          submitted_by, database)
    SELECT t.id, inst, t.node_type, t.query, t.result_name, t.left_node, t.right_node,
           me_regrole, database
      FROM unnest(ids, types, queries, g.result_names, left_ids, right_ids)
           AS t(id, node_type, query, result_name, left_node, right_node);
    RETURN inst;
END
$$;

-- df.start (SPEC §2.2): the transaction mode, then the start — in the caller's transaction, or
-- with transaction_mode => 'new' in one of its own (df._start_new, 25_new_transaction.sql).
CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mode text;
BEGIN
    IF transaction_mode IS DISTINCT FROM 'caller' THEN
        mode := lower(coalesce(transaction_mode, 'caller'));
        IF mode NOT IN ('caller', 'new') THEN
            RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''',
                transaction_mode;
        END IF;
        IF mode = 'new' THEN
            IF current_setting('df.in_workflow', true) = 'true' THEN
                RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' cannot be called inside a workflow - a df.sql() node already runs as a single autocommitted statement, so a plain df.start() there is already independent of any caller transaction';
            END IF;
            IF fut IS NULL THEN   -- (no need for a connection to say so)
                RAISE EXCEPTION 'df.start(): the workflow is NULL';
            END IF;
            -- The effective role submits, as in caller mode (SET ROLE and SECURITY DEFINER
            -- wrappers included); df._start_new checks the session may act as it.
            RETURN df._start_new(fut, label, database, quote_ident(current_user)::regrole);
        END IF;
    END IF;
    RETURN df._start(fut, label, database, NULL);
END
$$;
