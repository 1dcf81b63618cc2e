-- pg_durable: tables. The public tables (df.instances, df.nodes, df.vars) follow pg_durable's
-- layout column for column; the tables whose names start with "_" are this engine's own state,
-- reachable by no role but the owner (the worker connects as the owner or a superuser).

CREATE SCHEMA df;

-- -------------------------------------------------------------------------------------------
-- df.instances: one row per workflow instance.
CREATE TABLE df.instances (
    id           varchar(8) PRIMARY KEY,
    label        text,
    root_node    varchar(8) NOT NULL,
    status       text DEFAULT 'pending',
    submitted_by regrole NOT NULL,
    database     text,
    created_at   timestamptz DEFAULT now(),
    updated_at   timestamptz DEFAULT now(),
    completed_at timestamptz,
    CONSTRAINT instances_identity_key UNIQUE (id, submitted_by)
);
ALTER TABLE df.instances ADD CONSTRAINT instances_id_format_chk
    CHECK (id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
ALTER TABLE df.instances ADD CONSTRAINT instances_root_node_format_chk
    CHECK (root_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
ALTER TABLE df.instances ADD CONSTRAINT instances_status_chk
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')) NOT VALID;
CREATE INDEX idx_instances_status ON df.instances (status, created_at DESC, id);
CREATE INDEX idx_instances_created_at ON df.instances (created_at DESC, id);
CREATE INDEX idx_instances_label ON df.instances (label, created_at DESC, id)
    WHERE label IS NOT NULL;

-- -------------------------------------------------------------------------------------------
-- df.nodes: one row per graph node; the worker stamps status/result/status_details.
-- fillfactor: df.start fills the pages, and every step then rewrites rows of them (running,
-- completed); the room left lets those be HOT updates (no indexed column changes), which
-- write no index entries and are pruned from the page without waiting for VACUUM.
CREATE TABLE df.nodes (
    id             varchar(8) NOT NULL,
    instance_id    varchar(8) NOT NULL,
    node_type      text NOT NULL,
    query          text,
    result_name    text,
    left_node      varchar(8),
    right_node     varchar(8),
    status         text DEFAULT 'pending',
    result         jsonb,
    error          text,
    submitted_by   regrole,
    database       text,
    created_at     timestamptz DEFAULT now(),
    updated_at     timestamptz DEFAULT now(),
    status_details jsonb,
    CONSTRAINT nodes_pkey PRIMARY KEY (instance_id, id)
) WITH (fillfactor = 70);
ALTER TABLE df.nodes ADD CONSTRAINT nodes_instance_id_present_chk
    CHECK (instance_id IS NOT NULL) NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_submitted_by_present_chk
    CHECK (submitted_by IS NOT NULL) NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_id_format_chk
    CHECK (id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_instance_id_format_chk
    CHECK (instance_id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
-- (A NULL passes a CHECK: no "IS NULL OR" needed for the optional columns.)
ALTER TABLE df.nodes ADD CONSTRAINT nodes_left_node_format_chk
    CHECK (left_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_right_node_format_chk
    CHECK (right_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_node_type_chk
    CHECK (node_type IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
                         'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'RETRY',
                         'TIMEOUT')) NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_result_name_chk
    CHECK (result_name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*$') NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_status_chk
    CHECK (status IN ('pending', 'running', 'completed', 'failed')) NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_result_status_chk
    CHECK (result IS NULL OR status IN ('completed', 'failed')) NOT VALID;
-- The children and query each node type has: leaves have a query and no children; THEN and
-- RACE both children and no query; IF both children and a query; LOOP a left child only; JOIN
-- both children; RETRY and TIMEOUT (df.retry, df.timeout) a left child and a query. The row's
-- (left_node IS NULL, right_node IS NULL, query IS NULL), spelled as
-- text, must match its type's pattern ('%': either); another type finds no pattern, and NULL
-- passes (nodes_node_type_chk rejects it). This says what a CASE over the types would, in a
-- form much cheaper to check: PostgreSQL reads a CHECK's stored expression tree again for
-- every INSERT or UPDATE statement, and that CASE took ~20 us to read, this under 10 us.
ALTER TABLE df.nodes ADD CONSTRAINT nodes_structure_chk CHECK (
    ((left_node IS NULL)::text || (right_node IS NULL)::text || (query IS NULL)::text)
    LIKE ('{"SQL": "truetruefalse", "SLEEP": "truetruefalse", "WAIT_SCHEDULE": "truetruefalse",
            "BREAK": "truetruefalse", "HTTP": "truetruefalse", "HTTP_MULTIPART": "truetruefalse",
            "SIGNAL": "truetruefalse", "THEN": "falsefalsetrue", "RACE": "falsefalsetrue",
            "IF": "falsefalsefalse", "LOOP": "falsetrue%", "JOIN": "falsefalse%",
            "RETRY": "falsetruefalse", "TIMEOUT": "falsetruefalse"}'::jsonb
          ->> node_type)) NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_instance_identity_fkey
    FOREIGN KEY (instance_id, submitted_by) REFERENCES df.instances (id, submitted_by)
    DEFERRABLE INITIALLY DEFERRED NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_left_node_same_instance_fkey
    FOREIGN KEY (instance_id, left_node) REFERENCES df.nodes (instance_id, id)
    DEFERRABLE INITIALLY DEFERRED NOT VALID;
ALTER TABLE df.nodes ADD CONSTRAINT nodes_right_node_same_instance_fkey
    FOREIGN KEY (instance_id, right_node) REFERENCES df.nodes (instance_id, id)
    DEFERRABLE INITIALLY DEFERRED NOT VALID;
ALTER TABLE df.instances ADD CONSTRAINT instances_root_node_same_instance_fkey
    FOREIGN KEY (id, root_node) REFERENCES df.nodes (instance_id, id)
    DEFERRABLE INITIALLY DEFERRED NOT VALID;
CREATE INDEX idx_nodes_instance ON df.nodes (instance_id);

-- -------------------------------------------------------------------------------------------
-- df.vars: per-role variables for {name} substitution, snapshotted at df.start.
CREATE TABLE df.vars (
    name  text NOT NULL,
    value text,
    owner regrole NOT NULL DEFAULT quote_ident(current_user)::regrole,
    PRIMARY KEY (owner, name)
);

-- -------------------------------------------------------------------------------------------
-- Row-level security: each role sees and manages only its own rows. Not FORCEd, so the owner
-- (the worker) sees everything.
ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.vars ENABLE ROW LEVEL SECURITY;
CREATE POLICY instances_user_isolation ON df.instances FOR ALL
    USING (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY nodes_user_isolation ON df.nodes FOR ALL
    USING (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY vars_user_isolation ON df.vars FOR ALL
    USING (owner OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (owner OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);

-- ===========================================================================================
-- Engine state (internal; no privileges for anyone but the owner).

-- Key/value facts about this installation (schema version).
CREATE TABLE df._meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Per-instance runtime facts that outlive the fibers: the variable snapshot taken at df.start,
-- the root execution count, and the engine output (result text or error) once finished.
CREATE TABLE df._instance_state (
    instance_id     varchar(8) PRIMARY KEY,
    vars            jsonb NOT NULL DEFAULT '{}',
    execution_count bigint NOT NULL DEFAULT 1,
    output          text,
    started_at      timestamptz,
    finished_at     timestamptz
);

-- A fiber is one execution scope of an instance: the root, a JOIN/RACE branch, or a loop. Its
-- key is its scope: the instance id for the root fiber, '<parent scope>::<parent generation>::
-- <child root node id>' for a child, so it is unique for the life of the instance and node
-- stamps ('<scope>::<generation>') name it. It stands at one node (node_id) of the subtree it
-- executes (root_node). Workers claim runnable fibers (status 'ready', run_at <= now()) with
-- FOR UPDATE SKIP LOCKED and hold the row lock for the whole step transaction, so a crashed
-- worker's claim is released by PostgreSQL itself and a step never runs in two places at once.
CREATE TABLE df._fibers (
    scope             text PRIMARY KEY,
    instance_id       varchar(8) NOT NULL,
    parent_scope      text,
    branch            int NOT NULL DEFAULT 0,
    spawned_at_node   varchar(8),
    parent_generation int,
    root_node         varchar(8) NOT NULL,
    node_id           varchar(8) NOT NULL,
    status            text NOT NULL DEFAULT 'ready'
                      CHECK (status IN ('ready', 'waiting', 'done')),
    run_at            timestamptz NOT NULL DEFAULT now(),
    generation        int NOT NULL DEFAULT 1,
    results           jsonb NOT NULL DEFAULT '{}',
    state             jsonb NOT NULL DEFAULT '{}',
    pending           int NOT NULL DEFAULT 0,
    wake_at_pending   int NOT NULL DEFAULT 0,
    first_done        text,
    outcome           jsonb,
    -- The signal a fiber at a SIGNAL node waits for: df.signal wakes it (35_signals.sql).
    awaiting          text,
    version           bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);  -- room for HOT updates: a fiber is written at every step
CREATE INDEX _fibers_ready ON df._fibers (run_at) WHERE status = 'ready';
CREATE INDEX _fibers_instance ON df._fibers (instance_id);
CREATE INDEX _fibers_parent ON df._fibers (parent_scope) WHERE parent_scope IS NOT NULL;

-- Signals sent to an instance (df.signal) and not consumed yet: the durable inbox. A signal
-- sent while fibers wait for its name gets one row per waiting fiber (scope); one sent while
-- none waits gets one row for whichever wait comes first (scope NULL). A wait consumes the
-- oldest row of its name meant for it or for anyone: FIFO per name.
CREATE TABLE df._signals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id varchar(8) NOT NULL,
    name        text NOT NULL,
    data        jsonb,
    scope       text,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX _signals_inbox ON df._signals (instance_id, name, id);

-- Workers register here and bump last_seen_at as their heartbeat (see the df.workers view).
CREATE TABLE df._workers (
    id           uuid PRIMARY KEY,
    hostname     text NOT NULL,
    pid          int NOT NULL,
    version      text NOT NULL,
    concurrency  int NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

CREATE VIEW df.workers AS
SELECT id AS worker_id, hostname, pid, version, concurrency, started_at, last_seen_at, stopped_at,
       stopped_at IS NULL AND last_seen_at > now() - interval '30 seconds' AS alive
  FROM df._workers;

-- A new instance gets its variable snapshot and its root fiber in the same transaction as the
-- df.instances row (so a rolled-back df.start leaves nothing), and workers are woken by a
-- NOTIFY that PostgreSQL delivers only at commit.
CREATE FUNCTION df._on_instance_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- One statement for both rows: each statement costs an executor start-up.
    WITH snapshot AS (
        INSERT INTO df._instance_state (instance_id, vars)
        SELECT NEW.id, COALESCE(jsonb_object_agg(v.name, v.value), '{}'::jsonb)
          FROM df.vars v
         WHERE v.owner OPERATOR(pg_catalog.=) NEW.submitted_by
    )
    INSERT INTO df._fibers (scope, instance_id, root_node, node_id, state)
    VALUES (NEW.id, NEW.id, NEW.root_node, NEW.root_node, '{"start": true}');
    PERFORM pg_notify('pg_durable', 'work');
    RETURN NULL;
END
$$;
CREATE TRIGGER instances_start AFTER INSERT ON df.instances
    FOR EACH ROW EXECUTE FUNCTION df._on_instance_insert();
