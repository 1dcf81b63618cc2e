-- pg_durable: administration — per-role variables, df.version, df.target_database, and
-- df.grant_usage / df.revoke_usage, which hand out (and take back) everything a role needs to
-- use pg_durable. Nothing in schema df is granted to PUBLIC: USAGE on the schema is the gate,
-- so a role that was never granted usage gets "permission denied for schema df" from every
-- df function.

-- -------------------------------------------------------------------------------------------
-- Variables (SPEC §1.6). Each role has its own namespace in df.vars (RLS on owner); df.start's
-- trigger snapshots the submitter's variables, so later changes do not reach started
-- instances. The functions filter on owner explicitly as well, so a superuser (who bypasses
-- RLS) still reads and changes only its own variables through them.
--
-- setvar/unsetvar/clearvars are setup helpers, not workflow steps: they refuse to run on a
-- workflow connection, and they mark the statement so that composing their 'OK' into a
-- workflow (df.setvar('a', '1') ~> 'SELECT 1') fails instead of becoming a SQL step 'OK'.

CREATE FUNCTION df.setvar(name text, value text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION 'df.setvar() cannot be called inside a workflow - set variables before starting the workflow';
    END IF;
    PERFORM df._mark_non_future_helper('df.setvar()', 'OK');
    INSERT INTO df.vars AS v (name, value, owner)
    VALUES (setvar.name, setvar.value, quote_ident(current_user)::regrole)
    ON CONFLICT ON CONSTRAINT vars_pkey DO UPDATE SET value = excluded.value;
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.getvar(name text) RETURNS text
LANGUAGE sql STABLE STRICT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT v.value FROM df.vars v
     WHERE v.owner OPERATOR(pg_catalog.=) quote_ident(current_user)::regrole
       AND v.name = getvar.name
$$;

CREATE FUNCTION df.unsetvar(name text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION 'df.unsetvar() cannot be called inside a workflow - unset variables before starting the workflow';
    END IF;
    PERFORM df._mark_non_future_helper('df.unsetvar()', 'OK');
    DELETE FROM df.vars v
     WHERE v.owner OPERATOR(pg_catalog.=) quote_ident(current_user)::regrole
       AND v.name = unsetvar.name;
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.clearvars() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION 'df.clearvars() cannot be called inside a workflow - clear variables before starting the workflow';
    END IF;
    PERFORM df._mark_non_future_helper('df.clearvars()', 'OK');
    DELETE FROM df.vars v
     WHERE v.owner OPERATOR(pg_catalog.=) quote_ident(current_user)::regrole;
    RETURN 'OK';
END
$$;

-- -------------------------------------------------------------------------------------------
-- df.version() = '<schema version> (built <UTC timestamp>)'. Both rows are added by the
-- install script's last statements (schema.install_script()): "built" is when the package's
-- schema files were built, the same for every database installed from one package.

-- SECURITY DEFINER: it reads only these installation facts, so it works whatever privileges
-- the caller holds on df._meta.
CREATE FUNCTION df.version() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT m.value FROM df._meta m WHERE m.key = 'schema_version'), 'unknown')
        || ' (built '
        || coalesce((SELECT m.value FROM df._meta m WHERE m.key = 'built_at'), 'unknown')
        || ')'
$$;

-- The database pg_durable serves. Deviation from pg_durable: there the setting defaults to
-- 'postgres' because its single background worker serves one database per cluster. Here the
-- schema can be installed in any number of databases and workers serve whichever database
-- their DSN names, so when pg_durable.database is not set the useful answer is the database
-- this schema lives in. IMMUTABLE as in pg_durable: a session never changes database, and the
-- setting is meant to be fixed server-wide (postgresql.conf / ALTER SYSTEM / ALTER DATABASE).
CREATE FUNCTION df.target_database() RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('pg_durable.database', true), ''), current_database())
$$;

-- -------------------------------------------------------------------------------------------
-- Granting access (SPEC §1.8, §3.2).
--
-- What a role needs, beyond pg_durable's list: SELECT on df._instance_state, because the
-- monitoring functions (df.list_instances, df.instance_info, df.instance_executions) are
-- SECURITY INVOKER and read this engine table as the caller (its RLS policy shows a role only
-- the rows of its own instances); and SELECT on df._meta (installation facts: schema version,
-- install time), which df.instance_info reads as the caller for function_version; and INSERT
-- (instance_id, name, data) on df._signals, the inbox df.signal writes to as the caller (its
-- RLS policy admits signals for the caller's own running instances only).
--
-- One row per privilege: (object kind, object, privilege, columns or NULL).
CREATE FUNCTION df._usage_privileges(include_http boolean, admin_functions boolean)
RETURNS TABLE (kind text, object text, privilege text, columns text[])
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM (VALUES
        ('SCHEMA', 'df', 'USAGE', NULL::text[]),
        ('TABLE', 'df.instances', 'SELECT', NULL),
        ('TABLE', 'df.instances', 'UPDATE', ARRAY['status', 'updated_at']),
        ('TABLE', 'df.instances', 'INSERT',
            ARRAY['id', 'label', 'root_node', 'submitted_by', 'database']),
        ('TABLE', 'df.nodes', 'SELECT', NULL),
        ('TABLE', 'df.nodes', 'INSERT',
            ARRAY['id', 'instance_id', 'node_type', 'query', 'result_name', 'left_node',
                  'right_node', 'submitted_by', 'database']),
        ('TABLE', 'df.vars', 'SELECT', NULL),
        ('TABLE', 'df.vars', 'INSERT', NULL),
        ('TABLE', 'df.vars', 'UPDATE', NULL),
        ('TABLE', 'df.vars', 'DELETE', NULL),
        ('TABLE', 'df._instance_state', 'SELECT', NULL),
        ('TABLE', 'df._meta', 'SELECT', NULL),
        ('TABLE', 'df._signals', 'INSERT', ARRAY['instance_id', 'name', 'data'])
    ) AS t(kind, object, privilege, columns)
    UNION ALL
    SELECT 'FUNCTION', f, 'EXECUTE', NULL
      FROM unnest(ARRAY['df.http(text,text,text,jsonb,integer)',
                        'df.http_multipart(text,text,jsonb,jsonb,integer)']) f
     WHERE include_http
    UNION ALL
    SELECT 'FUNCTION', f, 'EXECUTE', NULL
      FROM unnest(ARRAY['df.grant_usage(text,boolean,boolean)', 'df.revoke_usage(text)',
                        'df.metrics()']) f
     WHERE admin_functions
$$;

-- Whether current_user may grant the privilege onwards (superusers and owners always may).
-- GRANT itself only warns ("no privileges were granted") when the grantor holds a privilege
-- without its grant option; checking first turns that into a clear permission error.
CREATE FUNCTION df._can_grant(kind text, object text, privilege text, columns text[])
RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mode text := privilege || ' WITH GRANT OPTION';
    col  text;
BEGIN
    IF kind = 'SCHEMA' THEN
        RETURN has_schema_privilege(object, mode);
    ELSIF kind = 'FUNCTION' THEN
        RETURN has_function_privilege(object, mode);
    ELSIF columns IS NULL THEN
        RETURN has_table_privilege(object, mode);
    END IF;
    FOREACH col IN ARRAY columns LOOP
        IF NOT has_column_privilege(object, col, mode) THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

-- The privilege clause of a GRANT/REVOKE: 'INSERT (id, label) ON TABLE df.instances'.
CREATE FUNCTION df._privilege_clause(kind text, object text, privilege text, columns text[])
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT privilege
        || coalesce(' (' || (SELECT string_agg(quote_ident(c), ', ') FROM unnest(columns) c) || ')',
                    '')
        || ' ON ' || kind || ' ' || object
$$;

-- SECURITY INVOKER on purpose: every GRANT is made by the caller, so PostgreSQL's own rules
-- decide what the caller may hand out (superuser or owner: anything; a delegated admin made
-- with with_grant => true: what it holds WITH GRANT OPTION), and the caller is recorded as the
-- grantor, which is what df.revoke_usage later revokes.
CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false,
                               with_grant boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p       record;
    missing text;
    opt     text := CASE WHEN coalesce(with_grant, false) THEN ' WITH GRANT OPTION' ELSE '' END;
BEGIN
    IF p_role IS NULL THEN
        RAISE EXCEPTION 'df.grant_usage: role name must not be NULL';
    END IF;
    IF coalesce(include_http, false) THEN
        SELECT string_agg(f, ', ') INTO missing
          FROM unnest(ARRAY['df.http(text,text,text,jsonb,integer)',
                            'df.http_multipart(text,text,jsonb,jsonb,integer)']) f
         WHERE to_regprocedure(f) IS NULL;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'df.grant_usage: include_http => true, but % does not exist in this installation of pg_durable',
                missing
                USING ERRCODE = 'undefined_function',
                      HINT = 'Call df.grant_usage without include_http.';
        END IF;
    END IF;
    FOR p IN SELECT * FROM df._usage_privileges(coalesce(include_http, false),
                                                coalesce(with_grant, false)) LOOP
        IF NOT df._can_grant(p.kind, p.object, p.privilege, p.columns) THEN
            RAISE EXCEPTION 'permission denied to grant df usage: role "%" does not hold % WITH GRANT OPTION',
                current_user, df._privilege_clause(p.kind, p.object, p.privilege, p.columns)
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only a superuser, the owner of the df schema or a role granted usage with with_grant => true can grant usage.';
        END IF;
        EXECUTE format('GRANT %s TO %I%s',
                       df._privilege_clause(p.kind, p.object, p.privilege, p.columns), p_role, opt);
    END LOOP;
    RAISE NOTICE 'pg_durable: granted df usage privileges to "%"', p_role;
END
$$;

-- Revokes what the caller granted (PostgreSQL revokes only privileges whose grantor is the
-- caller, or the owner when a superuser revokes), CASCADE so that what a delegated admin
-- handed on goes too. Function privileges are revoked whether or not the role holds them,
-- skipping those the caller cannot have granted (a delegated admin never given HTTP), which
-- would only raise insufficient_privilege or warn; the handler stays as a safety net.
CREATE FUNCTION df.revoke_usage(p_role text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    IF p_role IS NULL THEN
        RAISE EXCEPTION 'df.revoke_usage: role name must not be NULL';
    END IF;
    FOR p IN SELECT * FROM df._usage_privileges(true, true) WHERE kind = 'FUNCTION' LOOP
        CONTINUE WHEN to_regprocedure(p.object) IS NULL
                   OR NOT df._can_grant(p.kind, p.object, p.privilege, p.columns);
        BEGIN
            EXECUTE format('REVOKE %s FROM %I CASCADE',
                           df._privilege_clause(p.kind, p.object, p.privilege, p.columns), p_role);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    -- Tables (column-level revokes mirror the column-level grants), then the schema last.
    FOR p IN SELECT * FROM df._usage_privileges(false, false)
              ORDER BY kind = 'SCHEMA', object, privilege LOOP
        IF NOT df._can_grant(p.kind, p.object, p.privilege, p.columns) THEN
            RAISE EXCEPTION 'permission denied to revoke df usage: role "%" does not hold % WITH GRANT OPTION',
                current_user, df._privilege_clause(p.kind, p.object, p.privilege, p.columns)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        EXECUTE format('REVOKE %s FROM %I CASCADE',
                       df._privilege_clause(p.kind, p.object, p.privilege, p.columns), p_role);
    END LOOP;
    RAISE NOTICE 'pg_durable: revoked df usage privileges granted by "%" from "%"',
        current_user, p_role;
END
$$;

REVOKE ALL ON FUNCTION df.grant_usage(text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION df.revoke_usage(text) FROM PUBLIC;
