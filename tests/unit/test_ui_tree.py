"""pg_durable.ui.tree: an instance's nodes laid out as the dashboard draws them — sections as
df.explain has them, THEN chains flattened, and hand-built rows (cycles, huge chains, deep
nesting, orphans) drawn without failing."""

from __future__ import annotations

import json

from pg_durable.client.records import Node
from pg_durable.ui import tree


def node(
    nid: str,
    kind: str = "SQL",
    *,
    query: str | None = "SELECT 1",
    left: str | None = None,
    right: str | None = None,
    status: str = "completed",
    inferred: str | None = None,
    result: str | None = None,
    details: str | None = None,
    name: str | None = None,
) -> Node:
    return Node(
        id=nid,
        node_type=kind,
        query=query,
        result_name=name,
        left=left,
        right=right,
        status=status,
        inferred_status=inferred or status,
        result=result,
        status_details=details,
        updated_at=None,
        execution_id=1,
    )


def then(nid: str, left: str, right: str, name: str | None = None) -> Node:
    return node(nid, "THEN", query=None, left=left, right=right, name=name)


def ids(steps: tuple[tree.Drawn, ...]) -> list[str]:
    return [d.node.id for d in steps]


def test_a_then_chain_is_one_sequence_whichever_way_it_nests() -> None:
    # ('a' ~> 'b') ~> ('c' ~> 'd')
    nodes = [then("t0", "t1", "t2"), then("t1", "a", "b"), then("t2", "c", "d")]
    nodes += [node(x) for x in "abcd"]
    drawn = tree.build(nodes)
    assert ids(drawn.steps) == ["a", "b", "c", "d"]
    assert drawn.unreached == () and drawn.left_out == 0


def test_a_then_with_a_result_name_is_a_box_of_its_own() -> None:
    nodes = [then("t0", "t1", "c"), then("t1", "a", "b", name="first"), *map(node, "abc")]
    drawn = tree.build(nodes)
    assert ids(drawn.steps) == ["t1", "c"]
    (section,) = drawn.steps[0].sections
    assert section.title == "steps" and ids(section.steps) == ["a", "b"]


def test_sections_are_those_of_df_explain() -> None:
    if_node = node("i", "IF", query=json.dumps({"condition_node": "c"}), left="y", right="n")
    join = node("j", "JOIN", query=json.dumps({"extra_nodes": ["x3"]}), left="x1", right="x2")
    loop = node("l", "LOOP", query=json.dumps({"condition_node": "w"}), left="body")
    retry = node("r", "RETRY", query='{"max_attempts": 3}', left="once")
    timeout = node("o", "TIMEOUT", query='{"seconds": 5}', left="quick")
    root = [then("t0", "i", "t1"), then("t1", "j", "t2"), then("t2", "l", "t3")]
    root += [then("t3", "r", "o")]
    leaves = [node(x) for x in ("c", "y", "n", "x1", "x2", "x3", "w", "body", "once", "quick")]
    drawn = tree.build([*root, if_node, join, loop, retry, timeout, *leaves])
    assert ids(drawn.steps) == ["i", "j", "l", "r", "o"]
    titles = [[s.title for s in d.sections] for d in drawn.steps]
    assert titles == [
        ["condition", "then", "else"],
        ["branch 1", "branch 2", "branch 3"],
        ["body", "while"],
        ["attempt"],
        ["within"],
    ]
    assert ids(drawn.steps[1].sections[2].steps) == ["x3"]
    assert drawn.unreached == ()


def test_an_if_on_the_rows_of_a_result_says_so() -> None:
    cfg = json.dumps({"condition_type": "result_has_rows", "result_name": "found"})
    drawn = tree.build([node("i", "IF", query=cfg, left="y", right="n"), node("y"), node("n")])
    condition = drawn.steps[0].sections[0]
    assert (condition.title, condition.note, condition.steps) == (
        "condition",
        "rows in 'found'",
        (),
    )


def test_chains_of_thousands_of_steps_nest_without_recursion() -> None:
    count = 5000
    right_deep = [then(f"t{i}", f"s{i}", f"t{i + 1}") for i in range(count - 1)]
    right_deep[-1] = then(f"t{count - 2}", f"s{count - 2}", f"s{count - 1}")
    leaves = [node(f"s{i}") for i in range(count)]
    drawn = tree.build([*right_deep, *leaves])
    # Drawn up to the limit, the rest counted.
    assert len(drawn.steps) == tree.MAX_NODES
    assert drawn.left_out == count - tree.MAX_NODES
    left_deep = [then(f"t{i}", f"t{i + 1}", f"s{i}") for i in range(99)]
    left_deep.append(then("t99", "s100", "s99"))
    small = tree.build([*left_deep, *(node(f"s{i}") for i in range(101))])
    assert ids(small.steps) == ["s100", *(f"s{i}" for i in reversed(range(100)))]


def test_cycles_and_orphans_of_hand_built_rows() -> None:
    # t0 ~> t0 (a THEN that is its own child), a RACE whose branch is its ancestor.
    nodes = [
        then("t0", "r", "t0"),
        node("r", "RACE", query=None, left="t0", right="a"),
        node("a"),
        node("orphan"),
    ]
    drawn = tree.build(nodes)
    assert ids(drawn.steps) == ["r"]
    assert [ids(s.steps) for s in drawn.steps[0].sections] == [[], ["a"]]
    assert [n.id for n in drawn.unreached] == ["orphan"]


def test_nesting_past_the_depth_limit_is_counted() -> None:
    depth = tree.MAX_DEPTH + 10
    nodes = [node(f"r{i}", "RETRY", query="{}", left=f"r{i + 1}") for i in range(depth)]
    nodes.append(node(f"r{depth}"))
    drawn = tree.build(nodes)
    assert drawn.left_out == depth + 1 - tree.MAX_DEPTH
    assert drawn.unreached == ()


def test_descriptions_errors_and_awaited_signals() -> None:
    signal = node(
        "s",
        "SIGNAL",
        query='{"signal_name": "approve", "timeout_seconds": 60}',
        status="running",
    )
    assert tree.describe(signal) == "wait for signal 'approve' (times out after 60s)"
    assert tree.describe(node("z", "SLEEP", query=" 30 ")) == "sleep 30s"
    assert tree.describe(node("h", "HTTP", query='{"method": "GET", "url": "https://x"}')) == (
        "HTTP GET https://x"
    )
    assert tree.describe(node("b", "BREAK", query='{"break_value": null}')) == "BREAK"
    assert tree.describe(node("l", "LOOP", query=None, left="x")) == "LOOP (infinite)"
    assert tree.describe(node("q", "IF", query="not json", left="a", right="b")) == "IF"
    assert tree.signal_names([signal, signal, node("x")]) == ["approve"]

    failed = node("f", status="failed", result=json.dumps("SQL execution failed: boom"))
    assert tree.error(failed) == "SQL execution failed: boom"
    assert tree.error(node("g", result='{"rows": []}')) is None
    retry = node("r", "RETRY", details='{"attempt": 2, "max_attempts": 5}')
    assert tree.details(retry) == {"attempt": 2, "max_attempts": 5}
    assert tree.details(node("x", details="[1]")) == {}
