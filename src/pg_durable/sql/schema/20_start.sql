-- pg_durable: df.start. It validates the envelope, flattens it into df.nodes rows and inserts
-- the df.instances row — all in the caller's transaction and through RLS as the caller
-- (SECURITY INVOKER), so a rolled-back start leaves nothing, and column grants limit what a
-- role may write. The AFTER INSERT trigger on df.instances (00_tables.sql) adds the engine's
-- state and wakes the workers at commit.

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
-- (root.left.condition_node, root.extra_nodes[0]).
CREATE FUNCTION df._flatten(fut jsonb) RETURNS df._flat_graph
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    valid_types constant text[] := ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE',
        'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL'];
    valid_text  constant text := 'Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL';
    -- Separate arrays, not fields of a composite: PL/pgSQL updates a standalone array in
    -- place, but copies a composite's array field on every element assignment.
    a_types  text[] := '{}';
    a_query  text[] := '{}';
    a_name   text[] := '{}';
    a_left   int[] := '{}';
    a_right  int[] := '{}';
    a_cond   int[] := '{}';
    a_extra  text[] := '{}';
    -- Work stack of nodes still to visit: their json, path, depth and pre-assigned index.
    s_json   jsonb[] := ARRAY[fut];
    s_path   text[] := ARRAY['root'];
    s_depth  int[] := ARRAY[0];
    s_index  int[] := ARRAY[1];
    top      int := 1;
    n        int := 1;    -- indexes assigned so far
    j        jsonb;
    path     text;
    depth    int;
    idx      int;
    kind     text;
    q        text;
    cfg      jsonb;
    name     text;
    child    jsonb;
    extra_ix int[];
    k        int;
    err      text;
    children jsonb[];
    cpaths   text[];
    cix      int[];
BEGIN
    WHILE top > 0 LOOP
        j := s_json[top]; path := s_path[top]; depth := s_depth[top]; idx := s_index[top];
        top := top - 1;
        IF depth > 256 THEN
            RAISE EXCEPTION 'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.';
        END IF;
        kind := j->>'node_type';
        IF jsonb_typeof(j->'node_type') IS DISTINCT FROM 'string' OR NOT kind = ANY (valid_types) THEN
            IF path = 'root' THEN
                RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. %',
                    coalesce(kind, (j->'node_type')::text, ''), valid_text;
            END IF;
            RAISE EXCEPTION 'Invalid durable function graph: %: Unknown node_type ''%''. %',
                path, coalesce(kind, (j->'node_type')::text, ''), valid_text;
        END IF;
        err := NULL;
        IF coalesce(jsonb_typeof(j->'query'), 'null') NOT IN ('null', 'string') THEN
            err := 'query must be a string';
        ELSIF coalesce(jsonb_typeof(j->'result_name'), 'null') NOT IN ('null', 'string') THEN
            err := 'result_name must be a string';
        ELSIF coalesce(jsonb_typeof(j->'extra_nodes'), 'null') NOT IN ('null', 'array') THEN
            err := 'extra_nodes must be an array';
        END IF;
        IF err IS NOT NULL THEN
            IF path = 'root' THEN
                RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', kind, err;
            END IF;
            RAISE EXCEPTION 'Invalid durable function graph: %: %', path, err;
        END IF;
        q := j->>'query';
        name := j->>'result_name';
        IF name IS NOT NULL AND name !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: result_name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*',
                path, name;
        END IF;
        IF coalesce(jsonb_typeof(j->'condition_node'), 'null') <> 'null' AND kind NOT IN ('IF', 'LOOP') THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: condition_node is not valid for % nodes', path, kind;
        END IF;
        IF coalesce(jsonb_typeof(j->'extra_nodes'), 'null') <> 'null' AND kind <> 'JOIN' THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: extra_nodes is not valid for % nodes', path, kind;
        END IF;

        -- Children, in visiting order.
        children := '{}'; cpaths := '{}';
        FOREACH name IN ARRAY ARRAY['left_node', 'right_node', 'condition_node'] LOOP
            child := j->name;
            IF coalesce(jsonb_typeof(child), 'null') = 'null' THEN
                children := children || NULL::jsonb;
            ELSIF jsonb_typeof(child) <> 'object' THEN
                IF name = 'condition_node' THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: condition_node must be a Durofut JSON object', path;
                END IF;
                RAISE EXCEPTION 'Invalid durable function graph: %: Durofut children must be JSON objects', path;
            ELSE
                children := children || child;
            END IF;
            cpaths := cpaths || (path || '.' || CASE name WHEN 'left_node' THEN 'left'
                                                          WHEN 'right_node' THEN 'right'
                                                          ELSE 'condition_node' END);
        END LOOP;
        extra_ix := NULL;
        IF jsonb_typeof(j->'extra_nodes') = 'array' THEN
            k := 0;
            FOR child IN SELECT e FROM jsonb_array_elements(j->'extra_nodes') e LOOP
                IF jsonb_typeof(child) <> 'object' THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: extra_nodes entries must be Durofut JSON objects', path;
                END IF;
                children := children || child;
                cpaths := cpaths || (path || '.extra_nodes[' || k || ']');
                k := k + 1;
            END LOOP;
        END IF;

        -- Structure and configuration per node type.
        CASE
        WHEN kind = 'SQL' THEN
            IF q IS NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: SQL nodes need a query', path;
            END IF;
        WHEN kind IN ('THEN', 'JOIN', 'RACE') THEN
            IF children[1] IS NULL OR children[2] IS NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: % nodes need a left_node and a right_node', path, kind;
            END IF;
            q := NULL;
        WHEN kind = 'IF' THEN
            IF children[1] IS NULL OR children[2] IS NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: IF nodes need a left_node (then) and a right_node (else)', path;
            END IF;
            IF q IS NOT NULL THEN
                BEGIN
                    cfg := q::jsonb;
                EXCEPTION WHEN invalid_text_representation THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: query in IF must be valid JSON config: %', path, SQLERRM;
                END;
                IF jsonb_typeof(cfg) <> 'object' THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: query in IF must be a JSON config object', path;
                END IF;
                IF cfg->'condition_node' IS NOT NULL THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: condition_node in IF must be a first-class Durofut field, not embedded in query', path;
                END IF;
                IF cfg->>'condition_type' IS DISTINCT FROM 'result_has_rows'
                   OR jsonb_typeof(cfg->'result_name') IS DISTINCT FROM 'string' THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: query in IF must be {"condition_type":"result_has_rows","result_name":"<name>"}', path;
                END IF;
                IF children[3] IS NOT NULL THEN
                    RAISE EXCEPTION 'Invalid durable function graph: %: an IF has either a condition_node or a result_has_rows query, not both', path;
                END IF;
            ELSIF children[3] IS NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: IF nodes need a condition_node', path;
            END IF;
        WHEN kind = 'LOOP' THEN
            IF children[1] IS NULL OR children[2] IS NOT NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: LOOP nodes need a left_node (the body) and no right_node', path;
            END IF;
            q := NULL;
        WHEN kind = 'SLEEP' THEN
            IF q IS NULL OR q !~ '^\s*[0-9]+\s*$' THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: query in SLEEP must be a non-negative whole number of seconds', path;
            END IF;
            q := btrim(q)::bigint::text;
        ELSE  -- BREAK, WAIT_SCHEDULE, SIGNAL, HTTP, HTTP_MULTIPART: a JSON config object
            BEGIN
                cfg := q::jsonb;
            EXCEPTION WHEN invalid_text_representation THEN
                cfg := NULL;
            END;
            IF cfg IS NULL OR jsonb_typeof(cfg) <> 'object' THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: query in % must be a JSON config object', path, kind;
            END IF;
            IF children[1] IS NOT NULL OR children[2] IS NOT NULL THEN
                RAISE EXCEPTION 'Invalid durable function graph: %: % nodes cannot have children', path, kind;
            END IF;
        END CASE;
        IF kind = 'SQL' AND (children[1] IS NOT NULL OR children[2] IS NOT NULL) THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: SQL nodes cannot have children', path;
        END IF;

        -- Give every child its index, then push them so that they pop in pre-order.
        cix := '{}';
        FOR k IN 1 .. coalesce(array_length(children, 1), 0) LOOP
            IF children[k] IS NULL THEN
                cix := cix || NULL::int;
            ELSE
                n := n + 1;
                cix := cix || n;
            END IF;
        END LOOP;
        IF n > 10000 THEN
            RAISE EXCEPTION 'Workflow exceeds maximum node count of 10000. Split it into several workflows (for example, one instance per batch).';
        END IF;
        a_types[idx] := kind;
        a_query[idx] := q;
        a_name[idx] := j->>'result_name';
        a_left[idx] := cix[1];
        a_right[idx] := cix[2];
        a_cond[idx] := cix[3];
        a_extra[idx] := CASE WHEN array_length(cix, 1) > 3
                              THEN array_to_string(cix[4:], ',') END;
        FOR k IN REVERSE coalesce(array_length(children, 1), 0) .. 1 LOOP
            IF children[k] IS NOT NULL THEN
                top := top + 1;
                s_json[top] := children[k];
                s_path[top] := cpaths[k];
                s_depth[top] := depth + 1;
                s_index[top] := cix[k];
            END IF;
        END LOOP;
    END LOOP;
    RETURN ROW(a_types, a_query, a_name, a_left, a_right, a_cond, a_extra)::df._flat_graph;
END
$$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mode     text := lower(coalesce(transaction_mode, 'caller'));
    j        jsonb;
    g        df._flat_graph;
    me       record;
    allowed  text;
    n        int;
    ids      text[];
    inst     text;
    tries    int := 0;
    me_regrole regrole := quote_ident(current_user)::regrole;
    types    text[];
    queries  text[];
    lefts    int[];
    rights   int[];
    conds    int[];
    extras   text[];
    left_ids  text[] := '{}';
    right_ids text[] := '{}';
BEGIN
    IF mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''',
            transaction_mode;
    END IF;
    IF mode = 'new' THEN
        IF current_setting('df.in_workflow', true) = 'true' THEN
            RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' cannot be called inside a workflow - a df.sql() node already runs as a single autocommitted statement, so a plain df.start() there is already independent of any caller transaction';
        END IF;
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' is not available in this version; call df.start() in its own transaction instead'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF fut IS NULL THEN
        RAISE EXCEPTION 'df.start(): the workflow is NULL';
    END IF;

    -- An envelope (a JSON object with a node_type) is validated as a graph; any other text
    -- is a single SQL step.
    IF left(ltrim(fut, E' \t\r\n'), 1) = '{' THEN
        BEGIN
            j := fut::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            j := NULL;
        END;
    END IF;
    IF j IS NULL OR jsonb_typeof(j) <> 'object' OR NOT j ? 'node_type' THEN
        j := df._ensure(fut)::jsonb;
    END IF;
    g := df._flatten(j);

    IF database IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = database) THEN
        RAISE EXCEPTION 'database "%" does not exist', database;
    END IF;

    SELECT r.rolname, r.rolcanlogin, r.rolsuper INTO me
      FROM pg_roles r WHERE r.rolname = current_user;
    IF NOT me.rolcanlogin THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.',
            me.rolname;
    END IF;
    allowed := lower(coalesce(current_setting('pg_durable.enable_superuser_instances', true), ''));
    IF me.rolsuper AND allowed NOT IN ('on', 'true', 'yes', '1') THEN
        RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.',
            me.rolname;
    END IF;

    -- Node ids: random 8-hex, unique within the graph.
    n := array_length(g.node_types, 1);
    LOOP
        ids := ARRAY(SELECT right(gen_random_uuid()::text, 8) FROM generate_series(1, n));
        EXIT WHEN (SELECT count(DISTINCT x) FROM unnest(ids) x) = n;
    END LOOP;

    -- The instance id: re-roll on collision (also with other roles' rows we cannot see).
    LOOP
        tries := tries + 1;
        INSERT INTO df.instances (id, label, root_node, submitted_by, database)
        VALUES (right(gen_random_uuid()::text, 8), label, ids[1], me_regrole, database)
        ON CONFLICT (id) DO NOTHING
        RETURNING id INTO inst;
        EXIT WHEN inst IS NOT NULL;
        IF tries >= 10 THEN
            RAISE EXCEPTION 'failed to start durable function: could not allocate a unique instance id';
        END IF;
    END LOOP;

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
