-- pg_durable: df.start(…, transaction_mode => 'new') (SPEC §2.2.1): a start committed on its
-- own, whatever becomes of the caller's transaction. PostgreSQL commits independently only on
-- another connection, which PL/pgSQL opens with the dblink extension, kept in a schema of its
-- own (df_dblink) that no role but the installer may use.
--
-- Without pg_hba trust. The loopback connection authenticates as a dedicated LOGIN role with a
-- random password (df.enable_new_transaction_mode makes both), which may do one thing: call
-- df._start_on_behalf. That function starts the instance as the caller's role only when the
-- caller's session proves, right then, that it asked for exactly this start:
--
--   1. df._start_new (in the caller's session, SECURITY DEFINER) refuses unless the session
--      user is a member of the submitting role — anyone may start as a role it could SET ROLE
--      to, nobody as another one;
--   2. it draws a 256-bit secret, and holds a session advisory lock whose key is a hash of the
--      secret, its own pid and every argument of the start;
--   3. it hands the secret to the loopback session in the startup packet (a setting, which no
--      other session can see — unlike a statement's text in pg_stat_activity), and calls
--      df._start_on_behalf(arguments, its pid) there;
--   4. df._start_on_behalf recomputes the key and starts the instance only if that pid, a
--      session of this database whose login role is a member of the submitting role, holds
--      that lock.
--
-- pg_locks shows the key to everyone, but not the secret behind it, so the loopback password
-- alone cannot start anything as anyone: it needs a live session of a member of the role that
-- is starting exactly these arguments — which would start them anyway.

-- The loopback's credentials: one row, readable by the owner only (no grants to anyone). The
-- role is made for the database whose setup ran (setup_database): role names are cluster-wide,
-- and a database cloned from this one (CREATE DATABASE … TEMPLATE) inherits this row and may
-- use the role, but its own setup makes a role of its own instead of changing this one.
CREATE TABLE df._loopback (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    role_name      text NOT NULL,
    password       text NOT NULL,
    host           text NOT NULL,
    port           int NOT NULL,
    setup_database oid NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The advisory lock key that binds a loopback call to the session that asked for it.
CREATE FUNCTION df._loopback_key(secret text, caller_pid int, submitter oid, fut text,
                                 label text, database text)
RETURNS bigint LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('x' || left(encode(sha256(convert_to(
               jsonb_build_array(secret, caller_pid, submitter, fut, label, database)::text,
               'UTF8')), 'hex'), 16))::bit(64)::bigint
$$;

-- A setting of the 'new' mode as an integer in [low, high], or its default when unset.
CREATE FUNCTION df._new_mode_setting(name text, fallback int, low int, high int)
RETURNS int LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    raw text := btrim(coalesce(current_setting(name, true), ''));
BEGIN
    IF raw = '' THEN
        RETURN fallback;
    END IF;
    IF raw !~ '^[0-9]{1,9}$' OR raw::int NOT BETWEEN low AND high THEN
        RAISE EXCEPTION 'invalid value for %: "%" (expected a whole number from % to %)',
            name, raw, low, high
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN raw::int;
END
$$;

-- What a role needs to start an instance in caller mode: df._start_on_behalf checks it, as
-- it writes as the owner (who bypasses RLS and grants).
CREATE FUNCTION df._check_may_start(submitter regrole) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col text;
BEGIN
    IF NOT has_schema_privilege(submitter, 'df', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied for schema df'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Role %s has no USAGE on schema df.', submitter),
                  HINT = 'A superuser or the owner of schema df can grant it with df.grant_usage().';
    END IF;
    IF NOT has_function_privilege(submitter, 'df.start(text, text, text, text)', 'EXECUTE') THEN
        RAISE EXCEPTION 'permission denied for function start'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Role %s may not execute df.start().', submitter);
    END IF;
    FOREACH col IN ARRAY ARRAY['id', 'label', 'root_node', 'submitted_by', 'database'] LOOP
        IF NOT has_column_privilege(submitter, 'df.instances', col, 'INSERT') THEN
            RAISE EXCEPTION 'permission denied for table instances'
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('Role %s may not insert into df.instances.', submitter),
                      HINT = 'A superuser or the owner of schema df can grant it with df.grant_usage().';
        END IF;
    END LOOP;
    FOREACH col IN ARRAY ARRAY['id', 'instance_id', 'node_type', 'query', 'result_name',
                               'left_node', 'right_node', 'submitted_by', 'database'] LOOP
        IF NOT has_column_privilege(submitter, 'df.nodes', col, 'INSERT') THEN
            RAISE EXCEPTION 'permission denied for table nodes'
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('Role %s may not insert into df.nodes.', submitter),
                      HINT = 'A superuser or the owner of schema df can grant it with df.grant_usage().';
        END IF;
    END LOOP;
END
$$;

-- A connection string value, quoted for libpq.
CREATE FUNCTION df._conninfo_value(v text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT '''' || replace(replace(v, '\', '\\'), '''', '\''') || ''''
$$;

-- The loopback connection string; `secret` travels in the startup packet's options.
CREATE FUNCTION df._loopback_conninfo(lb df._loopback, secret text, superuser_instances boolean)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('host=%s port=%s dbname=%s user=%s password=%s application_name=%s '
                  'connect_timeout=30 options=%s',
                  df._conninfo_value(lb.host), lb.port, df._conninfo_value(current_database()),
                  df._conninfo_value(lb.role_name), df._conninfo_value(lb.password),
                  df._conninfo_value('pg_durable:backend:new-transaction'),
                  df._conninfo_value(
                      '-c df.in_workflow=false -c lock_timeout=30000 -c statement_timeout=30000'
                      || ' -c pg_durable.enable_superuser_instances='
                      || CASE WHEN superuser_instances THEN 'on' ELSE 'off' END
                      || coalesce(' -c pg_durable.loopback_secret=' || secret, '')))
$$;

-- The loopback as set up for this database, or a clear feature_not_supported error.
CREATE FUNCTION df._loopback_config() RETURNS df._loopback
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lb df._loopback;
BEGIN
    IF to_regprocedure('df_dblink.dblink_connect(text,text)') IS NULL THEN
        RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' needs the dblink extension, which is not set up for pg_durable in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'As a superuser, run SELECT df.enable_new_transaction_mode(); in this database (or rerun pg-durable install as a superuser). dblink ships with PostgreSQL''s contrib modules (the postgresql-contrib package on some systems). Meanwhile, call df.start() in a transaction of its own.';
    END IF;
    SELECT * INTO lb FROM df._loopback;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = lb.role_name) THEN
        RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' is not set up in this database: its loopback role is missing'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'As a superuser, run SELECT df.enable_new_transaction_mode(); in this database.';
    END IF;
    RETURN lb;
END
$$;

-- df.start(…, transaction_mode => 'new'), in the caller's session: admission, then the start
-- on the loopback connection, which commits it. SECURITY DEFINER: it reads df._loopback and
-- uses df_dblink, which no caller may. Every exit releases the launch slot and the lock and
-- closes the connection.
CREATE FUNCTION df._start_new(fut text, label text, database text, submitter regrole)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    slot_class constant int := 1346982470;   -- 0x50474446, "PGDF"
    conn_name  constant text := 'pg_durable_new_transaction';
    me         record;
    lb         df._loopback;
    max_starts int;
    wait_s     int;
    deadline   timestamptz;
    slot       int;
    secret     text;
    lock_key   bigint;
    key_held   boolean := false;
    connected  boolean := false;
    phase      text := 'admission';
    inst       text;
    msg        text;
    state      text;
    detail     text;
    hint       text;
BEGIN
    SELECT r.rolname, r.rolcanlogin INTO me FROM pg_roles r WHERE r.oid = submitter::oid;
    IF NOT me.rolcanlogin THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The background worker must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a role with LOGIN.',
            me.rolname;
    END IF;
    -- The role runs as whoever it is, so only a session that could become it may submit as
    -- it: a SECURITY DEFINER wrapper whose owner the session cannot SET ROLE to is refused.
    IF NOT pg_has_role(session_user, submitter, 'MEMBER') THEN
        RAISE EXCEPTION 'df.start() with transaction_mode => ''new'': session user "%" is not a member of role "%", which would submit the instance',
            session_user, me.rolname
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'In a SECURITY DEFINER function owned by a role the session cannot SET ROLE to, call df.start() in caller mode.';
    END IF;
    lb := df._loopback_config();
    max_starts := df._new_mode_setting('pg_durable.max_new_transaction_starts', 2, 1, 1000);
    wait_s := df._new_mode_setting('pg_durable.new_transaction_start_timeout', 5, 1, 3600);

    BEGIN
        -- Admission, before any connection: a free slot among max_new_transaction_starts
        -- session advisory locks (per database: PostgreSQL's advisory locks belong to one).
        deadline := clock_timestamp() + make_interval(secs => wait_s);
        LOOP
            FOR s IN 0 .. max_starts - 1 LOOP
                IF pg_try_advisory_lock(slot_class, s) THEN
                    slot := s;
                    EXIT;
                END IF;
            END LOOP;
            EXIT WHEN slot IS NOT NULL;
            IF clock_timestamp() >= deadline THEN
                RAISE EXCEPTION 'pg_durable: transaction_mode => ''new'' launch limit reached (max_new_transaction_starts=%). Timed out after %s waiting for a launch slot before opening the loopback session.',
                    max_starts, wait_s
                    USING ERRCODE = 'configuration_limit_exceeded';
            END IF;
            PERFORM pg_sleep(0.1);
        END LOOP;

        phase := 'loopback';
        secret := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
        lock_key := df._loopback_key(secret, pg_backend_pid(), submitter::oid, fut, label, database);
        key_held := pg_try_advisory_lock(lock_key);
        IF NOT key_held THEN   -- a 64-bit collision with a lock someone holds
            RAISE EXCEPTION 'could not take the loopback lock; try again';
        END IF;
        IF conn_name = ANY (coalesce(df_dblink.dblink_get_connections(), '{}')) THEN
            PERFORM df_dblink.dblink_disconnect(conn_name);
        END IF;
        PERFORM df_dblink.dblink_connect(conn_name, df._loopback_conninfo(
            lb, secret,
            lower(coalesce(current_setting('pg_durable.enable_superuser_instances', true), ''))
                IN ('on', 'true', 'yes', '1')));
        connected := true;
        SELECT r.id INTO inst
          FROM df_dblink.dblink(conn_name,
                   format('SELECT df._start_on_behalf(%L, %L, %L, %s, %s)',
                          fut, label, database, submitter::oid, pg_backend_pid())) AS r(id text);
        PERFORM df_dblink.dblink_disconnect(conn_name);
        connected := false;
        key_held := false;
        PERFORM pg_advisory_unlock(lock_key);
        PERFORM pg_advisory_unlock(slot_class, slot);
        RETURN inst;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE,
                                detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
        -- Session-level locks and dblink connections outlive the rolled-back block.
        IF connected THEN
            BEGIN
                PERFORM df_dblink.dblink_disconnect(conn_name);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        IF key_held THEN
            PERFORM pg_advisory_unlock(lock_key);
        END IF;
        IF slot IS NOT NULL THEN
            PERFORM pg_advisory_unlock(slot_class, slot);
        END IF;
        IF phase = 'admission' THEN
            RAISE;
        END IF;
        IF msg = 'could not establish connection' THEN
            msg := format('could not connect to the loopback (host %s, port %s) as role %s: %s',
                          lb.host, lb.port, lb.role_name, btrim(detail, E' \n'));
            detail := NULL;
            hint := coalesce(hint, 'pg_hba.conf must let that role connect to this database from the server itself with its password; rerun SELECT df.enable_new_transaction_mode(host, port) to change where it connects.');
        ELSIF state = '55P03' THEN
            hint := coalesce(hint, 'The new transaction waited 30 s for a lock. If the calling transaction holds a lock the new one needs, they wait for each other: start in caller mode there.');
        ELSIF state = '57014' AND msg LIKE '%statement timeout%' THEN
            hint := coalesce(hint, 'The new transaction ran into its 30 s statement_timeout.');
        END IF;
        -- (An empty DETAIL or HINT would still be printed, as an empty line.)
        msg := 'df.start() on new transaction failed: ' || msg;
        IF nullif(detail, '') IS NULL AND nullif(hint, '') IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg;
        ELSIF nullif(detail, '') IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg, HINT = hint;
        ELSIF nullif(hint, '') IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg, DETAIL = detail;
        END IF;
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg, DETAIL = detail, HINT = hint;
    END;
END
$$;

-- The loopback side: verify the calling session asked for this very start (see the top of
-- this file), then start it as `submitter`. SECURITY DEFINER, executable by the loopback role
-- only; it runs as the owner, so it checks what a caller-mode start would have required.
CREATE FUNCTION df._start_on_behalf(fut text, label text, database text, submitter oid,
                                    caller_pid int)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    secret   text := current_setting('pg_durable.loopback_secret', true);
    lock_key bigint;
BEGIN
    IF coalesce(secret, '') <> '' THEN
        lock_key := df._loopback_key(secret, caller_pid, submitter, fut, label, database);
    END IF;
    IF lock_key IS NULL OR caller_pid = pg_backend_pid() OR NOT EXISTS (
        SELECT 1
          FROM pg_locks l
          JOIN pg_stat_activity a ON a.pid = l.pid
          JOIN pg_roles r ON r.oid = submitter
         WHERE l.pid = caller_pid
           AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND l.classid = ((lock_key >> 32) & 4294967295)::oid
           AND l.objid = (lock_key & 4294967295)::oid
           AND pg_has_role(a.usesysid, submitter, 'MEMBER')) THEN
        RAISE EXCEPTION 'df._start_on_behalf(): refused — no session of this database is starting this instance'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM df._check_may_start(submitter::regrole);
    RETURN df._start(fut, label, database, submitter::regrole);
END
$$;

-- Set up (or refresh) 'new' mode in this database: dblink in schema df_dblink, a loopback
-- role of its own with a new random password, and where the loopback connects (by default
-- where this session reached the server: its address, else the first Unix socket directory,
-- and its port). Idempotent; each call rotates the password. For the owner of schema df or a
-- superuser (no grant to PUBLIC); it needs a superuser to create dblink the first time, and
-- CREATEROLE (or superuser) to make the role. Not part of the extension script: CREATE
-- EXTENSION pg_durable creates no roles.
CREATE FUNCTION df.enable_new_transaction_mode(host text DEFAULT NULL, port int DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ext_schema name;
    lb         df._loopback;
    this_db    oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    role_name  text;
    password   text := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
    new_host   text;
    new_port   int;
    df_owner   name;
    dblink_owner oid;
    statement  text;
    msg        text;
    state      text;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF ext_schema IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_available_extensions x WHERE x.name = 'dblink') THEN
            RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' needs the dblink extension, which this PostgreSQL server does not have'
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Install PostgreSQL''s contrib modules (the postgresql-contrib package on some systems), then run SELECT df.enable_new_transaction_mode(); again.';
        END IF;
        CREATE SCHEMA IF NOT EXISTS df_dblink;
        REVOKE ALL ON SCHEMA df_dblink FROM PUBLIC;
        BEGIN
            CREATE EXTENSION dblink SCHEMA df_dblink;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'creating the dblink extension needs a superuser'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Run SELECT df.enable_new_transaction_mode(); as a superuser, or have one run: CREATE SCHEMA df_dblink; CREATE EXTENSION dblink SCHEMA df_dblink; GRANT USAGE ON SCHEMA df_dblink TO <owner of schema df>;';
        END;
    ELSIF ext_schema <> 'df_dblink' THEN
        RAISE EXCEPTION 'the dblink extension is installed in schema "%"; pg_durable uses it from a schema of its own, df_dblink', ext_schema
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'If nothing else uses it there: ALTER EXTENSION dblink SET SCHEMA df_dblink; then run this again.';
    END IF;
    -- dblink opens connections: nobody calls it but the owner of schema df (in
    -- df._start_new, which runs as that owner). When a superuser put dblink there for a
    -- schema owner who is not one, that superuser decided who may use it.
    SELECT n.nspowner INTO dblink_owner FROM pg_namespace n WHERE n.nspname = 'df_dblink';
    IF pg_has_role(dblink_owner, 'USAGE') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA df_dblink FROM PUBLIC;
        SELECT pg_get_userbyid(n.nspowner) INTO df_owner FROM pg_namespace n WHERE n.nspname = 'df';
        IF df_owner <> pg_get_userbyid(dblink_owner) THEN
            EXECUTE format('GRANT USAGE ON SCHEMA df_dblink TO %I', df_owner);
            EXECUTE format('GRANT EXECUTE ON FUNCTION df_dblink.dblink_connect(text, text), '
                           'df_dblink.dblink(text, text), df_dblink.dblink_disconnect(text), '
                           'df_dblink.dblink_get_connections() TO %I', df_owner);
        END IF;
    END IF;

    SELECT * INTO lb FROM df._loopback;
    -- (Names starting with pg_ are reserved for PostgreSQL's own roles.)
    IF FOUND AND lb.setup_database = this_db
       AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = lb.role_name) THEN
        role_name := lb.role_name;
        statement := format('ALTER ROLE %I WITH LOGIN PASSWORD %L', role_name, password);
    ELSE
        role_name := 'df_loopback_' || left(replace(gen_random_uuid()::text, '-', ''), 8);
        statement := format('CREATE ROLE %I WITH LOGIN NOINHERIT PASSWORD %L', role_name, password);
    END IF;
    BEGIN
        EXECUTE statement;
    EXCEPTION WHEN OTHERS THEN
        -- Raised again from here, so that the error's context does not quote the password.
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'cannot create or alter the loopback role %: %', role_name, msg
            USING ERRCODE = state,
                  HINT = 'Run SELECT df.enable_new_transaction_mode(); as a superuser or a role with CREATEROLE.';
    END;
    EXECUTE format('COMMENT ON ROLE %I IS %L', role_name,
                   'pg_durable: loopback of df.start(…, transaction_mode => ''new'') for database '
                   || current_database());
    -- Everything it may do: connect here and call df._start_on_behalf.
    IF NOT has_database_privilege(role_name, current_database(), 'CONNECT') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA df TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION df._start_on_behalf(text, text, text, oid, int) TO %I',
                   role_name);

    new_host := coalesce(enable_new_transaction_mode.host, lb.host, host(inet_server_addr()),
                         nullif(btrim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''),
                         'localhost');
    new_port := coalesce(enable_new_transaction_mode.port, lb.port, current_setting('port')::int);
    DELETE FROM df._loopback;
    INSERT INTO df._loopback (role_name, password, host, port, setup_database)
    VALUES (role_name, password, new_host, new_port, this_db);
    RETURN format('transaction_mode => ''new'' enabled: loopback role %s connects to %s port %s',
                  role_name, new_host, new_port);
END
$$;

-- Undo df.enable_new_transaction_mode in this database: forget the loopback and drop its role
-- when this database made it (a clone only revokes what the role may do here).
CREATE FUNCTION df.disable_new_transaction_mode() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lb df._loopback;
BEGIN
    SELECT * INTO lb FROM df._loopback;
    IF NOT FOUND THEN
        RETURN 'transaction_mode => ''new'' was not enabled';
    END IF;
    DELETE FROM df._loopback;
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = lb.role_name) THEN
        RETURN 'transaction_mode => ''new'' disabled';
    END IF;
    EXECUTE format('REVOKE ALL ON FUNCTION df._start_on_behalf(text, text, text, oid, int) FROM %I',
                   lb.role_name);
    EXECUTE format('REVOKE ALL ON SCHEMA df FROM %I', lb.role_name);
    IF lb.setup_database <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()) THEN
        RETURN format('transaction_mode => ''new'' disabled (role %s belongs to the database this one was copied from and stays)',
                      lb.role_name);
    END IF;
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', current_database(), lb.role_name);
    BEGIN
        EXECUTE format('DROP ROLE %I', lb.role_name);
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RETURN format('transaction_mode => ''new'' disabled; role %s still has privileges in databases copied from this one: run DROP OWNED BY %s there, then DROP ROLE %s',
                      lb.role_name, quote_ident(lb.role_name), quote_ident(lb.role_name));
    END;
    RETURN format('transaction_mode => ''new'' disabled; role %s dropped', lb.role_name);
END
$$;

-- Whether the loopback connects (after the setup committed): NULL if so, else the reason.
CREATE FUNCTION df._loopback_probe() RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lb  df._loopback;
    msg text;
    detail text;
BEGIN
    lb := df._loopback_config();
    PERFORM df_dblink.dblink_connect('pg_durable_loopback_probe', df._loopback_conninfo(lb, NULL, false));
    PERFORM df_dblink.dblink_disconnect('pg_durable_loopback_probe');
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    IF 'pg_durable_loopback_probe' = ANY (coalesce(df_dblink.dblink_get_connections(), '{}')) THEN
        PERFORM df_dblink.dblink_disconnect('pg_durable_loopback_probe');
    END IF;
    RETURN msg || coalesce(': ' || nullif(btrim(detail, E' \n'), ''), '');
END
$$;

REVOKE ALL ON FUNCTION df._loopback_key(text, int, oid, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._check_may_start(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._loopback_conninfo(df._loopback, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._loopback_config() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._start_on_behalf(text, text, text, oid, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION df.enable_new_transaction_mode(text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION df.disable_new_transaction_mode() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._loopback_probe() FROM PUBLIC;
