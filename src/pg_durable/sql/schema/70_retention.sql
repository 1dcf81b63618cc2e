-- pg_durable: retention. Workers remove finished instances (completed, failed, cancelled) once
-- they are older than pg_durable.retention_days, in small batches: each batch is a short
-- transaction of its own that locks only the finished instances it removes (SKIP LOCKED), so
-- pruning never waits for, nor holds up, running work. Running instances are never touched.

-- Finished instances by when they finished (completed_at is set for completed ones only;
-- updated_at is when the status last changed for all three).
CREATE INDEX idx_instances_finished ON df.instances (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- The retention period: pg_durable.retention_days (SPEC: 30 by default, 0 = remove at the
-- next pass, at most 36500), read where the worker runs the pruning, so postgresql.conf,
-- ALTER SYSTEM and ALTER DATABASE … SET all apply.
CREATE FUNCTION df._retention_days() RETURNS numeric
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    raw  text := nullif(btrim(current_setting('pg_durable.retention_days', true)), '');
    days numeric;
BEGIN
    IF raw IS NULL THEN
        RETURN 30;
    END IF;
    BEGIN
        days := raw::numeric;
    EXCEPTION WHEN invalid_text_representation THEN
        days := NULL;
    END;
    IF days IS NULL OR days < 0 OR days > 36500 THEN
        RAISE EXCEPTION 'pg_durable.retention_days must be a number of days from 0 to 36500 (got "%")', raw
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN days;
END
$$;

-- Remove up to p_batch instances that finished before now() - retention, with everything of
-- theirs; returns how many. The worker calls it again while it removes a full batch.
CREATE FUNCTION df._prune_finished(p_batch int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
BEGIN
    SELECT array_agg(x.id) INTO ids
      FROM (SELECT i.id FROM df.instances i
             WHERE i.status IN ('completed', 'failed', 'cancelled')
               AND i.updated_at < now() - make_interval(secs => df._retention_days() * 86400)
             ORDER BY i.updated_at
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED) x;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM df._signals WHERE instance_id = ANY (ids);
    DELETE FROM df._fibers WHERE instance_id = ANY (ids);
    DELETE FROM df._instance_state WHERE instance_id = ANY (ids);
    DELETE FROM df.nodes WHERE instance_id = ANY (ids);
    DELETE FROM df.instances WHERE id = ANY (ids);
    RETURN cardinality(ids);
END
$$;

REVOKE ALL ON FUNCTION df._retention_days() FROM PUBLIC;
REVOKE ALL ON FUNCTION df._prune_finished(int) FROM PUBLIC;
