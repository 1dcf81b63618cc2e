-- pg_durable: the DSL. Every constructor returns a "Durofut" envelope: compact JSON text with
-- the fields in serde order (node_type, left_node, right_node, condition_node, extra_nodes,
-- query, result_name) and children embedded as objects, byte-identical to pg_durable's. The
-- envelope is transient: df.start flattens it into df.nodes.
--
-- The text is assembled by concatenation (jsonb would reorder keys); a child is embedded with
-- the exact text it arrived with, so composing never re-serialises a subtree.

-- An envelope from its parts. Children and extra_nodes are JSON texts, query/result_name plain.
CREATE FUNCTION df._node(node_type text, left_node text DEFAULT NULL, right_node text DEFAULT NULL,
                         condition_node text DEFAULT NULL, extra_nodes text DEFAULT NULL,
                         query text DEFAULT NULL, result_name text DEFAULT NULL)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT '{"node_type":' || to_json(node_type)::text
        || coalesce(',"left_node":' || left_node, '')
        || coalesce(',"right_node":' || right_node, '')
        || coalesce(',"condition_node":' || condition_node, '')
        || coalesce(',"extra_nodes":' || extra_nodes, '')
        || coalesce(',"query":' || to_json(query)::text, '')
        || coalesce(',"result_name":' || to_json(result_name)::text, '')
        || '}'
$$;

-- Helpers that are not workflow steps (df.setvar, df.unsetvar, df.clearvars,
-- df.await_instance) mark the statement they run in, so that composing their return value
-- ('OK', a status) into a workflow fails loudly instead of becoming a SQL step 'OK'.
CREATE FUNCTION df._mark_non_future_helper(helper text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT set_config('df.non_future_helper', helper || '|' || statement_timestamp()::text, false);
$$;

-- Auto-wrap (pg_durable's Durofut::ensure): an envelope is used as it is, anything else becomes
-- a SQL step. Only the top level is checked here; df.start validates the whole graph.
CREATE FUNCTION df._ensure(fut text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j      json;
    marker text;
    kind   text;
    field  text;
BEGIN
    IF left(ltrim(fut, E' \t\r\n'), 1) = '{' THEN
        BEGIN
            j := fut::json;
        EXCEPTION WHEN invalid_text_representation THEN
            j := NULL;
        END;
    END IF;
    IF j IS NULL OR json_typeof(j) <> 'object' THEN
        marker := current_setting('df.non_future_helper', true);
        IF marker IS NOT NULL AND marker <> ''
           AND split_part(marker, '|', 2) = statement_timestamp()::text THEN
            RAISE EXCEPTION '% cannot be used as a workflow step. Call % before df.start().',
                split_part(marker, '|', 1), split_part(marker, '|', 1);
        END IF;
        RETURN df._node('SQL', query => fut);
    END IF;
    kind := j->>'node_type';
    IF json_typeof(j->'node_type') IS DISTINCT FROM 'string'
       OR kind NOT IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
                       'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL') THEN
        RETURN df._node('SQL', query => fut);
    END IF;
    FOREACH field IN ARRAY ARRAY['left_node', 'right_node', 'condition_node'] LOOP
        IF coalesce(json_typeof(j->field), 'null') NOT IN ('null', 'object') THEN
            RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: % must be a Durofut JSON object, got %',
                field, json_typeof(j->field);
        END IF;
    END LOOP;
    IF coalesce(json_typeof(j->'extra_nodes'), 'null') NOT IN ('null', 'array') THEN
        RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: extra_nodes must be an array, got %',
            json_typeof(j->'extra_nodes');
    END IF;
    FOREACH field IN ARRAY ARRAY['query', 'result_name'] LOOP
        IF coalesce(json_typeof(j->field), 'null') NOT IN ('null', 'string') THEN
            RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: % must be a string, got %',
                field, json_typeof(j->field);
        END IF;
    END LOOP;
    RETURN fut;
END
$$;

-- The envelope with its top-level fields rebuilt in canonical order (children kept as text).
CREATE FUNCTION df._with_name(fut text, name text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node(j->>'node_type',
                    nullif((j->'left_node')::text, 'null'),
                    nullif((j->'right_node')::text, 'null'),
                    nullif((j->'condition_node')::text, 'null'),
                    nullif((j->'extra_nodes')::text, 'null'),
                    j->>'query',
                    name)
      FROM (SELECT df._ensure(fut)::json AS j) e
$$;

-- -------------------------------------------------------------------------------------------
-- Constructors (SPEC §1.3).

CREATE FUNCTION df.sql(query text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('SQL', query => query)
$$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('THEN', df._ensure(a), df._ensure(b))
$$;

CREATE FUNCTION df."as"(fut text, name text) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name = '' THEN
        RAISE EXCEPTION 'df.as: result name cannot be empty';
    END IF;
    IF name !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
        RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*',
            name;
    END IF;
    RETURN df._with_name(fut, name);
END
$$;

CREATE FUNCTION df.sleep(seconds bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF seconds < 0 THEN
        RAISE EXCEPTION 'Sleep duration must be non-negative';
    END IF;
    RETURN df._node('SLEEP', query => seconds::text);
END
$$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN body IS NOT NULL THEN
        df._node('LOOP', df._ensure(body),
                 condition_node => CASE WHEN condition IS NOT NULL THEN df._ensure(condition) END)
    END
$$;

CREATE FUNCTION df."break"(value text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('BREAK', query => '{"break_value":' || coalesce(to_json(value)::text, 'null') || '}')
$$;

CREATE FUNCTION df."if"(condition text, then_branch text, else_branch text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch),
                    condition_node => df._ensure(condition))
$$;

CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch),
                    query => '{"condition_type":"result_has_rows","result_name":'
                             || to_json(result_name)::text || '}')
$$;

CREATE FUNCTION df."join"(a text, b text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('JOIN', df._ensure(a), df._ensure(b))
$$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('JOIN', df._ensure(a), df._ensure(b), extra_nodes => '[' || df._ensure(c) || ']')
$$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df._node('RACE', df._ensure(a), df._ensure(b))
$$;

-- -------------------------------------------------------------------------------------------
-- Operator support (SPEC §1.4).

CREATE FUNCTION df.as_op(fut text, name text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df."as"(fut, name)
$$;

-- `cond ?> then` keeps both operands as raw text until `!> else` completes the if.
CREATE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '{"_partial_if":true,"condition":' || to_json(condition)::text
        || ',"then_branch":' || to_json(then_branch)::text || '}'
$$;

CREATE FUNCTION df.if_else_op(partial text, else_branch text) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j json;
BEGIN
    BEGIN
        j := partial::json;
    EXCEPTION WHEN invalid_text_representation THEN
        j := NULL;
    END;
    IF j IS NULL OR json_typeof(j) <> 'object' OR (j->>'_partial_if') IS DISTINCT FROM 'true' THEN
        RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression';
    END IF;
    RETURN df."if"(j->>'condition', j->>'then_branch', else_branch);
END
$$;

CREATE FUNCTION df.loop_prefix_op(body text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT df.loop(body)
$$;

-- The operators. pg_durable's extension schema is pg_catalog, so its operators work with any
-- search_path. A superuser (CREATE EXTENSION, or a superuser running the script) gets the
-- same; a plain role running `pg-durable install` (managed PostgreSQL) cannot create objects
-- in pg_catalog, so the operators go to schema public (or df when public is not writable),
-- which must then be on the search_path.
DO $$
DECLARE
    target text;
    op     record;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        target := 'pg_catalog';
    ELSIF to_regnamespace('public') IS NOT NULL
          AND has_schema_privilege('public', 'CREATE') THEN
        target := 'public';
    ELSE
        target := 'df';
    END IF;
    FOR op IN SELECT * FROM (VALUES ('~>', 'df.seq'), ('|=>', 'df.as_op'), ('&', 'df."join"'),
                                    ('|', 'df.race'), ('?>', 'df.if_then_op'),
                                    ('!>', 'df.if_else_op')) AS o(name, fn) LOOP
        EXECUTE format('CREATE OPERATOR %s.%s (LEFTARG = text, RIGHTARG = text, FUNCTION = %s)',
                       quote_ident(target), op.name, op.fn);
    END LOOP;
    EXECUTE format('CREATE OPERATOR %s.@> (RIGHTARG = text, FUNCTION = df.loop_prefix_op)',
                   quote_ident(target));
    IF target <> 'pg_catalog' THEN
        RAISE NOTICE 'pg_durable: the DSL operators (~> |=> & | ?> !> @>) were created in schema %, which must be on the search_path to use them (only a superuser can put them in pg_catalog)',
            target;
    END IF;
END
$$;
