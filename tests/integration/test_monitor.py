"""Monitoring and control (SPEC §1.5, §1.7, §2.11, §2.13): status, results, waiting,
cancelling, listing with keyset paging, instance details, node inspection, metrics."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.postgres import role_dsn
from tests.fixtures.sql import error_of, one

Conn = psycopg.Connection[Any]
FUNCTION_NAME = "pg_durable::orchestration::execute-function-graph"


# -- helpers ------------------------------------------------------------------------------------


def rows_of(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def columns_of(conn: Conn, query: str) -> list[tuple[str, str]]:
    """(name, type) of a query's result columns."""
    cur = conn.execute(f"SELECT * FROM ({query}) q LIMIT 0")
    types = {
        oid: name
        for oid, name in conn.execute(
            "SELECT oid::int, typname FROM pg_type WHERE oid = ANY(%s)",
            ([d.type_code for d in cur.description or []],),
        ).fetchall()
    }
    return [(d.name, types[d.type_code]) for d in cur.description or []]


def start(conn: Conn, dsl: str, label: str | None = None) -> str:
    return str(one(conn, f"SELECT df.start({dsl}, %s)", (label,)))


def nodes(conn: Conn, instance_id: str) -> dict[str, dict[str, Any]]:
    """df.instance_nodes(id) keyed by the node's query (SQL) or type (one node per type)."""
    out = {}
    for row in rows_of(conn, "SELECT * FROM df.instance_nodes(%s)", (instance_id,)):
        key = row["query"] if row["node_type"] == "SQL" else row["node_type"]
        out[key] = row
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def other_role(conn: Conn, dsn: str, db_name: str) -> Iterator[Conn]:
    """A connection as another LOGIN role (not a superuser) granted df usage directly."""
    name = f"mon_{db_name}"
    password = secrets.token_hex(8)
    conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    for grant in (
        "USAGE ON SCHEMA df",
        "SELECT ON df.instances",
        "UPDATE (status, updated_at) ON df.instances",
        "INSERT (id, label, root_node, submitted_by, database) ON df.instances",
        "SELECT ON df.nodes",
        "INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, "
        "submitted_by, database) ON df.nodes",
        "SELECT, INSERT, UPDATE, DELETE ON df.vars",
        "SELECT ON df._instance_state",
        "SELECT ON df._meta",
    ):
        conn.execute(f"GRANT {grant} TO {name}")
    with psycopg.connect(role_dsn(dsn, name, password), autocommit=True) as c:
        yield c
    conn.execute(f"DROP OWNED BY {name} CASCADE")
    conn.execute(f"DROP ROLE {name}")


# -- status, result ------------------------------------------------------------------------------
def test_status_and_result_without_a_worker(conn: Conn) -> None:
    iid = start(conn, "'SELECT 1'")
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "pending"
    assert one(conn, "SELECT df.result(%s)", (iid,)) is None
    assert one(conn, "SELECT df.status('ffffffff')") is None
    assert one(conn, "SELECT df.result('ffffffff')") is None
    assert one(conn, "SELECT df.status(NULL)") is None
    assert one(conn, "SELECT df.result(NULL)") is None


def test_result_is_the_completed_root_as_jsonb_text(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 42 AS id, ''hello'' AS content'")
    assert status == "completed"
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "completed"
    # jsonb normalisation: shorter keys first, a space after ':' and ','.
    assert one(conn, "SELECT df.result(%s)", (iid,)) == (
        '{"rows": [{"id": 42, "content": "hello"}], "row_count": 1}'
    )
    failed, status = run_workflow(conn, "'SELECT 1' ~> 'SELECT 1/0'")
    assert status == "failed"
    assert one(conn, "SELECT df.status(%s)", (failed,)) == "failed"
    assert one(conn, "SELECT df.result(%s)", (failed,)) is None


def test_status_and_result_are_private(conn: Conn, other_role: Conn) -> None:
    mine = start(conn, "'SELECT 1'")
    theirs = str(one(other_role, "SELECT df.start('SELECT 2')"))
    assert one(other_role, "SELECT df.status(%s)", (theirs,)) == "pending"
    assert one(other_role, "SELECT df.status(%s)", (mine,)) is None
    assert one(other_role, "SELECT df.result(%s)", (mine,)) is None
    assert error_of(other_role, "SELECT df.cancel(%s)", (mine,)) == (
        f"Instance not found or access denied: {mine}"
    )
    assert error_of(other_role, "SELECT df.await_instance(%s, 1)", (mine,)) == (
        f"Instance not found: {mine}"
    )
    assert [r["instance_id"] for r in rows_of(other_role, "SELECT * FROM df.list_instances()")] == [
        theirs
    ]
    assert rows_of(other_role, "SELECT * FROM df.instance_info(%s)", (mine,)) == []
    assert rows_of(other_role, "SELECT * FROM df.instance_nodes(%s)", (mine,)) == []
    assert rows_of(other_role, "SELECT * FROM df.instance_executions(%s)", (mine,)) == []
    assert len(rows_of(other_role, "SELECT * FROM df.instance_nodes(%s)", (theirs,))) == 1


# -- await, wait_for_completion, run --------------------------------------------------------------
def test_await_instance_errors(conn: Conn) -> None:
    iid = start(conn, "'SELECT 1'")
    assert error_of(conn, "SELECT df.await_instance(%s, 0)", (iid,)) == "Timeout must be positive"
    assert error_of(conn, "SELECT df.await_instance(%s, -5)", (iid,)) == "Timeout must be positive"
    assert error_of(conn, "SELECT df.await_instance('abcdef12')") == (
        "Instance not found: abcdef12"
    )
    started = time.monotonic()
    assert error_of(conn, "SELECT df.await_instance(%s, 1)", (iid,)) == (
        f"Timeout after 1s waiting for instance {iid} (status: pending). "
        "Check if background worker is running."
    )
    assert 0.9 <= time.monotonic() - started < 5
    assert one(conn, "SELECT df.await_instance(NULL)") is None
    conn.execute("SET df.in_workflow = 'true'")
    assert error_of(conn, "SELECT df.await_instance(%s)", (iid,)).startswith(
        "df.await_instance() cannot be called inside a workflow - "
    )


def test_await_instance_returns_terminal_status(conn: Conn, worker: WorkerThread) -> None:
    ok = start(conn, "'SELECT pg_sleep(0.3)'")
    assert one(conn, "SELECT df.await_instance(%s)", (ok,)) == "completed"
    bad = start(conn, "'SELECT 1/0'")
    assert one(conn, "SELECT df.await_instance(%s, 20)", (bad,)) == "failed"
    # A terminal instance answers at once.
    started = time.monotonic()
    assert one(conn, "SELECT df.await_instance(%s, 1)", (ok,)) == "completed"
    assert time.monotonic() - started < 0.5


def test_wait_for_completion_is_a_deprecated_alias(conn: Conn) -> None:
    iid = start(conn, "'SELECT 1'")
    conn.execute("UPDATE df.instances SET status = 'failed' WHERE id = %s", (iid,))
    notices: list[tuple[str | None, str | None]] = []
    # A notice's diagnostic is only valid during the callback: copy what is needed.
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    assert one(conn, "SELECT df.wait_for_completion(%s)", (iid,)) == "failed"
    assert notices == [
        ("WARNING", "df.wait_for_completion() is deprecated; use df.await_instance() instead")
    ]


def test_run_is_a_stub(conn: Conn) -> None:
    assert one(conn, "SELECT df.run()") == "Triggered run for all pending instances"
    assert one(conn, "SELECT df.run(NULL)") == "Triggered run for all pending instances"
    assert one(conn, "SELECT df.run('abcd1234')") == "Triggered run for instance: abcd1234"


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_without_a_worker(conn: Conn) -> None:
    iid = start(conn, "'SELECT 1' ~> 'SELECT 2'")
    assert (
        one(conn, "SELECT df.cancel(%s)", (iid,)) == f"Instance {iid} cancelled: Cancelled by user"
    )
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"
    # Idempotent: the same answer, the status stays.
    assert one(conn, "SELECT df.cancel(%s, 'again')", (iid,)) == f"Instance {iid} cancelled: again"
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"
    assert one(conn, "SELECT df.await_instance(%s, 1)", (iid,)) == "cancelled"
    row = conn.execute(
        "SELECT completed_at, updated_at >= created_at FROM df.instances WHERE id = %s", (iid,)
    ).fetchone()
    assert row == (None, True)
    assert error_of(conn, "SELECT df.cancel('0badf00d')") == (
        "Instance not found or access denied: 0badf00d"
    )
    assert one(conn, "SELECT df.cancel(NULL)") is None
    assert one(conn, "SELECT df.cancel(%s, NULL)", (iid,)) is None


def test_cancel_of_a_finished_instance_keeps_its_status(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 1'")
    assert status == "completed"
    assert one(conn, "SELECT df.cancel(%s, 'late')", (iid,)) == f"Instance {iid} cancelled: late"
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "completed"


def test_cancel_stops_a_running_instance(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE marks (v int)")
    iid = start(
        conn,
        "'INSERT INTO marks VALUES (1)' ~> 'SELECT pg_sleep(1.5)' "
        "~> 'INSERT INTO marks VALUES (2)'",
    )
    wait_until(lambda: one(conn, "SELECT count(*) FROM marks") == 1)
    time.sleep(0.2)
    assert one(conn, "SELECT df.cancel(%s, 'stop')", (iid,)) == f"Instance {iid} cancelled: stop"
    # Immediately visible everywhere.
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"
    assert one(conn, "SELECT status FROM df.instance_info(%s)", (iid,)) == "cancelled"
    assert one(conn, "SELECT status FROM df.list_instances() WHERE instance_id = %s", (iid,)) == (
        "cancelled"
    )
    assert one(conn, "SELECT df.await_instance(%s)", (iid,)) == "cancelled"
    time.sleep(2.5)
    assert [r[0] for r in conn.execute("SELECT v FROM marks").fetchall()] == [1]
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"
    assert one(conn, "SELECT df.result(%s)", (iid,)) is None


# -- list_instances ------------------------------------------------------------------------------
BASIC_COLUMNS = [
    ("instance_id", "text"),
    ("label", "text"),
    ("function_name", "text"),
    ("status", "text"),
    ("execution_count", "int8"),
    ("output", "text"),
    ("created_at", "timestamptz"),
    ("completed_at", "timestamptz"),
]


def test_list_instances_basic(conn: Conn) -> None:
    assert columns_of(conn, "SELECT * FROM df.list_instances()") == BASIC_COLUMNS
    ids = []
    for i in range(4):
        with conn.transaction():  # one transaction each: distinct created_at
            ids.append(start(conn, "'SELECT 1'", f"job {i % 2}"))
    conn.execute("UPDATE df.instances SET status = 'failed' WHERE id = %s", (ids[1],))
    listed = rows_of(conn, "SELECT * FROM df.list_instances()")
    assert [r["instance_id"] for r in listed] == ids[::-1]  # newest first
    first = listed[-1]
    assert first["label"] == "job 0" and first["function_name"] == FUNCTION_NAME
    assert first["status"] == "pending" and first["execution_count"] == 1
    assert first["output"] is None and first["completed_at"] is None
    assert [
        r["instance_id"] for r in rows_of(conn, "SELECT * FROM df.list_instances('failed')")
    ] == [ids[1]]
    assert [
        r["instance_id"] for r in rows_of(conn, "SELECT * FROM df.list_instances(NULL, 2)")
    ] == ids[:1:-1]
    # The seed query.
    seed = conn.execute(
        "SELECT instance_id, label, status, execution_count FROM df.list_instances() "
        "ORDER BY created_at DESC LIMIT 10"
    ).fetchall()
    assert seed[0] == (ids[3], "job 1", "pending", 1)


def test_list_instances_output_after_a_run(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 7 AS n'")
    assert status == "completed"
    row = rows_of(conn, "SELECT * FROM df.list_instances()")[0]
    assert row["instance_id"] == iid and row["status"] == "completed"
    assert row["completed_at"] is not None and row["output"] is not None
    assert '"n"' in row["output"]


def test_list_instances_limits(conn: Conn) -> None:
    for call in ("df.list_instances(NULL, 0)", "df.list_instances(NULL, -1, NULL)"):
        assert error_of(conn, f"SELECT * FROM {call}") == "limit_count must be at least 1"
    assert error_of(conn, "SELECT * FROM df.list_instances(NULL, 1001)") == (
        "df.list_instances: limit_count (1001) exceeds pg_durable.list_instances_max_limit "
        "(1000); request fewer rows, or use the paginated df.list_instances overload "
        "(after_cursor/next_cursor) for large result sets"
    )
    assert rows_of(conn, "SELECT * FROM df.list_instances(NULL, 1000)") == []
    conn.execute("SET pg_durable.list_instances_max_limit = 5")
    assert rows_of(conn, "SELECT * FROM df.list_instances(NULL, 5, NULL)") == []
    assert error_of(conn, "SELECT * FROM df.list_instances(NULL, 6, 'x')") == (
        "df.list_instances: limit_count (6) exceeds pg_durable.list_instances_max_limit "
        "(5); request fewer rows, or use the paginated df.list_instances overload "
        "(after_cursor/next_cursor) for large result sets"
    )
    assert error_of(conn, "SELECT * FROM df.list_instances()") == (
        "df.list_instances: limit_count (100) exceeds pg_durable.list_instances_max_limit "
        "(5); request fewer rows, or use the paginated df.list_instances overload "
        "(after_cursor/next_cursor) for large result sets"
    )


def test_paginated_list_instances(conn: Conn) -> None:
    assert columns_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL)") == [
        *BASIC_COLUMNS,
        ("next_cursor", "text"),
    ]
    # Three separate transactions of 1, 3 and 2 starts: ties on created_at within each.
    for size, label in ((1, "a"), (3, "b"), (2, "a")):
        with conn.transaction():
            for _ in range(size):
                start(conn, "'SELECT 1'", label)
    expected = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM df.instances ORDER BY created_at DESC, id ASC"
        ).fetchall()
    ]
    assert len(expected) == 6

    def page(cursor: str | None, limit: int = 2, label: str | None = None) -> list[Any]:
        return rows_of(
            conn, "SELECT * FROM df.list_instances(NULL, %s, %s, %s)", (limit, label, cursor)
        )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        rows = page(cursor)
        pages += 1
        seen += [r["instance_id"] for r in rows]
        cursors = {r["next_cursor"] for r in rows}
        assert len(cursors) == 1  # identical on every row of a page
        cursor = cursors.pop()
        if cursor is None:
            break
        last = rows[-1]
        stamp = one(
            conn,
            "SELECT to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF') FROM df.instances "
            "WHERE id = %s",
            (last["instance_id"],),
        )
        assert bytes.fromhex(cursor).decode() == f"v1|{stamp}|{last['instance_id']}"
        assert cursor == cursor.lower()
    assert seen == expected and pages == 3
    # A page that is exactly full has no next page; an empty result has no rows at all.
    assert {r["next_cursor"] for r in page(None, 6)} == {None}
    assert page(None, 2, "nope") == []
    labelled = [r["instance_id"] for r in page(None, 10, "a")]
    assert labelled == [
        i
        for i in expected
        if one(conn, "SELECT label FROM df.instances WHERE id = %s", (i,)) == "a"
    ]
    # Status filter, and the paging of a filtered listing.
    conn.execute(
        "UPDATE df.instances SET status = 'completed' WHERE id = ANY(%s)", (expected[1:4],)
    )
    done = rows_of(conn, "SELECT * FROM df.list_instances('completed', 2, NULL)")
    assert [r["instance_id"] for r in done] == expected[1:3]
    rest = rows_of(
        conn,
        "SELECT * FROM df.list_instances('completed', 2, NULL, %s)",
        (done[0]["next_cursor"],),
    )
    assert [r["instance_id"] for r in rest] == expected[3:4]
    assert rest[0]["next_cursor"] is None
    # Rows without created_at are not listed by the paginated overload.
    conn.execute("UPDATE df.instances SET created_at = NULL WHERE id = %s", (expected[0],))
    assert [r["instance_id"] for r in page(None, 10)] == expected[1:]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "zz",
        "abc",  # odd length
        "7631",  # 'v1' only
        "a" * 514,  # more than 512 characters
        b"v1|2024-01-01T00:00:00.000000+00|abcd1234".hex().replace("76", "77", 1),
        b"v2|2024-01-01T00:00:00.000000+00|abcd1234".hex(),
        b"v1||abcd1234".hex(),
        b"v1|2024-01-01T00:00:00.000000+00|".hex(),
        b"v1|2024-01-01 00:00:00+00|abcd1234".hex(),
        b"v1|2024-01-01T00:00:00.000000|abcd1234".hex(),
        b"v1|2024-13-45T00:00:00.000000+00|abcd1234".hex(),
        b"v1|2024-01-01T00:00:00.000000+00".hex(),
        "ff" * 10,  # not UTF-8
    ],
)
def test_malformed_cursors(conn: Conn, cursor: str) -> None:
    assert error_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (cursor,)) == (
        "df.list_instances: invalid after_cursor"
    )


def test_a_cursor_with_an_offset_and_uppercase_hex(conn: Conn) -> None:
    with conn.transaction():
        older = start(conn, "'SELECT 1'")
    conn.execute(
        "UPDATE df.instances SET created_at = '2024-01-01 10:00+00' WHERE id = %s", (older,)
    )
    # 16:30+05:30 is 11:00 UTC: the 10:00 UTC instance is older, so it is on the next page.
    after = b"v1|2024-01-01T16:30:00.000000+05:30|00000000".hex().upper()
    rows = rows_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (after,))
    assert [r["instance_id"] for r in rows] == [older]
    # 12:30+05:30 is 07:00 UTC: nothing is older.
    before = b"v1|2024-01-01T12:30:00.000000+05:30|00000000".hex()
    assert rows_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (before,)) == []
    # Same instant: only larger ids follow.
    same = f"v1|2024-01-01T10:00:00.000000+00|{older}".encode().hex()
    assert rows_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (same,)) == []
    lower = b"v1|2024-01-01T10:00:00.000000+00|0".hex()
    rows = rows_of(conn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (lower,))
    assert [r["instance_id"] for r in rows] == [older]


# -- instance_info, instance_executions -----------------------------------------------------------
def test_instance_info(conn: Conn, worker: WorkerThread) -> None:
    assert columns_of(conn, "SELECT * FROM df.instance_info('x')") == [
        ("instance_id", "text"),
        ("label", "text"),
        ("function_name", "text"),
        ("function_version", "text"),
        ("current_execution_id", "int8"),
        ("status", "text"),
        ("output", "text"),
    ]
    iid = start(conn, "'SELECT 5 AS five'", "info")
    assert wait_for(conn, iid) == "completed"
    info = rows_of(conn, "SELECT * FROM df.instance_info(%s)", (iid,))
    assert len(info) == 1
    row = info[0]
    assert row["instance_id"] == iid and row["function_name"] == FUNCTION_NAME
    assert row["label"] == "info"
    assert row["current_execution_id"] == 1 and row["status"] == "completed"
    assert row["function_version"] and '"five"' in row["output"]
    assert rows_of(conn, "SELECT * FROM df.instance_info('ffffffff')") == []
    assert rows_of(conn, "SELECT * FROM df.instance_info(NULL)") == []


def test_instance_executions(conn: Conn, worker: WorkerThread) -> None:
    assert columns_of(conn, "SELECT * FROM df.instance_executions('x')") == [
        ("execution_id", "int8"),
        ("status", "text"),
        ("event_count", "int8"),
        ("duration_ms", "int8"),
        ("output", "text"),
    ]
    iid, status = run_workflow(conn, "'SELECT 1' ~> 'SELECT 2 AS two'")
    assert status == "completed"
    rows = rows_of(conn, "SELECT * FROM df.instance_executions(%s)", (iid,))
    assert len(rows) == 1
    assert rows[0]["execution_id"] == 1 and rows[0]["status"] == "Completed"
    assert rows[0]["event_count"] == 3  # THEN and its two steps
    assert rows[0]["duration_ms"] >= 0 and '"two"' in rows[0]["output"]
    failed, status = run_workflow(conn, "'SELECT 1/0'")
    assert one(conn, "SELECT status FROM df.instance_executions(%s)", (failed,)) == "Failed"
    for bad in (0, -1):
        assert error_of(conn, "SELECT * FROM df.instance_executions(%s, %s)", (iid, bad)) == (
            "limit_count must be at least 1"
        )
    assert rows_of(conn, "SELECT * FROM df.instance_executions('ffffffff')") == []
    # (An instance reads running once its first step has committed.)
    pending = start(conn, "'SELECT 1' ~> 'SELECT pg_sleep(5)'")
    wait_until(lambda: one(conn, "SELECT df.status(%s)", (pending,)) == "running")
    assert one(conn, "SELECT status FROM df.instance_executions(%s)", (pending,)) == "Running"
    conn.execute("SELECT df.cancel(%s)", (pending,))


def _started_and_finished(conn: Conn, iid: str) -> tuple[Any, Any]:
    row = conn.execute(
        "SELECT started_at, finished_at FROM df._instance_state WHERE instance_id = %s", (iid,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_an_instance_reads_running_before_a_statement_the_worker_does_not_know_runs(
    conn: Conn, worker: WorkerThread
) -> None:
    """Marked running in a commit of its own, before its first statement runs — unless the
    worker ran that statement lately and it was quick: then in the same commit as its result
    (started_at and finished_at are the same transaction's now())."""
    text = f"SELECT {secrets.randbelow(10**9)} AS n"
    first, status = run_workflow(conn, f"'{text}'")
    assert status == "completed"
    started, finished = _started_and_finished(conn, first)
    assert started < finished
    again, status = run_workflow(conn, f"'{text}'")
    assert status == "completed"
    started, finished = _started_and_finished(conn, again)
    assert started == finished
    assert one(conn, "SELECT df.result(%s)::jsonb", (again,)) == {
        "rows": [{"n": int(text.split()[1])}],
        "row_count": 1,
    }


def test_instance_executions_of_a_root_loop(conn: Conn) -> None:
    iid = start(conn, "@> 'SELECT 1'")
    # As the worker records a root loop in its fourth iteration.
    conn.execute("UPDATE df._instance_state SET execution_count = 4 WHERE instance_id = %s", (iid,))
    assert conn.execute(
        "SELECT execution_id, status FROM df.instance_executions(%s)", (iid,)
    ).fetchall() == [
        (4, "Running"),
        (3, "ContinuedAsNew"),
        (2, "ContinuedAsNew"),
        (1, "ContinuedAsNew"),
    ]
    assert [
        r[0]
        for r in conn.execute(
            "SELECT execution_id FROM df.instance_executions(%s, 2)", (iid,)
        ).fetchall()
    ] == [4, 3]
    assert one(conn, "SELECT current_execution_id FROM df.instance_info(%s)", (iid,)) == 4
    assert one(conn, "SELECT execution_count FROM df.list_instances()") == 4


# -- instance_nodes ------------------------------------------------------------------------------
NODE_COLUMNS = [
    ("node_id", "text"),
    ("node_type", "text"),
    ("query", "text"),
    ("result_name", "text"),
    ("left_node", "text"),
    ("right_node", "text"),
    ("status", "text"),
    ("result", "text"),
    ("status_details", "text"),
    ("inferred_status", "text"),
    ("inferred_status_from_ancestor_id", "text"),
    ("updated_at", "timestamptz"),
    ("execution_id", "int8"),
]


def test_instance_nodes_columns(conn: Conn) -> None:
    assert columns_of(conn, "SELECT * FROM df.instance_nodes('x')") == NODE_COLUMNS
    assert columns_of(conn, "SELECT * FROM df.instance_nodes('x', 5)") == [
        ("execution_id", "int8"),
        ("node_id", "text"),
        ("node_type", "text"),
        ("query", "text"),
        ("result_name", "text"),
        ("left_node", "text"),
        ("right_node", "text"),
        ("status", "text"),
        ("result", "text"),
        ("updated_at", "timestamptz"),
    ]
    iid = start(conn, "'SELECT 1' |=> 'one' ~> 'SELECT 2'")
    legacy = rows_of(conn, "SELECT * FROM df.instance_nodes(%s, 99)", (iid,))
    assert len(legacy) == 3 and {r["execution_id"] for r in legacy} == {1}
    current = nodes(conn, iid)
    assert current["SELECT 1"]["result_name"] == "one"
    assert {r["inferred_status"] for r in current.values()} == {"pending"}
    assert rows_of(conn, "SELECT * FROM df.instance_nodes(NULL)") == []
    assert rows_of(conn, "SELECT * FROM df.instance_nodes('ffffffff', 1)") == []


def test_clean_run_inferred_equals_physical(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn, "'SELECT 1' |=> 'a' ~> ('SELECT 2' & 'SELECT 3') ~> 'SELECT $a'"
    )
    assert status == "completed"
    rows = rows_of(conn, "SELECT * FROM df.instance_nodes(%s)", (iid,))
    assert len(rows) == 7
    for row in rows:
        assert row["status"] == "completed"
        assert row["inferred_status"] == "completed"
        assert row["inferred_status_from_ancestor_id"] is None
        assert row["status_details"] is not None and row["execution_id"] >= 1
        assert row["result"] is not None
    # The seed query.
    seed = conn.execute(
        "SELECT execution_id, node_id, node_type, status FROM df.instance_nodes(%s)", (iid,)
    ).fetchall()
    assert len(seed) == 7 and {r[3] for r in seed} == {"completed"}


def test_untaken_if_arm_is_skipped(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "df.if('SELECT false', 'SELECT ''then''', 'SELECT ''else''')")
    assert status == "completed"
    got = nodes(conn, iid)
    if_id = got["IF"]["node_id"]
    assert (got["SELECT false"]["status"], got["SELECT false"]["inferred_status"]) == (
        "completed",
        "completed",
    )
    untaken = got["SELECT 'then'"]
    assert (untaken["status"], untaken["inferred_status"]) == ("pending", "skipped")
    assert untaken["inferred_status_from_ancestor_id"] == if_id
    assert got["SELECT 'else'"]["inferred_status"] == "completed"


def test_right_of_a_failed_then_is_skipped(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 1/0' ~> 'SELECT 2'")
    assert status == "failed"
    got = nodes(conn, iid)
    assert (got["THEN"]["status"], got["THEN"]["inferred_status"]) == ("failed", "failed")
    assert got["SELECT 1/0"]["inferred_status"] == "failed"
    assert "division by zero" in got["SELECT 1/0"]["result"]
    right = got["SELECT 2"]
    assert (right["status"], right["inferred_status"]) == ("pending", "skipped")
    assert right["inferred_status_from_ancestor_id"] == got["THEN"]["node_id"]


def test_race_loser_is_skipped(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn, "df.race('SELECT 1 AS fast', 'SELECT pg_sleep(3)' ~> 'SELECT 2')"
    )
    assert status == "completed"
    got = nodes(conn, iid)
    race = got["RACE"]["node_id"]
    assert got["SELECT 1 AS fast"]["inferred_status"] == "completed"
    for key in ("THEN", "SELECT pg_sleep(3)", "SELECT 2"):
        assert got[key]["status"] in ("pending", "running"), key
        assert got[key]["inferred_status"] == "skipped", key
        assert got[key]["inferred_status_from_ancestor_id"] == race, key


def test_running_node_is_running(conn: Conn, worker: WorkerThread) -> None:
    iid = start(conn, "'SELECT 1' ~> 'SELECT pg_sleep(2)' ~> 'SELECT 3'")
    wait_until(lambda: nodes(conn, iid)["SELECT pg_sleep(2)"]["status"] == "running")
    got = nodes(conn, iid)
    assert got["SELECT pg_sleep(2)"]["inferred_status"] == "running"
    assert got["SELECT 1"]["inferred_status"] == "completed"
    assert got["SELECT 3"]["inferred_status"] == "pending"
    assert got["SELECT 3"]["inferred_status_from_ancestor_id"] is None
    assert wait_for(conn, iid) == "completed"


def test_superseded_stamps_read_as_pending(conn: Conn) -> None:
    # A root loop in its second iteration: the body's second step still carries the first
    # iteration's stamp (superseded) and reads pending; the first step ran again.
    iid = start(conn, "@> ('SELECT 1' ~> 'SELECT 2')")
    got = nodes(conn, iid)

    def stamp(key: str, status: str, generation: int) -> None:
        conn.execute(
            "UPDATE df.nodes SET status = %s, status_details = jsonb_build_object("
            "'execution_id', instance_id || '::' || %s) WHERE instance_id = %s AND id = %s",
            (status, generation, iid, got[key]["node_id"]),
        )

    stamp("LOOP", "running", 2)
    stamp("THEN", "running", 2)
    stamp("SELECT 1", "completed", 2)
    stamp("SELECT 2", "completed", 1)
    now = nodes(conn, iid)
    assert now["SELECT 1"]["inferred_status"] == "completed"
    assert now["SELECT 2"]["inferred_status"] == "pending"
    assert now["SELECT 2"]["inferred_status_from_ancestor_id"] == got["THEN"]["node_id"]
    assert now["SELECT 2"]["execution_id"] == 1 and now["SELECT 1"]["execution_id"] == 2
    assert now["LOOP"]["inferred_status"] == "running"


# -- metrics -------------------------------------------------------------------------------------
def test_metrics(conn: Conn, worker: WorkerThread, other_role: Conn) -> None:
    assert columns_of(conn, "SELECT * FROM df.metrics()") == [
        ("total_instances", "int8"),
        ("running_instances", "int8"),
        ("completed_instances", "int8"),
        ("failed_instances", "int8"),
        ("total_executions", "int8"),
        ("total_events", "int8"),
    ]
    run_workflow(conn, "'SELECT 1' ~> 'SELECT 2'")
    run_workflow(conn, "'SELECT 1/0'")
    theirs = str(one(other_role, "SELECT df.start('SELECT 1' ~> 'SELECT pg_sleep(30)')"))
    wait_until(lambda: one(conn, "SELECT df.status(%s)", (theirs,)) == "running")
    row = rows_of(conn, "SELECT * FROM df.metrics()")[0]
    assert row["total_instances"] == 3
    assert row["running_instances"] == 1
    assert row["completed_instances"] == 1
    assert row["failed_instances"] == 1
    assert row["total_executions"] >= 3
    assert row["total_events"] >= 5
    # Admin-only: PUBLIC has no EXECUTE; a granted role sees every role's instances.
    assert error_of(other_role, "SELECT * FROM df.metrics()").startswith(
        "permission denied for function metrics"
    )
    role = one(other_role, "SELECT current_user")
    conn.execute(f"GRANT EXECUTE ON FUNCTION df.metrics() TO {role}")
    assert one(other_role, "SELECT total_instances FROM df.metrics()") == 3
    conn.execute("SELECT df.cancel(%s)", (theirs,))
    assert one(conn, "SELECT failed_instances FROM df.metrics()") == 2
