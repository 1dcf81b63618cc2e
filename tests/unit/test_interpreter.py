"""The interpreter decides what runs next without any I/O: drive it by hand."""

from __future__ import annotations

import json

from pg_durable.graph.interpreter import (
    BREAK_OUTSIDE_LOOP,
    JOIN_TOO_LARGE,
    MAX_SLEEP_DELAY,
    ChildResult,
    Context,
    Failed,
    Fiber,
    Interpreter,
    Ok,
    Plan,
)
from pg_durable.graph.model import Graph, NodeRow

R1 = '{"rows":[{"id":1}],"row_count":1}'
R2 = '{"rows":[{"b":2,"a":1}],"row_count":1}'
EMPTY = '{"rows":[],"row_count":0}'


def sql(node_id: str, text: str = "SELECT 1", name: str | None = None) -> NodeRow:
    return NodeRow(node_id, "SQL", text, name, None, None)


def node(
    node_id: str,
    kind: str,
    left: str | None = None,
    right: str | None = None,
    query: str | None = None,
    name: str | None = None,
) -> NodeRow:
    return NodeRow(node_id, kind, query, name, left, right)


def make(rows: list[NodeRow], root: str) -> Graph:
    return Graph.from_rows("aaaaaaaa", root, rows)


def root_fiber(graph: Graph) -> Fiber:
    return Fiber("aaaaaaaa", "aaaaaaaa", graph.root, graph.root, state={"start": True})


def step(graph: Graph, fiber: Fiber, now: float = 1000.0) -> tuple[Interpreter, Plan]:
    plan = Plan()
    return Interpreter(Context(graph, {}, None, now), fiber, plan), plan


def test_sequence_runs_left_then_right_and_completes_with_right_result() -> None:
    g = make(
        [node("00000001", "THEN", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert plan.mark_running
    assert (f.node_id, f.status) == ("00000002", "ready")
    assert [s.status for s in plan.stamps.values()] == ["running", "running"]
    it, plan = step(g, f)
    it.complete_step(Ok(R1))
    assert f.node_id == "00000003"
    assert plan.stamps["00000002"].status == "completed"
    assert plan.stamps["00000002"].execution_id == "aaaaaaaa::1"
    it, plan = step(g, f)
    it.complete_step(Ok(R2))
    assert f.status == "done"
    assert plan.instance is not None
    assert (plan.instance.status, plan.instance.output) == ("completed", R2)
    assert plan.stamps["00000001"].result == R2


def test_named_results_keep_their_original_text() -> None:
    g = make(
        [
            node("00000001", "THEN", "00000002", "00000003"),
            sql("00000002", name="x"),
            sql("00000003"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    step(g, f)[0].start()
    step(g, f)[0].complete_step(Ok(R2))
    assert f.results == {"x": R2}


def test_failure_fails_every_ancestor_and_skips_the_rest() -> None:
    g = make(
        [node("00000001", "THEN", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.complete_step(Failed("boom"))
    assert plan.stamps["00000002"].status == "failed"
    assert plan.stamps["00000001"].result == json.dumps("boom")
    assert "00000003" not in plan.stamps
    assert plan.instance is not None and plan.instance.status == "failed"


def test_if_takes_the_branch_its_condition_selects() -> None:
    rows = [
        node("00000001", "IF", "00000003", "00000004", '{"condition_node":"00000002"}'),
        sql("00000002"),
        sql("00000003"),
        sql("00000004"),
    ]
    g = make(rows, "00000001")
    assert g.conditions == {"00000002"}
    for cond, expected in ((R1, "00000003"), (EMPTY, "00000004")):
        f = root_fiber(g)
        step(g, f)[0].start()
        assert f.node_id == "00000002"
        step(g, f)[0].complete_step(Ok(cond))
        assert f.node_id == expected


def test_if_rows_errors_name_the_result() -> None:
    rows = [
        node(
            "00000001",
            "IF",
            "00000002",
            "00000003",
            '{"condition_type":"result_has_rows","result_name":"nope"}',
        ),
        sql("00000002"),
        sql("00000003"),
    ]
    g = make(rows, "00000001")
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert plan.instance is not None
    assert plan.instance.output == "df.if_rows: result 'nope' not found"


def test_join_spawns_branches_and_collects_results_in_branch_order() -> None:
    g = make(
        [
            node("00000001", "JOIN", "00000002", "00000003"),
            sql("00000002"),
            sql("00000003", name="y"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert (f.status, f.pending, f.wake_at_pending) == ("waiting", 2, 0)
    scopes = [c.scope for c in plan.spawns]
    assert scopes == ["aaaaaaaa::1::00000002", "aaaaaaaa::1::00000003"]
    assert plan.stamps["00000002"].execution_id == "aaaaaaaa::1::00000002::1"
    children = [
        ChildResult(scopes[1], 1, "00000003", Ok(R2), {"y": R2}),
        ChildResult(scopes[0], 0, "00000002", Ok(R1), {}),
    ]
    it, plan = step(g, f)
    it.resume(children, scopes[1])
    assert plan.instance is not None
    assert plan.instance.output == f"[{R1},{R2}]"
    assert f.results == {"y": R2}
    assert sorted(plan.deletes) == sorted(scopes)


def test_join_failure_names_the_branch() -> None:
    g = make(
        [node("00000001", "JOIN", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.resume(
        [
            ChildResult("s0", 0, "00000002", Ok(R1), {}),
            ChildResult("s1", 1, "00000003", Failed("bad"), {}),
        ],
        "s0",
    )
    assert plan.instance is not None
    assert plan.instance.output == "JOIN branch 1 failed: bad"


def test_a_join_whose_branches_together_pass_the_result_cap_fails() -> None:
    g = make(
        [node("00000001", "JOIN", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    children = [
        ChildResult("s0", 0, "00000002", Ok(R1), {}),
        ChildResult("s1", 1, "00000003", Ok(R2), {}),
    ]
    joined = f"[{R1},{R2}]"
    for cap, output in (
        (len(joined), joined),
        (len(joined) - 1, JOIN_TOO_LARGE.format(cap=len(joined) - 1)),
    ):
        f = root_fiber(g)
        plan = Plan()
        Interpreter(Context(g, {}, None, 1000.0, max_result_bytes=cap), f, plan).start()
        plan = Plan()
        Interpreter(Context(g, {}, None, 1000.0, max_result_bytes=cap), f, plan).resume(
            children, "s0"
        )
        assert plan.instance is not None
        assert plan.instance.output == output


def test_race_first_to_finish_wins_and_the_loser_is_cancelled() -> None:
    g = make(
        [node("00000001", "RACE", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert (f.pending, f.wake_at_pending) == (2, 1)
    it, plan = step(g, f)
    it.resume(
        [ChildResult("aaaaaaaa::1::00000003", 1, "00000003", Failed("slow"), {})],
        "aaaaaaaa::1::00000003",
    )
    assert plan.cancel_scopes == ["aaaaaaaa::1::00000002"]
    assert plan.instance is not None
    assert plan.instance.output == "RACE right branch failed: slow"


def loop_graph(condition: bool = False) -> Graph:
    rows = [
        node(
            "00000001",
            "LOOP",
            "00000002",
            None,
            '{"condition_node":"00000003"}' if condition else None,
        ),
        sql("00000002", name="r"),
    ]
    if condition:
        rows.append(sql("00000003"))
    return make(rows, "00000001")


def test_root_loop_iterates_with_pacing_and_a_new_generation() -> None:
    g = loop_graph()
    f = root_fiber(g)
    step(g, f, now=100.0)[0].start()
    assert (f.generation, f.node_id) == (1, "00000002")
    it, plan = step(g, f, now=100.2)
    it.complete_step(Ok(R1))
    # Less than a second since the iteration began: wait until it has passed.
    assert f.not_before == 101.0 and f.node_id == "00000001" and f.state.get("iterate")
    it, plan = step(g, f, now=101.0)
    it.iterate()
    assert f.generation == 2 and f.node_id == "00000002"
    assert plan.stamps["00000001"].execution_id == "aaaaaaaa::2"
    assert f.results == {"r": R1}, "names from iteration k are visible in k+1"


def test_while_loop_exits_with_the_last_body_result() -> None:
    g = loop_graph(condition=True)
    f = root_fiber(g)
    step(g, f, now=0)[0].start()
    step(g, f, now=5)[0].complete_step(Ok(R1))
    assert f.node_id == "00000003"
    it, plan = step(g, f, now=5)
    it.complete_step(Ok('{"rows":[{"c":false}],"row_count":1}'))
    assert plan.instance is not None and plan.instance.output == R1


def test_break_completes_the_loop_with_its_value() -> None:
    rows = [
        node("00000001", "LOOP", "00000002"),
        node("00000002", "THEN", "00000003", "00000004"),
        sql("00000003", name="r"),
        node("00000004", "BREAK", query='{"break_value":"$r.id"}'),
    ]
    g = make(rows, "00000001")
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.complete_step(Ok(R1))
    assert plan.instance is not None
    assert (plan.instance.status, plan.instance.output) == ("completed", "1")


def test_break_outside_a_loop_fails_the_instance() -> None:
    g = make([node("00000001", "BREAK", query='{"break_value":null}')], "00000001")
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert plan.instance is not None
    assert plan.instance.output == BREAK_OUTSIDE_LOOP


def test_inner_loop_runs_in_its_own_fiber() -> None:
    rows = [
        node("00000001", "THEN", "00000002", "00000004"),
        node("00000002", "LOOP", "00000003"),
        node("00000003", "BREAK", query='{"break_value":"done"}'),
        sql("00000004"),
    ]
    g = make(rows, "00000001")
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    # The loop broke at once: decided inline, the parent moves on.
    assert f.node_id == "00000004"
    assert plan.spawns == []
    assert plan.stamps["00000002"].status == "completed"
    assert plan.stamps["00000002"].result == '"done"'


def test_sleep_waits_for_its_seconds() -> None:
    g = make([node("00000001", "SLEEP", query="30")], "00000001")
    f = root_fiber(g)
    step(g, f)[0].start()
    assert (f.node_id, f.delay) == ("00000001", 30.0)


def test_a_sleep_beyond_any_timestamp_waits_a_thousand_years() -> None:
    # df.sleep takes any bigint; a timer past what a timestamptz holds could never be written.
    g = make([node("00000001", "SLEEP", query=str(2**63 - 1))], "00000001")
    f = root_fiber(g)
    step(g, f)[0].start()
    assert f.delay == MAX_SLEEP_DELAY == 1000 * 365.25 * 86400
