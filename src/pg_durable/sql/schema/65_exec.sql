-- pg_durable: the step runner — what the worker needs in every database where steps run: this
-- one, and any other database of the cluster an instance names (df.start(…, database =>
-- 'other')), where the worker installs this same file on first use (engine/remote.py). It
-- refers to nothing outside schema df_exec, and every statement may run again.
--
-- Steps run inside SECURITY DEFINER functions owned by the submitting role, created in this
-- schema by the worker (see engine/identity.py). No role but the owner of the schema may use
-- it, so no submitter can reach, replace or alter its function.
CREATE SCHEMA IF NOT EXISTS df_exec;
REVOKE ALL ON SCHEMA df_exec FROM PUBLIC;

-- Receipts of steps that ran in this database for an instance of another one: the step's
-- statement and its receipt commit together here, the checkpoint at home afterwards, and a
-- fiber claimed again at the same version takes the receipt's outcome instead of running the
-- statement twice (engine/remote.py). Unused in an instance's own database.
CREATE TABLE IF NOT EXISTS df_exec.remote_steps (
    key     text PRIMARY KEY,
    outcome jsonb NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON TABLE df_exec.remote_steps FROM PUBLIC;

-- Return a step connection to a clean session after a step, before another role's step runs
-- on it: settings (also SET LOCAL ones, which would outlive the step in a batch), temporary
-- tables (which would shadow the next role's tables of the same name), session advisory locks
-- and LISTENs. Runs as the worker; every name is schema-qualified because the search_path at
-- this point is whatever the step left behind.
CREATE OR REPLACE FUNCTION df_exec.reset_session() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RESET ALL;
    DISCARD TEMP;
    PERFORM pg_catalog.pg_advisory_unlock_all();
    UNLISTEN *;
END
$$;

-- Take on the submitting role's own settings (p_settings: the 'name=value' items of ALTER
-- ROLE … SET), as a session of the role does at login — where a setting that fails is
-- skipped with a warning; here it is skipped. Role switches are no settings a step may take.
CREATE OR REPLACE FUNCTION df_exec.role_settings(p_settings text[], p_local boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    setting text;
    name    text;
BEGIN
    FOREACH setting IN ARRAY p_settings LOOP
        name := pg_catalog.split_part(setting, '=', 1);
        CONTINUE WHEN pg_catalog.lower(name) OPERATOR(pg_catalog.=)
                      ANY (ARRAY['role', 'session_authorization']);
        BEGIN
            PERFORM pg_catalog.set_config(
                name,
                pg_catalog.substr(setting, pg_catalog.length(name) OPERATOR(pg_catalog.+) 2),
                p_local);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- Run the statements of one batch (at most one per fiber, so none depends on another), in
-- order, each through its submitter's step function (engine/identity.py) with that role's own
-- settings, each followed by a clean session. One round trip for the whole batch.
--
-- p_steps: [{"role": <oid>, "sql": <text>, "rows": <returns rows>, "settings": [...]}, …]
-- Result, per step i that ran: its rows as (i, 'row', <row_to_json>) or its error as
-- (i, 'error', '{"sqlstate", "message"}'), then (i, 'done', <seconds it took>); or
-- (i, 'missing', NULL) when the role's step function does not exist (any more). Steps after
-- the first are not started once p_window seconds have passed: they return nothing, and the
-- worker runs them later.
--
-- p_max_bytes, p_max_rows: the caps of one step's result (the worker's max_result_bytes and
-- max_result_rows), passed to each step function, which ends its statement at the first row
-- past either (the step's error then says so). They bound the batch as well: once the rows it
-- returned reach either cap, no further step starts (as past the window), so a batch returns
-- less than twice the caps however many steps it holds.
--
-- No SET search_path clause: it would restore a step's own search_path on exit, after
-- df_exec.reset_session cleared it (so every name here is schema-qualified).
CREATE OR REPLACE FUNCTION df_exec.run_steps(p_steps jsonb, p_window float8, p_max_bytes bigint,
                                 p_max_rows bigint)
RETURNS TABLE (step int, kind text, data text)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := pg_catalog.clock_timestamp();
    began   timestamptz;
    s       jsonb;
    i       int := -1;
    fn      text;
    out     text[];
    bad     int;
    size    bigint;
    bytes   bigint := 0;
    n       bigint := 0;
BEGIN
    FOR s IN SELECT e FROM pg_catalog.jsonb_array_elements(p_steps) e LOOP
        i := i OPERATOR(pg_catalog.+) 1;
        IF i OPERATOR(pg_catalog.>) 0
           AND (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started
                    OPERATOR(pg_catalog.>) pg_catalog.make_interval(secs => p_window)
                OR bytes OPERATOR(pg_catalog.>=) p_max_bytes
                OR n OPERATOR(pg_catalog.>=) p_max_rows) THEN
            RETURN;
        END IF;
        began := pg_catalog.clock_timestamp();
        fn := 'step_' OPERATOR(pg_catalog.||) (s OPERATOR(pg_catalog.->>) 'role');
        IF pg_catalog.to_regprocedure('df_exec.' OPERATOR(pg_catalog.||) fn
                                      OPERATOR(pg_catalog.||) '(text,boolean,bigint,bigint)') IS NULL THEN
            step := i; kind := 'missing'; data := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF pg_catalog.jsonb_array_length(s OPERATOR(pg_catalog.->) 'settings') OPERATOR(pg_catalog.>) 0 THEN
            PERFORM df_exec.role_settings(
                ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s OPERATOR(pg_catalog.->) 'settings')),
                true);
        END IF;
        EXECUTE pg_catalog.format(
                    'SELECT pg_catalog.array_agg(r), pg_catalog.sum(pg_catalog.octet_length(r)) '
                    'FROM df_exec.%I($1, $2, $3, $4) r', fn)
           INTO out, size
          USING s OPERATOR(pg_catalog.->>) 'sql', (s OPERATOR(pg_catalog.->>) 'rows')::boolean,
                p_max_bytes, p_max_rows;
        PERFORM df_exec.reset_session();
        -- The step function returns NULL, then the error, when the statement failed.
        bad := pg_catalog.array_position(out, NULL);
        IF bad IS NOT NULL THEN
            step := i; kind := 'error'; data := out[bad OPERATOR(pg_catalog.+) 1];
            RETURN NEXT;
        ELSE
            bytes := bytes OPERATOR(pg_catalog.+) coalesce(size, 0);
            n := n OPERATOR(pg_catalog.+) coalesce(pg_catalog.cardinality(out), 0);
            RETURN QUERY SELECT i, 'row'::text, r FROM pg_catalog.unnest(out) r;
        END IF;
        step := i; kind := 'done';
        data := pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) began)::text;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION df_exec.reset_session() FROM PUBLIC;
REVOKE ALL ON FUNCTION df_exec.role_settings(text[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION df_exec.run_steps(jsonb, float8, bigint, bigint) FROM PUBLIC;
