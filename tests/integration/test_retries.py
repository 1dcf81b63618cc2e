"""df.retry and df.timeout: attempts, durable backoff, deadlines that cancel statements."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.sql import error_of, one
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]

#: Attempt n (counted by a sequence: nextval survives the rollback of a failed statement)
#: fails while n < 3, and notes when it started, as milliseconds since the epoch on the
#: database clock, in a sequence of its own (setval is not rolled back either).
#: (1 / (n - n), not 1 / 0: the planner folds constants, also in a CASE branch never taken.)
FLAKY = (
    "WITH a AS (SELECT nextval('attempts') AS n), "
    "s AS (SELECT setval(format('started_%s', a.n)::regclass, "
    "(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM a) "
    "SELECT CASE WHEN a.n < 3 THEN 1 / (a.n - a.n) ELSE a.n END AS attempt FROM a, s"
)
#: FLAKY as a SQL string literal.
FLAKY_SQL = "'" + FLAKY.replace("'", "''") + "'"
ZERO = "SQL execution failed: error returned from database: division by zero"


def flaky(conn: Conn, attempts: int = 5) -> None:
    conn.execute("CREATE SEQUENCE attempts")
    for n in range(1, attempts + 1):
        conn.execute(f"CREATE SEQUENCE started_{n}")


def starts(conn: Conn, attempts: int) -> list[float]:
    """When each attempt started (database clock, seconds)."""
    return [one(conn, f"SELECT last_value FROM started_{n}") / 1000 for n in range(1, attempts + 1)]


def nodes(conn: Conn, instance_id: str) -> dict[str, dict[str, Any]]:
    """df.instance_nodes by node type (each type once in these tests)."""
    rows = conn.execute(
        "SELECT node_type, status, result, status_details, execution_id, inferred_status "
        "FROM df.instance_nodes(%s)",
        (instance_id,),
    ).fetchall()
    return {
        r[0]: {
            "status": r[1],
            "result": None if r[2] is None else json.loads(r[2]),
            "details": json.loads(r[3]) if r[3] else {},
            "execution_id": r[4],
            "inferred": r[5],
        }
        for r in rows
    }


def sleeping(conn: Conn) -> int:
    """Backends sleeping in pg_sleep (a step's statement) right now."""
    return int(
        one(
            conn,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()",
        )
    )


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


# -- the DSL ----------------------------------------------------------------------------------


def test_constructors_build_wrappers_with_a_json_config(conn: Conn) -> None:
    assert one(conn, "SELECT df.retry('SELECT 1', 3)") == (
        '{"node_type":"RETRY","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"query":"{\\"max_attempts\\":3,\\"backoff_seconds\\":1,\\"backoff_factor\\":2}"}'
    )
    assert one(conn, "SELECT df.retry('SELECT 1', 5, 0.25, 1.5)") == (
        '{"node_type":"RETRY","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"query":"{\\"max_attempts\\":5,\\"backoff_seconds\\":0.25,\\"backoff_factor\\":1.5}"}'
    )
    assert one(conn, "SELECT df.timeout('SELECT 1' ~> 'SELECT 2', 30)") == (
        '{"node_type":"TIMEOUT","left_node":{"node_type":"THEN",'
        '"left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}},'
        '"query":"{\\"seconds\\":30}"}'
    )
    # They compose like any node, and name their result like any node.
    composed = one(conn, "SELECT df.retry(df.timeout('SELECT 1', 5), 2) |=> 'x' ~> 'SELECT $x'")
    envelope = json.loads(composed)
    assert envelope["left_node"]["node_type"] == "RETRY"
    assert envelope["left_node"]["result_name"] == "x"
    assert envelope["left_node"]["left_node"]["node_type"] == "TIMEOUT"
    assert one(conn, "SELECT df.retry(NULL, 3)") is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("df.retry('SELECT 1', 0)", "df.retry: max_attempts must be at least 1 (got 0)"),
        ("df.retry('SELECT 1', -3)", "df.retry: max_attempts must be at least 1 (got -3)"),
        (
            "df.retry('SELECT 1', 3, -1)",
            "df.retry: backoff_seconds must be a number of seconds, 0 or more (got -1)",
        ),
        (
            "df.retry('SELECT 1', 3, 'NaN')",
            "df.retry: backoff_seconds must be a number of seconds, 0 or more (got NaN)",
        ),
        (
            "df.retry('SELECT 1', 3, 'Infinity')",
            "df.retry: backoff_seconds must be a number of seconds, 0 or more (got Infinity)",
        ),
        (
            "df.retry('SELECT 1', 3, 1, 0.5)",
            "df.retry: backoff_factor must be a number, 1 or more (got 0.5)",
        ),
        ("df.timeout('SELECT 1', 0)", "df.timeout: seconds must be positive (got 0)"),
        ("df.timeout('SELECT 1', -5)", "df.timeout: seconds must be positive (got -5)"),
    ],
)
def test_constructors_refuse_bad_settings(conn: Conn, call: str, message: str) -> None:
    assert error_of(conn, f"SELECT {call}") == message


def test_no_backoff_and_a_factor_of_one_are_allowed(conn: Conn) -> None:
    config = json.loads(json.loads(one(conn, "SELECT df.retry('SELECT 1', 1, 0, 1)"))["query"])
    assert config == {"max_attempts": 1, "backoff_seconds": 0, "backoff_factor": 1}


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (
            {"node_type": "RETRY", "query": '{"max_attempts":2}'},
            "Invalid durable function graph: root: RETRY nodes need a left_node (the node "
            "they wrap) and no right_node",
        ),
        (
            {
                "node_type": "THEN",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "right_node": {
                    "node_type": "RETRY",
                    "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                    "query": '{"max_attempts":0}',
                },
            },
            "Invalid durable function graph: root.right: max_attempts must be at least 1 (got 0)",
        ),
        (
            {
                "node_type": "RETRY",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "query": "3 times",
            },
            "Invalid durable function graph: root: query in RETRY must be a JSON config object",
        ),
        (
            {
                "node_type": "RETRY",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "query": '{"max_attempts":"3"}',
            },
            'Invalid durable function graph: root: query in RETRY must be {"max_attempts":'
            '<whole number>,"backoff_seconds":<number>,"backoff_factor":<number>}',
        ),
        (
            {
                "node_type": "RETRY",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "query": '{"max_attempts":2.5}',
            },
            "Invalid durable function graph: root: max_attempts must be at least 1 (got 2.5)",
        ),
        (
            {
                "node_type": "TIMEOUT",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "query": '{"seconds":1.5}',
            },
            "Invalid durable function graph: root: seconds must be positive (got 1.5)",
        ),
        (
            {
                "node_type": "TIMEOUT",
                "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                "right_node": {"node_type": "SQL", "query": "SELECT 2"},
                "query": '{"seconds":1}',
            },
            "Invalid durable function graph: root: TIMEOUT nodes need a left_node (the node "
            "they wrap) and no right_node",
        ),
    ],
)
def test_df_start_checks_hand_built_wrappers(
    conn: Conn, envelope: dict[str, Any], message: str
) -> None:
    assert error_of(conn, "SELECT df.start(%s)", (json.dumps(envelope),)) == message


def test_df_start_stores_the_canonical_config(conn: Conn) -> None:
    envelope = {
        "node_type": "RETRY",
        "left_node": {"node_type": "SQL", "query": "SELECT 1"},
        "query": '{ "backoff_factor": 3, "max_attempts": 4 }',
    }
    iid = one(conn, "SELECT df.start(%s)", (json.dumps(envelope),))
    assert one(
        conn, "SELECT query FROM df.nodes WHERE instance_id = %s AND node_type = 'RETRY'", (iid,)
    ) == ('{"max_attempts":4,"backoff_seconds":1,"backoff_factor":3}')


def test_unknown_types_list_the_new_ones(conn: Conn) -> None:
    message = error_of(conn, """SELECT df.start('{"node_type":"NOPE"}')""")
    assert message.endswith("SIGNAL, RETRY, TIMEOUT")


def test_explain_draws_the_wrappers(conn: Conn) -> None:
    text = one(
        conn,
        "SELECT df.explain(df.retry(df.timeout('SELECT pg_sleep(1)', 5), 3, 0.5) ~> 'SELECT 2')",
    )
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines == [
        "RETRY (max 3 attempts, backoff 0.5s ×2)",
        "    ↺ attempt:",
        "      └─ TIMEOUT 5s",
        "          ⏱ within:",
        "            └─ SQL: SELECT pg_sleep(1)",
        "→ SQL: SELECT 2",
    ]


# -- retries ----------------------------------------------------------------------------------


def test_a_step_failing_twice_then_succeeding_completes_on_its_third_attempt(
    conn: Conn, worker: WorkerThread
) -> None:
    flaky(conn)
    iid, status = run_workflow(conn, f"df.retry({FLAKY_SQL}, 5, 0.2)")
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == {"rows": [{"attempt": 3}], "row_count": 1}
    seen = nodes(conn, iid)
    assert seen["RETRY"]["status"] == "completed"
    assert seen["RETRY"]["details"] == {
        "execution_id": f"{iid}::1::{one(conn, 'SELECT root_node FROM df.instances')}::3",
        "attempt": 3,
        "max_attempts": 5,
        "last_error": ZERO,
    }
    # The wrapped step ran in the third attempt's generation, and that is what it shows.
    assert seen["SQL"]["status"] == "completed"
    assert seen["SQL"]["execution_id"] == 3
    assert seen["SQL"]["inferred"] == "completed"


def test_the_last_attempt_fails_with_its_error_and_the_count(
    conn: Conn, worker: WorkerThread
) -> None:
    iid, status = run_workflow(conn, "df.retry('SELECT 1 / 0', 3, 0)")
    assert status == "failed"
    assert output_of(conn, iid) == f"RETRY failed after 3 attempts: {ZERO}"
    seen = nodes(conn, iid)
    assert seen["RETRY"]["result"] == f"RETRY failed after 3 attempts: {ZERO}"
    assert {k: v for k, v in seen["RETRY"]["details"].items() if k != "execution_id"} == {
        "attempt": 3,
        "max_attempts": 3,
        "last_error": ZERO,
    }
    assert (seen["SQL"]["status"], seen["SQL"]["result"]) == ("failed", ZERO)
    assert seen["SQL"]["execution_id"] == 3
    # One attempt is no retry.
    iid, status = run_workflow(conn, "df.retry('SELECT 1 / 0', 1)")
    assert output_of(conn, iid) == f"RETRY failed after 1 attempt: {ZERO}"


def test_backoff_grows_by_its_factor_on_the_database_clock(
    conn: Conn, worker: WorkerThread
) -> None:
    flaky(conn)
    iid, status = run_workflow(conn, f"df.retry({FLAKY_SQL}, 3, 0.4, 2.5)")
    assert status == "completed", output_of(conn, iid)
    first, second, third = starts(conn, 3)
    assert 0.4 <= second - first < 0.4 + 1.0
    assert 1.0 <= third - second < 1.0 + 1.0


def test_named_results_of_a_failed_attempt_do_not_leak(conn: Conn, worker: WorkerThread) -> None:
    flaky(conn)
    conn.execute("CREATE TABLE seen (x text)")
    iid, status = run_workflow(
        conn,
        "'SELECT ''before'' AS v' |=> 'x' "
        "~> df.retry('INSERT INTO seen VALUES ($x)' "
        "            ~> 'SELECT ''inside '' || nextval(''attempts'') AS v' |=> 'x' "
        "            ~> 'SELECT CASE WHEN currval(''attempts'') < 3 "
        "                            THEN 1 / (currval(''attempts'') - currval(''attempts'')) END',"
        "            3, 0) "
        "~> 'SELECT $x AS x'",
    )
    assert status == "completed", output_of(conn, iid)
    assert [r[0] for r in conn.execute("SELECT x FROM seen")] == ["before"] * 3
    assert result_of(conn, iid) == {"rows": [{"x": "inside 3"}], "row_count": 1}


def test_a_retry_in_a_join_branch_runs_its_attempts_in_the_branch(
    conn: Conn, worker: WorkerThread
) -> None:
    flaky(conn)
    iid, status = run_workflow(
        conn, f"df.join(df.retry({FLAKY_SQL}, 3, 0) |=> 'r', 'SELECT 2 AS b')"
    )
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == [
        {"rows": [{"attempt": 3}], "row_count": 1},
        {"rows": [{"b": 2}], "row_count": 1},
    ]
    seen = nodes(conn, iid)
    assert seen["RETRY"]["details"]["attempt"] == 3
    assert seen["RETRY"]["execution_id"] == 3
    assert {n["inferred"] for n in seen.values()} == {"completed"}


def test_the_wait_between_attempts_survives_a_worker_restart(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    flaky(conn)
    iid = one(conn, f"SELECT df.start(df.retry({FLAKY_SQL}, 3, 3, 1))")
    first = start_worker()
    wait_until(lambda: "next_attempt_at" in nodes(conn, iid)["RETRY"]["details"])
    first.stop()
    # No worker: the wait is a row, due when the backoff is over.
    due = one(
        conn,
        "SELECT extract(epoch FROM run_at) FROM df._fibers WHERE instance_id = %s "
        "AND status = 'ready'",
        (iid,),
    )
    assert float(due) - starts(conn, 1)[0] >= 3
    assert one(conn, "SELECT last_value FROM attempts") == 1
    start_worker()
    assert wait_for(conn, iid, 30) == "completed", output_of(conn, iid)
    first_start, second, third = starts(conn, 3)
    assert second - first_start >= 3 and third - second >= 3


def test_cancelling_during_the_backoff_stops_the_retries(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE SEQUENCE attempts")
    iid = one(conn, "SELECT df.start(df.retry('SELECT nextval(''attempts'') / 0', 5, 1))")
    wait_until(lambda: "next_attempt_at" in nodes(conn, iid)["RETRY"]["details"])
    assert one(conn, "SELECT df.cancel(%s)", (iid,)).startswith(f"Instance {iid} cancelled")
    assert one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)) == 0
    time.sleep(2.0)
    assert one(conn, "SELECT last_value FROM attempts") == 1
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"


# -- timeouts ---------------------------------------------------------------------------------


def test_a_timeout_cancels_its_statement_and_fails_the_node(
    conn: Conn, worker: WorkerThread
) -> None:
    started = time.monotonic()
    iid = one(conn, "SELECT df.start(df.timeout('SELECT pg_sleep(30)', 1))")
    wait_until(lambda: sleeping(conn) == 1)
    assert wait_for(conn, iid) == "failed"
    assert time.monotonic() - started < 10
    assert sleeping(conn) == 0
    assert output_of(conn, iid) == "Timed out after 1s"
    seen = nodes(conn, iid)
    assert (seen["TIMEOUT"]["status"], seen["TIMEOUT"]["result"]) == (
        "failed",
        "Timed out after 1s",
    )
    assert seen["SQL"]["result"] == (
        "SQL execution failed: error returned from database: "
        "canceling statement due to statement timeout"
    )


def test_a_step_finished_in_time_is_not_timed_out(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn, "df.timeout('SELECT 1 AS v', 10) |=> 'a' ~> 'SELECT $a + 1 AS v'"
    )
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"v": 2}], "row_count": 1}


def test_a_timeout_over_a_join_cancels_every_branch(conn: Conn, worker: WorkerThread) -> None:
    started = time.monotonic()
    iid = one(
        conn,
        "SELECT df.start(df.timeout(df.join('SELECT pg_sleep(30)', 'SELECT pg_sleep(30)'), 1))",
    )
    wait_until(lambda: sleeping(conn) == 2)
    assert wait_for(conn, iid) == "failed"
    assert time.monotonic() - started < 10
    assert output_of(conn, iid) == "Timed out after 1s"
    wait_until(lambda: sleeping(conn) == 0, timeout=5)
    assert one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)) == 0
    seen = nodes(conn, iid)
    assert seen["TIMEOUT"]["result"] == "Timed out after 1s"
    # Its statements stopped at the deadline (statement_timeout) or were cancelled with the
    # subtree when the timer fired, whichever came first.
    assert seen["JOIN"]["inferred"] in ("failed", "skipped")


def test_a_timeout_over_a_sequence_fails_while_it_waits(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE marks (what text)")
    started = time.monotonic()
    iid, status = run_workflow(
        conn,
        "df.timeout('INSERT INTO marks VALUES (''in'')' ~> df.sleep(30) "
        "~> 'INSERT INTO marks VALUES (''late'')', 1) "
        "~> 'INSERT INTO marks VALUES (''after'')'",
    )
    assert status == "failed"
    assert 1 <= time.monotonic() - started < 10
    assert output_of(conn, iid) == "Timed out after 1s"
    assert [r[0] for r in conn.execute("SELECT what FROM marks")] == ["in"]


def test_a_subtree_done_in_time_wins_over_its_timer(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn,
        "df.timeout('SELECT 1 AS v' |=> 'a' ~> df.sleep(0) ~> 'SELECT $a + 1 AS v', 30) |=> 't' "
        "~> 'SELECT $a + $t AS v'",
    )
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == {"rows": [{"v": 3}], "row_count": 1}


def test_a_retry_tries_again_after_a_timeout(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE SEQUENCE attempts")
    iid, status = run_workflow(
        conn,
        "df.retry(df.timeout('SELECT pg_sleep(CASE WHEN nextval(''attempts'') = 1 THEN 30 "
        "ELSE 0 END)', 1), 3, 0)",
    )
    assert status == "completed", output_of(conn, iid)
    details = nodes(conn, iid)["RETRY"]["details"]
    assert (details["attempt"], details["last_error"]) == (2, "Timed out after 1s")


def test_a_retry_inside_a_timeout_stops_when_the_time_is_up(
    conn: Conn, worker: WorkerThread
) -> None:
    conn.execute("CREATE SEQUENCE attempts")
    iid, status = run_workflow(
        conn, "df.timeout(df.retry('SELECT nextval(''attempts''), pg_sleep(30)', 5, 0), 1)"
    )
    assert status == "failed"
    assert output_of(conn, iid) == "Timed out after 1s"
    time.sleep(0.5)
    assert one(conn, "SELECT last_value FROM attempts") == 1
    assert sleeping(conn) == 0


# -- the worker's step_timeout ----------------------------------------------------------------


def test_step_timeout_fails_a_long_statement_and_the_smallest_limit_applies(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker(step_timeout=0.5)
    iid, status = run_workflow(conn, "'SELECT pg_sleep(5)'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        "SQL execution failed: error returned from database: canceling statement due to "
        "statement timeout (the worker's step_timeout of 0.5s: make the step quicker, or "
        "raise the setting)"
    )
    # A longer df.timeout does not lift it; a shorter one applies instead.
    iid, status = run_workflow(conn, "df.timeout('SELECT pg_sleep(5)', 10)")
    assert "step_timeout of 0.5s" in output_of(conn, iid)
    # A step within the limit completes; quick steps, batched, are not affected either.
    iid, status = run_workflow(conn, "'SELECT pg_sleep(0.3)'")
    assert status == "completed", output_of(conn, iid)
    ids = [one(conn, "SELECT df.start('SELECT pg_sleep(0.01)')") for _ in range(40)]
    assert {wait_for(conn, i) for i in ids} == {"completed"}, [
        output_of(conn, i) for i in ids if "rows" not in output_of(conn, i)
    ]


def test_the_roles_own_statement_timeout_applies_when_smaller(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = 300',"
        " current_user, current_database()); END $$"
    )
    first = start_worker(step_timeout=5)
    iid, status = run_workflow(conn, "df.timeout('SELECT pg_sleep(5)', 10)")
    assert status == "failed"
    assert output_of(conn, iid) == (
        "SQL execution failed: error returned from database: "
        "canceling statement due to statement timeout"
    )
    # A larger one of the role's gives way to the worker's.
    first.stop()
    conn.execute(
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = "
        "''1min''', current_user, current_database()); END $$"
    )
    start_worker(step_timeout=0.5)
    iid, status = run_workflow(conn, "df.timeout('SELECT pg_sleep(5)', 10)")
    assert status == "failed"
    assert "(the worker's step_timeout of 0.5s" in output_of(conn, iid)


def test_explain_shows_a_live_retry(conn: Conn, worker: WorkerThread) -> None:
    flaky(conn)
    iid, status = run_workflow(conn, f"df.retry({FLAKY_SQL}, 3, 0)")
    assert status == "completed"
    lines = [line.rstrip() for line in one(conn, "SELECT df.explain(%s)", (iid,)).splitlines()]
    assert lines[4:] == [
        "RETRY (max 3 attempts, backoff 0s ×2) ✓",
        "    ↺ attempt:",
        f"      └─ SQL: {FLAKY[:47]}... ✓",
    ]
