-- pg_durable: signals. df.wait_for_signal builds a SIGNAL step; df.signal sends one.
--
-- Unlike pg_durable, no signal is lost: one sent before the workflow reaches its wait is kept
-- in the instance's durable inbox (df._signals) and consumed by the first wait for its name,
-- oldest first. A signal sent while fibers wait for its name goes to each of them (the
-- branches of a JOIN or RACE that wait for it), as pg_durable fans a signal out to every
-- waiting child execution.
--
-- The inbox and the waits meet under one lock per instance (df._signal_lock): a new signal
-- takes it before it looks for waiting fibers, and a worker takes it before it looks into the
-- inbox for a fiber and records that the fiber waits. So either the worker sees the signal,
-- or the signal sees the waiting fiber and wakes it — never neither.
--
-- Limits, so that one sender can neither blow up the workers that deliver its signals nor fill
-- the inbox without end: a signal name has at most 256 characters; a payload at most
-- pg_durable.max_signal_bytes (default 1 MiB: a signal carries a decision or a small document,
-- and its payload is copied to each waiting branch and becomes the SIGNAL node's result); an
-- instance holds at most 10,000 signals not yet received (its workflow must consume some
-- before more can be sent).

CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds int DEFAULT NULL) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty';
    END IF;
    PERFORM df._check_signal_name(name);
    IF timeout_seconds IS NOT NULL AND timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive';
    END IF;
    RETURN df._node('SIGNAL', query => '{"signal_name":' || to_json(name)::text
                                      || ',"timeout_seconds":'
                                      || coalesce(timeout_seconds::text, 'null') || '}');
END
$$;

-- A signal name longer than 256 characters is refused (by df.wait_for_signal and df.signal).
CREATE FUNCTION df._check_signal_name(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF length(p_name) > 256 THEN
        RAISE EXCEPTION 'Signal name is too long (% characters); the limit is 256', length(p_name)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
END
$$;

-- Serialises an instance's inbox and its waits (see above). Transaction-scoped.
CREATE FUNCTION df._signal_lock(p_instance text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    -- 0x50474453 = 'PGDS': a class of advisory locks of its own.
    SELECT pg_advisory_xact_lock(1346913363, hashtext(p_instance));
$$;

-- A signal enters the inbox by an INSERT as the sender (df.signal): row-level security lets a
-- role insert signals only for its own running instances, and column privileges only the
-- instance, name and data. This trigger, as the owner, then gives the signal to each fiber
-- waiting for it (a copy each) and wakes them; with none waiting it stays for the next wait.
ALTER TABLE df._signals ENABLE ROW LEVEL SECURITY;
CREATE POLICY signals_sender ON df._signals FOR INSERT
    WITH CHECK (scope IS NULL
                AND EXISTS (SELECT 1 FROM df.instances i
                             WHERE i.id OPERATOR(pg_catalog.=) instance_id
                               AND (i.status IN ('pending', 'running')) IS TRUE));

CREATE FUNCTION df._on_signal_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    waiting text[];
    fiber   text;
BEGIN
    PERFORM df._signal_lock(NEW.instance_id);
    -- Counted under the lock, so concurrent senders cannot both slip under the limit.
    IF (SELECT count(*) FROM (SELECT 1 FROM df._signals s WHERE s.instance_id = NEW.instance_id
                               LIMIT 10001) q) > 10000 THEN
        RAISE EXCEPTION 'Instance % already holds 10000 signals not yet received, pg_durable''s limit per instance; its workflow must consume some (df.wait_for_signal) before more can be sent',
            NEW.instance_id
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    waiting := ARRAY(SELECT f.scope FROM df._fibers f
                      WHERE f.instance_id = NEW.instance_id AND f.awaiting = NEW.name
                      ORDER BY f.scope);
    IF cardinality(waiting) = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE df._signals SET scope = waiting[1] WHERE id = NEW.id;
    INSERT INTO df._signals (instance_id, name, data, scope)
    SELECT NEW.instance_id, NEW.name, NEW.data, w FROM unnest(waiting[2:]) w;
    -- Wake them (df._wake_for_signal).
    FOREACH fiber IN ARRAY waiting LOOP
        PERFORM df._wake_for_signal(fiber, NEW.name);
    END LOOP;
    PERFORM pg_notify('pg_durable', 'work');
    RETURN NULL;
END
$$;

-- Wake a fiber that waits for the signal just given to it. A fiber another transaction holds
-- is waited for, but only a moment: a worker's claim that looked at the row in passing (read
-- before the fiber began to wait, locked after) keeps the lock until its transaction ends,
-- soon; a worker that holds the fiber to run it may be waiting for the signal lock this
-- transaction holds — it looks into the inbox under that lock before it commits, so it needs
-- no wake. Whatever was not woken here (a passing lock held longer) the workers' sweep wakes
-- (the wake_signalled query).
CREATE FUNCTION df._wake_for_signal(p_scope text, p_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    UPDATE df._fibers SET run_at = now() WHERE scope = p_scope AND awaiting = p_name;
EXCEPTION WHEN lock_not_available THEN
    NULL;
END
$$;
CREATE TRIGGER signals_deliver AFTER INSERT ON df._signals
    FOR EACH ROW WHEN (NEW.scope IS NULL) EXECUTE FUNCTION df._on_signal_insert();

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}')
RETURNS text LANGUAGE plpgsql VOLATILE STRICT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status text;
    v_data   jsonb;
    v_max    bigint := coalesce(nullif(current_setting('pg_durable.max_signal_bytes', true), '')::bigint,
                                1048576);
BEGIN
    IF instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty';
    END IF;
    IF signal_name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty';
    END IF;
    PERFORM df._check_signal_name(signal_name);
    -- Before the payload is parsed: parsing is what would hold it several times over.
    IF octet_length(signal_data) > v_max THEN
        RAISE EXCEPTION 'Signal data is % bytes, more than pg_durable.max_signal_bytes (%); send a smaller payload (for example the key of a row that holds the data), or raise the setting',
            octet_length(signal_data), v_max
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    -- Through row-level security: another role's instance does not exist for the caller.
    SELECT i.status INTO v_status FROM df.instances i WHERE i.id = signal.instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id;
    END IF;
    IF v_status NOT IN ('pending', 'running') THEN
        RAISE EXCEPTION 'Instance % is %: signals can only be sent to a pending or running instance',
            instance_id, v_status;
    END IF;
    BEGIN
        v_data := signal_data::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        v_data := to_jsonb(signal_data);
    END;
    INSERT INTO df._signals (instance_id, name, data) VALUES (instance_id, signal_name, v_data);
    RETURN 'OK';
END
$$;

REVOKE ALL ON FUNCTION df._signal_lock(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION df._on_signal_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._wake_for_signal(text, text) FROM PUBLIC;
