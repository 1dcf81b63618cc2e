"""What the worker does with bad graphs, failing steps in batches, cancels and stale plans."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


def hand_built(conn: Conn, nodes: list[tuple[str, str, str | None, str | None, str | None]]) -> str:
    """Insert an instance whose nodes (id, type, query, left, right) bypass df.start."""
    instance_id = "0badc0de"
    with conn.transaction():
        conn.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by) VALUES (%s, %s, 'postgres')",
            (instance_id, nodes[0][0]),
        )
        for node_id, node_type, query, left, right in nodes:
            conn.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, right_node, "
                "submitted_by) VALUES (%s, %s, %s, %s, %s, %s, 'postgres')",
                (node_id, instance_id, node_type, query, left, right),
            )
    return instance_id


def test_a_malformed_hand_built_graph_fails_its_instance_and_nothing_else(
    conn: Conn, worker: WorkerThread
) -> None:
    iid = hand_built(
        conn,
        [
            ("aaaaaaaa", "THEN", None, "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "SLEEP", "-5", None, None),
        ],
    )
    assert wait_for(conn, iid) == "failed"
    assert output_of(conn, iid).startswith(f"Invalid workflow graph for instance {iid}: ")
    assert "SLEEP" in output_of(conn, iid)
    # The worker carries on.
    _, status = run_workflow(conn, "'SELECT 1'")
    assert status == "completed"


def test_hand_built_http_nodes_are_checked_by_the_worker(conn: Conn, worker: WorkerThread) -> None:
    # (Rows written past df.start: the worker holds them to df.http's rules, then the policy.)
    config = '{"url":"https://example.com","headers":{"Authorization":5}}'
    iid = hand_built(conn, [("aaaaaaaa", "HTTP", config, None, None)])
    assert wait_for(conn, iid) == "failed"
    assert output_of(conn, iid) == (
        "HTTP header 'Authorization' has a number value; header values must be JSON strings"
    )


def test_failing_steps_in_a_batch_leave_the_others_alone(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    """Many instances, every fifth of which fails in its second step, all claimed in batches:
    each gets its own outcome and every successful step's effect is there exactly once."""
    conn.execute("CREATE TABLE effects (instance text, step int, UNIQUE (instance, step))")
    ids: dict[str, bool] = {}
    with conn.transaction():
        for n in range(100):
            fails = n % 5 == 0
            second = (
                "SELECT 1/0" if fails else "INSERT INTO effects VALUES (''{sys_instance_id}'', 2)"
            )
            row = conn.execute(
                "SELECT df.start('INSERT INTO effects VALUES (''{sys_instance_id}'', 1)' "
                f"~> '{second}' ~> 'INSERT INTO effects VALUES (''{{sys_instance_id}}'', 3)')"
            ).fetchone()
            assert row is not None
            ids[str(row[0])] = fails
    start_worker(concurrency=2, batch_size=16)
    for iid, fails in ids.items():
        assert wait_for(conn, iid, 60) == ("failed" if fails else "completed")
    rows = dict(
        conn.execute("SELECT instance, array_agg(step ORDER BY step) FROM effects GROUP BY 1")
    )
    assert rows == {iid: [1] if fails else [1, 2, 3] for iid, fails in ids.items()}


def test_a_result_that_changed_shape_is_described_again(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE t (a int)")
    conn.execute("INSERT INTO t VALUES (1)")
    iid, status = run_workflow(
        conn,
        "('SELECT * FROM t' |=> 'before') "
        "~> 'ALTER TABLE t ADD COLUMN b text DEFAULT ''x''' "
        "~> 'SELECT * FROM t'",
    )
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == {"rows": [{"a": 1, "b": "x"}], "row_count": 1}


def test_cancel_stops_the_running_statement_and_nothing_after_it_runs(
    conn: Conn, worker: WorkerThread
) -> None:
    conn.execute("CREATE TABLE after_cancel (v int)")
    row = conn.execute(
        "SELECT df.start('SELECT pg_sleep(30)' ~> 'INSERT INTO after_cancel VALUES (1)')"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND application_name = 'pg_durable:worker:workflow-sql' AND datname = current_database()"
    )
    deadline = time.monotonic() + 20
    while conn.execute(sleeping).fetchone() == (0,):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    assert conn.execute("SELECT df.cancel(%s)", (iid,)).fetchone() == (
        f"Instance {iid} cancelled: Cancelled by user",
    )
    while conn.execute(sleeping).fetchone() != (0,):
        assert time.monotonic() - cancelled_at < 5, "the statement was not cancelled"
        time.sleep(0.05)
    time.sleep(0.5)
    assert conn.execute("SELECT df.status(%s)", (iid,)).fetchone() == ("cancelled",)
    assert conn.execute("SELECT count(*) FROM after_cancel").fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)
    ).fetchone() == (0,)
    # The worker is unharmed.
    _, status = run_workflow(conn, "'SELECT 1'")
    assert status == "completed"


def terminate_worker_backends(conn: Conn, db_name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name LIKE 'pg_durable:worker%%'",
        (db_name,),
    )


def test_a_server_that_cannot_write_holds_work_back_and_fails_nothing(
    conn: Conn, db_name: str, worker: WorkerThread, caplog: Any
) -> None:
    """A read-only server (a standby after failover, say): the worker's transactions fail with
    read_only_sql_transaction. That is no step's failure: work waits, and goes on once the
    server takes writes again."""
    conn.execute(f'ALTER DATABASE "{db_name}" SET default_transaction_read_only = on')
    terminate_worker_backends(conn, db_name)  # they come back read-only
    iid = str(conn.execute("SELECT df.start('SELECT 1' ~> 'SELECT 2')").fetchone()[0])  # type: ignore[index]
    time.sleep(2.0)
    status = conn.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()
    assert status == ("pending",)
    conn.execute(f'ALTER DATABASE "{db_name}" RESET default_transaction_read_only')
    assert wait_for(conn, iid, timeout=30) == "completed"
    assert "read-only transaction" in caplog.text
    assert "internal error" not in caplog.text
