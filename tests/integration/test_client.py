"""The Python API (pg_durable.client) against a real database.

Envelopes: every constructor and operator builds exactly the text the SQL DSL returns for the
same graph — compared byte for byte with the SQL constructors, for each one alone, for every
operator combination, and for random graphs (hypothesis), strings with every character class
included. Then the client itself, sync and async: a start in the caller's transaction (a
rollback leaves nothing), awaiting with a timeout, signals, cancelling, listing with keyset
pages and time bounds, and row-level security.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from pg_durable.client import (
    InstanceFinished,
    InstanceNotCommitted,
    InstanceNotFound,
    InvalidInstanceId,
    Part,
    Progress,
    SnapshotFrozen,
    WaitTimeout,
    Workflow,
    aio,
    break_,
    client,
    http,
    http_multipart,
    if_,
    if_rows,
    join,
    loop,
    race,
    retry,
    seq,
    sleep,
    sql,
    timeout,
    wait_for_schedule,
    wait_for_signal,
)
from pg_durable.client.workflow import as_step
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]


def sql_envelope(conn: Conn, expression: str, params: Any = None) -> str:
    """The text the SQL expression returns (``SELECT <expression>``)."""
    return str(one(conn, f"SELECT {expression}", params))


# -------------------------------------------------------------------------------------------
# Each constructor and operator, against its SQL namesake


CASES: list[tuple[str, Workflow, str]] = [
    ("sql", sql("SELECT 1"), "df.sql('SELECT 1')"),
    ("sql JSON-like", sql('{"node_type":"SLEEP","query":"1"}'),
     """df.sql('{"node_type":"SLEEP","query":"1"}')"""),
    ("seq", sql("SELECT 1") >> sleep(2), "'SELECT 1' ~> df.sleep(2)"),
    ("seq str left", "SELECT 1" >> sleep(2), "df.seq('SELECT 1', df.sleep(2))"),
    ("seq str right", sleep(2) >> "SELECT 1", "df.sleep(2) ~> 'SELECT 1'"),
    ("seq chain", sql("a") >> "b" >> "c", "'a' ~> 'b' ~> 'c'"),
    ("seq()", seq("a", "b", sql("c")), "df.seq(df.seq('a', 'b'), 'c')"),
    ("as", sql("SELECT 42").as_("answer"), "'SELECT 42' |=> 'answer'"),
    ("as again", sql("x").as_("a").as_("b"), "df.as(df.as('x', 'a'), 'b')"),
    ("as on THEN", (sql("a") >> "b").as_("r"), "'a' ~> 'b' |=> 'r'"),
    ("join", sql("a") & "b", "'a'::text & 'b'::text"),
    ("join str left", "a" & sql("b"), "df.join('a', 'b')"),
    ("join()", join("a", "b"), "df.join('a', 'b')"),
    ("join3", join("a", sql("b"), sleep(1)), "df.join3('a', 'b', df.sleep(1))"),
    ("race", sql("a") | "b", "'a'::text | 'b'::text"),
    ("race str left", "a" | sql("b"), "df.race('a', 'b')"),
    ("race()", race(sleep(5), "SELECT 'late'"), "df.race(df.sleep(5), 'SELECT ''late''')"),
    ("if", if_("SELECT true", "SELECT 1", "SELECT 2"),
     "'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'"),
    ("if()", if_(sql("c"), sleep(1), break_()), "df.if('c', df.sleep(1), df.break())"),
    ("if_rows", if_rows("orders", "SELECT 1", sql("SELECT 2")),
     "df.if_rows('orders', 'SELECT 1', 'SELECT 2')"),
    ("loop", loop(sql("a") >> "b"), "@> ('a' ~> 'b')"),
    ("loop while", loop("a", while_="SELECT $n < 3"), "df.loop('a', 'SELECT $n < 3')"),
    ("break", break_(), "df.break()"),
    ("break value", break_("done"), "df.break('done')"),
    ("break JSON", break_('{"a":[1,2]}'), """df.break('{"a":[1,2]}')"""),
    ("sleep 0", sleep(0), "df.sleep(0)"),
    ("sleep timedelta", sleep(timedelta(minutes=5)), "df.sleep(300)"),
    ("sleep big", sleep(2**63 - 1), "df.sleep(9223372036854775807)"),
    ("signal", wait_for_signal("approve"), "df.wait_for_signal('approve')"),
    ("signal timeout", wait_for_signal("ok", timeout=3600), "df.wait_for_signal('ok', 3600)"),
    ("signal timedelta", wait_for_signal("ok", timedelta(hours=1)),
     "df.wait_for_signal('ok', 3600)"),
    ("schedule", wait_for_schedule("*/5 * * * *"), "df.wait_for_schedule('*/5 * * * *')"),
    ("named leaf kinds", sleep(1).as_("s") >> wait_for_signal("x").as_("sig"),
     "(df.sleep(1) |=> 's') ~> (df.wait_for_signal('x') |=> 'sig')"),
    ("retry", retry("SELECT 1", 3), "df.retry('SELECT 1', 3)"),
    ("retry backoff", retry(sql("a") >> "b", 5, 0.5, 1.5).as_("r"),
     "df.retry('a' ~> 'b', 5, 0.5, 1.5) |=> 'r'"),
    ("retry no backoff", retry(sleep(1), 1, 0, 1), "df.retry(df.sleep(1), 1, 0, 1)"),
    ("timeout", timeout("SELECT pg_sleep(5)", 2), "df.timeout('SELECT pg_sleep(5)', 2)"),
    ("timeout timedelta", timeout(retry(wait_for_signal("s"), 2), timedelta(minutes=1)),
     "df.timeout(df.retry(df.wait_for_signal('s'), 2), 60)"),
    ("precedence", sql("a") >> "b" & sql("c") | "d",
     "(('a' ~> 'b') & 'c') | 'd'"),
    ("nested", if_(sql("SELECT $x.n > 1"), loop(join("a", "b", "c") >> break_("y")),
                   race("d", sleep(3)).as_("r")).as_("top"),
     "df.if('SELECT $x.n > 1', @> (df.join3('a', 'b', 'c') ~> df.break('y')),"
     " df.race('d', df.sleep(3)) |=> 'r') |=> 'top'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("python", "expression"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_envelope_equals_the_sql_dsl(conn: Conn, python: Workflow, expression: str) -> None:
    expected = sql_envelope(conn, expression)
    assert python.to_json() == expected
    assert str(python) == expected
    # Read back, it is the same graph.
    assert Workflow.from_json(expected) == python


def test_http_envelopes_equal_the_sql_dsl(conn: Conn) -> None:
    conn.execute("SET pg_durable.http_policy = 'allow-all'")
    headers = {"X-b": "2", "Authorization": "Bearer {token}", "x-a": "é\n"[:1], "Z": "1"}
    cases = [
        (http("https://api.example.com/x"), "df.http('https://api.example.com/x')", None),
        (
            http("https://api.example.com/x", "get", None, None, None),
            "df.http('https://api.example.com/x', 'get', NULL, NULL, NULL)",
            None,
        ),
        (
            http("http://h.example/p?q=1", "patch", '{"a": 1}', headers, 45),
            "df.http('http://h.example/p?q=1', 'patch', '{\"a\": 1}', %s::jsonb, 45)",
            (json.dumps(headers),),
        ),
        (
            http("https://h.example/$r.url", method="DELETE", timeout_seconds=timedelta(seconds=9)),
            "df.http('https://h.example/$r.url', 'DELETE', timeout_seconds => 9)",
            None,
        ),
        (
            http_multipart(
                "https://up.example/files",
                parts=[
                    Part.from_bytes("file", b"%PDF-1.4 \x00\xff", "r.pdf", "application/pdf"),
                    Part("note", "$report"),
                ],
                headers={"X-Trace": "1"},
            ),
            "df.http_multipart('https://up.example/files', parts => %s::jsonb,"
            ' headers => \'{"X-Trace": "1"}\')',
            (
                json.dumps(
                    [
                        {
                            "name": "file",
                            "data_b64": "JVBERi0xLjQgAP8=",
                            "filename": "r.pdf",
                            "content_type": "application/pdf",
                        },
                        {"name": "note", "data_b64": "$report"},
                    ]
                ),
            ),
        ),
        (
            http_multipart("https://up.example/", "put", [Part("a", "")], None, 5),
            'df.http_multipart(\'https://up.example/\', \'put\', \'[{"name":"a","data_b64":""}]\','
            " NULL, 5)",
            None,
        ),
    ]
    for python, expression, params in cases:
        assert python.to_json() == sql_envelope(conn, expression, params), expression


def test_strings_are_escaped_as_postgresql_escapes_them(conn: Conn) -> None:
    every_ascii = "".join(chr(c) for c in range(1, 128))
    text = every_ascii + "é€😀\u2028\u2029\ufeff\u00a0 'quoted' \"double\" \\ back"
    assert sql(text).to_json() == sql_envelope(conn, "df.sql(%s)", (text,))
    assert (sql(text).as_("x") >> text).to_json() == sql_envelope(
        conn, "df.as(df.sql(%s), 'x') ~> %s::text", (text, text)
    )
    assert break_(text).to_json() == sql_envelope(conn, "df.break(%s)", (text,))
    assert wait_for_signal(text[:256]).to_json() == sql_envelope(
        conn, "df.wait_for_signal(%s)", (text[:256],)
    )
    assert if_rows(text, "a", "b").to_json() == sql_envelope(
        conn, "df.if_rows(%s, 'a', 'b')", (text,)
    )


def test_text_operands_are_auto_wrapped_like_the_dsl(conn: Conn) -> None:
    # An envelope's text is read as that envelope (and written canonically); other JSON, an
    # unknown node_type or invalid JSON is a SQL step.
    texts = [
        '{"node_type":"SLEEP","query":"1"}',
        '  \n{ "result_name": "n", "query": "SELECT 1", "node_type": "SQL", "extra": true,'
        ' "left_node": null }',
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},'
        '"right_node":{"query":"b","node_type":"NOPE"}}',
        '{"node_type":"NOPE","query":"x"}',
        '{"query":"SELECT 1"}',
        '{"node_type": 1}',
        "{not json",
        "[1, 2]",
        '{"node_type":"SQL","query":"x","extra_nodes":[]}',
    ]
    for text in texts:
        assert (sleep(0) >> text).to_json() == sql_envelope(
            conn, "df.seq(df.sleep(0), %s)", (text,)
        ), text
    # An envelope that does not deserialise is an error on both sides, with the same words.
    bad = [
        '{"node_type":"THEN","left_node":"x","right_node":{"node_type":"SQL","query":"y"}}',
        '{"node_type":"SQL","query":5}',
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},'
        '"right_node":{"node_type":"SQL","query":"b"},"extra_nodes":{"a":1}}',
        '{"node_type":"THEN","left_node":{"query":"a"},"right_node":{"node_type":"SQL"}}',
    ]
    for text in bad:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT df.seq(df.sleep(0), %s)", (text,))
        with pytest.raises(ValueError) as mine:
            as_step(text)
        assert str(mine.value) == caught.value.diag.message_primary


def test_constructor_errors_are_the_dsl_errors(conn: Conn) -> None:
    cases: list[tuple[Callable[[], object], str, Any]] = [
        (lambda: sql("x").as_(""), "df.as('x', '')", None),
        (lambda: sql("x").as_("1st"), "df.as('x', '1st')", None),
        (lambda: sql("x").as_("a-b"), "df.as('x', 'a-b')", None),
        (lambda: sql("x").as_("ä"), "df.as('x', 'ä')", None),
        (lambda: sleep(-1), "df.sleep(-1)", None),
        (lambda: retry("a", 0), "df.retry('a', 0)", None),
        (lambda: retry("a", 2, -1), "df.retry('a', 2, -1)", None),
        (lambda: retry("a", 2, 1, 0.5), "df.retry('a', 2, 1, 0.5)", None),
        (lambda: retry("a", 2, float("nan")), "df.retry('a', 2, 'NaN')", None),
        (lambda: retry("a", 2, -1e-20), "df.retry('a', 2, -1e-20)", None),
        (
            lambda: retry("a", 2, 1, 0.30000000000000004),
            "df.retry('a', 2, 1, 0.30000000000000004)",
            None,
        ),
        (lambda: retry("a", 2, float("inf")), "df.retry('a', 2, 'Infinity')", None),
        (lambda: timeout("a", 0), "df.timeout('a', 0)", None),
        (lambda: wait_for_signal(""), "df.wait_for_signal('')", None),
        (lambda: wait_for_signal("s", 0), "df.wait_for_signal('s', 0)", None),
        (lambda: wait_for_signal("x" * 257), "df.wait_for_signal(%s)", ("x" * 257,)),
    ]
    conn.execute("SET pg_durable.http_policy = 'allow-all'")
    cases += [
        (lambda: http("https://a.example", "HEAD"), "df.http('https://a.example', 'HEAD')", None),
        (lambda: http("https://a.example", timeout_seconds=0),
         "df.http('https://a.example', timeout_seconds => 0)", None),
        (lambda: http_multipart("https://a.example", "GET", [Part("a", "")]),
         "df.http_multipart('https://a.example', 'GET', '[{\"name\":\"a\",\"data_b64\":\"\"}]')",
         None),
        (lambda: http_multipart("https://a.example", parts=[]),
         "df.http_multipart('https://a.example', parts => '[]')", None),
    ]  # fmt: skip
    for build, expression, params in cases:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(f"SELECT {expression}", params)
        with pytest.raises(ValueError) as mine:
            build()
        assert str(mine.value) == caught.value.diag.message_primary, expression


def test_what_only_the_server_checks_is_refused_by_start(conn: Conn) -> None:
    # A cron expression, a URL: built here, refused by df.start with the DSL's words.
    with pytest.raises(psycopg.Error, match="Invalid cron expression"):
        client.start(conn, wait_for_schedule("61 * * * *"))
    with pytest.raises(psycopg.Error, match="unsupported URL scheme 'ftp'"):
        client.start(conn, http("ftp://files.example/x"))
    assert one(conn, "SELECT count(*) FROM df.instances") == 0


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    backoff=st.one_of(
        st.floats(0, 1e300, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.1, 1e-4, 1e-5, 1e14, 1e15, 123456789012345.6, 5e-324, 2.5, 1e23]),
    ),
    factor=st.floats(1, 1e300, allow_nan=False, allow_infinity=False),
)
def test_retry_numbers_are_written_as_postgresql_writes_float8(
    conn: Conn, backoff: float, factor: float
) -> None:
    expected = sql_envelope(conn, "df.retry('x', 2, %s::float8, %s::float8)", (backoff, factor))
    assert retry("x", 2, backoff, factor).to_json() == expected


# -------------------------------------------------------------------------------------------
# Random graphs: Python and SQL build the same text


@dataclass(frozen=True)
class Built:
    python: Workflow | str
    expression: pgsql.Composable


TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


def lit(value: object) -> pgsql.Composable:
    return pgsql.SQL("{}::text").format(pgsql.Literal(value))


def workflow(b: Built) -> Workflow:
    return as_step(b.python)


leaves = st.one_of(
    TEXT.map(lambda t: Built(t, lit(t))),
    TEXT.map(lambda t: Built(sql(t), pgsql.SQL("df.sql({})").format(lit(t)))),
    st.integers(0, 10**6).map(lambda n: Built(sleep(n), pgsql.SQL(f"df.sleep({n})"))),
    st.none().map(lambda _: Built(break_(), pgsql.SQL("df.break()"))),
    TEXT.map(lambda t: Built(break_(t), pgsql.SQL("df.break({})").format(lit(t)))),
    st.tuples(TEXT.filter(bool), st.none() | st.integers(1, 10**6)).map(
        lambda a: Built(
            wait_for_signal(a[0], a[1]),
            pgsql.SQL("df.wait_for_signal({}, {}::int)").format(lit(a[0]), pgsql.Literal(a[1])),
        )
    ),
    st.sampled_from(["* * * * *", "0 3 * * 1-5", "*/15 9-17 * * *"]).map(
        lambda c: Built(wait_for_schedule(c), pgsql.SQL("df.wait_for_schedule({})").format(lit(c)))
    ),
)


def _binary(op: str, fn: str, a: Built, b: Built, use_operator: bool) -> Built:
    pa, pb = a.python, b.python
    if isinstance(pa, str) and isinstance(pb, str):
        pa = sql(pa)  # Python needs a Workflow on one side; SQL's auto-wrap gives the same
    python: Workflow = {
        ">>": lambda: pa >> pb,  # type: ignore[operator]  # one side is a Workflow
        "&": lambda: pa & pb,  # type: ignore[operator]
        "|": lambda: pa | pb,  # type: ignore[operator]
    }[op]()
    if use_operator:
        sql_op = {">>": "~>", "&": "&", "|": "|"}[op]
        expression = pgsql.SQL("({} " + sql_op + " {})").format(a.expression, b.expression)
    else:
        expression = pgsql.SQL(fn + "({}, {})").format(a.expression, b.expression)
    return Built(python, expression)


def _compose(children: st.SearchStrategy[Built]) -> st.SearchStrategy[Built]:
    pair = st.tuples(children, children, st.booleans())
    return st.one_of(
        pair.map(lambda p: _binary(">>", "df.seq", *p)),
        pair.map(lambda p: _binary("&", "df.join", *p)),
        pair.map(lambda p: _binary("|", "df.race", *p)),
        st.tuples(children, children, children).map(
            lambda p: Built(
                join(p[0].python, p[1].python, p[2].python),
                pgsql.SQL("df.join3({}, {}, {})").format(*(x.expression for x in p)),
            )
        ),
        st.tuples(children, NAME).map(
            lambda p: Built(
                workflow(p[0]).as_(p[1]),
                pgsql.SQL("({} |=> {})").format(p[0].expression, lit(p[1])),
            )
        ),
        st.tuples(children, children, children, st.booleans()).map(
            lambda p: Built(
                if_(p[0].python, p[1].python, p[2].python),
                pgsql.SQL("({} ?> {} !> {})" if p[3] else "df.if({}, {}, {})").format(
                    p[0].expression, p[1].expression, p[2].expression
                ),
            )
        ),
        st.tuples(NAME, children, children).map(
            lambda p: Built(
                if_rows(p[0], p[1].python, p[2].python),
                pgsql.SQL("df.if_rows({}, {}, {})").format(
                    lit(p[0]), p[1].expression, p[2].expression
                ),
            )
        ),
        st.tuples(children, st.integers(1, 10), st.floats(0, 100), st.floats(1, 10)).map(
            lambda p: Built(
                retry(p[0].python, p[1], p[2], p[3]),
                pgsql.SQL("df.retry({}, {}, {}::float8, {}::float8)").format(
                    p[0].expression, p[1], repr(p[2]), repr(p[3])
                ),
            )
        ),
        st.tuples(children, st.integers(1, 10**6)).map(
            lambda p: Built(
                timeout(p[0].python, p[1]),
                pgsql.SQL("df.timeout({}, {})").format(p[0].expression, p[1]),
            )
        ),
        st.tuples(children, st.none() | children).map(
            lambda p: Built(
                loop(p[0].python, None if p[1] is None else p[1].python),
                pgsql.SQL("(@> {})").format(p[0].expression)
                if p[1] is None
                else pgsql.SQL("df.loop({}, {})").format(p[0].expression, p[1].expression),
            )
        ),
    )


graphs = st.recursive(leaves, _compose, max_leaves=12)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(built=graphs)
def test_random_graphs_equal_the_sql_dsl(conn: Conn, built: Built) -> None:
    if isinstance(built.python, str):
        # A bare text is a step only inside a composer; alone, compare its SQL step.
        built = Built(sql(built.python), pgsql.SQL("df.sql({})").format(built.expression))
    python = workflow(built)
    row = conn.execute(pgsql.SQL("SELECT {}").format(built.expression)).fetchone()
    assert row is not None
    assert python.to_json() == row[0]
    assert Workflow.from_json(row[0]) == python


def test_deep_graphs_serialise_without_recursion() -> None:
    chain = sql("SELECT 0")
    for i in range(1, 5000):
        chain = chain >> f"SELECT {i}"
    text = chain.to_json()
    assert text.count('"node_type":"THEN"') == 4999
    assert hash(chain) == hash(text) and chain != chain >> "x"
    # Read back deeper than df.start accepts (256 levels); json's own parser limits the rest.
    shallow = sql("SELECT 0")
    for i in range(1, 400):
        shallow = shallow >> f"SELECT {i}"
    assert Workflow.from_json(shallow.to_json()) == shallow


# -------------------------------------------------------------------------------------------
# Starting in the caller's transaction


def test_start_in_the_callers_transaction_and_roll_back(dsn: str, conn: Conn) -> None:
    with psycopg.connect(dsn) as c:  # not autocommit: a transaction until commit/rollback
        c.execute("CREATE TABLE orders (id int)")
        c.commit()
        c.execute("INSERT INTO orders VALUES (1)")
        instance = client.start(c, sql("SELECT 1") >> sleep(0), label="rolled back")
        assert client.status(c, instance) == "pending"  # visible inside the transaction
        with pytest.raises(InstanceNotCommitted):
            client.await_instance(c, instance, timeout=1)
        c.rollback()
        with pytest.raises(InstanceNotFound):
            client.status(c, instance)
    for table in ("df.instances", "df.nodes", "orders"):
        assert one(conn, f"SELECT count(*) FROM {table}") == 0, table
    assert one(conn, "SELECT count(*) FROM df._fibers") == 0


def test_start_commits_with_the_callers_transaction(
    dsn: str, conn: Conn, worker: WorkerThread
) -> None:
    with psycopg.connect(dsn) as c, c.transaction():
        c.execute("CREATE TABLE t (v text)")
        instance = client.start(
            c, sql("INSERT INTO t VALUES ('from the workflow')") >> "SELECT v FROM t", label="tx"
        )
    outcome = client.await_instance(conn, instance, timeout=20)
    assert outcome.ok and outcome.status == "completed" and outcome.error is None
    assert outcome.result == {"rows": [{"v": "from the workflow"}], "row_count": 1}
    assert client.result(conn, instance) == outcome.result
    info = client.info(conn, instance)
    assert (info.id, info.label, info.status, info.finished) == (instance, "tx", "completed", True)
    assert info.completed_at is not None and info.completed_at >= info.created_at


def test_start_refuses_what_df_start_refuses(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="result_name"):
        client.start(conn, Workflow("SQL", query="SELECT 1", result_name="not valid"))
    with pytest.raises(psycopg.Error, match="Unknown node_type 'NOPE'"):
        client.start(conn, sql("a") >> Workflow("NOPE"))


# -------------------------------------------------------------------------------------------
# Awaiting, results, progress, nodes


def test_await_failed_and_timeout(conn: Conn, worker: WorkerThread) -> None:
    failed = client.start(conn, sql("SELECT 1") >> "SELECT 1/0")
    outcome = client.await_instance(conn, failed, timeout=20)
    assert (outcome.status, outcome.ok, outcome.result) == ("failed", False, None)
    assert outcome.error is not None and "division by zero" in outcome.error

    slow = client.start(conn, sleep(60))
    with pytest.raises(WaitTimeout) as caught:
        client.await_instance(conn, slow, timeout=0.5, poll_interval=0.1)
    assert caught.value.instance_id == slow
    assert caught.value.status in ("pending", "running")
    assert isinstance(caught.value, TimeoutError)
    with pytest.raises(ValueError):
        client.await_instance(conn, slow, timeout=0)


def test_await_in_a_repeatable_read_transaction_is_refused(
    dsn: str, conn: Conn, worker: WorkerThread
) -> None:
    instance = client.start(conn, sleep(1))
    with psycopg.connect(dsn) as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(SnapshotFrozen, match="REPEATABLE READ"):
            client.await_instance(c, instance, timeout=10)
        c.rollback()
        c.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        assert client.await_instance(c, instance, timeout=10).ok
        c.rollback()
        # The first statement of such a transaction sees the present: a finished instance.
        c.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        assert client.await_instance(c, instance, timeout=10).ok


def test_progress_reports_nodes_and_the_running_step(conn: Conn, worker: WorkerThread) -> None:
    instance = client.start(conn, sql("SELECT 1") >> sql("SELECT 2") >> sleep(3) >> "SELECT 3")
    seen: list[Progress] = []
    outcome = client.await_instance(
        conn, instance, timeout=30, poll_interval=0.2, on_progress=seen.append
    )
    assert outcome.ok
    assert all(p.nodes_total == 7 for p in seen)
    sleeping = [p for p in seen if p.running and p.running[0].node_type == "SLEEP"]
    assert sleeping, seen
    assert 0 < sleeping[0].nodes_done < 7
    assert seen[-1].nodes_done == 7 and seen[-1].instance.status == "completed"
    assert [p.elapsed for p in seen] == sorted(p.elapsed for p in seen)

    graph = client.nodes(conn, instance)
    assert [n.node_type for n in graph] == ["THEN", "THEN", "THEN", "SQL", "SQL", "SLEEP", "SQL"]
    assert {n.inferred_status for n in graph} == {"completed"}
    assert client.progress(conn, instance).nodes_done == 7


def test_nodes_in_graph_order_with_conditions_and_extras(conn: Conn, worker: WorkerThread) -> None:
    wf = if_("SELECT false", "SELECT 'then'", join("a1", "SELECT 'b'", "SELECT 'c'"))
    instance = client.start(conn, wf)
    client.await_instance(conn, instance, timeout=20)
    graph = client.nodes(conn, instance)
    described = [(n.node_type, n.query if n.node_type == "SQL" else None) for n in graph]
    assert described == [
        ("IF", None),
        ("SQL", "SELECT 'then'"),
        ("JOIN", None),
        ("SQL", "a1"),
        ("SQL", "SELECT 'b'"),
        ("SQL", "SELECT 'c'"),
        ("SQL", "SELECT false"),
    ]
    skipped = [n.query for n in graph if n.inferred_status == "skipped"]
    assert skipped == ["SELECT 'then'"]


# -------------------------------------------------------------------------------------------
# Signals and cancelling


def test_signal_reaches_the_wait(conn: Conn, worker: WorkerThread) -> None:
    instance = client.start(conn, sql("SELECT 1") >> wait_for_signal("approve"))
    client.signal(conn, instance, "approve", {"by": "alice", "n": [1, 2]})
    outcome = client.await_instance(conn, instance, timeout=20)
    assert outcome.result == {
        "signal_name": "approve",
        "timed_out": False,
        "data": {"by": "alice", "n": [1, 2]},
    }
    with pytest.raises(InstanceFinished, match="is completed"):
        client.signal(conn, instance, "approve")

    # Text is taken as df.signal takes it: JSON text is that value, other text a string.
    for data, expected in [("yes", "yes"), ('{"a": 1}', {"a": 1}), (None, None), (7, 7)]:
        other = client.start(conn, wait_for_signal("go"))
        client.signal(conn, other, "go", data)
        result = client.await_instance(conn, other, timeout=20).result
        assert isinstance(result, dict) and result["data"] == expected, data
    default = client.start(conn, wait_for_signal("go"))
    client.signal(conn, default, "go")
    result = client.await_instance(conn, default, timeout=20).result
    assert isinstance(result, dict) and result["data"] == {}


def test_cancel(conn: Conn, worker: WorkerThread) -> None:
    instance = client.start(conn, sleep(600))
    assert client.cancel(conn, instance, reason="not needed") is True
    outcome = client.await_instance(conn, instance, timeout=5)
    assert outcome.status == "cancelled" and outcome.error
    assert client.cancel(conn, instance) is False  # already finished: nothing changes
    done = client.start(conn, "SELECT 1")
    client.await_instance(conn, done, timeout=20)
    assert client.cancel(conn, done) is False
    assert client.status(conn, done) == "completed"


def test_ids_are_checked_before_they_reach_sql(conn: Conn) -> None:
    for bad in ("", "1234567", "123456789", "g1234567", "df.start('SELECT 1')"):
        with pytest.raises(InvalidInstanceId):
            client.status(conn, bad)
        with pytest.raises(InvalidInstanceId):
            client.explain(conn, bad)
    with pytest.raises(InstanceNotFound, match="deadbeef not found"):
        client.status(conn, "DEADBEEF")
    for call in (
        lambda: client.info(conn, "deadbeef"),
        lambda: client.result(conn, "deadbeef"),
        lambda: client.nodes(conn, "deadbeef"),
        lambda: client.signal(conn, "deadbeef", "x"),
        lambda: client.cancel(conn, "deadbeef"),
        lambda: client.await_instance(conn, "deadbeef"),
    ):
        with pytest.raises(InstanceNotFound):
            call()
    assert one(conn, "SELECT count(*) FROM df.instances") == 0


def test_explain_a_workflow_and_an_instance(conn: Conn, worker: WorkerThread) -> None:
    wf = sql("SELECT 1").as_("one") >> sleep(0)
    assert client.explain(conn, wf) == one(conn, "SELECT df.explain(%s)", (wf.to_json(),))
    instance = client.start(conn, wf, label="explained")
    client.await_instance(conn, instance, timeout=20)
    tree = client.explain(conn, instance.upper())
    assert tree.startswith(f"Instance: {instance} (explained)")
    assert "✓" in tree


# -------------------------------------------------------------------------------------------
# Listing


def test_list_pages_filters_and_time_bounds(conn: Conn) -> None:
    ids = []
    for i in range(7):
        conn.execute("SELECT pg_sleep(0.002)")
        ids.append(client.start(conn, f"SELECT {i}", label="even" if i % 2 == 0 else "odd"))
    ids.reverse()  # newest first
    page = client.list_instances(conn, limit=3)
    assert [i.id for i in page.instances] == ids[:3]
    assert page.next_cursor is not None
    second = client.list_instances(conn, limit=3, after=page.next_cursor)
    assert [i.id for i in second.instances] == ids[3:6]
    last = client.list_instances(conn, limit=3, after=second.next_cursor)
    assert [i.id for i in last.instances] == ids[6:] and last.next_cursor is None
    assert [i.id for i in client.iter_instances(conn, page_size=2)] == ids

    evens = client.list_instances(conn, label="even")
    assert [i.id for i in evens.instances] == [x for k, x in enumerate(ids) if k % 2 == 0]
    assert client.list_instances(conn, status="completed").instances == ()
    pending = client.list_instances(conn, status="pending", limit=100).instances
    assert len(pending) == 7 and pending[0].status == "pending" and pending[0].label == "even"

    created = {i.id: i.created_at for i in client.iter_instances(conn)}
    middle = created[ids[3]]
    newer = client.list_instances(conn, since=middle).instances
    assert [i.id for i in newer] == ids[:4]
    older = client.list_instances(conn, until=middle).instances
    assert [i.id for i in older] == ids[4:]
    window = list(
        client.iter_instances(conn, since=created[ids[5]], until=created[ids[1]], page_size=1)
    )
    assert [i.id for i in window] == ids[2:6]
    with pytest.raises(ValueError, match="time zone"):
        client.list_instances(conn, since=middle.replace(tzinfo=None))


def test_a_role_sees_only_its_own_instances(conn: Conn, roles: Roles, worker: WorkerThread) -> None:
    alice = roles.connect(roles.create("alice", grant=True))
    bob = roles.connect(roles.create("bob", grant=True))
    mine = client.start(alice, wait_for_signal("go") >> "SELECT 'alice'", label="alice's")
    theirs = client.start(bob, "SELECT 'bob'", label="bob's")
    assert [i.id for i in client.iter_instances(alice)] == [mine]
    assert [i.id for i in client.iter_instances(bob)] == [theirs]
    for call in (
        lambda: client.status(bob, mine),
        lambda: client.signal(bob, mine, "go"),
        lambda: client.cancel(bob, mine),
        lambda: client.nodes(bob, mine),
    ):
        with pytest.raises(InstanceNotFound):
            call()
    assert client.explain(bob, mine) == f"Instance '{mine}' not found"
    client.signal(alice, mine, "go")
    assert client.await_instance(alice, mine, timeout=20).ok
    assert wait_for(conn, theirs) == "completed"


# -------------------------------------------------------------------------------------------
# The async client: the same operations on an AsyncConnection


def test_async_client(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            async with c.transaction():
                rolled = await aio.start(c, "SELECT 1")
            # A transaction that rolls back leaves nothing.
            try:
                async with c.transaction():
                    await aio.start(c, "SELECT 'never'", label="rolled back")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            await c.set_autocommit(True)
            outcome = await aio.await_instance(c, rolled, timeout=20)
            assert outcome.ok and outcome.result == {"rows": [{"?column?": 1}], "row_count": 1}
            assert await aio.status(c, rolled) == "completed"
            assert await aio.result(c, rolled) == outcome.result
            assert (await aio.info(c, rolled)).finished

            waiting = await aio.start(c, sql("SELECT 1") >> wait_for_signal("ok"), label="async")
            progress: list[Progress] = []
            await aio.signal(c, waiting, "ok", [1, "two"])
            done = await aio.await_instance(c, waiting, timeout=20, on_progress=progress.append)
            assert isinstance(done.result, dict) and done.result["data"] == [1, "two"]
            assert progress and progress[-1].nodes_done == progress[-1].nodes_total == 3
            assert [n.node_type for n in await aio.nodes(c, waiting)] == ["THEN", "SQL", "SIGNAL"]
            assert (await aio.progress(c, waiting)).instance.label == "async"

            slow = await aio.start(c, sleep(600))
            with pytest.raises(WaitTimeout):
                await aio.await_instance(c, slow, timeout=0.3)
            assert await aio.cancel(c, slow, "async test") is True
            assert (await aio.await_instance(c, slow, timeout=5)).status == "cancelled"

            page = await aio.list_instances(c, limit=2)
            assert [i.id for i in page.instances] == [slow, waiting]
            listed = [i.id async for i in aio.iter_instances(c, page_size=1)]
            assert listed == [slow, waiting, rolled]
            assert "Instance: " in await aio.explain(c, slow)
            with pytest.raises(InstanceNotFound):
                await aio.status(c, "00000000")

    asyncio.run(scenario())
    assert one(conn, "SELECT count(*) FROM df.instances WHERE label = 'rolled back'") == 0


# -------------------------------------------------------------------------------------------
# docs/python.md


def test_the_first_example_of_docs_python_md_runs(
    dsn: str, conn: Conn, worker: WorkerThread
) -> None:
    text = (Path(__file__).parents[2] / "docs" / "python.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric, status text)")
    namespace: dict[str, Any] = {"dsn": dsn}
    exec(compile(example, "docs/python.md", "exec"), namespace)
    assert namespace["outcome"].ok
    assert one(conn, "SELECT status FROM orders WHERE id = 42") == "approved"
    assert client.info(conn, namespace["instance"]).label == "order 42"
