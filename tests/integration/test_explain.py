"""df.explain: the text tree of a workflow, as a dry run (DSL, envelope JSON, SQL) or live."""

from __future__ import annotations

import json
import secrets
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.postgres import role_dsn

Conn = psycopg.Connection[Any]

VALID_TYPES = (
    "Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, "
    "HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT"
)
CANNOT = (
    "Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL "
    "expression.\nHint: "
)
DEPTH_ERROR = (
    "Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into "
    "multiple instances."
)


def explain(conn: Conn, expr: str) -> Any:
    """df.explain of a SQL expression (a DSL call, usually)."""
    row = conn.execute(f"SELECT df.explain({expr})").fetchone()
    assert row is not None
    return row[0]


def explain_text(conn: Conn, text: str) -> Any:
    """df.explain of a text value (JSON, an id, a DSL expression as text, …)."""
    row = conn.execute("SELECT df.explain(%s)", (text,)).fetchone()
    assert row is not None
    return row[0]


def unpad(text: str) -> str:
    """The rendering without its padding, once we checked the padding: every line is as long
    as the longest line's content + 4."""
    lines = text.split("\n")
    content = [line.rstrip(" ") for line in lines]
    width = max(len(c) for c in content) + 4
    assert [len(line) for line in lines] == [width] * len(lines), text
    return "\n".join(content)


def tree(expected: str) -> str:
    return textwrap.dedent(expected).strip("\n")


def dry(conn: Conn, expr: str) -> str:
    return unpad(explain(conn, expr))


def envelope(node_type: str, **fields: Any) -> dict[str, Any]:
    return {"node_type": node_type, **fields}


def sql(query: str, name: str | None = None) -> dict[str, Any]:
    return envelope("SQL", query=query, **({"result_name": name} if name else {}))


# -- dry run: shapes ------------------------------------------------------------------------


def test_single_sql_and_exact_padding(conn: Conn) -> None:
    assert explain(conn, "df.sql('SELECT 1')") == "SQL: SELECT 1    "
    assert explain(conn, "'SELECT 1' ~> 'SELECT 22'") == (
        "SQL: SELECT 1       \n→ SQL: SELECT 22    "
    )


def test_long_sql_is_truncated_to_50_characters(conn: Conn) -> None:
    fifty = "SELECT " + "x" * 43
    assert dry(conn, f"df.sql('{fifty}')") == f"SQL: {fifty}"
    fifty_one = fifty + "y"
    assert dry(conn, f"df.sql('{fifty_one}')") == f"SQL: {fifty[:47]}..."
    assert len(dry(conn, f"df.sql('{fifty_one}')")) == len("SQL: ") + 50


def test_multiline_sql_stays_on_one_line(conn: Conn) -> None:
    assert dry(conn, "df.sql(E'SELECT a,\\n       b\\n\\tFROM t\\n')") == "SQL: SELECT a, b FROM t"


def test_named_results(conn: Conn) -> None:
    assert dry(conn, "'SELECT 1' |=> 'one'") == "SQL: SELECT 1 |=> 'one'"
    assert dry(conn, "('SELECT 1' |=> 'a') ~> ('SELECT 2' |=> 'b')") == tree(
        """
        SQL: SELECT 1 |=> 'a'
        → SQL: SELECT 2 |=> 'b'
        """
    )
    # Operators share one precedence: this names the THEN, whose result is its last step's;
    # the name is shown on that last step.
    assert dry(conn, "'SELECT 1' ~> 'SELECT 2' |=> 'x'") == tree(
        """
        SQL: SELECT 1
        → SQL: SELECT 2 |=> 'x'
        """
    )
    assert dry(conn, "('SELECT 1' & 'SELECT 2') |=> 'pair'") == tree(
        """
        JOIN (2) |=> 'pair'
            ║ branch 1:
              ├─ SQL: SELECT 1
            ║ branch 2:
              └─ SQL: SELECT 2
        """
    )


@pytest.mark.parametrize(
    "expr",
    [
        "'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3' ~> 'SELECT 4'",
        "df.seq('SELECT 1', df.seq('SELECT 2', df.seq('SELECT 3', 'SELECT 4')))",
        "df.seq(df.seq('SELECT 1', 'SELECT 2'), df.seq('SELECT 3', 'SELECT 4'))",
    ],
)
def test_then_chains_flatten_whatever_their_nesting(conn: Conn, expr: str) -> None:
    assert dry(conn, expr) == tree(
        """
        SQL: SELECT 1
        → SQL: SELECT 2
        → SQL: SELECT 3
        → SQL: SELECT 4
        """
    )


def test_n_then_nodes_give_n_arrows(conn: Conn) -> None:
    steps = " ~> ".join(f"'SELECT {i}'" for i in range(1, 31))
    assert dry(conn, steps).count("→") == 29


def test_if_with_a_chain_in_a_branch(conn: Conn) -> None:
    assert dry(conn, "'SELECT true' ?> ('SELECT 1' ~> 'SELECT 2') !> 'SELECT 3'") == tree(
        """
        IF
            ? condition:
              └─ SQL: SELECT true
            ✓ then:
              └─ SQL: SELECT 1
              → SQL: SELECT 2
            ✗ else:
              └─ SQL: SELECT 3
        """
    )
    assert dry(conn, "df.if('SELECT true', 'SELECT 1', 'SELECT 2')") == tree(
        """
        IF
            ? condition:
              └─ SQL: SELECT true
            ✓ then:
              └─ SQL: SELECT 1
            ✗ else:
              └─ SQL: SELECT 2
        """
    )


def test_compound_item_inside_a_chain(conn: Conn) -> None:
    expr = "'SELECT 0' ~> ('SELECT true' ?> ('SELECT 1' ~> 'SELECT 2') !> 'SELECT 3') ~> 'SELECT 4'"
    assert dry(conn, expr) == tree(
        """
        SQL: SELECT 0
        → IF
            ? condition:
              └─ SQL: SELECT true
            ✓ then:
              └─ SQL: SELECT 1
              → SQL: SELECT 2
            ✗ else:
              └─ SQL: SELECT 3
        → SQL: SELECT 4
        """
    )


def test_if_rows_shows_its_result_name(conn: Conn) -> None:
    assert dry(conn, "df.if_rows('orders', 'SELECT 1', 'SELECT 2')") == tree(
        """
        IF
            ? condition: rows in 'orders'
            ✓ then:
              └─ SQL: SELECT 1
            ✗ else:
              └─ SQL: SELECT 2
        """
    )


def test_join_of_two_and_nested_joins(conn: Conn) -> None:
    assert dry(conn, "'SELECT 1' & 'SELECT 2'") == tree(
        """
        JOIN (2)
            ║ branch 1:
              ├─ SQL: SELECT 1
            ║ branch 2:
              └─ SQL: SELECT 2
        """
    )
    assert dry(conn, "'SELECT 1' & 'SELECT 2' & 'SELECT 3'") == tree(
        """
        JOIN (2)
            ║ branch 1:
              ├─ JOIN (2)
              │   ║ branch 1:
              │     ├─ SQL: SELECT 1
              │   ║ branch 2:
              │     └─ SQL: SELECT 2
            ║ branch 2:
              └─ SQL: SELECT 3
        """
    )


def test_join3_with_a_chain_in_the_last_branch(conn: Conn) -> None:
    assert dry(conn, "df.join3('SELECT 1', 'SELECT 2', 'SELECT 3' ~> 'SELECT 4')") == tree(
        """
        JOIN (3)
            ║ branch 1:
              ├─ SQL: SELECT 1
            ║ branch 2:
              ├─ SQL: SELECT 2
            ║ branch 3:
              └─ SQL: SELECT 3
              → SQL: SELECT 4
        """
    )


def test_compound_in_a_non_last_branch_keeps_the_branch_line(conn: Conn) -> None:
    assert dry(conn, "('SELECT true' ?> 'SELECT 1' !> 'SELECT 2') & 'SELECT 3'") == tree(
        """
        JOIN (2)
            ║ branch 1:
              ├─ IF
              │   ? condition:
              │     └─ SQL: SELECT true
              │   ✓ then:
              │     └─ SQL: SELECT 1
              │   ✗ else:
              │     └─ SQL: SELECT 2
            ║ branch 2:
              └─ SQL: SELECT 3
        """
    )


def test_race(conn: Conn) -> None:
    assert dry(conn, "'SELECT pg_sleep(1)' | df.sleep(5)") == tree(
        """
        RACE
            ║ branch 1:
              ├─ SQL: SELECT pg_sleep(1)
            ║ branch 2:
              └─ SLEEP 5s
        """
    )


def test_infinite_loop_with_break(conn: Conn) -> None:
    expr = "@> ('SELECT 1' |=> 'n' ~> ('SELECT $n > 3' ?> df.break() !> df.sleep(1)))"
    assert dry(conn, expr) == tree(
        """
        LOOP (infinite)
            ↻ body:
              └─ SQL: SELECT 1 |=> 'n'
              → IF
                  ? condition:
                    └─ SQL: SELECT $n > 3
                  ✓ then:
                    └─ BREAK
                  ✗ else:
                    └─ SLEEP 1s
        """
    )


def test_while_loop(conn: Conn) -> None:
    expr = "df.loop('UPDATE t SET n = n + 1 RETURNING n' |=> 'c', 'SELECT $c < 3')"
    assert dry(conn, expr) == tree(
        """
        LOOP (while)
            ↻ body:
              └─ SQL: UPDATE t SET n = n + 1 RETURNING n |=> 'c'
            ? while:
              └─ SQL: SELECT $c < 3
        """
    )


def test_break_values(conn: Conn) -> None:
    assert dry(conn, "df.break()") == "BREAK"
    assert dry(conn, "df.break('done')") == "BREAK 'done'"
    assert dry(conn, "df.break('abcdefghijklmnopqrst')") == "BREAK 'abcdefghijklmnopqrst'"
    assert dry(conn, "df.break('abcdefghijklmnopqrstuvwxyz')") == "BREAK 'abcdefghijklmnopq...'"


def test_sleep(conn: Conn) -> None:
    assert dry(conn, "df.sleep(30)") == "SLEEP 30s"
    assert dry(conn, "'SELECT 1' ~> df.sleep(0)") == "SQL: SELECT 1\n→ SLEEP 0s"


def test_signal_wait_and_http_labels_from_hand_written_json(conn: Conn) -> None:
    def label(node: dict[str, Any]) -> str:
        return unpad(explain_text(conn, json.dumps(node)))

    signal = {"signal_name": "approval", "timeout_seconds": 60}
    assert label(envelope("SIGNAL", query=json.dumps(signal), result_name="sig")) == (
        "SIGNAL 'approval' (60s) |=> 'sig'"
    )
    no_timeout = {"signal_name": "approval", "timeout_seconds": None}
    assert label(envelope("SIGNAL", query=json.dumps(no_timeout))) == "SIGNAL 'approval'"
    cron = {"cron_expr": "0 9 * * 1-5"}
    assert label(envelope("WAIT_SCHEDULE", query=json.dumps(cron))) == "WAIT '0 9 * * 1-5'"
    http = {
        "url": "https://api.github.com/repos/microsoft/pg_durable/releases",
        "method": "GET",
        "body": None,
        "headers": None,
        "timeout_seconds": 30,
    }
    assert label(envelope("HTTP", query=json.dumps(http))) == (
        "HTTP GET https://api.github.com/repos/microsof..."
    )
    http["url"] = "https://x.azurewebsites.net/hook"
    assert label(envelope("HTTP", query=json.dumps(http))) == (
        "HTTP GET https://x.azurewebsites.net/hook"
    )
    multipart = {
        "url": "https://acct.blob.core.windows.net/c/f",
        "method": "PUT",
        "parts": [{"name": "f", "data_b64": "eA=="}],
        "headers": None,
        "timeout_seconds": 30,
    }
    assert label(envelope("HTTP_MULTIPART", query=json.dumps(multipart))) == (
        "HTTP_MULTIPART PUT https://acct.blob.core.windows.net/c/f"
    )
    # They draw inside a graph like any leaf.
    graph = envelope(
        "THEN",
        left_node=envelope("SIGNAL", query=json.dumps(signal), result_name="sig"),
        right_node=envelope("WAIT_SCHEDULE", query=json.dumps(cron)),
    )
    assert unpad(explain_text(conn, json.dumps(graph))) == (
        "SIGNAL 'approval' (60s) |=> 'sig'\n→ WAIT '0 9 * * 1-5'"
    )


def test_envelope_json_equals_the_dsl_that_built_it(conn: Conn) -> None:
    expr = "'SELECT 1' |=> 'a' ~> ('SELECT true' ?> 'SELECT 2' !> df.sleep(3))"
    built = conn.execute(f"SELECT {expr}").fetchone()
    assert built is not None
    assert explain_text(conn, built[0]) == explain(conn, expr)
    # Whitespace around the JSON does not matter.
    assert explain_text(conn, f"\n  {built[0]}  ") == explain(conn, expr)


# -- classification -----------------------------------------------------------------------


def test_dsl_expression_as_text_is_evaluated(conn: Conn) -> None:
    assert explain_text(conn, "'SELECT 1' ~> 'SELECT 2'") == explain(
        conn, "'SELECT 1' ~> 'SELECT 2'"
    )
    assert unpad(explain_text(conn, "df.sleep(10)")) == "SLEEP 10s"
    assert unpad(explain_text(conn, "@> 'SELECT 1'")) == tree(
        """
        LOOP (infinite)
            ↻ body:
              └─ SQL: SELECT 1
        """
    )
    # Evaluated as the caller.
    me = conn.execute("SELECT current_user").fetchone()
    assert me is not None
    assert unpad(explain_text(conn, "df.sql(current_user)")) == f"SQL: {me[0]}"
    # A value that is not an envelope is what df.start would run: one SQL step.
    assert unpad(explain_text(conn, "'SELECT ' || 'df.version()'")) == "SQL: SELECT df.version()"


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "select 1",
        "  \n SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "INSERT INTO t SELECT 1",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "CREATE TABLE t (a int)",
        "ALTER TABLE t ADD b int",
        "DROP TABLE t",
        "CALL p()",
        "DO $$BEGIN END$$",
        "TRUNCATE t",
        "GRANT SELECT ON t TO PUBLIC",
        "REVOKE SELECT ON t FROM PUBLIC",
        "EXPLAIN SELECT 1",
        "VACUUM t",
    ],
)
def test_sql_statement_is_one_sql_node(conn: Conn, text: str) -> None:
    assert unpad(explain_text(conn, text)) == f"SQL: {' '.join(text.split())}"


def test_sql_that_looks_like_dsl_stays_sql(conn: Conn) -> None:
    # SPEC would evaluate `SELECT SELECT …` (a syntax error); the statement is drawn instead.
    assert unpad(explain_text(conn, "SELECT count(*) FROM df.instances")) == (
        "SQL: SELECT count(*) FROM df.instances"
    )
    assert unpad(explain_text(conn, "SELECT * FROM t WHERE tags @> '{x}'")) == (
        "SQL: SELECT * FROM t WHERE tags @> '{x}'"
    )


def test_unknown_node_type(conn: Conn) -> None:
    assert explain_text(conn, '{"node_type": "X"}') == (
        f"Invalid durable function graph: root: Unknown node_type 'X'. {VALID_TYPES}"
    )
    nested = envelope("THEN", left_node=sql("SELECT 1"), right_node=envelope("NOPE"))
    assert explain_text(conn, json.dumps(nested)) == (
        f"Invalid durable function graph: root.right: Unknown node_type 'NOPE'. {VALID_TYPES}"
    )


def test_malformed_envelopes_are_reported_as_text(conn: Conn) -> None:
    bad_child = envelope("THEN", left_node="SELECT 1", right_node=sql("SELECT 2"))
    assert explain_text(conn, json.dumps(bad_child)) == (
        "Invalid durable function graph: root: Durofut children must be JSON objects"
    )
    huge_sleep = envelope("SLEEP", query="99999999999999999999")
    assert explain_text(conn, json.dumps(huge_sleep)).startswith(
        'Invalid durable function graph: value "99999999999999999999" is out of range'
    )


def test_depth_limit_is_256(conn: Conn) -> None:
    def nested(levels: int) -> str:
        node = sql("SELECT 0")
        for i in range(levels):
            node = envelope("JOIN", left_node=node, right_node=sql(f"SELECT {i + 1}"))
        return json.dumps(node)

    lines = unpad(explain_text(conn, nested(256))).split("\n")
    assert len(lines) == 256 * 4 + 1
    assert lines[0] == "JOIN (2)"
    assert "      " + "│     " * 255 + "├─ SQL: SELECT 0" in lines
    assert explain_text(conn, nested(257)) == DEPTH_ERROR


def test_node_count_limit(conn: Conn) -> None:
    assert explain_text(conn, json.dumps(balanced("THEN", 1, 5001))).startswith(
        "Workflow exceeds maximum node count of 10000."
    )


def test_instance_not_found(conn: Conn) -> None:
    assert explain_text(conn, "deadbeef") == "Instance 'deadbeef' not found"
    assert explain_text(conn, " DEADBEEF\n") == "Instance 'DEADBEEF' not found"


def test_failed_evaluation(conn: Conn) -> None:
    assert explain_text(conn, "'SELECT 1' ~> no_such_function()") == (
        "Failed to evaluate expression: function no_such_function() does not exist"
    )
    assert explain_text(conn, "df.sleep(-1)") == (
        "Failed to evaluate expression: Sleep duration must be non-negative"
    )
    # Operators share one precedence, so `~>` swallows the ?> before !> sees it.
    assert explain_text(conn, "'SELECT 1' ?> 'SELECT 2' ~> 'SELECT 3' !> 'SELECT 4'") == (
        "Failed to evaluate expression: Invalid if-then-else: left side of !> must be a ?> "
        "expression"
    )
    assert explain_text(conn, "df.loop(NULL)") == (
        "Failed to evaluate expression: the expression returned NULL"
    )


def test_failed_evaluation_leaves_no_trace(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (a int)")
    conn.execute(
        "CREATE FUNCTION write_then_fail() RETURNS text LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO public.t VALUES (1); RAISE EXCEPTION 'boom'; END$$"
    )
    assert explain_text(conn, "df.sql(public.write_then_fail())") == (
        "Failed to evaluate expression: boom"
    )
    # df.explain pins its search_path, like every df function: qualify your own functions.
    assert explain_text(conn, "df.sql(write_then_fail())") == (
        "Failed to evaluate expression: function write_then_fail() does not exist"
    )
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


@pytest.mark.parametrize("text", ["hello", "", "   ", "[1, 2]", "42", "SELECT", "'SELECT 1'"])
def test_cannot_explain(conn: Conn, text: str) -> None:
    got = explain_text(conn, text)
    assert got.startswith(CANNOT)
    assert "instance id" in got.split("\n")[1]


def test_cannot_explain_hints_at_what_is_missing(conn: Conn) -> None:
    partial = explain(conn, "'SELECT 1' ?> 'SELECT 2'")
    assert partial.startswith(CANNOT)
    assert "!>" in partial.split("\n")[1]
    assert explain_text(conn, "'SELECT 1' ?> 'SELECT 2'") == partial
    no_type = explain_text(conn, '{"query": "SELECT 1"}')
    assert no_type.startswith(CANNOT)
    assert '"node_type"' in no_type.split("\n")[1]


def test_null_input(conn: Conn) -> None:
    assert explain(conn, "NULL") is None


# -- size -----------------------------------------------------------------------------------


def balanced(kind: str, lo: int, hi: int) -> dict[str, Any]:
    if lo == hi:
        return sql(f"SELECT {lo}")
    mid = (lo + hi) // 2
    return envelope(kind, left_node=balanced(kind, lo, mid), right_node=balanced(kind, mid + 1, hi))


@pytest.mark.parametrize(("kind", "lines"), [("THEN", 5000), ("JOIN", 4999 + 2 * 4999 + 5000)])
def test_ten_thousand_nodes_explain_quickly(conn: Conn, kind: str, lines: int) -> None:
    graph = json.dumps(balanced(kind, 1, 5000))  # 9,999 nodes
    started = time.monotonic()
    text = explain_text(conn, graph)
    assert time.monotonic() - started < 3.0
    assert len(unpad(text).split("\n")) == lines

    iid = conn.execute("SELECT df.start(%s)", (graph,)).fetchone()
    assert iid is not None
    started = time.monotonic()
    live = unpad(explain_text(conn, iid[0])).split("\n")
    assert time.monotonic() - started < 3.0
    assert len(live) == lines + 3
    assert live[3].endswith(" ○")

    # Every node stamped, each in a scope of its own (as after a run of many JOIN branches).
    conn.execute(
        "UPDATE df.nodes SET status = 'completed', status_details = "
        "jsonb_build_object('execution_id', instance_id || '::1::' || id || '::1') "
        "WHERE instance_id = %s",
        (iid[0],),
    )
    started = time.monotonic()
    live = unpad(explain_text(conn, iid[0])).split("\n")
    assert time.monotonic() - started < 3.0
    assert live[3].endswith(" ✓")


def test_hand_made_cycle_is_reported(conn: Conn) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by) "
            "VALUES ('aaaaaaaa', 'bbbbbbbb', quote_ident(current_user)::regrole)"
        )
        conn.execute(
            "INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, right_node, "
            "submitted_by) VALUES "
            "('bbbbbbbb', 'aaaaaaaa', 'THEN', NULL, 'cccccccc', 'bbbbbbbb', "
            " quote_ident(current_user)::regrole), "
            "('cccccccc', 'aaaaaaaa', 'SQL', 'SELECT 1', NULL, NULL, "
            " quote_ident(current_user)::regrole)"
        )
    assert explain_text(conn, "aaaaaaaa") == (
        "Invalid durable function graph: a node is reachable more than once "
        "(a workflow graph is a tree)"
    )


# -- live -----------------------------------------------------------------------------------


def live(conn: Conn, instance_id: str) -> tuple[list[str], str]:
    """The header lines (without the blank line) and the tree of a live explain."""
    text = unpad(explain_text(conn, instance_id))
    header, _, body = text.partition("\n\n")
    return header.split("\n"), body


def test_live_completed_chain_with_label(conn: Conn, worker: WorkerThread) -> None:
    row = conn.execute(
        "SELECT df.start('SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3 AS x', 'nightly')"
    ).fetchone()
    assert row is not None
    iid = row[0]
    assert wait_for(conn, iid) == "completed"
    header, body = live(conn, iid)
    assert header == [
        f"Instance: {iid} (nightly)",
        "Status:   ✓ Completed",
        'Output:   {"rows":[{"x":3}],"row_count":1}',
    ]
    assert body == tree(
        """
        SQL: SELECT 1 ✓
        → SQL: SELECT 2 ✓
        → SQL: SELECT 3 AS x ✓
        """
    )


def test_live_failed_step_skips_the_rest(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT 1' ~> 'SELECT 1/0' ~> 'SELECT 3'")
    assert status == "failed"
    header, body = live(conn, iid)
    assert header == [
        f"Instance: {iid}",
        "Status:   ✗ Failed",
        "Output:   SQL execution failed: error returned from database: divis...",
    ]
    assert body == tree(
        """
        SQL: SELECT 1 ✓
        → SQL: SELECT 1/0 ✗
        → SQL: SELECT 3 ⊘
        """
    )


def test_live_untaken_if_arm_is_skipped(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn, "'SELECT false' ?> 'SELECT ''yes''' !> ('SELECT ''no''' ~> 'SELECT 2')"
    )
    assert status == "completed"
    assert live(conn, iid)[1] == tree(
        """
        IF ✓
            ? condition:
              └─ SQL: SELECT false ✓
            ✓ then:
              └─ SQL: SELECT 'yes' ⊘
            ✗ else:
              └─ SQL: SELECT 'no' ✓
              → SQL: SELECT 2 ✓
        """
    )


def test_live_race_loser_is_skipped(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT pg_sleep(3)' | ('SELECT 1' ~> 'SELECT 2')")
    assert status == "completed"
    assert live(conn, iid)[1] == tree(
        """
        RACE ✓
            ║ branch 1:
              ├─ SQL: SELECT pg_sleep(3) ⊘
            ║ branch 2:
              └─ SQL: SELECT 1 ✓
              → SQL: SELECT 2 ✓
        """
    )


def test_live_join_and_while_loop(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(
        conn,
        "('SELECT 1' & 'SELECT 2') ~> df.loop('SELECT 1 AS n' |=> 'c', 'SELECT $c > 1')",
    )
    assert status == "completed"
    assert live(conn, iid)[1] == tree(
        """
        JOIN (2) ✓
            ║ branch 1:
              ├─ SQL: SELECT 1 ✓
            ║ branch 2:
              └─ SQL: SELECT 2 ✓
        → LOOP (while) ✓
            ↻ body:
              └─ SQL: SELECT 1 AS n |=> 'c' ✓
            ? while:
              └─ SQL: SELECT $c > 1 ✓
        """
    )


def test_live_running_then_cancelled(conn: Conn, worker: WorkerThread) -> None:
    row = conn.execute(
        "SELECT df.start('SELECT 1' ~> 'SELECT pg_sleep(30)' ~> 'SELECT 3', 'slow')"
    ).fetchone()
    assert row is not None
    iid = row[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stamped = conn.execute(
            "SELECT count(*) FROM df.nodes WHERE instance_id = %s AND status = 'running' "
            "AND query = 'SELECT pg_sleep(30)'",
            (iid,),
        ).fetchone()
        if stamped == (1,):
            break
        time.sleep(0.05)
    header, body = live(conn, iid)
    assert header == [f"Instance: {iid} (slow)", "Status:   ⏳ Running"]
    assert body == tree(
        """
        SQL: SELECT 1 ✓
        → SQL: SELECT pg_sleep(30) ⏳
        → SQL: SELECT 3 ○
        """
    )
    conn.execute("SELECT df.cancel(%s)", (iid,))
    assert wait_for(conn, iid) == "cancelled"
    assert live(conn, iid)[0][1] == "Status:   ✗ Cancelled"


# -- another role ---------------------------------------------------------------------------


@pytest.fixture
def other_role(conn: Conn, dsn: str, db_name: str) -> Iterator[tuple[str, Conn]]:
    """A LOGIN role (unique per test: roles are cluster-wide) with what df needs."""
    role = f"explain_{db_name}"
    password = secrets.token_hex(8)
    conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    conn.execute(f'GRANT USAGE ON SCHEMA df TO "{role}"')
    conn.execute(f'GRANT SELECT ON df.instances, df.nodes, df._instance_state TO "{role}"')
    conn.execute(
        f'GRANT INSERT (id, label, root_node, submitted_by, database) ON df.instances TO "{role}"'
    )
    conn.execute(
        "GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, "
        f'submitted_by, database) ON df.nodes TO "{role}"'
    )
    try:
        with psycopg.connect(role_dsn(dsn, role, password), autocommit=True) as c:
            yield role, c
    finally:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def test_another_roles_instance_is_not_found(conn: Conn, other_role: tuple[str, Conn]) -> None:
    role, other = other_role
    row = conn.execute("SELECT df.start('SELECT 1', 'mine')").fetchone()
    assert row is not None
    mine = row[0]
    assert unpad(explain_text(conn, mine)).startswith(f"Instance: {mine} (mine)")
    assert explain_text(other, mine) == f"Instance '{mine}' not found"

    # Its own instance it sees (no worker here: everything pending), and evaluation runs as it.
    row = other.execute("SELECT df.start('SELECT 1' ~> 'SELECT 2')").fetchone()
    assert row is not None
    theirs = row[0]
    assert unpad(explain_text(other, theirs)) == tree(
        f"""
        Instance: {theirs}
        Status:   ○ Pending

        SQL: SELECT 1 ○
        → SQL: SELECT 2 ○
        """
    )
    assert explain_text(conn, theirs).startswith(f"Instance: {theirs}")  # superuser: no RLS
    # Without access to the engine's state the Output line is simply left out.
    conn.execute(f'REVOKE SELECT ON df._instance_state FROM "{role}"')
    assert unpad(explain_text(other, theirs)).split("\n")[:2] == [
        f"Instance: {theirs}",
        "Status:   ○ Pending",
    ]
    assert unpad(explain_text(other, "df.sql(current_user)")) == f"SQL: {role}"
