"""The DSL and df.start (SPEC §1.3, §1.4, §2.1, §2.2): exact envelopes, operators, validation.

No worker is needed: constructors are pure functions and df.start only writes rows.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.sql import error_of, one

Conn = psycopg.Connection[Any]

VALID_TYPES = (
    "Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, "
    "HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT"
)
DF_TABLES = ("df.instances", "df.nodes", "df._fibers", "df._instance_state")


# -- helpers ------------------------------------------------------------------------------------


def js(text: str | None) -> str:
    """A JSON string literal as serde_json (and PostgreSQL) write it."""
    return json.dumps(text, ensure_ascii=False)


def sql_node(query: str, name: str | None = None) -> str:
    tail = "" if name is None else f',"result_name":{js(name)}'
    return f'{{"node_type":"SQL","query":{js(query)}{tail}}}'


def row_counts(conn: Conn) -> dict[str, int]:
    return {t: one(conn, f"SELECT count(*) FROM {t}") for t in DF_TABLES}


def start_error(conn: Conn, fut: str) -> str:
    """df.start(fut) fails; nothing was written anywhere. Returns the message."""
    before = row_counts(conn)
    message = error_of(conn, "SELECT df.start(%s)", (fut,))
    assert row_counts(conn) == before
    return message


def nodes_of(conn: Conn, instance_id: str) -> list[dict[str, Any]]:
    """The instance's df.nodes rows in physical (insertion) order."""
    cur = conn.execute(
        "SELECT id, node_type, query, result_name, left_node, right_node, status, database, "
        "submitted_by::text AS submitted_by FROM df.nodes WHERE instance_id = %s ORDER BY ctid",
        (instance_id,),
    )
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def root_of(conn: Conn, instance_id: str) -> str:
    return str(one(conn, "SELECT root_node FROM df.instances WHERE id = %s", (instance_id,)))


def nested(depth: int) -> str:
    """A graph whose leaf is ``depth`` edges below the root: nested LOOPs around a SQL step."""
    text = sql_node("SELECT 1")
    for _ in range(depth):
        text = f'{{"node_type":"LOOP","left_node":{text}}}'
    return text


def tree(nodes: int) -> str:
    """A graph of exactly ``nodes`` nodes: a balanced JOIN tree, under a LOOP if even."""
    leaves = (nodes + 1) // 2

    def build(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return sql_node(f"SELECT {lo}")
        mid = (lo + hi) // 2
        return f'{{"node_type":"JOIN","left_node":{build(lo, mid)},"right_node":{build(mid, hi)}}}'

    text = build(0, leaves)
    if nodes % 2 == 0:
        text = f'{{"node_type":"LOOP","left_node":{text}}}'
    return text


@pytest.fixture
def make_role(conn: Conn, db_name: str) -> Iterator[Callable[..., str]]:
    """Create roles private to this test (names include db_name), granted what df.start and
    the monitoring functions need (SPEC §1.8 plus SELECT on df._instance_state)."""
    made: list[str] = []

    def factory(suffix: str, *, login: bool = True) -> str:
        name = f"r{suffix}_{db_name}"
        password = secrets.token_hex(8)
        conn.execute(f"CREATE ROLE {name} {'LOGIN' if login else 'NOLOGIN'} PASSWORD '{password}'")
        made.append(name)
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
        ):
            conn.execute(f"GRANT {grant} TO {name}")
        return name

    yield factory
    conn.execute("RESET ROLE")
    for name in made:
        conn.execute(f"DROP OWNED BY {name} CASCADE")
        conn.execute(f"DROP ROLE {name}")


# -- constructors: exact envelopes --------------------------------------------------------------
def test_sql_is_a_plain_step_with_serde_escaping(conn: Conn) -> None:
    assert one(conn, "SELECT df.sql('SELECT 1')") == '{"node_type":"SQL","query":"SELECT 1"}'
    tricky = "SELECT 'a\"b\\c', E'\\n' -- é ✓ \t tab / slash \x01"
    assert one(conn, "SELECT df.sql(%s)", (tricky,)) == (
        '{"node_type":"SQL","query":"SELECT \'a\\"b\\\\c\', E\'\\\\n\' -- é ✓ \\t tab / slash '
        '\\u0001"}'
    )
    # No auto-wrap and no validation: an envelope given to df.sql is just SQL text.
    envelope = '{"node_type":"THEN"}'
    assert one(conn, "SELECT df.sql(%s)", (envelope,)) == sql_node(envelope)


def test_seq_embeds_children_in_field_order(conn: Conn) -> None:
    expected = (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}}'
    )
    assert one(conn, "SELECT 'SELECT 1' ~> 'SELECT 2'") == expected
    assert one(conn, "SELECT df.seq('SELECT 1', 'SELECT 2')") == expected
    assert one(conn, "SELECT df.seq(df.sql('SELECT 1'), df.sql('SELECT 2'))") == expected


def test_identical_calls_are_byte_identical(conn: Conn, dsn: str) -> None:
    expr = (
        "SELECT df.join3(('a' ~> 'b') |=> 'x', df.if('c', df.sleep(3), df.break('v')), "
        "df.loop('d', 'e')) | df.if_rows('x', 'f', 'g')"
    )
    first = one(conn, expr)
    assert one(conn, expr) == first
    # Another session (fresh envelope cache) builds the very same text.
    with psycopg.connect(dsn, autocommit=True) as other:
        assert one(other, expr) == first


def test_as_names_and_overwrites(conn: Conn) -> None:
    assert one(conn, "SELECT df.as('SELECT 1', 'n')") == sql_node("SELECT 1", "n")
    assert one(conn, "SELECT 'SELECT 1' |=> 'n'") == sql_node("SELECT 1", "n")
    assert one(conn, "SELECT ('SELECT 1' |=> 'a') |=> '_b9'") == sql_node("SELECT 1", "_b9")
    assert one(conn, "SELECT df.as(df.sleep(5), 'ignored_at_run_time')") == (
        '{"node_type":"SLEEP","query":"5","result_name":"ignored_at_run_time"}'
    )


@pytest.mark.parametrize("name", ["1abc", "a-b", "a.b", "a b", "é", "a?"])
def test_as_rejects_invalid_names(conn: Conn, name: str) -> None:
    assert error_of(conn, "SELECT df.as('SELECT 1', %s)", (name,)) == (
        f"df.as: result name '{name}' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*"
    )


def test_as_rejects_empty_name(conn: Conn) -> None:
    assert error_of(conn, "SELECT df.as('SELECT 1', '')") == "df.as: result name cannot be empty"
    assert error_of(conn, "SELECT 'SELECT 1' |=> ''") == "df.as: result name cannot be empty"


def test_sleep(conn: Conn) -> None:
    assert one(conn, "SELECT df.sleep(30)") == '{"node_type":"SLEEP","query":"30"}'
    assert one(conn, "SELECT df.sleep(0)") == '{"node_type":"SLEEP","query":"0"}'
    assert one(conn, "SELECT df.sleep(5000000000)") == (
        '{"node_type":"SLEEP","query":"5000000000"}'
    )
    assert error_of(conn, "SELECT df.sleep(-1)") == "Sleep duration must be non-negative"
    assert one(conn, "SELECT pg_get_function_identity_arguments('df.sleep'::regproc)") == (
        "seconds bigint"
    )


def test_loop_with_and_without_condition(conn: Conn) -> None:
    body = sql_node("SELECT 1")
    assert one(conn, "SELECT df.loop('SELECT 1')") == f'{{"node_type":"LOOP","left_node":{body}}}'
    assert one(conn, "SELECT @> 'SELECT 1'") == f'{{"node_type":"LOOP","left_node":{body}}}'
    assert one(conn, "SELECT df.loop('SELECT 1', NULL)") == (
        f'{{"node_type":"LOOP","left_node":{body}}}'
    )
    assert one(conn, "SELECT df.loop('SELECT 1', 'SELECT false')") == (
        f'{{"node_type":"LOOP","left_node":{body},"condition_node":{sql_node("SELECT false")}}}'
    )
    assert one(conn, "SELECT df.loop(body => 'SELECT 1', condition => 'SELECT 2')") == (
        f'{{"node_type":"LOOP","left_node":{body},"condition_node":{sql_node("SELECT 2")}}}'
    )


@pytest.mark.parametrize(
    ("value", "query"),
    [
        (None, '{"break_value":null}'),
        ("done", '{"break_value":"done"}'),
        ('{"a": 1}', '{"break_value":"{\\"a\\": 1}"}'),
        ("42", '{"break_value":"42"}'),
        ("SELECT 1", '{"break_value":"SELECT 1"}'),  # not auto-wrapped
        (
            '{"node_type":"SQL","query":"x"}',
            '{"break_value":"{\\"node_type\\":\\"SQL\\",\\"query\\":\\"x\\"}"}',
        ),
    ],
)
def test_break_values(conn: Conn, value: str | None, query: str) -> None:
    assert one(conn, "SELECT df.break(%s)", (value,)) == (
        f'{{"node_type":"BREAK","query":{js(query)}}}'
    )


def test_break_without_argument(conn: Conn) -> None:
    assert one(conn, "SELECT df.break()") == (
        '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'
    )


def test_if_and_its_operators(conn: Conn) -> None:
    expected = (
        f'{{"node_type":"IF","left_node":{sql_node("SELECT 1")},'
        f'"right_node":{sql_node("SELECT 2")},"condition_node":{sql_node("SELECT true")}}}'
    )
    assert one(conn, "SELECT df.if('SELECT true', 'SELECT 1', 'SELECT 2')") == expected
    assert one(conn, "SELECT 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'") == expected
    # The partial if keeps both operands as raw text.
    assert one(conn, "SELECT 'c' ?> 'SELECT \"x\"'") == (
        '{"_partial_if":true,"condition":"c","then_branch":"SELECT \\"x\\""}'
    )


@pytest.mark.parametrize("left", ["'SELECT 1'", "df.sql('SELECT 1')", "'{\"_partial_if\":false}'"])
def test_else_without_then_fails(conn: Conn, left: str) -> None:
    assert error_of(conn, f"SELECT {left} !> 'SELECT 2'") == (
        "Invalid if-then-else: left side of !> must be a ?> expression"
    )


def test_if_rows(conn: Conn) -> None:
    assert one(conn, "SELECT df.if_rows('pending', 'SELECT 1', 'SELECT 2')") == (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},'
        '"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"pending\\"}"}'
    )
    # The name is not validated when the workflow is built.
    assert '\\"result_name\\":\\"not valid!\\"' in one(
        conn, "SELECT df.if_rows('not valid!', 'a', 'b')"
    )


def test_join_join3_race(conn: Conn) -> None:
    a, b, c = sql_node("a"), sql_node("b"), sql_node("c")
    join = f'{{"node_type":"JOIN","left_node":{a},"right_node":{b}}}'
    assert one(conn, "SELECT df.join('a', 'b')") == join
    assert one(conn, "SELECT 'a' & 'b'") == join
    assert one(conn, "SELECT df.join3('a', 'b', 'c')") == (
        f'{{"node_type":"JOIN","left_node":{a},"right_node":{b},"extra_nodes":[{c}]}}'
    )
    race = f'{{"node_type":"RACE","left_node":{a},"right_node":{b}}}'
    assert one(conn, "SELECT df.race('a', 'b')") == race
    assert one(conn, "SELECT 'a' | 'b'") == race


@pytest.mark.parametrize(
    "call",
    [
        "df.sql(NULL)",
        "df.seq(NULL, 'a')",
        "df.seq('a', NULL)",
        "df.as(NULL, 'n')",
        "df.as('a', NULL)",
        "df.sleep(NULL)",
        "df.loop(NULL)",
        "df.if(NULL, 'a', 'b')",
        "df.if('c', NULL, 'b')",
        "df.if('c', 'a', NULL)",
        "df.if_rows(NULL, 'a', 'b')",
        "df.if_rows('n', 'a', NULL)",
        "df.join('a', NULL)",
        "df.join3('a', 'b', NULL)",
        "df.race(NULL, 'b')",
        "NULL::text ~> 'a'",
        "'a' |=> NULL",
        "NULL::text ?> 'a'",
        "@> NULL::text",
    ],
)
def test_null_arguments_give_null(conn: Conn, call: str) -> None:
    assert one(conn, f"SELECT {call}") is None


def test_strictness_matches_pg_durable(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT p.proname, p.proisstrict FROM pg_proc p "
        "WHERE p.pronamespace = 'df'::regnamespace AND p.proname IN ('sql', 'seq', 'as', "
        "'sleep', 'loop', 'break', 'if', 'if_rows', 'join', 'join3', 'race')"
    ).fetchall()
    strict = dict(rows)
    assert strict == {
        "sql": True,
        "seq": True,
        "as": True,
        "sleep": True,
        "loop": False,
        "break": False,
        "if": True,
        "if_rows": True,
        "join": True,
        "join3": True,
        "race": True,
    }


# -- auto-wrap ----------------------------------------------------------------------------------
def test_valid_envelopes_are_embedded(conn: Conn) -> None:
    for inner in (
        "df.sleep(2)",
        "df.break('x')",
        "df.if_rows('n', 'a', 'b')",
        "('a' & 'b') |=> 'j'",
        "df.loop('a', 'b')",
    ):
        built = one(conn, f"SELECT {inner}")
        assert one(conn, "SELECT df.seq(%s, 'z')", (built,)) == (
            f'{{"node_type":"THEN","left_node":{built},"right_node":{sql_node("z")}}}'
        )


def test_hand_written_envelopes_are_reserialised_canonically(conn: Conn) -> None:
    # Whitespace, key order, explicit nulls, unknown fields and escapes are normalised, as
    # serde's deserialize + serialize does, at every level.
    hand = ' { "query" : "SELECT \\u0041", "node_type" : "SQL", "result_name": null, "x": [1] } '
    assert one(conn, "SELECT df.seq(%s, 'z')", (hand,)) == (
        f'{{"node_type":"THEN","left_node":{sql_node("SELECT A")},"right_node":{sql_node("z")}}}'
    )
    nested_hand = json.dumps(
        {
            "right_node": {"query": "b", "node_type": "SQL"},
            "node_type": "THEN",
            "left_node": {"result_name": "n", "node_type": "SQL", "query": "a"},
        },
        indent=2,
    )
    assert one(conn, "SELECT df.as(%s, 'top')", (nested_hand,)) == (
        f'{{"node_type":"THEN","left_node":{sql_node("a", "n")},"right_node":{sql_node("b")},'
        '"result_name":"top"}'
    )
    # jsonb's own rendering (sorted keys, spaces) comes back canonical too.
    built = one(conn, "SELECT df.join3('a', 'b', df.loop('c', 'd'))")
    assert one(conn, "SELECT df.seq(%s::jsonb::text, 'z')", (built,)) == (
        f'{{"node_type":"THEN","left_node":{built},"right_node":{sql_node("z")}}}'
    )


@pytest.mark.parametrize(
    ("envelope", "detail"),
    [
        (
            '{"node_type":"THEN","left_node":"SELECT 1",'
            '"right_node":{"node_type":"SQL","query":"b"}}',
            'invalid type: string "SELECT 1", expected struct Durofut',
        ),
        ('{"node_type":"SQL","query":5}', "invalid type: integer `5`, expected a string"),
        (
            '{"node_type":"SQL","query":"a","result_name":true}',
            "invalid type: boolean `true`, expected a string",
        ),
        (
            '{"node_type":"THEN","left_node":{"query":"a"},"right_node":{"node_type":"SQL","query":"b"}}',
            "missing field `node_type`",
        ),
        ('{"node_type":"JOIN","extra_nodes":{}}', "invalid type: map, expected a sequence"),
        (
            '{"node_type":"JOIN","extra_nodes":[1.5]}',
            "invalid type: floating point `1.5`, expected struct Durofut",
        ),
        (
            '{"node_type":"IF","condition_node":[],"left_node":{"node_type":"SQL","query":"a"}}',
            "invalid type: sequence, expected struct Durofut",
        ),
    ],
)
def test_malformed_envelopes_are_errors(conn: Conn, envelope: str, detail: str) -> None:
    assert error_of(conn, "SELECT df.seq(%s, 'z')", (envelope,)) == (
        f"Invalid Durofut JSON: failed to deserialize workflow step: {detail}"
    )
    assert error_of(conn, "SELECT df.as(%s, 'n')", (envelope,)).startswith(
        "Invalid Durofut JSON: failed to deserialize workflow step: "
    )


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "",
        "  ",
        '{"query":"SELECT 1"}',  # JSON without node_type
        '{"node_type":"NOPE","query":"x"}',  # unknown node_type
        '{"node_type":5}',  # node_type that is not a string
        '{"node_type":"sql","query":"x"}',  # node types are case-sensitive
        '[{"node_type":"SQL","query":"x"}]',
        "{not json",
        '"SELECT 1"',
        "42",
    ],
)
def test_everything_else_becomes_a_sql_step(conn: Conn, text: str) -> None:
    assert one(conn, "SELECT df.seq(%s, 'z')", (text,)) == (
        f'{{"node_type":"THEN","left_node":{sql_node(text)},"right_node":{sql_node("z")}}}'
    )


def test_nested_unknown_node_type_is_left_for_df_start(conn: Conn) -> None:
    envelope = (
        '{"node_type":"THEN","left_node":{"node_type":"NOPE"},'
        '"right_node":{"node_type":"SQL","query":"b"}}'
    )
    built = one(conn, "SELECT df.seq(%s, 'z')", (envelope,))
    assert built.startswith('{"node_type":"THEN","left_node":' + envelope)
    assert start_error(conn, built) == (
        f"Invalid durable function graph: root.left.left: Unknown node_type 'NOPE'. {VALID_TYPES}"
    )


def test_a_helper_result_cannot_become_a_step(conn: Conn) -> None:
    iid = one(conn, "SELECT df.start('SELECT 1')")
    conn.execute("UPDATE df.instances SET status = 'completed' WHERE id = %s", (iid,))
    assert error_of(conn, "SELECT df.seq(df.await_instance(%s), 'SELECT 1')", (iid,)) == (
        "df.await_instance() cannot be used as a workflow step. "
        "Call df.await_instance() before df.start()."
    )
    # In a later statement the same text is plain SQL again.
    assert one(conn, "SELECT df.seq('completed', 'SELECT 1')").startswith('{"node_type":"THEN"')


# -- operators ----------------------------------------------------------------------------------
def test_operators_live_in_pg_catalog(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT o.oprname, o.oprnamespace::regnamespace::text, o.oprleft::regtype::text, "
        "o.oprright::regtype::text, o.oprcode::regproc::text FROM pg_operator o "
        "WHERE o.oprname IN ('~>', '|=>', '&', '|', '?>', '!>', '@>') "
        "AND o.oprright = 'text'::regtype AND o.oprresult = 'text'::regtype ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("!>", "pg_catalog", "text", "text", "df.if_else_op"),
        ("&", "pg_catalog", "text", "text", 'df."join"'),
        ("?>", "pg_catalog", "text", "text", "df.if_then_op"),
        ("@>", "pg_catalog", "-", "text", "df.loop_prefix_op"),
        ("|", "pg_catalog", "text", "text", "df.race"),
        ("|=>", "pg_catalog", "text", "text", "df.as_op"),
        ("~>", "pg_catalog", "text", "text", "df.seq"),
    ]


@pytest.mark.parametrize("search_path", [None, "''", "public", "pg_catalog"])
def test_operators_work_with_any_search_path(conn: Conn, search_path: str | None) -> None:
    if search_path is not None:
        conn.execute(f"SET search_path = {search_path}")
    shown = {None: '"$user", public', "''": '""'}.get(search_path, search_path)
    assert one(conn, "SHOW search_path") == shown
    built = one(
        conn,
        "SELECT (('a' ~> 'b') |=> 'x') & ('c' | 'd') & ('e' ?> 'f' !> 'g') & (@> 'h')",
    )
    assert built == one(
        conn,
        "SELECT df.join(df.join(df.join(df.as(df.seq('a', 'b'), 'x'), df.race('c', 'd')), "
        "df.if('e', 'f', 'g')), df.loop('h'))",
    )


def test_precedence_is_one_level_left_associative(conn: Conn) -> None:
    a, b = sql_node("a"), sql_node("b")
    # `|=>` names the whole THEN, not 'b'.
    assert one(conn, "SELECT 'a' ~> 'b' |=> 'x'") == (
        f'{{"node_type":"THEN","left_node":{a},"right_node":{b},"result_name":"x"}}'
    )
    # `@> a ~> b` is `(@> a) ~> b`.
    assert one(conn, "SELECT @> 'a' ~> 'b'") == (
        f'{{"node_type":"THEN","left_node":{{"node_type":"LOOP","left_node":{a}}},'
        f'"right_node":{b}}}'
    )
    assert one(conn, "SELECT @> ('a' ~> 'b')") == (
        f'{{"node_type":"LOOP","left_node":{{"node_type":"THEN","left_node":{a},'
        f'"right_node":{b}}}}}'
    )
    # `&`, `|` and `~>` also share the level: strictly left to right.
    assert one(conn, "SELECT 'a' & 'b' ~> 'c'") == one(
        conn, "SELECT df.seq(df.join('a', 'b'), 'c')"
    )
    assert one(conn, "SELECT 'a' ~> 'b' & 'c'") == one(
        conn, "SELECT df.join(df.seq('a', 'b'), 'c')"
    )
    assert one(conn, "SELECT 'a' | 'b' ~> 'c' |=> 'r'") == one(
        conn, "SELECT df.as(df.seq(df.race('a', 'b'), 'c'), 'r')"
    )


def test_partial_if_is_swallowed_by_a_following_operator(conn: Conn) -> None:
    assert error_of(conn, "SELECT 'c' ?> 'a' ~> 'b' !> 'e'") == (
        "Invalid if-then-else: left side of !> must be a ?> expression"
    )
    assert one(conn, "SELECT 'c' ?> ('a' ~> 'b') !> 'e'") == one(
        conn, "SELECT df.if('c', df.seq('a', 'b'), 'e')"
    )


# -- df.start: validation -----------------------------------------------------------------------
def test_plain_sql_is_one_sql_node(conn: Conn) -> None:
    iid = one(conn, "SELECT df.start('SELECT 42', 'my label')")
    assert len(iid) == 8 and all(ch in "0123456789abcdef" for ch in iid)
    rows = nodes_of(conn, iid)
    assert len(rows) == 1
    node = rows[0]
    assert node["node_type"] == "SQL" and node["query"] == "SELECT 42"
    assert node["id"] == root_of(conn, iid)
    assert node["status"] == "pending" and node["result_name"] is None
    inst = conn.execute(
        "SELECT label, status, database, completed_at FROM df.instances WHERE id = %s", (iid,)
    ).fetchone()
    assert inst == ("my label", "pending", None, None)


def test_a_raw_envelope_can_be_started(conn: Conn) -> None:
    iid = one(
        conn,
        "SELECT df.start(%s)",
        (
            '{ "node_type": "THEN", "left_node": {"node_type": "SQL", "query": "a"},'
            ' "right_node": {"query": "b", "node_type": "SQL", "result_name": "r"} }',
        ),
    )
    rows = nodes_of(conn, iid)
    assert [(r["node_type"], r["query"], r["result_name"]) for r in rows] == [
        ("THEN", None, None),
        ("SQL", "a", None),
        ("SQL", "b", "r"),
    ]


def sql(query: str) -> dict[str, Any]:
    return {"node_type": "SQL", "query": query}


def env(**fields: Any) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("fut", "message"),
    [
        (
            env(node_type="NOPE"),
            f"Invalid durable function: Unknown node_type 'NOPE'. {VALID_TYPES}",
        ),
        (
            env(node_type="THEN", left_node=sql("a"), right_node={"node_type": "NOPE"}),
            f"Invalid durable function graph: root.right: Unknown node_type 'NOPE'. {VALID_TYPES}",
        ),
        (
            env(
                node_type="THEN",
                left_node={
                    "node_type": "IF",
                    "left_node": sql("a"),
                    "right_node": sql("b"),
                    "condition_node": {"node_type": "BOGUS"},
                },
                right_node=sql("c"),
            ),
            "Invalid durable function graph: root.left.condition_node: Unknown node_type "
            f"'BOGUS'. {VALID_TYPES}",
        ),
        (
            env(
                node_type="JOIN",
                left_node=sql("a"),
                right_node=sql("b"),
                extra_nodes=[{"node_type": "X"}],
            ),
            f"Invalid durable function graph: root.extra_nodes[0]: Unknown node_type 'X'. "
            f"{VALID_TYPES}",
        ),
        (
            env(node_type="SQL", query=5),
            "Invalid durable function: Malformed Durofut JSON with node_type 'SQL': "
            "invalid type: integer `5`, expected a string",
        ),
        (
            env(node_type="JOIN", left_node=sql("a"), right_node=sql("b"), extra_nodes="x"),
            "Invalid durable function: Malformed Durofut JSON with node_type 'JOIN': "
            'invalid type: string "x", expected a sequence',
        ),
        (
            env(node_type="THEN", left_node="SELECT 1", right_node=sql("b")),
            "Invalid durable function graph: root: Durofut children must be JSON objects",
        ),
        (
            env(
                node_type="THEN",
                left_node={
                    "node_type": "IF",
                    "left_node": sql("a"),
                    "right_node": sql("b"),
                    "condition_node": "SELECT true",
                },
                right_node=sql("c"),
            ),
            "Invalid durable function graph: root.left: condition_node must be a Durofut JSON "
            "object",
        ),
        (
            env(node_type="JOIN", left_node=sql("a"), right_node=sql("b"), extra_nodes=["c"]),
            "Invalid durable function graph: root: extra_nodes entries must be Durofut JSON "
            "objects",
        ),
        (
            env(node_type="THEN", left_node=sql("a"), right_node=sql("b"), condition_node=sql("c")),
            "Invalid durable function graph: root: condition_node is not valid for THEN nodes",
        ),
        (
            env(node_type="RACE", left_node=sql("a"), right_node=sql("b"), extra_nodes=[sql("c")]),
            "Invalid durable function graph: root: extra_nodes is not valid for RACE nodes",
        ),
        (
            env(
                node_type="IF",
                left_node=sql("a"),
                right_node=sql("b"),
                query='{"condition_node":{"node_type":"SQL","query":"c"}}',
            ),
            "Invalid durable function graph: root: condition_node in IF must be a first-class "
            "Durofut field, not embedded in query",
        ),
        (
            env(
                node_type="THEN",
                left_node=sql("x"),
                right_node={"node_type": "SIGNAL", "query": "not json"},
            ),
            "Invalid durable function graph: root.right: query in SIGNAL must be a JSON config "
            "object",
        ),
        (
            env(node_type="SQL", query="a", result_name="bad name"),
            "Invalid durable function graph: root: result_name 'bad name' is not a valid "
            "identifier — must match [a-zA-Z_][a-zA-Z0-9_]*",
        ),
    ],
)
def test_graph_validation_errors(conn: Conn, fut: str, message: str) -> None:
    assert start_error(conn, fut) == message


def test_if_query_must_be_json_config(conn: Conn) -> None:
    fut = env(node_type="IF", left_node=sql("a"), right_node=sql("b"), query="{oops")
    assert start_error(conn, fut).startswith(
        "Invalid durable function graph: root: query in IF must be valid JSON config: "
    )


def test_depth_256_is_accepted_and_257_rejected(conn: Conn) -> None:
    iid = one(conn, "SELECT df.start(%s)", (nested(256),))
    assert len(nodes_of(conn, iid)) == 257
    assert start_error(conn, nested(257)) == (
        "Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into "
        "multiple instances."
    )


def test_node_count_limit(conn: Conn) -> None:
    started = time.monotonic()
    iid = one(conn, "SELECT df.start(%s)", (tree(10_000),))
    elapsed = time.monotonic() - started
    assert one(conn, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (iid,)) == 10_000
    assert elapsed < 5, f"df.start of 10,000 nodes took {elapsed:.2f}s"
    assert start_error(conn, tree(10_001)).startswith(
        "Workflow exceeds maximum node count of 10000. "
    )


def test_transaction_mode(conn: Conn) -> None:
    assert error_of(conn, "SELECT df.start('SELECT 1', transaction_mode => 'bogus')") == (
        "invalid transaction_mode \"bogus\" for df.start(): expected 'caller' or 'new'"
    )
    assert error_of(conn, "SELECT df.start('SELECT 1', NULL, NULL, '')") == (
        "invalid transaction_mode \"\" for df.start(): expected 'caller' or 'new'"
    )
    # Case-insensitive; the 3-argument call resolves to the 4-argument function.
    assert one(conn, "SELECT df.start('SELECT 1', NULL, NULL, 'CALLER')") is not None
    assert one(conn, "SELECT df.start('SELECT 1', 'l', NULL)") is not None
    assert one(conn, "SELECT has_function_privilege('df.start(text, text, text, text)', 'EXECUTE')")
    conn.execute("SET df.in_workflow = 'true'")
    assert error_of(conn, "SELECT df.start('SELECT 1', transaction_mode => 'new')").startswith(
        "df.start() with transaction_mode => 'new' cannot be called inside a workflow - "
    )


def test_database_is_checked_and_copied_to_every_node(conn: Conn, db_name: str) -> None:
    assert error_of(conn, "SELECT df.start('SELECT 1', NULL, 'no_such_db_here')") == (
        'database "no_such_db_here" does not exist'
    )
    assert row_counts(conn)["df.instances"] == 0
    iid = one(conn, "SELECT df.start('a' ~> ('b' & 'c'), NULL, %s)", (db_name,))
    assert one(conn, "SELECT database FROM df.instances WHERE id = %s", (iid,)) == db_name
    rows = nodes_of(conn, iid)
    assert len(rows) == 5
    assert {r["database"] for r in rows} == {db_name}


def test_nologin_role_is_refused(conn: Conn, make_role: Callable[..., str]) -> None:
    group = make_role("group", login=False)
    conn.execute(f"SET ROLE {group}")
    assert error_of(conn, "SELECT df.start('SELECT 1')") == (
        f'current_user "{group}" does not have LOGIN privilege. The background worker must '
        "connect as this role to execute SQL. Grant LOGIN to this role or call df.start() as a "
        "role with LOGIN."
    )
    conn.execute("RESET ROLE")
    assert row_counts(conn) == {t: 0 for t in DF_TABLES}


def test_superuser_needs_enable_superuser_instances(conn: Conn) -> None:
    user = one(conn, "SELECT current_user")
    conn.execute("SET pg_durable.enable_superuser_instances = off")
    assert start_error(conn, "SELECT 1") == (
        f'pg_durable: superuser instances are disabled. current_user "{user}" is a superuser, '
        "but pg_durable.enable_superuser_instances is off. Set "
        "pg_durable.enable_superuser_instances = on to allow this."
    )
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    assert one(conn, "SELECT df.start('SELECT 1')") is not None


def test_submitted_by_is_the_effective_role(conn: Conn, make_role: Callable[..., str]) -> None:
    me = one(conn, "SELECT current_user")
    iid = one(conn, "SELECT df.start('SELECT 1' ~> 'SELECT 2')")
    assert one(conn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == me
    assert {r["submitted_by"] for r in nodes_of(conn, iid)} == {me}

    bob = make_role("bob")
    conn.execute(f"SET ROLE {bob}")
    bob_iid = one(conn, "SELECT df.start('SELECT 1' ~> 'SELECT 2', 'as bob')")
    # Through RLS bob sees his own instance only.
    assert one(conn, "SELECT count(*) FROM df.instances") == 1
    conn.execute("RESET ROLE")
    row = conn.execute(
        "SELECT submitted_by::text, label FROM df.instances WHERE id = %s", (bob_iid,)
    ).fetchone()
    assert row == (bob, "as bob")
    assert {r["submitted_by"] for r in nodes_of(conn, bob_iid)} == {bob}


def test_errors_persist_nothing_in_a_transaction(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SELECT df.start('SELECT 1')")
        with pytest.raises(psycopg.Error), conn.transaction():
            conn.execute('SELECT df.start(\'{"node_type":"NOPE"}\')')
    assert row_counts(conn) == {t: 1 for t in DF_TABLES}


def test_rolled_back_start_leaves_nothing(conn: Conn) -> None:
    conn.execute("BEGIN")
    first = one(conn, "SELECT df.start('SELECT 1' ~> 'SELECT 2')")
    second = one(conn, "SELECT df.start(df.join3('a', 'b', 'c'))")
    assert first != second
    assert row_counts(conn) == {
        "df.instances": 2,
        "df.nodes": 7,
        "df._fibers": 2,
        "df._instance_state": 2,
    }
    conn.execute("ROLLBACK")
    assert row_counts(conn) == {t: 0 for t in DF_TABLES}


# -- df.start: the persisted graph --------------------------------------------------------------
def preorder(rows: list[dict[str, Any]], root: str) -> list[str]:
    """Node ids in pre-order: node, left, right, condition, extras (SPEC §2.1)."""
    by_id = {r["id"]: r for r in rows}
    order: list[str] = []
    stack = [root]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        node = by_id[node_id]
        config = {}
        if node["node_type"] in ("IF", "LOOP", "JOIN") and node["query"]:
            config = json.loads(node["query"])
        children = [node["left_node"], node["right_node"], config.get("condition_node")]
        children += config.get("extra_nodes", [])
        stack.extend(reversed([c for c in children if c]))
    return order


def test_flattening_is_pre_order_with_unique_hex_ids(conn: Conn) -> None:
    iid = one(
        conn,
        "SELECT df.start(df.join3('a' ~> 'b', df.if('c', 'd', 'e' ~> 'f'), "
        "df.loop(('g' & 'h') |=> 'gh', 'i') |=> 'lp'))",
    )
    rows = nodes_of(conn, iid)
    ids = [r["id"] for r in rows]
    assert len(ids) == 15 == len(set(ids))
    assert all(len(i) == 8 and set(i) <= set("0123456789abcdef") for i in ids)
    assert preorder(rows, root_of(conn, iid)) == ids
    assert [r["query"] if r["node_type"] == "SQL" else r["node_type"] for r in rows] == [
        "JOIN", "THEN", "a", "b", "IF", "d", "THEN", "e", "f", "c", "LOOP", "JOIN", "g", "h", "i",
    ]  # fmt: skip
    names = {r["node_type"]: r["result_name"] for r in rows if r["result_name"]}
    assert names == {"JOIN": "gh", "LOOP": "lp"}


def test_persisted_query_formats(conn: Conn) -> None:
    iid = one(
        conn,
        """SELECT df.start(
               df.join3('SELECT $x.a, {v}', df.sleep(30), df.break())
             ~> df.if('SELECT true', df.break('done'), df.break('{"k": 1}'))
             ~> df.if_rows('x', 'SELECT 1', 'SELECT 2')
             ~> df.loop('SELECT 3', 'SELECT false')
             ~> (@> 'SELECT 4')
             ~> ('SELECT 5' | 'SELECT 6') |=> 'all')""",
    )
    rows = nodes_of(conn, iid)
    by_id = {r["id"]: r for r in rows}

    def only(node_type: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["node_type"] == node_type]

    join = only("JOIN")[0]
    extra = json.loads(join["query"])["extra_nodes"]
    assert join["query"] == f'{{"extra_nodes":["{extra[0]}"]}}'
    assert by_id[extra[0]]["node_type"] == "BREAK"
    assert by_id[join["left_node"]]["query"] == "SELECT $x.a, {v}"  # stored unsubstituted
    assert by_id[join["right_node"]]["query"] == "30"

    if_cond, if_rows = only("IF")
    cond_id = json.loads(if_cond["query"])["condition_node"]
    assert if_cond["query"] == f'{{"condition_node":"{cond_id}"}}'
    assert by_id[cond_id]["query"] == "SELECT true"
    assert if_rows["query"] == '{"condition_type":"result_has_rows","result_name":"x"}'

    assert sorted(r["query"] for r in only("BREAK")) == [
        '{"break_value":"done"}',
        '{"break_value":"{\\"k\\": 1}"}',
        '{"break_value":null}',
    ]
    while_loop, forever = only("LOOP")
    loop_cond = json.loads(while_loop["query"])["condition_node"]
    assert by_id[loop_cond]["query"] == "SELECT false"
    assert by_id[while_loop["left_node"]]["query"] == "SELECT 3"
    assert forever["query"] is None and forever["right_node"] is None
    assert only("SLEEP")[0]["query"] == "30"
    assert all(r["query"] is None for r in only("THEN") + only("RACE"))
    root = by_id[root_of(conn, iid)]
    assert root["node_type"] == "THEN" and root["result_name"] == "all"
    assert {r["status"] for r in rows} == {"pending"}
