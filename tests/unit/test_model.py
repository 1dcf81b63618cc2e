"""Checking graphs loaded from df.nodes: every shape df.start builds, and hand-built rows."""

from __future__ import annotations

import pytest

from pg_durable.errors import GraphError, PgDurableError
from pg_durable.graph.model import MAX_DEPTH, MAX_NODES, Graph, NodeRow

ROOT = "00000001"


def row(
    node_id: str,
    kind: str,
    query: str | None = None,
    *,
    left: str | None = None,
    right: str | None = None,
    name: str | None = None,
) -> NodeRow:
    return NodeRow(node_id, kind, query, name, left, right)


def sql(node_id: str, text: str = "SELECT 1", name: str | None = None) -> NodeRow:
    return row(node_id, "SQL", text, name=name)


def make(rows: list[NodeRow], root: str = ROOT) -> Graph:
    return Graph.from_rows("aaaaaaaa", root, rows)


def rejects(rows: list[NodeRow], match: str, root: str = ROOT) -> None:
    with pytest.raises(GraphError, match=match):
        make(rows, root)


def chain(length: int) -> list[NodeRow]:
    """``length`` nested LOOPs ending in a SQL leaf: the leaf is at depth ``length``."""
    ids = [f"{i + 1:08x}" for i in range(length + 1)]
    loops = [row(ids[i], "LOOP", left=ids[i + 1]) for i in range(length)]
    return [*loops, sql(ids[-1])]


# -- valid shapes -----------------------------------------------------------------------------
def test_single_sql_node() -> None:
    g = make([sql(ROOT, "SELECT 1", name="x")])
    node = g.node(ROOT)
    assert (node.type, node.query, node.result_name, node.children) == ("SQL", "SELECT 1", "x", ())
    assert g.parent == {} and g.conditions == frozenset()


def test_sequence() -> None:
    g = make([row(ROOT, "THEN", left="2", right="3"), sql("2"), sql("3")])
    assert g.node(ROOT).children == ("2", "3")
    assert g.parent == {"2": ROOT, "3": ROOT}


def test_if_with_a_condition_node() -> None:
    g = make(
        [
            row(ROOT, "IF", '{"condition_node":"c"}', left="t", right="e", name="r"),
            sql("c", "true"),
            sql("t"),
            sql("e"),
        ]
    )
    node = g.node(ROOT)
    assert (node.condition, node.left, node.right, node.rows_of) == ("c", "t", "e", None)
    assert node.children == ("c", "t", "e")
    assert g.conditions == {"c"}
    assert g.parent["c"] == ROOT


def test_if_rows() -> None:
    g = make(
        [
            row(
                ROOT,
                "IF",
                '{"condition_type":"result_has_rows","result_name":"x"}',
                left="t",
                right="e",
            ),
            sql("t"),
            sql("e"),
        ]
    )
    node = g.node(ROOT)
    assert (node.rows_of, node.condition, node.children) == ("x", None, ("t", "e"))
    assert g.conditions == frozenset()


def test_if_rows_name_is_not_validated_at_build_time() -> None:
    query = '{"condition_type":"result_has_rows","result_name":"not an identifier"}'
    g = make([row(ROOT, "IF", query, left="t", right="e"), sql("t"), sql("e")])
    assert g.node(ROOT).rows_of == "not an identifier"


def test_join_race_and_join3() -> None:
    g = make([row(ROOT, "JOIN", left="a", right="b"), sql("a"), sql("b")])
    assert g.node(ROOT).branches == ("a", "b")
    g = make([row(ROOT, "RACE", left="a", right="b"), sql("a"), sql("b")])
    assert g.node(ROOT).branches == ("a", "b") == g.node(ROOT).children
    g = make(
        [
            row(ROOT, "JOIN", '{"extra_nodes":["c"]}', left="a", right="b"),
            sql("a"),
            sql("b"),
            sql("c"),
        ]
    )
    assert g.node(ROOT).branches == ("a", "b", "c") == g.node(ROOT).children
    assert g.parent["c"] == ROOT


def test_loops() -> None:
    g = make([row(ROOT, "LOOP", left="b"), sql("b")])
    assert (g.node(ROOT).condition, g.node(ROOT).children) == (None, ("b",))
    g = make([row(ROOT, "LOOP", '{"condition_node":"c"}', left="b"), sql("b"), sql("c")])
    assert (g.node(ROOT).condition, g.node(ROOT).children) == ("c", ("b", "c"))
    assert g.conditions == {"c"}


@pytest.mark.parametrize(
    ("query", "value"),
    [
        ('{"break_value":"done"}', "done"),
        ('{"break_value":"$r.summary"}', "$r.summary"),
        ('{"break_value":null}', None),
        ("{}", None),
    ],
)
def test_break(query: str, value: str | None) -> None:
    g = make([row(ROOT, "LOOP", left="b"), row("b", "BREAK", query)])
    assert g.node("b").break_value == value


@pytest.mark.parametrize(("query", "seconds"), [("30", 30), ("0", 0), (" 5 ", 5), ("007", 7)])
def test_sleep(query: str, seconds: int) -> None:
    assert make([row(ROOT, "SLEEP", query)]).node(ROOT).seconds == seconds


def test_sleep_accepts_any_bigint() -> None:
    assert make([row(ROOT, "SLEEP", str(2**63 - 1))]).node(ROOT).seconds == 2**63 - 1


@pytest.mark.parametrize(
    ("kind", "query"),
    [
        ("WAIT_SCHEDULE", '{"cron_expr":"*/5 * * * *"}'),
        ("SIGNAL", '{"signal_name":"approve","timeout_seconds":null}'),
        ("SIGNAL", '{"signal_name":"approve","timeout_seconds":60}'),
        ("SIGNAL", '{"signal_name":"approve"}'),
        (
            "HTTP",
            '{"url":"https://x.blob.core.windows.net/{k}","method":"GET","body":null,'
            '"headers":null,"timeout_seconds":30}',
        ),
        (
            "HTTP_MULTIPART",
            '{"url":"https://x.azurewebsites.net","method":"POST",'
            '"parts":[{"name":"f","data_b64":"$r"}],"headers":null,"timeout_seconds":30}',
        ),
    ],
)
def test_other_leaves(kind: str, query: str) -> None:
    node = make([row(ROOT, kind, query, name="r")]).node(ROOT)
    assert (node.type, node.query, node.children) == (kind, query, ())


def test_a_nested_graph() -> None:
    rows = [
        row(ROOT, "THEN", left="2", right="3"),
        sql("2", name="seed"),
        row("3", "LOOP", '{"condition_node":"9"}', left="4", name="loop"),
        row("4", "IF", '{"condition_node":"5"}', left="6", right="7"),
        sql("5", "$seed.go"),
        row("6", "JOIN", '{"extra_nodes":["a"]}', left="8", right="b"),
        row("7", "BREAK", '{"break_value":"stop"}'),
        row("8", "SLEEP", "1"),
        sql("9", "SELECT false"),
        row("a", "RACE", left="c", right="d"),
        sql("b"),
        row("c", "SIGNAL", '{"signal_name":"s","timeout_seconds":5}'),
        row("d", "WAIT_SCHEDULE", '{"cron_expr":"* * * * *"}'),
    ]
    g = make(rows)
    assert g.conditions == {"5", "9"}
    assert g.parent == {
        "2": ROOT,
        "3": ROOT,
        "4": "3",
        "9": "3",
        "5": "4",
        "6": "4",
        "7": "4",
        "8": "6",
        "b": "6",
        "a": "6",
        "c": "a",
        "d": "a",
    }


def test_rows_unreachable_from_the_root_are_tolerated() -> None:
    g = make([sql(ROOT), sql("stray"), row("s2", "THEN", left="stray", right="s3")])
    assert g.parent == {}


def test_maximum_depth_is_accepted() -> None:
    g = make(chain(MAX_DEPTH))
    leaf = f"{MAX_DEPTH + 1:08x}"
    depth, node = 0, leaf
    while node in g.parent:
        node, depth = g.parent[node], depth + 1
    assert (node, depth) == (ROOT, MAX_DEPTH)


def test_maximum_node_count_is_accepted() -> None:
    rows = [row(ROOT, "THEN", left="a", right="b"), sql("a"), sql("b")]
    rows += [sql(f"x{i:07d}") for i in range(MAX_NODES - 3)]
    assert len(make(rows).nodes) == MAX_NODES


# -- malformed graphs -------------------------------------------------------------------------
def test_errors_are_pg_durable_errors() -> None:
    assert issubclass(GraphError, PgDurableError)


def test_duplicate_node_ids() -> None:
    rejects([sql(ROOT), sql(ROOT, "SELECT 2")], "node 00000001 appears twice")


def test_missing_root() -> None:
    rejects([sql("2")], "root node 00000001 does not exist")
    rejects([], "root node 00000001 does not exist")


@pytest.mark.parametrize("kind", ["sql", "NOPE", "", "Then", "WAIT", "durable.func"])
def test_unknown_node_type(kind: str) -> None:
    rejects([row(ROOT, kind, "SELECT 1")], f"node 00000001 has unknown node_type '{kind}'")


LEAVES = {
    "SQL": "SELECT 1",
    "SLEEP": "1",
    "WAIT_SCHEDULE": '{"cron_expr":"* * * * *"}',
    "BREAK": '{"break_value":null}',
    "HTTP": '{"url":"https://a.azurewebsites.net"}',
    "HTTP_MULTIPART": '{"url":"https://a.azurewebsites.net"}',
    "SIGNAL": '{"signal_name":"s"}',
}


@pytest.mark.parametrize("kind", sorted(LEAVES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_leaf_with_a_child(kind: str, side: str) -> None:
    children = {side: "2"}
    rejects(
        [row(ROOT, kind, LEAVES[kind], **children), sql("2")],
        rf"node 00000001 \({kind}\) is a leaf and cannot have children",
    )


@pytest.mark.parametrize("kind", sorted(LEAVES))
def test_leaf_without_query(kind: str) -> None:
    rejects([row(ROOT, kind, None)], rf"node 00000001 \({kind}\) has no query")


@pytest.mark.parametrize("kind", ["THEN", "RACE", "JOIN", "IF"])
@pytest.mark.parametrize(("left", "right"), [("2", None), (None, "2"), (None, None)])
def test_binary_node_without_both_children(kind: str, left: str | None, right: str | None) -> None:
    query = '{"condition_node":"c"}' if kind == "IF" else None
    rejects(
        [row(ROOT, kind, query, left=left, right=right), sql("2"), sql("c")],
        rf"node 00000001 \({kind}\) needs both a left and a right child",
    )


def test_loop_without_body_or_with_right_child() -> None:
    rejects([row(ROOT, "LOOP", right="2"), sql("2")], r"\(LOOP\) needs a body and no right child")
    rejects(
        [row(ROOT, "LOOP", left="2", right="3"), sql("2"), sql("3")],
        r"\(LOOP\) needs a body and no right child",
    )
    rejects([row(ROOT, "LOOP")], r"\(LOOP\) needs a body and no right child")


@pytest.mark.parametrize(
    "rows",
    [
        [row(ROOT, "THEN", left="2", right="zz"), sql("2")],
        [row(ROOT, "THEN", left="zz", right="2"), sql("2")],
        [row(ROOT, "IF", '{"condition_node":"zz"}', left="2", right="3"), sql("2"), sql("3")],
        [row(ROOT, "LOOP", '{"condition_node":"zz"}', left="2"), sql("2")],
        [row(ROOT, "LOOP", left="zz")],
        [row(ROOT, "JOIN", '{"extra_nodes":["zz"]}', left="2", right="3"), sql("2"), sql("3")],
    ],
)
def test_missing_referenced_node(rows: list[NodeRow]) -> None:
    rejects(rows, r"node 00000001 \(\w+\) refers to missing node zz")


@pytest.mark.parametrize(
    "rows",
    [
        # A child pointing back at the root.
        [row(ROOT, "THEN", left="2", right=ROOT), sql("2")],
        [row(ROOT, "LOOP", left=ROOT)],
        # A cycle below the root.
        [row(ROOT, "LOOP", left="2"), row("2", "LOOP", left="3"), row("3", "LOOP", left="2")],
        [row(ROOT, "LOOP", left="2"), row("2", "THEN", left="3", right="2"), sql("3")],
        # A node reachable twice.
        [row(ROOT, "THEN", left="2", right="2"), sql("2")],
        [row(ROOT, "IF", '{"condition_node":"2"}', left="2", right="3"), sql("2"), sql("3")],
        [row(ROOT, "LOOP", '{"condition_node":"2"}', left="2"), sql("2")],
        [row(ROOT, "JOIN", '{"extra_nodes":["2"]}', left="2", right="3"), sql("2"), sql("3")],
        [row(ROOT, "JOIN", '{"extra_nodes":["3","3"]}', left="2", right="4"), *map(sql, "234")],
        [
            row(ROOT, "THEN", left="2", right="3"),
            row("2", "LOOP", left="4"),
            row("3", "LOOP", left="4"),
            sql("4"),
        ],
    ],
)
def test_cycles_and_shared_nodes(rows: list[NodeRow]) -> None:
    rejects(rows, r"is reachable twice \(graphs must be trees\)")


def test_too_deep() -> None:
    rejects(chain(MAX_DEPTH + 1), "^Graph exceeds maximum nesting depth of 256 ")


def test_too_many_nodes() -> None:
    rows = [sql(ROOT)] + [sql(f"x{i:07d}") for i in range(MAX_NODES)]
    rejects(rows, r"^Workflow exceeds maximum node count of 10000 \(it has 10001 nodes\)\. ")


@pytest.mark.parametrize("kind", ["BREAK", "WAIT_SCHEDULE", "SIGNAL", "HTTP", "HTTP_MULTIPART"])
@pytest.mark.parametrize("query", ["", "not json", "{broken", "{'a': 1}", "NaN"])
def test_leaf_config_that_is_not_json(kind: str, query: str) -> None:
    rejects([row(ROOT, kind, query)], rf"node 00000001 \({kind}\): query must be JSON config")


@pytest.mark.parametrize("kind", ["BREAK", "WAIT_SCHEDULE", "SIGNAL", "HTTP", "HTTP_MULTIPART"])
@pytest.mark.parametrize("query", ['"x"', "[1]", "null", "5", "true"])
def test_leaf_config_that_is_not_an_object(kind: str, query: str) -> None:
    rejects(
        [row(ROOT, kind, query)],
        rf"node 00000001 \({kind}\): query must be a JSON config object",
    )


@pytest.mark.parametrize("query", [None, "", "not json", "[]", '"x"', "null"])
def test_if_config_malformed(query: str | None) -> None:
    rejects(
        [row(ROOT, "IF", query, left="2", right="3"), sql("2"), sql("3")],
        r"node 00000001 \(IF\): query must be (a )?JSON config",
    )


@pytest.mark.parametrize(
    ("query", "match"),
    [
        (
            '{"condition_node":"c","condition_type":"result_has_rows","result_name":"x"}',
            "an IF has either a condition_node or a result_has_rows condition, not both",
        ),
        ("{}", "query needs a condition_node or a result_has_rows condition"),
        ('{"condition_node":null}', "query needs a condition_node or a result_has_rows"),
        ('{"result_name":"x"}', "query needs a condition_node or a result_has_rows condition"),
        ('{"condition_type":"other","result_name":"x"}', "unknown condition_type 'other'"),
        ('{"condition_type":"result_has_rows"}', "query needs a non-empty result_name"),
        (
            '{"condition_type":"result_has_rows","result_name":""}',
            "query needs a non-empty result_name",
        ),
        ('{"condition_type":"result_has_rows","result_name":5}', "result_name must be a string"),
        ('{"condition_node":""}', "query needs a non-empty condition_node"),
        ('{"condition_node":7}', "condition_node must be a string"),
    ],
)
def test_if_condition_kinds(query: str, match: str) -> None:
    rejects(
        [row(ROOT, "IF", query, left="2", right="3"), sql("2"), sql("3"), sql("c")],
        rf"node 00000001 \(IF\): {match}",
    )


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("not json", r"query must be JSON config"),
        ("[]", r"query must be a JSON config object"),
        ('{"condition_node":5}', "condition_node must be a string"),
        ('{"condition_node":""}', "query needs a non-empty condition_node"),
    ],
)
def test_loop_config_malformed(query: str, match: str) -> None:
    rejects([row(ROOT, "LOOP", query, left="2"), sql("2")], rf"\(LOOP\): {match}")


@pytest.mark.parametrize(
    "query",
    ["not json", '{"extra_nodes":"c"}', '{"extra_nodes":[5]}', '{"extra_nodes":[null]}', "[]"],
)
def test_join_config_malformed(query: str) -> None:
    rejects(
        [row(ROOT, "JOIN", query, left="2", right="3"), sql("2"), sql("3")],
        r"node 00000001 \(JOIN\): (extra_nodes must be a list of node ids|query must be)",
    )


@pytest.mark.parametrize("query", ["-5", " -1 ", "-0"])
def test_sleep_negative(query: str) -> None:
    rejects([row(ROOT, "SLEEP", query)], r"\(SLEEP\): Sleep duration must be non-negative")


@pytest.mark.parametrize(
    "query", ["1.5", "abc", "", "  ", "1_000", "٣", "+5", "1e3", "0x10", "5s", "1 2", '{"s":1}']
)
def test_sleep_not_a_whole_number(query: str) -> None:
    rejects([row(ROOT, "SLEEP", query)], r"\(SLEEP\): seconds must be a whole number")


def test_sleep_beyond_bigint() -> None:
    rejects([row(ROOT, "SLEEP", str(2**63))], r"\(SLEEP\): seconds must fit in a bigint")


@pytest.mark.parametrize(
    "query", ['{"break_value":5}', '{"break_value":{"a":1}}', '{"break_value":true}']
)
def test_break_value_not_a_string(query: str) -> None:
    rejects([row(ROOT, "BREAK", query)], r"\(BREAK\): break_value must be a string")


@pytest.mark.parametrize(
    ("kind", "query", "match"),
    [
        ("WAIT_SCHEDULE", "{}", "query needs a non-empty cron_expr"),
        ("WAIT_SCHEDULE", '{"cron_expr":5}', "cron_expr must be a string"),
        ("SIGNAL", '{"timeout_seconds":5}', "query needs a non-empty signal_name"),
        ("SIGNAL", '{"signal_name":""}', "query needs a non-empty signal_name"),
        ("SIGNAL", '{"signal_name":"s","timeout_seconds":0}', "timeout_seconds must be a positive"),
        (
            "SIGNAL",
            '{"signal_name":"s","timeout_seconds":-1}',
            "timeout_seconds must be a positive",
        ),
        (
            "SIGNAL",
            '{"signal_name":"s","timeout_seconds":"60"}',
            "timeout_seconds must be a positive",
        ),
        (
            "SIGNAL",
            '{"signal_name":"s","timeout_seconds":1.5}',
            "timeout_seconds must be a positive",
        ),
        (
            "SIGNAL",
            '{"signal_name":"s","timeout_seconds":true}',
            "timeout_seconds must be a positive",
        ),
        ("HTTP", '{"method":"GET"}', "query needs a non-empty url"),
        ("HTTP_MULTIPART", '{"url":["x"]}', "url must be a string"),
    ],
)
def test_leaf_config_fields(kind: str, query: str, match: str) -> None:
    rejects([row(ROOT, kind, query)], rf"node 00000001 \({kind}\): {match}")


@pytest.mark.parametrize("name", ["", "a.b", "1x", "a-b", "a?", "é", "a b"])
def test_invalid_result_name(name: str) -> None:
    rejects(
        [sql(ROOT, name=name)],
        r"node 00000001 \(SQL\): result_name .* is not a valid identifier",
    )


def test_a_malformed_unreachable_row_still_fails_the_graph() -> None:
    rejects([sql(ROOT), row("stray", "NOPE")], "node stray has unknown node_type 'NOPE'")


def test_signal_timeout_beyond_an_int() -> None:
    # (What df.wait_for_signal takes; a deadline past any timestamptz could never be written.)
    rejects(
        [row(ROOT, "SIGNAL", '{"signal_name":"s","timeout_seconds":2147483648}')],
        r"\(SIGNAL\): timeout_seconds must be a positive integer \(at most 2147483647\)",
    )
    make([row(ROOT, "SIGNAL", '{"signal_name":"s","timeout_seconds":2147483647}')])


def test_a_config_nested_deeper_than_python_reads_fails_the_graph() -> None:
    query = '{"break_value":null,"x":' + "[" * 5000 + "]" * 5000 + "}"
    rejects([row(ROOT, "BREAK", query)], r"\(BREAK\): query is JSON nested too deeply")


# -- df.retry and df.timeout ------------------------------------------------------------------
def test_retry_and_timeout_wrap_one_child() -> None:
    g = make(
        [
            row(
                ROOT,
                "RETRY",
                '{"max_attempts":3,"backoff_seconds":0.5,"backoff_factor":2}',
                left="2",
            ),
            row("2", "TIMEOUT", '{"seconds":30}', left="3"),
            sql("3"),
        ]
    )
    retry, timeout = g.node(ROOT), g.node("2")
    assert (retry.children, retry.max_attempts, retry.backoff_seconds, retry.backoff_factor) == (
        ("2",),
        3,
        0.5,
        2.0,
    )
    assert (timeout.children, timeout.timeout) == (("3",), 30)
    assert g.parent == {"2": ROOT, "3": "2"}
    # Backoff and factor have df.retry's defaults.
    plain = make([row(ROOT, "RETRY", '{"max_attempts":2}', left="2"), sql("2")]).node(ROOT)
    assert (plain.backoff_seconds, plain.backoff_factor) == (1.0, 2.0)


@pytest.mark.parametrize(
    ("kind", "query", "match"),
    [
        ("RETRY", "{}", "max_attempts must be a whole number"),
        ("RETRY", '{"max_attempts":true}', "max_attempts must be a whole number"),
        ("RETRY", '{"max_attempts":0}', "max_attempts must be at least 1"),
        ("RETRY", '{"max_attempts":2147483648}', "max_attempts must be at least 1"),
        ("RETRY", '{"max_attempts":2,"backoff_seconds":-1}', "backoff_seconds must be"),
        ("RETRY", '{"max_attempts":2,"backoff_seconds":"1"}', "backoff_seconds must be a finite"),
        ("RETRY", '{"max_attempts":2,"backoff_factor":0.5}', "backoff_factor must be"),
        ("RETRY", '{"max_attempts":2,"backoff_factor":1e999}', "backoff_factor must be a finite"),
        ("TIMEOUT", '{"seconds":0}', "seconds must be positive"),
        ("TIMEOUT", '{"seconds":1.5}', "seconds must be a whole number"),
        ("TIMEOUT", "[]", "query must be a JSON config object"),
        ("TIMEOUT", "soon", "query must be JSON config"),
    ],
)
def test_retry_and_timeout_configs_are_checked(kind: str, query: str, match: str) -> None:
    rejects([row(ROOT, kind, query, left="2"), sql("2")], rf"node 00000001 \({kind}\): {match}")


@pytest.mark.parametrize("kind", ["RETRY", "TIMEOUT"])
def test_retry_and_timeout_need_exactly_a_left_child(kind: str) -> None:
    query = '{"max_attempts":2,"seconds":2}'
    rejects([row(ROOT, kind, query)], "needs a left child and no right child")
    rejects(
        [row(ROOT, kind, query, left="2", right="3"), sql("2"), sql("3")],
        "needs a left child and no right child",
    )
