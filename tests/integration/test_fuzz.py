"""Property-based fuzzing of everything that takes a workflow as text (hostile input).

Every DSL constructor and operator, with random text, numbers and NULLs (and the envelopes
other constructors return), either returns valid envelope JSON — the same text for the same
call — or raises a PostgreSQL error with a message; df.start with random JSON either accepts
it or rejects it the same way; df.explain never raises. An error is clean when its SQLSTATE is
one a caller can act on (P0001 raise_exception, 22 data exception, 54 program limit) — never
an internal error (XX), a system error (58), a cancel (57: nothing may hang) or a broken
connection. A smaller sample of accepted graphs runs on a worker: each instance completes or
fails with a reason, and leaves nothing behind.

Everything runs as a granted role that is not a superuser, on one connection per test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: SQLSTATE classes of the errors hostile input may get.
CLEAN_ERRORS = ("P0001", "22", "54")


@pytest.fixture
def role_conn(conn: Conn, dsn: str, db_name: str) -> Iterator[Conn]:
    """A connection as a granted LOGIN role that is not a superuser; nothing may take long."""
    roles = Roles(conn, dsn, db_name)
    try:
        c = roles.connect(roles.create("fuzz", grant=True))
        c.execute("SET statement_timeout = '20s'")
        yield c
    finally:
        roles.drop_all()


def check_clean(c: Conn, exc: psycopg.Error) -> None:
    """``exc`` is an error hostile input may get: see the module's docstring."""
    assert isinstance(exc, psycopg.DatabaseError), repr(exc)
    assert not (c.closed or c.broken), repr(exc)
    state = exc.sqlstate or ""
    event(f"error {state}")
    assert state.startswith(CLEAN_ERRORS), f"{state}: {exc}"
    assert exc.diag.message_primary, repr(exc)


# -------------------------------------------------------------------------------------------
# Random arguments


TYPES = (
    "SQL",
    "THEN",
    "IF",
    "JOIN",
    "LOOP",
    "BREAK",
    "RACE",
    "SLEEP",
    "WAIT_SCHEDULE",
    "HTTP",
    "HTTP_MULTIPART",
    "SIGNAL",
    "RETRY",
    "TIMEOUT",
)
FIELDS = ("left_node", "right_node", "condition_node", "extra_nodes")
#: Text PostgreSQL can hold (no NUL, no lone surrogate).
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=30,
)
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "SELECT 1",
        "{",
        "}",
        "{}",
        "[]",
        "null",
        '"x"',
        "{{",
        '{"node_type":5}',
        '{"node_type":"THEN"}',
        '{"node_type":"SQL","query":"SELECT 1"}',
        '{"node_type":"SQL","query":"x","left_node":"y"}',
        '{"node_type":"LOOP","left_node":{"node_type":"NOPE"}}',
        '{"_partial_if":true,"condition":"a","then_branch":"b"}',
        '{"_partial_if":"true"}',
        '{"a":"\\u0000"}',
        '{"a":"\\ud800"}',
        "\\u0000",
        "$x $x.* {sys_label} {",
        "a" * 3000,
        "[" * 3000 + "]" * 3000,
        '{"node_type":"SQL","query":"x","pad":' + "[" * 3000 + "]" * 3000 + "}",
        "0 * * * *",
        "*/0 * * * *",
        "@hourly",
        "valid_name",
        "1abc",
    ]
)
JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), TEXT
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def node_like(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A JSON object that looks more or less like an envelope node."""
    node: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:
        node["node_type"] = draw(
            st.one_of(st.sampled_from(TYPES), st.sampled_from(["", "sql", "NOPE"]), JSON_SCALAR)
        )
    if draw(st.booleans()):
        node["query"] = draw(st.one_of(config_text(), TEXT, TRICKY, JSON_SCALAR))
    if draw(st.integers(0, 3)) == 0:
        node["result_name"] = draw(
            st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), TEXT, JSON_SCALAR)
        )
    for field in FIELDS:
        if depth < 4 and draw(st.integers(0, 2)) == 0:
            if field == "extra_nodes":
                node[field] = draw(
                    st.one_of(st.lists(node_like(depth + 1), max_size=2), JSON_VALUE)
                )
            else:
                node[field] = draw(st.one_of(node_like(depth + 1), JSON_SCALAR))
    if draw(st.integers(0, 5)) == 0:
        node[draw(TEXT)] = draw(JSON_VALUE)
    return node


def config_text() -> st.SearchStrategy[str]:
    """Node configs, valid and not: what df.start checks per node type."""
    return st.one_of(
        st.sampled_from(["0", "1", " 2 ", "-1", "1.5", "99999999999999999999", "abc"]),
        st.builds(lambda v: json.dumps({"break_value": v}), st.one_of(st.none(), TEXT, JSON_VALUE)),
        st.builds(
            lambda name, timeout: json.dumps({"signal_name": name, "timeout_seconds": timeout}),
            st.one_of(TEXT, JSON_SCALAR),
            st.one_of(st.none(), st.integers(-5, 2**40), JSON_SCALAR),
        ),
        st.builds(
            lambda expr: json.dumps({"cron_expr": expr}),
            st.one_of(st.sampled_from(["* * * * *", "0 0 1 1 *", "61 * * * *"]), TEXT),
        ),
        st.builds(
            lambda name: json.dumps({"condition_type": "result_has_rows", "result_name": name}),
            st.one_of(TEXT, JSON_SCALAR),
        ),
        st.builds(
            lambda attempts, backoff, factor: json.dumps(
                {"max_attempts": attempts, "backoff_seconds": backoff, "backoff_factor": factor}
            ),
            st.one_of(st.integers(-2, 2**32), JSON_SCALAR),
            st.one_of(st.floats(allow_nan=False), JSON_SCALAR),
            st.one_of(st.floats(allow_nan=False), JSON_SCALAR),
        ),
        st.builds(
            lambda v: json.dumps({"seconds": v}), st.one_of(st.integers(-2, 2**32), JSON_SCALAR)
        ),
        st.builds(json.dumps, JSON_VALUE),
    )


# -------------------------------------------------------------------------------------------
# DSL expressions


@dataclass(frozen=True)
class Expr:
    """A SQL expression and its parameters."""

    sql: str
    params: tuple[Any, ...] = ()


def lit(value: Any, cast: str) -> Expr:
    return Expr(f"NULL::{cast}") if value is None else Expr(f"%s::{cast}", (value,))


TEXT_ARG = st.one_of(
    st.none(),
    TEXT,
    TRICKY,
    config_text(),
    st.builds(json.dumps, node_like()),
).map(lambda v: lit(v, "text"))
BIGINT_ARG = st.one_of(
    st.none(), st.integers(-(2**64), 2**64), st.sampled_from([0, 2**63 - 1])
).map(lambda v: lit(v, "numeric"))
INT_ARG = st.one_of(
    st.none(), st.integers(-(2**33), 2**33), st.sampled_from([0, 1, 2**31 - 1])
).map(lambda v: lit(v, "numeric"))
FLOAT_ARG = st.one_of(st.none(), st.floats(), st.sampled_from([0.0, 1.0, -0.0])).map(
    lambda v: lit(v, "float8")
)

#: Constructors and operators: (template, argument kinds); "f" is a workflow argument (any
#: expression), "t" text, "i" an int, "b" a bigint, "d" a double. Integers are passed as numeric
#: and cast in the template, so that out-of-range values reach PostgreSQL.
CALLS: list[tuple[str, str]] = [
    ("df.sql({})", "t"),
    ("df.seq({}, {})", "ff"),
    ('df."as"({}, {})', "ft"),
    ("df.as_op({}, {})", "ft"),
    ("df.sleep({}::bigint)", "b"),
    ("df.loop({})", "f"),
    ("df.loop({}, {})", "ff"),
    ('df."break"()', ""),
    ('df."break"({})', "t"),
    ('df."if"({}, {}, {})', "fff"),
    ("df.if_rows({}, {}, {})", "tff"),
    ('df."join"({}, {})', "ff"),
    ("df.join3({}, {}, {})", "fff"),
    ("df.race({}, {})", "ff"),
    ("df.if_then_op({}, {})", "ff"),
    ("df.if_else_op({}, {})", "ff"),
    ("df.loop_prefix_op({})", "f"),
    ("df.wait_for_signal({})", "t"),
    ("df.wait_for_signal({}, {}::int)", "ti"),
    ("df.wait_for_schedule({})", "t"),
    ("df.retry({}, {}::int)", "fi"),
    ("df.retry({}, {}::int, {}, {})", "fidd"),
    ("df.timeout({}, {}::int)", "fi"),
    ("({} ~> {})", "ff"),
    ("({} |=> {})", "ft"),
    ("({} & {})", "ff"),
    ("({} | {})", "ff"),
    ("({} ?> {})", "ff"),
    ("({} !> {})", "ff"),
    ("(@> {})", "f"),
    ("({} ?> {} !> {})", "fff"),
]


def expressions() -> st.SearchStrategy[Expr]:
    def call(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        kinds = {"f": children, "t": TEXT_ARG, "i": INT_ARG, "b": BIGINT_ARG, "d": FLOAT_ARG}

        @st.composite
        def build(draw: st.DrawFn) -> Expr:
            template, args = draw(st.sampled_from(CALLS))
            parts = [draw(kinds[k]) for k in args]
            return Expr(
                template.format(*(p.sql for p in parts)),
                tuple(v for p in parts for v in p.params),
            )

        return build()

    # (The outermost is always a call: a bare argument is no workflow.)
    return call(st.recursive(TEXT_ARG, call, max_leaves=6))


def evaluate(c: Conn, expr: Expr) -> str | None:
    """The expression's value; raises what PostgreSQL raised, after checking it is clean."""
    try:
        return one(c, f"SELECT {expr.sql}", expr.params)  # type: ignore[no-any-return]
    except psycopg.Error as exc:
        check_clean(c, exc)
        raise


def start_or_reject(c: Conn, fut: str) -> str | None:
    """df.start(fut) in a transaction rolled back: the id, or None if cleanly rejected."""
    try:
        with c.transaction(force_rollback=True):
            return str(one(c, "SELECT df.start(%s)", (fut,)))
    except psycopg.Error as exc:
        check_clean(c, exc)
        return None


@FUZZ
@given(expr=expressions())
def test_dsl_constructors_return_envelopes_or_clean_errors(role_conn: Conn, expr: Expr) -> None:
    try:
        value = evaluate(role_conn, expr)
    except psycopg.Error:
        return
    if value is None:
        return  # a STRICT constructor given a NULL
    event("envelope")
    json.loads(value)  # valid JSON (raises otherwise)
    assert one(role_conn, "SELECT %s::jsonb IS NOT NULL", (value,))
    assert evaluate(role_conn, expr) == value  # identical calls, identical text
    start_or_reject(role_conn, value)


@FUZZ
@given(
    fut=st.one_of(
        st.builds(json.dumps, node_like()),
        st.builds(json.dumps, JSON_VALUE),
        TEXT,
        TRICKY,
    )
)
def test_df_start_accepts_or_rejects_random_json_cleanly(role_conn: Conn, fut: str) -> None:
    iid = start_or_reject(role_conn, fut)
    if iid is not None:
        event("started")
        # What was accepted is what a later df.explain can draw.
        explained = one(role_conn, "SELECT df.explain(%s)", (fut,))
        assert isinstance(explained, str) and explained


@FUZZ
@given(
    text=st.one_of(
        TEXT,
        TRICKY,
        st.builds(json.dumps, node_like()),
        st.builds(
            lambda a, op, b: f"{a} {op} {b}",
            TEXT,
            st.sampled_from(["~>", "|=>", "?>", "!>", "@>", "df."]),
            TEXT,
        ),
        st.from_regex(r"[0-9a-fA-F ]{6,10}", fullmatch=True),
    )
)
def test_explain_never_raises(role_conn: Conn, text: str) -> None:
    """df.explain reports every problem as text (SPEC §2.15), also for hostile input."""
    explained = one(role_conn, "SELECT df.explain(%s)", (text,))
    assert isinstance(explained, str) and explained


# -------------------------------------------------------------------------------------------
# Accepted graphs run


#: Leaves a runnable graph is made of: quick to run, and harmless as any role.
RUN_SQL = st.sampled_from(
    [
        "SELECT 1 AS n",
        "SELECT 0 AS n",
        "SELECT 1/0",
        "SELECT $r",
        "SELECT $r.n?",
        "SELECT * FROM $r.*",
        "SELECT '{sys_label}' AS l",
        "SELECT true",
        "SELECT NULL::int AS n WHERE false",
        "not sql",
    ]
)


@st.composite
def runnable(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A graph of every node type the worker runs, valid or not, that ends quickly."""
    kinds = ["SQL", "SLEEP", "BREAK", "SIGNAL"]
    if depth < 4:
        kinds += ["THEN", "IF", "JOIN", "LOOP", "RACE", "THEN", "IF", "RETRY", "TIMEOUT"]
    kind = draw(st.sampled_from(kinds))
    node: dict[str, Any] = {"node_type": kind}
    if draw(st.integers(0, 3)) == 0:
        node["result_name"] = "r"
    child = runnable(depth + 1)
    if kind == "SQL":
        node["query"] = draw(RUN_SQL)
    elif kind == "SLEEP":
        node["query"] = "0"
    elif kind == "BREAK":
        node["query"] = json.dumps({"break_value": draw(st.one_of(st.none(), TEXT))})
    elif kind == "SIGNAL":
        node["query"] = json.dumps({"signal_name": "go", "timeout_seconds": 1})
    elif kind == "IF":
        node["left_node"], node["right_node"] = draw(child), draw(child)
        if draw(st.booleans()):
            node["condition_node"] = draw(child)
        else:
            node["query"] = json.dumps({"condition_type": "result_has_rows", "result_name": "r"})
    elif kind == "LOOP":
        node["left_node"] = draw(child)
        if draw(st.booleans()):
            node["condition_node"] = draw(child)
    elif kind == "RETRY":
        node["left_node"] = draw(child)
        node["query"] = json.dumps({"max_attempts": draw(st.integers(1, 3)), "backoff_seconds": 0})
    elif kind == "TIMEOUT":
        node["left_node"] = draw(child)
        node["query"] = json.dumps({"seconds": draw(st.integers(1, 2))})
    else:
        node["left_node"], node["right_node"] = draw(child), draw(child)
        if kind == "JOIN" and draw(st.booleans()):
            node["extra_nodes"] = [draw(child)]
    return node


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(graph=runnable())
def test_accepted_graphs_complete_or_fail_cleanly(
    role_conn: Conn, conn: Conn, fast_worker: WorkerThread, graph: dict[str, Any]
) -> None:
    iid = str(one(role_conn, "SELECT df.start(%s, 'fuzz')", (json.dumps(graph),)))
    status = wait_for(role_conn, iid, 30)
    event(status)
    assert status in ("completed", "failed")
    output = one(conn, "SELECT output FROM df._instance_state WHERE instance_id = %s", (iid,))
    assert output, "a finished instance says what it returned or why it failed"
    assert "internal error" not in output
    assert one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)) == 0
    assert one(conn, "SELECT count(*) FROM df._signals WHERE instance_id = %s", (iid,)) == 0


@pytest.fixture
def fast_worker(start_worker: Callable[..., WorkerThread]) -> WorkerThread:
    """A worker whose loops give up after three quick iterations."""
    return start_worker(loop_max_iterations=3, loop_min_interval=0.0, poll_interval=0.1)
