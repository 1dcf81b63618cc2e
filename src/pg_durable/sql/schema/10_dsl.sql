-- pg_durable: the DSL. Every constructor returns a "Durofut" envelope: compact JSON text with
-- the fields in serde order (node_type, left_node, right_node, condition_node, extra_nodes,
-- query, result_name) and children embedded as objects, byte-identical to pg_durable's. The
-- envelope is transient: df.start flattens it into df.nodes.
--
-- The text is assembled by concatenation (jsonb would reorder keys). A child built here is
-- embedded as it is; any other envelope is first re-serialised canonically, as serde would.
--
-- The functions that build envelopes are PL/pgSQL, also the one-liners: a SQL function with a
-- SET clause is never inlined, and running one costs an executor start-up per call (~5 us),
-- which made `a ~> b` cost ~50 us; a PL/pgSQL call costs about 1 us.

-- An envelope from its parts. Children and extra_nodes are JSON texts, query/result_name plain.
CREATE FUNCTION df._node(node_type text, left_node text DEFAULT NULL, right_node text DEFAULT NULL,
                         condition_node text DEFAULT NULL, extra_nodes text DEFAULT NULL,
                         query text DEFAULT NULL, result_name text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN '{"node_type":' || to_json(node_type)::text
        || coalesce(',"left_node":' || left_node, '')
        || coalesce(',"right_node":' || right_node, '')
        || coalesce(',"condition_node":' || condition_node, '')
        || coalesce(',"extra_nodes":' || extra_nodes, '')
        || coalesce(',"query":' || to_json(query)::text, '')
        || coalesce(',"result_name":' || to_json(result_name)::text, '')
        || '}';
END
$$;

-- Helpers that are not workflow steps (df.setvar, df.unsetvar, df.clearvars,
-- df.await_instance) mark the statement they run in with the value they return, so that
-- composing that value ('OK', a status) into a workflow in the same statement fails loudly
-- instead of becoming a SQL step 'OK'. Only that value: a DO block or function that calls
-- df.setvar and then df.start('SELECT …') runs as one statement, and is fine.
CREATE FUNCTION df._mark_non_future_helper(helper text, result text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT set_config('df.non_future_helper',
                      helper || '|' || result || '|' || statement_timestamp()::text, false);
$$;

-- `step` itself, unless it is the value such a helper returned earlier in this statement.
CREATE FUNCTION df._refuse_helper_result(step text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marker text := current_setting('df.non_future_helper', true);
BEGIN
    IF marker <> '' AND split_part(marker, '|', 2) = step
       AND split_part(marker, '|', 3) = statement_timestamp()::text THEN
        RAISE EXCEPTION '% cannot be used as a workflow step. Call % before df.start().',
            split_part(marker, '|', 1), split_part(marker, '|', 1);
    END IF;
    RETURN step;
END
$$;

-- serde's description of an unexpected JSON value, for deserialisation errors.
CREATE FUNCTION df._serde_unexpected(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE jsonb_typeof(v)
               WHEN 'string' THEN 'string ' || (v)::text
               WHEN 'number' THEN CASE WHEN (v)::text ~ '^-?[0-9]+$' THEN 'integer `' ELSE 'floating point `' END
                                  || (v)::text || '`'
               WHEN 'boolean' THEN 'boolean `' || (v)::text || '`'
               WHEN 'array' THEN 'sequence'
               WHEN 'object' THEN 'map'
               ELSE 'null'
           END
$$;

-- Deserialise an envelope the way pg_durable's serde does and serialise it again: fields in
-- canonical order, null fields and unknown fields dropped, compact, strings re-escaped. jsonb
-- loses the input's key order, which the canonical text does not need. The text is emitted
-- in one depth-first pass as a list of fragments joined at the end (linear in its size);
-- the walk keeps a stack of paths into j rather than copies of subtrees.
CREATE FUNCTION df._canonical(j jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prefix constant text := 'Invalid Durofut JSON: failed to deserialize workflow step: ';
    -- Stack entries: a path into j (a node to emit) or, when s_frag is set, a literal.
    s_path text[] := ARRAY['{}'];
    s_frag text[] := ARRAY[NULL::text];
    top    int := 1;
    out    text[] := '{}';
    path   text[];
    frag   text;
    node   jsonb;
    child  jsonb;
    slot   text;
    tail   text;
    k      int;
BEGIN
    WHILE top > 0 LOOP
        frag := s_frag[top];
        path := s_path[top]::text[];
        top := top - 1;
        IF frag IS NOT NULL THEN
            out := out || frag;
            CONTINUE;
        END IF;
        node := j #> path;
        IF jsonb_typeof(node) <> 'object' THEN
            RAISE EXCEPTION '%invalid type: %, expected struct Durofut', prefix, df._serde_unexpected(node);
        END IF;
        IF coalesce(jsonb_typeof(node->'node_type'), 'null') = 'null' THEN
            RAISE EXCEPTION '%missing field `node_type`', prefix;
        END IF;
        FOREACH slot IN ARRAY ARRAY['node_type', 'query', 'result_name'] LOOP
            IF coalesce(jsonb_typeof(node->slot), 'null') NOT IN ('null', 'string') THEN
                RAISE EXCEPTION '%invalid type: %, expected a string', prefix, df._serde_unexpected(node->slot);
            END IF;
        END LOOP;
        child := node->'extra_nodes';
        IF coalesce(jsonb_typeof(child), 'null') NOT IN ('null', 'array') THEN
            RAISE EXCEPTION '%invalid type: %, expected a sequence', prefix, df._serde_unexpected(child);
        END IF;
        out := out || ('{"node_type":' || to_json(node->>'node_type')::text);
        -- Pushed in reverse: the closing fragment first, the left child last.
        tail := coalesce(',"query":' || to_json(node->>'query')::text, '')
             || coalesce(',"result_name":' || to_json(node->>'result_name')::text, '') || '}';
        top := top + 1; s_frag[top] := tail; s_path[top] := NULL;
        IF jsonb_typeof(child) = 'array' THEN
            top := top + 1; s_frag[top] := ']'; s_path[top] := NULL;
            FOR k IN REVERSE jsonb_array_length(child) - 1 .. 0 LOOP
                top := top + 1; s_frag[top] := NULL;
                s_path[top] := (path || ARRAY['extra_nodes', k::text])::text;
                IF k > 0 THEN
                    top := top + 1; s_frag[top] := ','; s_path[top] := NULL;
                END IF;
            END LOOP;
            top := top + 1; s_frag[top] := ',"extra_nodes":['; s_path[top] := NULL;
        END IF;
        FOREACH slot IN ARRAY ARRAY['condition_node', 'right_node', 'left_node'] LOOP
            IF coalesce(jsonb_typeof(node->slot), 'null') <> 'null' THEN
                top := top + 1; s_frag[top] := NULL; s_path[top] := (path || slot)::text;
                top := top + 1; s_frag[top] := ',"' || slot || '":'; s_path[top] := NULL;
            END IF;
        END LOOP;
    END LOOP;
    RETURN array_to_string(out, '');
END
$$;

-- Envelopes built here are canonical, so when one comes back as an argument it can be
-- embedded as it is; re-serialising it would cost a walk of the whole subtree per operator,
-- making a workflow built step by step (wf := wf ~> step, in a loop) quadratic. The
-- composers remember the 64-bit hashes of their last 16 outputs in a session setting (16 hex
-- digits and a comma each, newest first) and df._ensure trusts a text whose hash it finds
-- there. A forged entry only lets its author embed a non-canonical envelope in their own
-- workflow, which df.start validates anyway.
CREATE FUNCTION df._remember(fut text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cache text;
BEGIN
    -- An assignment, not PERFORM: PERFORM runs a query (an executor start-up) for nothing.
    -- (The hash is spelled out here and in df._ensure: a function call would cost more.)
    cache := set_config('df.envelope_cache',
                        left(lpad(to_hex(hashtextextended(fut, 0)), 16, '0') || ','
                             || coalesce(current_setting('df.envelope_cache', true), ''),
                             17 * 16),
                        false);
    RETURN fut;
END
$$;

-- Auto-wrap (pg_durable's Durofut::ensure): an envelope with a known node_type is used as it
-- is (deserialised, so a malformed one is an error, and serialised canonically); anything else
-- — plain SQL, JSON without node_type or with an unknown one — becomes a SQL step. A nested
-- unknown node_type is left for df.start to report with its path.
CREATE FUNCTION df._ensure(fut text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j jsonb;
BEGIN
    IF left(ltrim(fut, E' \t\r\n'), 1) = '{' THEN
        -- (Entries are whole 16-digit groups between commas: a match is an entry.)
        IF strpos(current_setting('df.envelope_cache', true),
                  lpad(to_hex(hashtextextended(fut, 0)), 16, '0')) > 0 THEN
            RETURN fut;
        END IF;
        BEGIN
            j := fut::jsonb;
        EXCEPTION WHEN invalid_text_representation OR program_limit_exceeded
                       OR statement_too_complex THEN
            j := NULL;
        END;
    END IF;
    IF j IS NULL OR jsonb_typeof(j) <> 'object' THEN
        IF current_setting('df.non_future_helper', true) <> '' THEN
            fut := df._refuse_helper_result(fut);
        END IF;
        RETURN '{"node_type":"SQL","query":' || to_json(fut)::text || '}';
    END IF;
    IF jsonb_typeof(j->'node_type') IS DISTINCT FROM 'string'
       OR NOT (j->>'node_type') = ANY (ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE',
                                            'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART',
                                            'SIGNAL', 'RETRY', 'TIMEOUT']) THEN
        RETURN '{"node_type":"SQL","query":' || to_json(fut)::text || '}';
    END IF;
    RETURN df._canonical(j);
END
$$;

-- The envelope named `name`: in canonical text result_name is the last field, so the old
-- name (if any) is cut off the end and the new one appended.
CREATE FUNCTION df._with_name(fut text, name text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c   text := df._ensure(fut);
    old text := c::jsonb->>'result_name';
BEGIN
    c := left(c, -1 - coalesce(length(',"result_name":' || to_json(old)::text), 0));
    RETURN df._remember(c || ',"result_name":' || to_json(name)::text || '}');
END
$$;

-- -------------------------------------------------------------------------------------------
-- Constructors (SPEC §1.3). They are pure as far as workflows go, but those that auto-wrap
-- their arguments are VOLATILE and parallel unsafe: df._ensure reads, and the composers
-- update, the session's envelope cache (a setting, which cannot change during a parallel
-- operation), and df._ensure traps invalid JSON in a subtransaction.

CREATE FUNCTION df.sql(query text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN '{"node_type":"SQL","query":' || to_json(query)::text || '}';
END
$$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember('{"node_type":"THEN","left_node":' || df._ensure(a)
                        || ',"right_node":' || df._ensure(b) || '}');
END
$$;

CREATE FUNCTION df."as"(fut text, name text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
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
    RETURN '{"node_type":"SLEEP","query":"' || seconds || '"}';
END
$$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF body IS NULL THEN
        RETURN NULL;
    END IF;
    IF condition IS NULL THEN
        RETURN df._remember('{"node_type":"LOOP","left_node":' || df._ensure(body) || '}');
    END IF;
    RETURN df._remember('{"node_type":"LOOP","left_node":' || df._ensure(body)
                        || ',"condition_node":' || df._ensure(condition) || '}');
END
$$;

CREATE FUNCTION df."break"(value text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._node('BREAK', query => '{"break_value":' || coalesce(to_json(value)::text, 'null') || '}');
END
$$;

CREATE FUNCTION df."if"(condition text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember('{"node_type":"IF","left_node":' || df._ensure(then_branch)
                        || ',"right_node":' || df._ensure(else_branch)
                        || ',"condition_node":' || df._ensure(condition) || '}');
END
$$;

CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember(df._node('IF', df._ensure(then_branch), df._ensure(else_branch),
                                 query => '{"condition_type":"result_has_rows","result_name":'
                                          || to_json(result_name)::text || '}'));
END
$$;

CREATE FUNCTION df."join"(a text, b text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember('{"node_type":"JOIN","left_node":' || df._ensure(a)
                        || ',"right_node":' || df._ensure(b) || '}');
END
$$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember('{"node_type":"JOIN","left_node":' || df._ensure(a)
                        || ',"right_node":' || df._ensure(b)
                        || ',"extra_nodes":[' || df._ensure(c) || ']}');
END
$$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df._remember('{"node_type":"RACE","left_node":' || df._ensure(a)
                        || ',"right_node":' || df._ensure(b) || '}');
END
$$;

-- Retries and timeouts (SPEC "where we differ" #8; docs/reliability.md). Each wraps one
-- subtree, its left_node, and keeps its settings as a JSON config in query, like the other
-- configured nodes: RETRY {"max_attempts":3,"backoff_seconds":1,"backoff_factor":2},
-- TIMEOUT {"seconds":30}. The checks are shared with df.start, which applies them to hand-built
-- nodes too (df._wrapper_config).

-- The config text of a RETRY or TIMEOUT as df.retry / df.timeout store it, from the values of
-- a JSON config (config), or why those values cannot be one (error): one of them is NULL.
-- Numbers are taken as numeric, so NaN, infinities and values beyond float8 are caught here.
CREATE FUNCTION df._wrapper_config(kind text, cfg jsonb, OUT config text, OUT error text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    attempts numeric;
    backoff  numeric := 1;
    factor   numeric := 2;
    seconds  numeric;
BEGIN
    IF jsonb_typeof(cfg) IS DISTINCT FROM 'object' THEN
        error := 'query in ' || kind || ' must be a JSON config object';
        RETURN;
    END IF;
    IF kind = 'TIMEOUT' THEN
        IF jsonb_typeof(cfg->'seconds') IS DISTINCT FROM 'number' THEN
            error := 'query in TIMEOUT must be {"seconds":<whole number>}';
            RETURN;
        END IF;
        seconds := (cfg->'seconds')::numeric;
        error := df._timeout_error(seconds);
        IF error IS NULL THEN
            config := '{"seconds":' || seconds::bigint || '}';
        END IF;
        RETURN;
    END IF;
    IF jsonb_typeof(cfg->'max_attempts') IS DISTINCT FROM 'number'
       OR coalesce(jsonb_typeof(cfg->'backoff_seconds'), 'null') NOT IN ('null', 'number')
       OR coalesce(jsonb_typeof(cfg->'backoff_factor'), 'null') NOT IN ('null', 'number') THEN
        error := 'query in RETRY must be {"max_attempts":<whole number>,"backoff_seconds":<number>,"backoff_factor":<number>}';
        RETURN;
    END IF;
    attempts := (cfg->'max_attempts')::numeric;
    IF jsonb_typeof(cfg->'backoff_seconds') = 'number' THEN
        backoff := (cfg->'backoff_seconds')::numeric;
    END IF;
    IF jsonb_typeof(cfg->'backoff_factor') = 'number' THEN
        factor := (cfg->'backoff_factor')::numeric;
    END IF;
    error := df._retry_error(attempts, backoff, factor);
    IF error IS NULL THEN
        config := df._retry_config(attempts::int, backoff::float8, factor::float8);
    END IF;
END
$$;

-- Why these are no df.retry settings (NULL: they are). numeric: NaN sorts above every number,
-- so `NaN >= 0` holds and each check bounds its value from above as well.
CREATE FUNCTION df._retry_error(max_attempts numeric, backoff_seconds numeric,
                                backoff_factor numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN NOT (max_attempts >= 1 AND max_attempts <= 2147483647 AND max_attempts = trunc(max_attempts))
            THEN 'max_attempts must be at least 1 (got ' || max_attempts || ')'
        WHEN NOT (backoff_seconds >= 0 AND backoff_seconds < 1e308)
            THEN 'backoff_seconds must be a number of seconds, 0 or more (got ' || backoff_seconds || ')'
        WHEN NOT (backoff_factor >= 1 AND backoff_factor < 1e308)
            THEN 'backoff_factor must be a number, 1 or more (got ' || backoff_factor || ')'
    END
$$;

CREATE FUNCTION df._timeout_error(seconds numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN NOT (seconds >= 1 AND seconds <= 2147483647 AND seconds = trunc(seconds))
                THEN 'seconds must be positive (got ' || seconds || ')' END
$$;

CREATE FUNCTION df._retry_config(max_attempts int, backoff_seconds float8, backoff_factor float8)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '{"max_attempts":' || max_attempts || ',"backoff_seconds":' || to_json(backoff_seconds)
        || ',"backoff_factor":' || to_json(backoff_factor) || '}'
$$;

-- df.retry(node, max_attempts, backoff_seconds, backoff_factor): run `node` again from its start
-- when it fails, up to max_attempts times in all, waiting backoff_seconds after the first
-- failure and backoff_factor times longer after each next one. max_attempts => 1 never retries.
CREATE FUNCTION df.retry(node text, max_attempts int, backoff_seconds float8 DEFAULT 1,
                         backoff_factor float8 DEFAULT 2) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    err text := df._retry_error(max_attempts, backoff_seconds::numeric, backoff_factor::numeric);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION 'df.retry: %', err;
    END IF;
    RETURN df._remember('{"node_type":"RETRY","left_node":' || df._ensure(node)
                        || ',"query":'
                        || to_json(df._retry_config(max_attempts, backoff_seconds, backoff_factor))::text
                        || '}');
END
$$;

-- df.timeout(node, seconds): fail `node` once it has run for `seconds`, cancelling what of it
-- still runs (its statement, its branches, its waits).
CREATE FUNCTION df.timeout(node text, seconds int) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    err text := df._timeout_error(seconds);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION 'df.timeout: %', err;
    END IF;
    RETURN df._remember('{"node_type":"TIMEOUT","left_node":' || df._ensure(node)
                        || ',"query":' || to_json('{"seconds":' || seconds || '}')::text || '}');
END
$$;

-- -------------------------------------------------------------------------------------------
-- Operator support (SPEC §1.4).

CREATE FUNCTION df.as_op(fut text, name text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df."as"(fut, name);
END
$$;

-- `cond ?> then` keeps both operands as raw text until `!> else` completes the if.
CREATE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN '{"_partial_if":true,"condition":' || to_json(condition)::text
        || ',"then_branch":' || to_json(then_branch)::text || '}';
END
$$;

CREATE FUNCTION df.if_else_op(partial text, else_branch text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN df.loop(body);
END
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
