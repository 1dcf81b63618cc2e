"""The worker runs real workflows on a real PostgreSQL: node types, results, failures."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for

Conn = psycopg.Connection[Any]


def result_of(conn: Conn, instance_id: str) -> Any:
    row = conn.execute(
        "SELECT n.result FROM df.instances i JOIN df.nodes n "
        "ON n.instance_id = i.id AND n.id = i.root_node WHERE i.id = %s",
        (instance_id,),
    ).fetchone()
    assert row is not None
    return row[0]


def output_of(conn: Conn, instance_id: str) -> str:
    row = conn.execute(
        "SELECT output FROM df._instance_state WHERE instance_id = %s", (instance_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_hello_world(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT ''Hello, durable world!'''")
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"?column?": "Hello, durable world!"}], "row_count": 1}
    row = conn.execute(
        "SELECT completed_at IS NOT NULL FROM df.instances WHERE id = %s", (iid,)
    ).fetchone()
    assert row == (True,)


def test_order_processing_chain_with_named_result_and_sleep(
    conn: Conn, worker: WorkerThread
) -> None:
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    conn.execute("INSERT INTO orders VALUES (7, 'pending')")
    started = time.monotonic()
    _iid, status = run_workflow(
        conn,
        """'SELECT id FROM orders WHERE status = ''pending'' LIMIT 1' |=> 'order_id'
           ~> 'UPDATE orders SET status = ''processing'' WHERE id = $order_id'
           ~> df.sleep(2)
           ~> 'UPDATE orders SET status = ''completed'' WHERE id = $order_id'""",
    )
    assert status == "completed"
    assert time.monotonic() - started >= 2.0
    assert conn.execute("SELECT status FROM orders").fetchone() == ("completed",)


def test_join_branches_really_run_at_once(conn: Conn, worker: WorkerThread) -> None:
    started = time.monotonic()
    iid, status = run_workflow(
        conn, "'SELECT pg_sleep(1)' & 'SELECT pg_sleep(1)' & 'SELECT 3 AS x'"
    )
    elapsed = time.monotonic() - started
    assert status == "completed"
    assert elapsed < 1.9, elapsed
    # A JOIN's result is the array of its branches' results (nested JOIN → nested array).
    assert result_of(conn, iid) == [
        [
            {"rows": [{"pg_sleep": None}], "row_count": 1},
            {"rows": [{"pg_sleep": None}], "row_count": 1},
        ],
        {"rows": [{"x": 3}], "row_count": 1},
    ]


def test_dashboard_fan_out_then_summary(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE stats (k text, v int)")
    iid, status = run_workflow(
        conn,
        """('INSERT INTO stats VALUES (''a'', 1)' & 'INSERT INTO stats VALUES (''b'', 2)'
            & 'INSERT INTO stats VALUES (''c'', 3)')
           ~> 'SELECT sum(v)::int AS total FROM stats'""",
    )
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"total": 6}], "row_count": 1}


def test_race_first_wins_and_the_loser_is_stopped(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE slow_effects (x int)")
    started = time.monotonic()
    iid, status = run_workflow(
        conn,
        """'WITH s AS (SELECT pg_sleep(3)) INSERT INTO slow_effects SELECT 1 FROM s'
           | 'SELECT ''fast'' AS winner'""",
    )
    assert status == "completed"
    assert time.monotonic() - started < 2.5
    assert result_of(conn, iid) == {"rows": [{"winner": "fast"}], "row_count": 1}
    time.sleep(3.5)
    # The loser's statement was cancelled and rolled back: its effect never commits.
    assert conn.execute("SELECT count(*) FROM slow_effects").fetchone() == (0,)


def test_tier_check_with_if_else(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE customers (id int, spend numeric, tier text)")
    conn.execute("INSERT INTO customers VALUES (1, 5000, NULL), (2, 10, NULL)")
    for cid, tier in ((1, "gold"), (2, "standard")):
        _iid, status = run_workflow(
            conn,
            f"""'SELECT spend > 1000 FROM customers WHERE id = {cid}'
                ?> 'UPDATE customers SET tier = ''gold'' WHERE id = {cid}'
                !> 'UPDATE customers SET tier = ''standard'' WHERE id = {cid}'""",
        )
        assert status == "completed"
        assert conn.execute("SELECT tier FROM customers WHERE id = %s", (cid,)).fetchone() == (
            tier,
        )


def test_condition_that_is_an_expression_after_substitution(
    conn: Conn, worker: WorkerThread
) -> None:
    iid, status = run_workflow(
        conn,
        """('SELECT false AS timed_out' |=> 'sig')
           ~> ('$sig.timed_out' ?> 'SELECT ''expired'' AS r' !> 'SELECT ''approved'' AS r')""",
    )
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"r": "approved"}], "row_count": 1}


def test_loop_with_break_and_results_across_iterations(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE counter (n int)")
    conn.execute("INSERT INTO counter VALUES (0)")
    iid, status = run_workflow(
        conn,
        """@> ('UPDATE counter SET n = n + 1 RETURNING n' |=> 'c'
               ~> ('SELECT $c >= 3' ?> df.break('$c') !> 'SELECT 1'))""",
        timeout=30,
    )
    assert status == "completed"
    assert conn.execute("SELECT n FROM counter").fetchone() == (3,)
    assert result_of(conn, iid) == 3
    count = conn.execute(
        "SELECT execution_count FROM df._instance_state WHERE instance_id = %s", (iid,)
    ).fetchone()
    assert count == (3,)


def test_a_result_that_is_json_null_is_stored_as_json_null(
    conn: Conn, worker: WorkerThread
) -> None:
    # df.break() carries JSON null: the loop's result, and the BREAK's, is that value — a
    # jsonb null in df.nodes.result (not SQL NULL, which is "no result"), 'null' from df.result.
    iid, status = run_workflow(conn, "@> ('SELECT 1' ~> df.break())")
    assert status == "completed"
    rows = conn.execute(
        "SELECT node_type, result IS NULL, jsonb_typeof(result) FROM df.nodes "
        "WHERE instance_id = %s AND node_type IN ('LOOP', 'BREAK') ORDER BY node_type",
        (iid,),
    ).fetchall()
    assert rows == [("BREAK", False, "null"), ("LOOP", False, "null")]
    assert conn.execute("SELECT df.result(%s)", (iid,)).fetchone() == ("null",)
    # A node that has not finished has no result at all.
    iid, status = run_workflow(conn, "'SELECT 1' ?> 'SELECT 2' !> 'SELECT 3'")
    assert status == "completed"
    untaken = conn.execute(
        "SELECT result IS NULL FROM df.nodes WHERE instance_id = %s AND query = 'SELECT 3'",
        (iid,),
    ).fetchone()
    assert untaken == (True,)


def test_sql_error_fails_node_and_instance_with_the_reason(
    conn: Conn, worker: WorkerThread
) -> None:
    iid, status = run_workflow(conn, "'SELECT 1' ~> 'SELECT 1/0' ~> 'SELECT 3'")
    assert status == "failed"
    message = "SQL execution failed: error returned from database: division by zero"
    assert output_of(conn, iid) == message
    rows = conn.execute(
        "SELECT node_type, status, result FROM df.nodes WHERE instance_id = %s "
        "ORDER BY created_at, id",
        (iid,),
    ).fetchall()
    statuses = {(r[0], r[1]) for r in rows}
    assert ("SQL", "failed") in statuses and ("THEN", "failed") in statuses
    assert any(r[2] == message for r in rows if r[1] == "failed")
    assert conn.execute("SELECT count(*) FROM df._fibers").fetchone() == (0,)


def test_multi_statement_step_is_refused(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 1; SELECT 2'")
    assert status == "failed"
    assert "cannot insert multiple commands" in output_of(conn, iid)


def test_failed_step_leaves_no_partial_effects(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE t (x int CHECK (x < 10))")
    _iid, status = run_workflow(conn, "'INSERT INTO t SELECT g FROM generate_series(1, 20) g'")
    assert status == "failed"
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_result_shape_and_type_mapping(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn,
        """'SELECT 1::int2 AS a, 2::int8 AS b, 123456.78900000::numeric AS n, 3.14::float4 AS f,
                   ''x''::varchar AS v, true AS t, NULL::text AS z,
                   ''2024-06-15 12:30:00+00''::timestamptz AS ts, ''2024-06-15''::date AS d,
                   ''{"k": [1, 2]}''::jsonb AS j,
                   ''a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11''::uuid AS u'""",
    )
    assert status == "completed"
    text = output_of(conn, iid)
    assert text.startswith('{"rows":[{"a":1,"b":2,"n":"123456.78900000","f":3.140000104904175,')
    row = json.loads(text)["rows"][0]
    assert row["ts"] == "2024-06-15T12:30:00+00:00"
    assert row["d"] == "2024-06-15" and row["j"] == {"k": [1, 2]} and row["z"] is None
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and row["t"] is True


def test_rows_of_plain_types_are_their_own_result_text(conn: Conn, worker: WorkerThread) -> None:
    # Rows whose columns are all ints, text, bool, uuid or dates are taken as row_to_json
    # printed them (sqlresult._VERBATIM), not rebuilt: the text must be the very one that
    # rebuilding them gives — PostgreSQL's escapes are Python's.
    text = "".join(chr(c) for c in range(1, 128)) + "é€😀\u2028\u2029\ufeff\u00a0 ' \" \\"
    conn.execute("CREATE TABLE strings (v text)")
    conn.execute("INSERT INTO strings VALUES (%s)", [text])
    iid, status = run_workflow(
        conn,
        """'SELECT v AS "we""ird é", 9223372036854775807 AS n, NULL::int4 AS z, false AS b,
                   ''2024-06-15''::date AS d, ''x''::name AS nm, ''y ''::char(3) AS c
              FROM strings'""",
    )
    assert status == "completed", output_of(conn, iid)
    row = {'we"ird é': text, "n": 9223372036854775807, "z": None, "b": False}
    row |= {"d": "2024-06-15", "nm": "x", "c": "y  "}
    expected = {"rows": [row], "row_count": 1}
    assert output_of(conn, iid) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


def test_unsupported_column_type_fails_with_spec_text(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT ''1 day''::interval AS i'")
    assert status == "failed"
    assert output_of(conn, iid).startswith("Unsupported column type ")
    assert "for column 'i'" in output_of(conn, iid)


def test_dml_returning_and_ddl_steps(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn,
        """'CREATE TABLE made_by_step (id serial, v text)'
           ~> 'INSERT INTO made_by_step (v) VALUES (''a''), (''b'') RETURNING id, v'""",
    )
    assert status == "completed"
    assert result_of(conn, iid) == {
        "rows": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}],
        "row_count": 2,
    }


def test_vacuum_runs_in_autocommit(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE vac (x int)")
    iid, status = run_workflow(
        conn, "'VACUUM vac' ~> 'CREATE INDEX CONCURRENTLY vac_x ON vac (x)' ~> 'SELECT 1 AS ok'"
    )
    assert status == "completed", output_of(conn, iid)
    assert conn.execute("SELECT to_regclass('vac_x') IS NOT NULL").fetchone() == (True,)


def test_rolled_back_start_is_never_seen(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE side (x int)")
    with conn.transaction(force_rollback=True):
        row = conn.execute("SELECT df.start('INSERT INTO side VALUES (1)')").fetchone()
    assert row is not None
    time.sleep(1.0)
    assert conn.execute("SELECT count(*) FROM side").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM df.instances").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM df._fibers").fetchone() == (0,)


def test_session_settings_do_not_leak_between_steps(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn,
        """'SELECT set_config(''work_mem'', ''77MB'', false) AS s'
           ~> 'SELECT current_setting(''work_mem'') AS w'""",
    )
    assert status == "completed"
    assert result_of(conn, iid)["rows"][0]["w"] != "77MB"


def test_variables_are_snapshotted_at_start(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("INSERT INTO df.vars (name, value) VALUES ('tbl', 'pg_class'), ('uid', '42')")
    iid, status = run_workflow(
        conn, """'SELECT count(*) > 0 AS ok, ''{"id": "{uid}"}''::jsonb AS j FROM {tbl}'"""
    )
    assert status == "completed"
    assert result_of(conn, iid)["rows"][0] == {"ok": True, "j": {"id": "42"}}


def test_many_instances_with_several_workers_run_each_step_once(
    conn: Conn, start_worker: Any
) -> None:
    conn.execute("CREATE TABLE ledger (instance text, step int, UNIQUE (instance, step))")
    for _ in range(3):
        start_worker(concurrency=3)
    ids = []
    for _ in range(60):
        row = conn.execute(
            "SELECT df.start("
            "'INSERT INTO ledger VALUES (''{sys_instance_id}'', 1)' ~> "
            "'INSERT INTO ledger VALUES (''{sys_instance_id}'', 2)' ~> "
            "('INSERT INTO ledger VALUES (''{sys_instance_id}'', 3)' & "
            " 'INSERT INTO ledger VALUES (''{sys_instance_id}'', 4)'))"
        ).fetchone()
        assert row is not None
        ids.append(str(row[0]))
    for iid in ids:
        assert wait_for(conn, iid, 60) == "completed"
    assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (240,)


def test_an_instance_and_its_first_step_read_running_while_that_step_runs(
    conn: Conn, worker: WorkerThread
) -> None:
    row = conn.execute("SELECT df.start('SELECT pg_sleep(1.5)' ~> 'SELECT 2')").fetchone()
    assert row is not None
    iid = str(row[0])
    deadline = time.monotonic() + 10
    while conn.execute("SELECT df.status(%s)", (iid,)).fetchone() != ("running",):
        assert time.monotonic() < deadline, "the instance never read running"
        time.sleep(0.02)
    nodes = conn.execute(
        "SELECT node_type, query, inferred_status FROM df.instance_nodes(%s) ORDER BY node_type",
        (iid,),
    ).fetchall()
    assert ("SQL", "SELECT pg_sleep(1.5)", "running") in nodes
    assert ("SQL", "SELECT 2", "pending") in nodes
    assert wait_for(conn, iid) == "completed"
