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
-- order, each as its submitter with that role's own settings, each followed by a clean
-- session. One round trip for the whole batch; one call of a role's step function
-- (engine/identity.py) for the steps of that role that come in a row, which cleans the
-- session between them — unless the role has settings of its own, which only the worker may
-- apply (a superuser may have set them): such a role's steps go one per call.
--
-- p_steps: [{"role": <oid>, "sql": <text>, "rows": <returns rows>, "settings": [...]}, …]
-- Result, per step i that ran: (i, its rows as row_to_json texts, NULL, seconds it took), or
-- (i, NULL, its error as '{"sqlstate", "message"}', seconds); SQLSTATE PDMIS when the role's
-- step function does not exist (any more). Steps after the first are not started once
-- p_window seconds have passed: they return nothing, and the worker runs them later.
--
-- p_max_bytes, p_max_rows: the caps of one step's result (the worker's max_result_bytes and
-- max_result_rows), passed to the step functions, which end a statement at the first row past
-- either (the step's error then says so). They bound the batch as well: once the rows it
-- returned reach either cap, no further step starts (as past the window), so a batch returns
-- less than twice the caps however many steps it holds.
--
-- No SET search_path clause: it would restore a step's own search_path on exit, after
-- df_exec.reset_session cleared it (so every name here is schema-qualified). Dropped first:
-- its result columns changed once (an install over an older kit may not replace it).
DROP FUNCTION IF EXISTS df_exec.run_steps(jsonb, float8, bigint, bigint);
CREATE OR REPLACE FUNCTION df_exec.run_steps(p_steps jsonb, p_window float8, p_max_bytes bigint,
                                 p_max_rows bigint)
RETURNS TABLE (step int, result_rows text[], error text, seconds float8)
LANGUAGE plpgsql AS $$
DECLARE
    not_after timestamptz := pg_catalog.clock_timestamp()
                             OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => p_window);
    total     int := pg_catalog.jsonb_array_length(p_steps);
    i         int := 0;
    j         int;
    got       int;
    v_role    text;
    settings  jsonb;
    r         record;
    bytes     bigint := 0;
    n         bigint := 0;
    -- The statements of the role's run of steps, and whether each returns rows: built here
    -- element by element, plain expressions PL/pgSQL evaluates without the planner (a query
    -- over the steps' indexes was planned anew at every call: 30 µs of a lone step's 160).
    texts     text[];
    wants     boolean[];
BEGIN
    WHILE i OPERATOR(pg_catalog.<) total LOOP
        IF i OPERATOR(pg_catalog.>) 0
           AND (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) not_after
                OR bytes OPERATOR(pg_catalog.>=) p_max_bytes
                OR n OPERATOR(pg_catalog.>=) p_max_rows) THEN
            RETURN;
        END IF;
        v_role := p_steps OPERATOR(pg_catalog.->) i OPERATOR(pg_catalog.->>) 'role';
        settings := p_steps OPERATOR(pg_catalog.->) i OPERATOR(pg_catalog.->) 'settings';
        j := i OPERATOR(pg_catalog.+) 1;
        texts := ARRAY[p_steps OPERATOR(pg_catalog.->) i OPERATOR(pg_catalog.->>) 'sql'];
        wants := ARRAY[(p_steps OPERATOR(pg_catalog.->) i
                        OPERATOR(pg_catalog.->>) 'rows')::boolean];
        IF pg_catalog.jsonb_array_length(settings) OPERATOR(pg_catalog.>) 0 THEN
            PERFORM df_exec.role_settings(
                ARRAY(SELECT pg_catalog.jsonb_array_elements_text(settings)), true);
        ELSE
            WHILE j OPERATOR(pg_catalog.<) total
                  AND p_steps OPERATOR(pg_catalog.->) j OPERATOR(pg_catalog.->>) 'role'
                      OPERATOR(pg_catalog.=) v_role LOOP
                texts := pg_catalog.array_append(
                    texts, p_steps OPERATOR(pg_catalog.->) j OPERATOR(pg_catalog.->>) 'sql');
                wants := pg_catalog.array_append(
                    wants,
                    (p_steps OPERATOR(pg_catalog.->) j OPERATOR(pg_catalog.->>) 'rows')::boolean);
                j := j OPERATOR(pg_catalog.+) 1;
            END LOOP;
        END IF;
        IF pg_catalog.to_regprocedure(
               'df_exec.step_' OPERATOR(pg_catalog.||) v_role OPERATOR(pg_catalog.||)
               '(text[],boolean[],bigint,bigint,timestamptz,bigint,bigint)') IS NULL THEN
            RETURN QUERY
            SELECT k, NULL::text[],
                   '{"sqlstate": "PDMIS", "message": "the role''s step function is gone"}'::text,
                   0::float8
              FROM pg_catalog.generate_series(i, j OPERATOR(pg_catalog.-) 1) k;
            i := j;
            CONTINUE;
        END IF;
        got := 0;
        FOR r IN EXECUTE pg_catalog.format(
                     'SELECT * FROM df_exec.%I($1, $2, $3, $4, $5, $6, $7)',
                     'step_' OPERATOR(pg_catalog.||) v_role)
                 USING texts, wants, p_max_bytes, p_max_rows, not_after,
                       p_max_bytes OPERATOR(pg_catalog.-) bytes,
                       p_max_rows OPERATOR(pg_catalog.-) n LOOP
            step := i OPERATOR(pg_catalog.+) r.step;
            result_rows := r.result_rows;
            error := r.error;
            seconds := r.seconds;
            bytes := bytes OPERATOR(pg_catalog.+) r.bytes;
            n := n OPERATOR(pg_catalog.+) coalesce(pg_catalog.cardinality(r.result_rows), 0);
            got := got OPERATOR(pg_catalog.+) 1;
            RETURN NEXT;
        END LOOP;
        PERFORM df_exec.reset_session();
        IF got OPERATOR(pg_catalog.<) (j OPERATOR(pg_catalog.-) i) THEN
            RETURN;  -- (the window closed, or the caps were reached, within the call)
        END IF;
        i := j;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION df_exec.reset_session() FROM PUBLIC;
REVOKE ALL ON FUNCTION df_exec.role_settings(text[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION df_exec.run_steps(jsonb, float8, bigint, bigint) FROM PUBLIC;
