"""What a step costs the server must not grow with the work in flight.

The engine's statements are planned from statistics that lag the work: tables analyzed while
nothing ran say that no instance runs and no fiber is ready. Planned from those, a statement
that should find one row by its primary key can read every running instance or every ready
fiber instead — once per step, so that a step costs more the more instances are in flight
(docs/performance.md, "Where the time goes"). These tests reproduce that state (VACUUM
ANALYZE of idle tables, then a burst of work) and count, per step, the buffers the df tables'
heaps and indexes were read for and the rows their sequential scans read: counts, unlike a
rate, do not depend on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.sql import one

#: The tables whose blocks a step reads or writes.
_TABLES = ("instances", "nodes", "vars", "_instance_state", "_fibers", "_signals")
_STEPS = 10
_WORKFLOW = " ~> ".join(["'SELECT 1'"] * _STEPS)


def _reads(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Heap and index blocks of the df tables read so far (from shared buffers or not), and
    the rows their sequential scans read."""
    row = conn.execute(
        """SELECT sum(coalesce(io.heap_blks_hit, 0) + coalesce(io.heap_blks_read, 0)
                      + coalesce(io.idx_blks_hit, 0) + coalesce(io.idx_blks_read, 0))::bigint,
                  sum(t.seq_tup_read)::bigint
             FROM pg_statio_all_tables io
             JOIN pg_stat_all_tables t USING (relid)
            WHERE io.schemaname = 'df' AND io.relname = ANY (%s)""",
        [list(_TABLES)],
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _without_autovacuum(conn: psycopg.Connection[Any]) -> None:
    """No autovacuum on the df tables of this test's database: the statistics are those the
    test takes, and the blocks counted (by every backend) are those of the statements it
    runs."""
    for table in _TABLES:
        conn.execute(
            sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                sql.Identifier("df", table)
            )
        )


def _blocks_read_by(conn: psycopg.Connection[Any], query: LiteralString) -> tuple[int, Any]:
    """Run ``query`` in a transaction of its own on ``conn`` (a session with
    stats_fetch_consistency = none, in a database _without_autovacuum); return the df blocks
    it read and its first row."""
    # What this session read before counts from here on too, unless flushed first: a backend
    # sends its counts at most once a second (what 5,000 df.start calls just read, 211,668
    # blocks, once counted as the statement's).
    conn.execute("SELECT pg_stat_force_next_flush()")
    before = _reads(conn)[0]
    with conn.transaction():
        row = conn.execute(query).fetchone()
    conn.execute("SELECT pg_stat_force_next_flush()")
    return _reads(conn)[0] - before, row


def _reads_per_step(
    dsn: str, start_worker: Callable[..., WorkerThread], instances: int
) -> tuple[float, float]:
    """Start ``instances`` workflows of ten steps with no worker running, then run them all
    with one worker and return the df blocks, and the rows of sequential scans of df tables,
    read per step while it did."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE df.instances, df.nodes, df._instance_state, df._fibers")
        conn.execute(
            f"SELECT count(df.start({_WORKFLOW})) FROM generate_series(1, %s)", [instances]
        )
        # Counters of this session, read without the snapshot a transaction would keep.
        conn.execute("SET stats_fetch_consistency = none")
        # What df.start read is sent now, not up to a second later as if the worker had read
        # it: with 100 instances, each df.nodes row's foreign key is checked by a sequential
        # scan of the one page of df.instances (auto_explain: 1,900 scans, about 50 rows
        # each), which once, with the cores busy, counted as 96 rows a step of the worker's.
        conn.execute("SELECT pg_stat_force_next_flush()")
        before = _reads(conn)
        worker = start_worker(concurrency=4)
        deadline = time.monotonic() + 120
        polled = 0  # rows the polls below read, by a sequential scan each: not the engine's
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM df.instances"
            ).fetchone()
            assert row is not None
            polled += row[1]
            if row[0] == row[1]:
                break
            assert time.monotonic() < deadline, f"{row[0]} of {row[1]} completed"
            time.sleep(0.2)
        # A backend reports its counters when it exits, at the latest — before it leaves
        # pg_stat_activity, which a client's closing the connection does not wait for.
        worker.stop()
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'pg_durable:worker:%'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the worker's sessions did not end"
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        after = _reads(conn)
        steps = instances * _STEPS
        return (after[0] - before[0]) / steps, (after[1] - before[1] - polled) / steps


def test_reads_per_step_do_not_grow_with_instances_in_flight(
    dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    few, few_scanned = _reads_per_step(dsn, start_worker, 100)
    many, many_scanned = _reads_per_step(dsn, start_worker, 2_000)
    # Measured (2026-12-07): 38-39 blocks per step with 100 instances in flight, 42-43 with
    # 2,000; 0.3 and 2-2.5 rows of sequential scans (the test's own polls, not counted since)
    # on a quiet machine. Before:
    # - with the running-instance check of df._commit_steps planned on idx_instances_status
    #   (until 2026-11-25): 1,034 blocks with 2,000;
    # - with df._apply_moves' UPDATE that marks instances running planned as a scan of
    #   df.instances: 72 and 139 rows of sequential scans per step — a whole scan of the
    #   pending instances per batch, which reads few blocks but compares every row with every
    #   fiber of the batch (156 ms a batch with 10,000 pending).
    # (The statistics that turn the write of fibers round take more than a burst to build:
    # test_writing_fibers_reads_those_fibers_not_the_whole_table.)
    assert many < 150, f"{many:.0f} blocks per step with 2,000 instances in flight"
    assert many < 1.5 * few + 10, f"{few:.0f} blocks per step with 100, {many:.0f} with 2,000"
    assert few_scanned < 10 and many_scanned < 10, (
        f"{few_scanned:.1f} and {many_scanned:.1f} rows of sequential scans of df tables per "
        "step with 100 and 2,000 instances in flight"
    )


def _stamps_written(conn: psycopg.Connection[Any], dsl: str) -> dict[str, list[str]]:
    """Run the workflow ``dsl`` and return, for each of its SQL nodes (by query, in the
    order of the workflow), the statuses written to its df.nodes row, in order."""
    row = conn.execute(f"SELECT df.start({dsl})").fetchone()
    assert row is not None
    assert wait_for(conn, str(row[0])) == "completed"
    written = conn.execute(
        """SELECT n.query, array_agg(w.status ORDER BY w.seq)
             FROM public.stamps_written w JOIN df.nodes n ON n.instance_id = w.instance_id
                                                      AND n.id = w.node_id
            WHERE w.instance_id = %s AND n.node_type = 'SQL'
            GROUP BY n.query""",
        [row[0]],
    ).fetchall()
    return {str(query): list(statuses) for query, statuses in written}


def test_a_quick_step_is_stamped_once(conn: psycopg.Connection[Any], worker: WorkerThread) -> None:
    """A SQL step whose statement the worker knows to be quick is stamped running in the
    transaction that runs it, which stamps it completed: its row is written once. A statement
    new to the worker is stamped running in the transaction before, so that df.nodes shows it
    running while it runs."""
    conn.execute(
        "CREATE TABLE public.stamps_written "
        "(seq bigserial, instance_id text, node_id text, status text)"
    )
    conn.execute(
        """CREATE FUNCTION public.note_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO public.stamps_written (instance_id, node_id, status)
               VALUES (NEW.instance_id, NEW.id, NEW.status);
               RETURN NULL;
           END $$"""
    )
    conn.execute(
        "CREATE TRIGGER note_stamp AFTER UPDATE ON df.nodes FOR EACH ROW "
        "EXECUTE FUNCTION public.note_stamp()"
    )
    _stamps_written(conn, "'SELECT 1 AS a' ~> 'SELECT 2 AS b'")
    # Both statements are known now, and quick.
    assert _stamps_written(conn, "'SELECT 1 AS a' ~> 'SELECT 2 AS b'") == {
        "SELECT 1 AS a": ["completed"],
        "SELECT 2 AS b": ["completed"],
    }
    assert _stamps_written(conn, "'SELECT 1 AS a' ~> 'SELECT 3 AS new' ~> 'SELECT 2 AS b'") == {
        "SELECT 1 AS a": ["completed"],
        "SELECT 3 AS new": ["running", "completed"],
        "SELECT 2 AS b": ["completed"],
    }
    # A statement that runs outside any transaction is stamped running before it runs, each
    # time (however quick it was).
    for _ in range(2):
        assert _stamps_written(conn, "'SELECT 1 AS a' ~> 'VACUUM public.stamps_written'") == {
            "SELECT 1 AS a": ["completed"],
            "VACUUM public.stamps_written": ["running", "completed"],
        }


def test_a_claim_reads_what_it_takes_not_the_whole_queue(dsn: str) -> None:
    """A claim reads the first ready fibers of the queue, in order, and stops: what it reads
    does not grow with the queue. (Planned as a bitmap scan — the plan of the same query
    written out with constants — it would read every ready fiber to keep the first few.)"""

    def claim_reads() -> int:
        """Blocks one claim of one fiber reads, in a new session (the claim's plan is made
        once per session, from what the tables hold then): the second claim in a row — the
        first also loads the instance's graph."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET stats_fetch_consistency = none")
            # (Random reads made dear: what the planner sees in a big queue, here in a small.)
            conn.execute("SET random_page_cost = 100")
            for _ in range(2):
                read, claimed = _blocks_read_by(conn, "SELECT count(*) FROM df._claim(1, 1, 0)")
                assert claimed == (1,)
            return read

    with psycopg.connect(dsn, autocommit=True) as conn:
        _without_autovacuum(conn)
        conn.execute("VACUUM ANALYZE df.instances, df.nodes, df._instance_state, df._fibers")
        conn.execute("SELECT count(df.start('SELECT 1')) FROM generate_series(1, 20)")
        few = claim_reads()
        conn.execute("SELECT count(df.start('SELECT 1')) FROM generate_series(1, 5000)")
        conn.execute("ANALYZE df._fibers")
        many = claim_reads()
    assert many < few + 50, f"a claim read {few} blocks with 20 fibers ready, {many} with 5,020"


def test_the_engines_statements_are_planned_once_for_primary_keys_and_never_compiled(
    conn: psycopg.Connection[Any],
) -> None:
    """The functions a batch goes through run with sequential scans, hash and merge joins off
    (each row found by its primary key, whatever the statistics say), with the plans they made
    for the session (left to choose, PL/pgSQL planned the writes of a batch anew at every call,
    60-80 µs each) and without JIT: a cost estimated from stale statistics past
    jit_above_cost had each graph load compiled, 15-20 ms for a statement of 0.1 ms
    (PostgreSQL built with LLVM, 100,000 instances in flight)."""
    rows = conn.execute(
        """SELECT p.proname, p.proconfig FROM pg_proc p
            WHERE p.pronamespace = 'df'::regnamespace
              AND p.proname IN ('_claim', '_claim_fibers', '_load_instances', '_commit_steps',
                                '_apply_plan', '_apply_moves', '_write_stamps', '_write_fibers',
                                '_sweep_fibers', '_next_run_at')"""
    ).fetchall()
    assert len(rows) == 10
    for name, config in rows:
        for setting in (
            "enable_seqscan=off",
            "enable_hashjoin=off",
            "enable_mergejoin=off",
            "plan_cache_mode=force_generic_plan",
            "jit=off",
        ):
            assert setting in config, (name, setting)


def test_writing_fibers_reads_those_fibers_not_the_whole_table(dsn: str) -> None:
    """Writing a batch's fibers finds each by its scope, even while the table's statistics
    say it holds a single row: what they say after a burst of work (its pages nearly empty),
    while the next burst fills those pages again. Joined with the batch's list, as it was,
    the table was read whole and every fiber compared with the list (120 ms a batch of 64
    with 5,000 fibers), sequential and index scans disabled or not."""

    def write_reads(conn: psycopg.Connection[Any]) -> int:
        """Blocks df._write_fibers reads to write 64 fibers as they stand."""
        read, written = _blocks_read_by(
            conn,
            """SELECT count(*) FROM df._write_fibers(ARRAY(
                   SELECT jsonb_build_object('scope', f.scope,
                                             'fiber', to_jsonb(f) || '{"delay": 0}')
                     FROM df._fibers f ORDER BY f.scope LIMIT 64))""",
        )
        assert written == (64,)
        return read

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET stats_fetch_consistency = none")
        _without_autovacuum(conn)
        # A burst of 5,000 that has ended (cancelled: their fibers go) but for one at the end
        # of the table; the statistics taken then; and the next burst.
        conn.execute("SELECT count(df.start('SELECT 1', 'burst')) FROM generate_series(1, 5000)")
        conn.execute("SELECT df.start('SELECT 1')")
        conn.execute("SELECT count(df.cancel(id)) FROM df.instances WHERE label = 'burst'")
        conn.execute("VACUUM ANALYZE df._fibers")
        conn.execute("SELECT count(df.start('SELECT 1')) FROM generate_series(1, 5000)")
        stale = write_reads(conn)
        conn.execute("ANALYZE df._fibers")
        conn.execute("DISCARD PLANS")
        fresh = write_reads(conn)
    assert stale < 2 * fresh, (
        f"writing 64 fibers read {stale} blocks planned from stale statistics, {fresh} from "
        "fresh ones"
    )


def test_a_sweep_reads_a_batch_of_fibers_not_the_whole_table(dsn: str) -> None:
    """The workers' sweep of fibers nobody will run examines a batch of them per statement,
    each found by its key: what a statement reads does not grow with the fibers in flight,
    even planned (once, for the session) from the statistics a burst of work leaves behind —
    a table of many pages and no rows, in which any index looks as cheap to read whole as a
    range of the primary key. A sweep that read every fiber, or one that read a range of keys
    through another index, ran for minutes with 100,000 fibers in flight, during which no dead
    row could be removed anywhere and a step cost the server twice as much."""

    def sweep_reads(conn: psycopg.Connection[Any]) -> int:
        """Blocks the sweep of the first 100 fibers reads (the second time in a row: the first
        also plans it)."""
        for _ in range(2):
            read, last = _blocks_read_by(conn, "SELECT df._sweep_fibers('', 100)")
            assert last is not None and last[0] is not None
        return read

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET stats_fetch_consistency = none")
        conn.execute("SET plan_cache_mode = force_generic_plan")  # as after a few sweeps
        _without_autovacuum(conn)
        # A burst that has ended (cancelled: its fibers go) but for one at the end of the
        # table, the statistics taken then, and the next burst.
        conn.execute("SELECT count(df.start('SELECT 1', 'burst')) FROM generate_series(1, 5000)")
        conn.execute("SELECT df.start('SELECT 1')")
        conn.execute("SELECT count(df.cancel(id)) FROM df.instances WHERE label = 'burst'")
        conn.execute("VACUUM ANALYZE df.instances, df._fibers")
        conn.execute("SELECT count(df.start('SELECT 1')) FROM generate_series(1, 1000)")
        few = sweep_reads(conn)
        conn.execute("SELECT count(df.start('SELECT 1')) FROM generate_series(1, 5000)")
        many = sweep_reads(conn)
        assert conn.execute("SELECT count(*) FROM df._fibers").fetchone() == (6001,)
    assert many < few + 50, f"a sweep read {few} blocks with 1,001 fibers, {many} with 6,001"


def test_a_lone_step_leaves_row_versions_every_scan_knows_for_dead(
    conn: psycopg.Connection[Any], worker: WorkerThread
) -> None:
    """A step that runs alone runs after a savepoint; its fiber is written once the
    savepoint is released. Written inside it — by a subtransaction of the transaction that
    locked the row when it claimed it — each row version got a MultiXact for its xmax, and
    an index scan cannot tell such a version dead: the ready queue's entries of finished
    fibers were read by every claim until the next VACUUM, and a step took a MultiXact."""
    _without_autovacuum(conn)
    for _ in range(50):
        assert run_workflow(conn, "'SELECT 1'")[1] == "completed"
    worker.stop()  # (no transaction of its own holds back what the scan may drop)
    queue = """SELECT count(*) FROM (SELECT 1 FROM df._fibers
                                       WHERE status = 'ready' AND run_at <= now()
                                       ORDER BY run_at LIMIT 256) ready"""
    assert conn.execute(queue).fetchone() == (0,)  # (the scan that drops the dead entries)
    plan = one(conn, f"EXPLAIN (ANALYZE, FORMAT JSON) {queue}")[0]["Plan"]
    while "Plans" in plan:
        plan = plan["Plans"][0]
    assert plan["Node Type"] == "Index Only Scan", plan
    assert plan["Heap Fetches"] < 5, f"the queue's scan visited {plan['Heap Fetches']} fibers"
