-- pg_durable: df.explain (SPEC §2.15) — a workflow drawn as a text tree, either before it runs
-- (a DSL expression, its envelope JSON, or one SQL statement: a dry run) or while/after it runs
-- (an instance id: live, with each node's inferred status).
--
-- Both modes share ONE renderer, df._explain_render, which draws a graph given as
-- df._flat_graph (20_start.sql: parallel arrays, children referenced by index, root = 1) plus an
-- optional status per node. A dry run gets its graph from df._flatten (the very validation
-- df.start applies); live mode builds the same arrays from df.nodes and takes the statuses
-- from df._infer_nodes (30_monitor.sql), exactly what df.instance_nodes reports.
--
-- Every function is SECURITY INVOKER and reads through row-level security, so another role's
-- instance is "not found". The helpers only compute text from their arguments (or read through
-- RLS as the caller), so they keep PostgreSQL's default EXECUTE like every ordinary df function.

-- One line of text: whitespace runs (newlines included) become one space so that a node stays
-- on one line of the tree; longer than `width` characters → its first width-3 and '...'.
-- NULL stays NULL.
CREATE FUNCTION df._explain_clip(t text, width int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN char_length(s) > width THEN left(s, width - 3) || '...' ELSE s END
      FROM (SELECT btrim(regexp_replace(t, '\s+', ' ', 'g')) AS s) x
$$;

-- The label of one node, without status marker. `branches` is the JOIN's branch count.
-- A result name is shown on every node that carries one (SPEC shows it for SQL; it is as
-- informative on an IF, JOIN, LOOP, … and is what the graph says).
CREATE FUNCTION df._explain_label(node_type text, query text, result_name text,
                                  has_condition boolean, branches int)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
               CASE node_type
                   WHEN 'SQL' THEN 'SQL: ' || coalesce(df._explain_clip(query, 50), '')
                   WHEN 'SLEEP' THEN 'SLEEP ' || btrim(coalesce(query, '')) || 's'
                   WHEN 'WAIT_SCHEDULE' THEN 'WAIT ''' || coalesce(c.cfg->>'cron_expr', '') || ''''
                   WHEN 'HTTP' THEN 'HTTP ' || coalesce(c.cfg->>'method', '') || ' '
                                    || coalesce(df._explain_clip(c.cfg->>'url', 40), '')
                   WHEN 'HTTP_MULTIPART' THEN 'HTTP_MULTIPART ' || coalesce(c.cfg->>'method', '')
                                    || ' ' || coalesce(df._explain_clip(c.cfg->>'url', 40), '')
                   -- No timeout: no parentheses (SPEC only shows the form with one).
                   WHEN 'SIGNAL' THEN 'SIGNAL ''' || coalesce(c.cfg->>'signal_name', '') || ''''
                                      || coalesce(' (' || (c.cfg->>'timeout_seconds') || 's)', '')
                   WHEN 'LOOP' THEN CASE WHEN has_condition THEN 'LOOP (while)'
                                         ELSE 'LOOP (infinite)' END
                   WHEN 'BREAK' THEN 'BREAK' || coalesce(' ''' || df._explain_clip(c.cfg->>'break_value', 20)
                                                         || '''', '')
                   WHEN 'IF' THEN 'IF'
                   WHEN 'JOIN' THEN 'JOIN (' || branches || ')'
                   WHEN 'RACE' THEN 'RACE'
                   WHEN 'RETRY' THEN 'RETRY (max ' || coalesce(c.cfg->>'max_attempts', '?')
                                     || ' attempts, backoff ' || coalesce(c.cfg->>'backoff_seconds', '?')
                                     || 's ×' || coalesce(c.cfg->>'backoff_factor', '?') || ')'
                   WHEN 'TIMEOUT' THEN 'TIMEOUT ' || coalesce(c.cfg->>'seconds', '?') || 's'
                   ELSE node_type
               END, '?')
           || coalesce(' |=> ''' || result_name || '''', '')
      FROM (SELECT CASE WHEN node_type IN ('WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'BREAK',
                                           'RETRY', 'TIMEOUT')
                        THEN df._try_jsonb(query) END AS cfg) c
$$;

-- Draw a graph. `statuses` (live mode) holds each node's inferred status, NULL for a dry run;
-- `header` lines come first. Every line is right-padded to the longest line + 4 (SPEC).
--
-- Layout (SPEC §2.15): a node is drawn at `prefix || connector || label`; the connector is ''
-- at the root, '└─ ' for a last or only child, '├─ ' for a non-last JOIN/RACE branch. Its
-- sections (↻ body:, ? while:, ? condition:, ✓ then:, ✗ else:, ║ branch i:, and for df.retry and
-- df.timeout ↺ attempt: and ⏱ within:) are printed at
-- the child prefix — prefix + '│   ' under a '├─ ' node (the branch line continues), else
-- prefix + '    ' — and each section's node at child prefix + '  '. A THEN chain (left- or
-- right-nested, any mix) is flattened into its items: the first is drawn like any node, each
-- following one on its own line as `prefix || '→ ' || label`, with its children under
-- prefix + '    '. N THEN nodes give exactly N arrows. A THEN's own result name is shown on
-- the last item of its chain, whose result it stores. A df.if_rows IF has no condition node;
-- its condition is shown as a header line `? condition: rows in '<name>'`.
--
-- Iterative (explicit stacks; no recursion), each node visited once and every line built once,
-- so a 10,000-node graph draws in a fraction of a second; a hand-made df.nodes graph with a cycle, a shared node or more than
-- 256 levels is reported, not followed.
CREATE FUNCTION df._explain_render(g df._flat_graph, statuses text[] DEFAULT NULL,
                                   header text[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    depth_error constant text := 'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.';
    shared_error constant text := 'Invalid durable function graph: a node is reachable more than once (a workflow graph is a tree)';
    -- Local copies: PL/pgSQL subscripts a standalone array in O(1), a composite's field not.
    types    text[] := g.node_types;
    queries  text[] := g.queries;
    lefts    int[] := g.lefts;
    rights   int[] := g.rights;
    conds    int[] := g.conditions;
    extras   text[] := g.extras;
    names    text[] := g.result_names;
    n        int := coalesce(array_length(g.node_types, 1), 0);
    labels   text[];
    seen     boolean[];
    lines    text[] := coalesce(header, '{}');
    nl       int := coalesce(array_length(header, 1), 0);
    -- Work stack: 'N' draw a node, 'A' draw a sequence item after the first, 'L' a line.
    s_kind   text[] := '{}';
    s_node   int[] := '{}';
    s_prefix text[] := '{}';
    s_conn   text[] := '{}';
    s_suffix text[] := '{}';
    s_depth  int[] := '{}';
    top      int := 0;
    -- Flattening one THEN chain.
    f_node   int[] := '{}';
    f_suffix text[] := '{}';
    f_depth  int[] := '{}';
    f_top    int;
    it_node  int[] := '{}';
    it_suffix text[] := '{}';
    it_depth int[] := '{}';
    it_n     int;
    kind     text;
    x        int;
    y        int;
    prefix   text;
    conn     text;
    suffix   text;
    depth    int;
    cp       text;
    sec_hdr  text[];
    sec_node int[];
    nsec     int;
    k        int;
    cfg      jsonb;
    w        int;
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    labels := ARRAY(
        SELECT df._explain_label(u.t, u.q, u.nm, u.c IS NOT NULL,
                                 2 + coalesce(cardinality(string_to_array(u.e, ',')), 0))
          FROM unnest(types, queries, names, conds, extras) WITH ORDINALITY AS u(t, q, nm, c, e, o)
         ORDER BY u.o);
    seen := array_fill(false, ARRAY[n]);

    top := 1;
    s_kind[1] := 'N'; s_node[1] := 1; s_prefix[1] := ''; s_conn[1] := ''; s_suffix[1] := '';
    s_depth[1] := 0;
    WHILE top > 0 LOOP
        kind := s_kind[top]; x := s_node[top]; prefix := s_prefix[top]; conn := s_conn[top];
        suffix := s_suffix[top]; depth := s_depth[top];
        top := top - 1;
        IF kind = 'L' THEN
            nl := nl + 1;
            lines[nl] := prefix;
            CONTINUE;
        END IF;
        IF x IS NULL OR x < 1 OR x > n THEN
            CONTINUE;   -- a dangling child reference (hand-made df.nodes): nothing to draw
        END IF;

        IF kind = 'N' AND types[x] = 'THEN' THEN
            -- Flatten the chain into its items (pre-order: left before right).
            it_n := 0;
            f_top := 1; f_node[1] := x; f_suffix[1] := suffix; f_depth[1] := depth;
            WHILE f_top > 0 LOOP
                y := f_node[f_top]; suffix := f_suffix[f_top]; depth := f_depth[f_top];
                f_top := f_top - 1;
                CONTINUE WHEN y IS NULL OR y < 1 OR y > n;
                IF depth > 256 THEN
                    RAISE EXCEPTION '%', depth_error;
                END IF;
                IF types[y] = 'THEN' THEN
                    IF seen[y] THEN
                        RAISE EXCEPTION '%', shared_error;
                    END IF;
                    seen[y] := true;
                    f_top := f_top + 1;
                    f_node[f_top] := rights[y];
                    f_suffix[f_top] := coalesce(' |=> ''' || names[y] || '''', '') || suffix;
                    f_depth[f_top] := depth + 1;
                    f_top := f_top + 1;
                    f_node[f_top] := lefts[y]; f_suffix[f_top] := ''; f_depth[f_top] := depth + 1;
                ELSE
                    it_n := it_n + 1;
                    it_node[it_n] := y; it_suffix[it_n] := suffix; it_depth[it_n] := depth;
                END IF;
            END LOOP;
            FOR k IN REVERSE it_n .. 1 LOOP
                top := top + 1;
                s_kind[top] := CASE WHEN k = 1 THEN 'N' ELSE 'A' END;
                s_node[top] := it_node[k]; s_prefix[top] := prefix; s_conn[top] := conn;
                s_suffix[top] := it_suffix[k]; s_depth[top] := it_depth[k];
            END LOOP;
            CONTINUE;
        END IF;

        IF depth > 256 THEN
            RAISE EXCEPTION '%', depth_error;
        END IF;
        IF seen[x] THEN
            RAISE EXCEPTION '%', shared_error;
        END IF;
        seen[x] := true;
        nl := nl + 1;
        lines[nl] := prefix || CASE WHEN kind = 'A' THEN '→ ' ELSE conn END || labels[x] || suffix
            || CASE statuses[x]
                   WHEN 'completed' THEN ' ✓'
                   WHEN 'failed' THEN ' ✗'
                   WHEN 'running' THEN ' ⏳'
                   WHEN 'pending' THEN ' ○'
                   WHEN 'skipped' THEN ' ⊘'
                   ELSE ''
               END;

        -- Sections, in drawing order.
        nsec := 0;
        CASE types[x]
        WHEN 'IF' THEN
            IF conds[x] IS NOT NULL THEN
                nsec := nsec + 1; sec_hdr[nsec] := '? condition:'; sec_node[nsec] := conds[x];
            ELSE
                cfg := df._try_jsonb(queries[x]);
                IF cfg->>'condition_type' = 'result_has_rows' THEN
                    nsec := nsec + 1;
                    sec_hdr[nsec] := '? condition: rows in ''' || coalesce(cfg->>'result_name', '') || '''';
                    sec_node[nsec] := NULL;
                END IF;
            END IF;
            nsec := nsec + 1; sec_hdr[nsec] := '✓ then:'; sec_node[nsec] := lefts[x];
            nsec := nsec + 1; sec_hdr[nsec] := '✗ else:'; sec_node[nsec] := rights[x];
        WHEN 'LOOP' THEN
            nsec := nsec + 1; sec_hdr[nsec] := '↻ body:'; sec_node[nsec] := lefts[x];
            IF conds[x] IS NOT NULL THEN
                nsec := nsec + 1; sec_hdr[nsec] := '? while:'; sec_node[nsec] := conds[x];
            END IF;
        WHEN 'JOIN', 'RACE' THEN
            nsec := nsec + 1; sec_node[nsec] := lefts[x];
            nsec := nsec + 1; sec_node[nsec] := rights[x];
            IF extras[x] IS NOT NULL THEN
                FOREACH y IN ARRAY string_to_array(extras[x], ',')::int[] LOOP
                    nsec := nsec + 1; sec_node[nsec] := y;
                END LOOP;
            END IF;
            FOR k IN 1 .. nsec LOOP
                sec_hdr[k] := '║ branch ' || k || ':';
            END LOOP;
        WHEN 'RETRY' THEN
            nsec := nsec + 1; sec_hdr[nsec] := '↺ attempt:'; sec_node[nsec] := lefts[x];
        WHEN 'TIMEOUT' THEN
            nsec := nsec + 1; sec_hdr[nsec] := '⏱ within:'; sec_node[nsec] := lefts[x];
        ELSE
            NULL;   -- a leaf
        END CASE;

        cp := prefix || CASE WHEN kind = 'N' AND conn = '├─ ' THEN '│   ' ELSE '    ' END;
        FOR k IN REVERSE nsec .. 1 LOOP
            IF sec_node[k] IS NOT NULL THEN
                top := top + 1;
                s_kind[top] := 'N'; s_node[top] := sec_node[k]; s_prefix[top] := cp || '  ';
                s_conn[top] := CASE WHEN types[x] IN ('JOIN', 'RACE') AND k < nsec THEN '├─ '
                                    ELSE '└─ ' END;
                s_suffix[top] := ''; s_depth[top] := depth + 1;
            END IF;
            top := top + 1;
            s_kind[top] := 'L'; s_prefix[top] := cp || sec_hdr[k];
        END LOOP;
    END LOOP;

    SELECT max(char_length(l)) INTO w FROM unnest(lines) AS l;
    RETURN (SELECT string_agg(rpad(u.l, w + 4), E'\n' ORDER BY u.o)
              FROM unnest(lines) WITH ORDINALITY AS u(l, o));
END
$$;

-- Dry run of an envelope: validated exactly as df.start validates it (df._flatten), errors
-- returned as text.
CREATE FUNCTION df._explain_envelope(fut jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text := fut->>'node_type';
BEGIN
    -- df.start words an unknown root type 'Invalid durable function: …'; explain reports it
    -- like any other node, with its path (SPEC §2.15).
    IF jsonb_typeof(fut->'node_type') IS DISTINCT FROM 'string'
       OR kind NOT IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
                       'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'RETRY', 'TIMEOUT') THEN
        RETURN format('Invalid durable function graph: root: Unknown node_type ''%s''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT',
                      coalesce(kind, ''));
    END IF;
    RETURN df._explain_render(df._flatten(fut));
EXCEPTION
    WHEN raise_exception THEN
        RETURN SQLERRM;
    WHEN data_exception THEN   -- e.g. a SLEEP of more seconds than bigint holds
        RETURN 'Invalid durable function graph: ' || SQLERRM;
END
$$;

-- "Cannot explain" with a hint; the first line is always SPEC's.
CREATE FUNCTION df._explain_cannot(hint text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT 'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.'
        || E'\nHint: ' || coalesce(hint,
           'pass an instance id (8 hex characters), a workflow built with the DSL '
           || '(df.explain(''SELECT 1'' ~> ''SELECT 2'')), the same expression as text '
           || '(df.explain($$''SELECT 1'' ~> ''SELECT 2''$$)), its envelope JSON, '
           || 'or one SQL statement starting with a keyword such as SELECT or INSERT.')
$fn$;

-- A JSON object given to df.explain: an envelope, or a hint about what it is not.
CREATE FUNCTION df._explain_json(j jsonb) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN j ? 'node_type' THEN df._explain_envelope(j)
        WHEN j->>'_partial_if' = 'true' THEN df._explain_cannot(
            'this is an unfinished if: `condition ?> then_step` needs `!> else_step`. '
            || 'Parenthesise a then-branch that contains other operators: c ?> (a ~> b) !> e.')
        ELSE df._explain_cannot(
            'a Durofut JSON object has a "node_type" field (SQL, THEN, IF, JOIN, LOOP, BREAK, '
            || 'RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT); the DSL functions build it.')
    END
$$;

-- Live mode: header and the instance's graph with inferred statuses, read through RLS.
CREATE FUNCTION df._explain_instance(p_id text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    inst     record;
    v_output text;
    a_types  text[];
    a_query  text[];
    a_name   text[];
    a_left   int[];
    a_right  int[];
    a_cond   int[];
    a_extra  text[];
    st       text[];
    root_ix  int;
    hdr      text[];
BEGIN
    SELECT i.id::text AS id, i.label, coalesce(i.status, 'pending') AS status,
           i.root_node::text AS root
      INTO inst
      FROM df.instances i
     WHERE i.id = lower(p_id);
    IF NOT FOUND THEN
        RETURN format('Instance ''%s'' not found', p_id);
    END IF;
    -- The engine output (result text or error). A role granted only what pg_durable's
    -- grant_usage grants may not read df._instance_state: then the line is left out.
    IF has_table_privilege('df._instance_state', 'SELECT') THEN
        SELECT s.output INTO v_output FROM df._instance_state s WHERE s.instance_id = inst.id;
    END IF;

    -- df.nodes as a df._flat_graph: the root gets index 1, child ids become indexes. A
    -- condition node's id sits in the IF/LOOP query, join3's extras in the JOIN query.
    WITH n AS (
        SELECT x.id::text AS id, x.node_type, x.query, x.result_name,
               x.left_node::text AS l, x.right_node::text AS r,
               CASE WHEN x.node_type IN ('IF', 'LOOP', 'JOIN') THEN df._try_jsonb(x.query) END AS cfg,
               row_number() OVER (ORDER BY x.id::text <> inst.root, x.id) AS ix
          FROM df.nodes x
         WHERE x.instance_id = inst.id
    ),
    ext AS (
        SELECT p.id, string_agg(c.ix::text, ',' ORDER BY e.ord) AS extras
          FROM n p
         CROSS JOIN LATERAL jsonb_array_elements_text(p.cfg->'extra_nodes') WITH ORDINALITY AS e(child, ord)
          JOIN n c ON c.id = e.child
         WHERE p.node_type = 'JOIN' AND jsonb_typeof(p.cfg->'extra_nodes') = 'array'
         GROUP BY p.id
    )
    SELECT array_agg(n.node_type ORDER BY n.ix), array_agg(n.query ORDER BY n.ix),
           array_agg(n.result_name ORDER BY n.ix), array_agg(l.ix::int ORDER BY n.ix),
           array_agg(r.ix::int ORDER BY n.ix), array_agg(c.ix::int ORDER BY n.ix),
           array_agg(ext.extras ORDER BY n.ix), array_agg(f.inferred_status ORDER BY n.ix),
           min(n.ix) FILTER (WHERE n.id = inst.root)
      INTO a_types, a_query, a_name, a_left, a_right, a_cond, a_extra, st, root_ix
      FROM n
      LEFT JOIN n l ON l.id = n.l
      LEFT JOIN n r ON r.id = n.r
      LEFT JOIN n c ON c.id = CASE WHEN n.node_type IN ('IF', 'LOOP')
                                   THEN n.cfg->>'condition_node' END
      LEFT JOIN ext ON ext.id = n.id
      LEFT JOIN df._infer_nodes(inst.id) f ON f.node_id = n.id;
    IF root_ix IS DISTINCT FROM 1 THEN
        RETURN format('Invalid durable function graph: root node ''%s'' of instance ''%s'' not found',
                      inst.root, inst.id);
    END IF;

    -- Header (SPEC §2.15). This engine keeps no status apart from df.instances.status; it is
    -- shown capitalised like pg_durable's engine statuses (Completed, Running, Failed, …).
    hdr := ARRAY['Instance: ' || inst.id
                     || coalesce(' (' || nullif(df._explain_clip(inst.label, 2147483647), '') || ')', ''),
                 'Status:   ' || CASE lower(inst.status)
                                     WHEN 'completed' THEN '✓'
                                     WHEN 'continuedasnew' THEN '✓'
                                     WHEN 'failed' THEN '✗'
                                     WHEN 'canceled' THEN '✗'
                                     WHEN 'cancelled' THEN '✗'
                                     WHEN 'running' THEN '⏳'
                                     ELSE '○'
                                 END || ' ' || initcap(inst.status)];
    IF v_output IS NOT NULL THEN
        hdr := hdr || ('Output:   ' || df._explain_clip(v_output, 60));
    END IF;
    hdr := hdr || ''::text;
    RETURN df._explain_render(ROW(a_types, a_query, a_name, a_left, a_right, a_cond,
                                  a_extra)::df._flat_graph, st, hdr);
EXCEPTION
    WHEN raise_exception THEN   -- a hand-made df.nodes graph the renderer refuses
        RETURN SQLERRM;
END
$$;

-- An error message as text the client can read. PostgreSQL's lexer reports an unexpected
-- character by its first byte (`SELECT 0<U+0080>` fails 'syntax error at or near "\xc2"'),
-- so the message of an expression that failed to evaluate can hold an invalid UTF-8 sequence,
-- which no client decodes. Such bytes are shown escaped (\302), as encode(…, 'escape') does.
CREATE FUNCTION df._explain_valid_text(t text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('server_encoding') <> 'UTF8' THEN
        RETURN t;
    END IF;
    RETURN convert_from(textsend(t), 'UTF8');   -- (it checks the bytes)
EXCEPTION WHEN character_not_in_repertoire THEN
    RETURN encode(textsend(t), 'escape');
END
$$;

-- df.explain(input) (SPEC §2.15). Classification, in this order:
--   1. 8 hex characters (after trimming whitespace; either case) → live view of that instance;
--   2. a JSON object → dry run of the envelope (or a hint when it is not one);
--   3. text starting with a SQL keyword followed by whitespace → one SQL node. SPEC checks the
--      DSL markers first, but `SELECT <input>` of such text is always a syntax error, and SQL
--      that mentions df.* or uses jsonb's @> (`WHERE tags @> '{x}'`) is common: we draw the
--      statement instead of reporting that syntax error. A few keywords beyond SPEC's list
--      (VALUES, TABLE, MERGE, COPY, VACUUM, ANALYZE, …) are statements a step may run too;
--   4. text containing ~>, |=>, ?>, !>, @> or df. → evaluated as `SELECT <input>` as the
--      caller, and its value drawn as df.start would take it (an envelope, else one SQL node).
--      Like every df function, df.explain pins its search_path (pg_catalog, then the DSL
--      operators' schema when that is not pg_catalog), and the expression is evaluated with
--      it: the caller's own functions must be schema-qualified (public.my_steps());
--   5. anything else → 'Cannot explain input: …' with a hint.
-- Errors are returned as text, never raised. VOLATILE: the evaluated expression may do anything
-- the caller may do (SPEC §3.2: not a privilege boundary).
CREATE FUNCTION df.explain(input text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trimmed text := btrim(input, E' \t\r\n\f\v');
    j       jsonb;
    v       text;
    ops     name;
BEGIN
    IF trimmed ~ '^[0-9A-Fa-f]{8}$' THEN
        RETURN df._explain_instance(trimmed);
    END IF;
    IF left(trimmed, 1) = '{' THEN
        j := df._try_jsonb(trimmed);
        IF jsonb_typeof(j) = 'object' THEN
            RETURN df._explain_json(j);
        END IF;
    END IF;
    IF trimmed ~* '^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN|VALUES|TABLE|MERGE|COPY|VACUUM|ANALYZE|REFRESH|REINDEX|CLUSTER|LOCK|COMMENT|NOTIFY)\s' THEN
        RETURN df._explain_envelope(jsonb_build_object('node_type', 'SQL', 'query', input));
    END IF;
    IF strpos(input, '~>') > 0 OR strpos(input, '|=>') > 0 OR strpos(input, '?>') > 0
       OR strpos(input, '!>') > 0 OR strpos(input, '@>') > 0 OR strpos(input, 'df.') > 0 THEN
        -- The DSL operators live in pg_catalog, unless a plain role installed the schema: then
        -- in public or df (10_dsl.sql), which the expression needs on its search_path.
        SELECT n.nspname INTO ops
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE o.oprname = '~>' AND o.oprcode = 'df.seq(text,text)'::regprocedure
         ORDER BY n.nspname = 'pg_catalog' DESC
         LIMIT 1;
        BEGIN
            IF ops IS DISTINCT FROM 'pg_catalog' THEN
                PERFORM set_config('search_path',
                                   'pg_catalog, ' || quote_ident(coalesce(ops, 'df')) || ', pg_temp', true);
            END IF;
            EXECUTE 'SELECT ' || input INTO v;
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        EXCEPTION WHEN OTHERS THEN
            RETURN 'Failed to evaluate expression: ' || df._explain_valid_text(SQLERRM);
        END;
        IF v IS NULL THEN
            RETURN 'Failed to evaluate expression: the expression returned NULL';
        END IF;
        IF left(btrim(v, E' \t\r\n\f\v'), 1) = '{' THEN
            j := df._try_jsonb(v);
            IF jsonb_typeof(j) = 'object' AND (j ? 'node_type' OR j ? '_partial_if') THEN
                RETURN df._explain_json(j);
            END IF;
        END IF;
        -- Plain text: df.start would run it as one SQL step.
        RETURN df._explain_envelope(jsonb_build_object('node_type', 'SQL', 'query', v));
    END IF;
    RETURN df._explain_cannot(NULL);
END
$$;
