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
    backoff_delay,
    outcome_from_json,
    outcome_to_json,
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


# -- df.retry ----------------------------------------------------------------------------------

RETRY_CONFIG = '{"max_attempts":3,"backoff_seconds":2,"backoff_factor":3}'


def retry_graph(config: str = RETRY_CONFIG) -> Graph:
    """'SELECT 1' |=> 'a' ~> df.retry('… |=> b' ~> '…', …) |=> 'r'."""
    return make(
        [
            node("00000001", "THEN", "00000002", "00000003"),
            sql("00000002", name="a"),
            node("00000003", "RETRY", "00000004", query=config, name="r"),
            node("00000004", "THEN", "00000005", "00000006"),
            sql("00000005", name="b"),
            sql("00000006"),
        ],
        "00000001",
    )


def attempt_fiber(g: Graph, parent: Fiber, plan: Plan) -> Fiber:
    """The fiber the RETRY spawned (as the worker loads it back)."""
    (spawned,) = plan.spawns
    return Fiber(
        spawned.scope,
        spawned.instance_id,
        spawned.root_node,
        spawned.node_id,
        parent_scope=parent.scope,
        spawned_at_node=spawned.spawned_at_node,
        parent_generation=spawned.parent_generation,
        generation=spawned.generation,
        results=dict(spawned.results),
        state=json.loads(json.dumps(spawned.state)),
    )


def test_retry_runs_its_attempts_in_a_fiber_of_their_own() -> None:
    g = retry_graph()
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.complete_step(Ok(R1))  # a
    assert (f.node_id, f.status, f.pending) == ("00000003", "waiting", 1)
    a = attempt_fiber(g, f, plan)
    assert a.scope == "aaaaaaaa::1::00000003"
    assert (a.root_node, a.node_id, a.generation) == ("00000003", "00000005", 1)
    assert a.state["attempt"] == 1
    assert a.state["base_results"] == {"a": R1}
    stamp = plan.stamps["00000003"]
    assert (stamp.status, stamp.execution_id) == ("running", "aaaaaaaa::1::00000003::1")
    assert stamp.details == {"attempt": 1, "max_attempts": 3}

    # Attempt 1 names b, then fails: b is gone, and the fiber waits 2 s at the RETRY.
    step(g, a)[0].complete_step(Ok(R2))
    assert a.results == {"a": R1, "b": R2}
    it, plan = step(g, a, now=2000.0)
    it.complete_step(Failed("boom"))
    assert (a.node_id, a.status, a.delay) == ("00000003", "ready", 2.0)
    assert a.results == {"a": R1}
    assert a.state["retry"] is True
    assert plan.stamps["00000006"].status == "failed"
    assert plan.stamps["00000004"].status == "failed"
    stamp = plan.stamps["00000003"]
    assert stamp.status == "running"
    assert stamp.details == {
        "attempt": 1,
        "max_attempts": 3,
        "last_error": "boom",
        "next_attempt_at": "1970-01-01T00:33:22+00:00",
    }

    # Attempt 2: a new generation; it succeeds.
    it, plan = step(g, a)
    it.next_attempt()
    assert (a.generation, a.node_id) == (2, "00000005")
    assert "retry" not in a.state
    assert plan.stamps["00000005"].execution_id == "aaaaaaaa::1::00000003::2"
    assert plan.stamps["00000003"].details == {
        "attempt": 2,
        "max_attempts": 3,
        "last_error": "boom",
    }
    step(g, a)[0].complete_step(Ok(R2))
    it, plan = step(g, a)
    it.complete_step(Ok(EMPTY))
    assert (a.status, a.outcome) == ("done", Ok(EMPTY))
    assert "base_results" not in a.state
    stamp = plan.stamps["00000003"]
    assert (stamp.status, stamp.result) == ("completed", EMPTY)
    assert stamp.details == {"attempt": 2, "max_attempts": 3, "last_error": "boom"}

    # The parent takes the attempt's names and goes on.
    it, plan = step(g, f)
    it.resume([ChildResult(a.scope, 0, a.root_node, Ok(EMPTY), a.results)], a.scope)
    assert "00000003" not in plan.stamps  # (stamped by the attempts' fiber)
    assert f.results == {"a": R1, "b": R2, "r": EMPTY}
    assert plan.instance is not None and plan.instance.status == "completed"


def test_retry_gives_up_after_its_last_attempt_with_the_count_and_the_error() -> None:
    g = retry_graph('{"max_attempts":2,"backoff_seconds":0,"backoff_factor":1}')
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.complete_step(Ok(R1))
    a = attempt_fiber(g, f, plan)
    step(g, a)[0].complete_step(Failed("first"))  # b fails at once
    assert (a.status, a.delay) == ("ready", 0.0)
    step(g, a)[0].next_attempt()
    it, plan = step(g, a)
    it.complete_step(Failed("second"))
    message = "RETRY failed after 2 attempts: second"
    assert (a.status, a.outcome) == ("done", Failed(message))
    stamp = plan.stamps["00000003"]
    assert (stamp.status, stamp.result) == ("failed", json.dumps(message))
    assert stamp.details == {"attempt": 2, "max_attempts": 2, "last_error": "second"}
    it, plan = step(g, f)
    it.resume([ChildResult(a.scope, 0, a.root_node, Failed(message), a.results)], a.scope)
    assert f.results == {"a": R1}  # nothing of a failed RETRY is named
    assert plan.instance is not None and plan.instance.output == message


def test_one_attempt_is_no_retry() -> None:
    g = make(
        [node("00000001", "RETRY", "00000002", query='{"max_attempts":1}'), sql("00000002")],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    a = attempt_fiber(g, f, plan)
    assert "base_results" not in a.state
    step(g, a)[0].complete_step(Failed("once"))
    assert a.outcome == Failed("RETRY failed after 1 attempt: once")


def test_a_retry_at_the_root_of_a_branch_runs_its_attempts_in_the_branch() -> None:
    g = make(
        [
            node("00000001", "JOIN", "00000002", "00000004"),
            node("00000002", "RETRY", "00000003", query=RETRY_CONFIG),
            sql("00000003"),
            sql("00000004"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    branch = plan.spawns[0]
    assert (branch.root_node, branch.node_id, branch.state["attempt"]) == (
        "00000002",
        "00000003",
        1,
    )
    step(g, branch)[0].complete_step(Failed("no"))
    step(g, branch)[0].next_attempt()
    assert branch.generation == 2


def test_a_failure_at_a_deadline_is_not_retried() -> None:
    g = retry_graph()
    f = root_fiber(g)
    step(g, f)[0].start()
    it, plan = step(g, f)
    it.complete_step(Ok(R1))
    a = attempt_fiber(g, f, plan)
    it, plan = step(g, a)
    it.complete_step(Failed("cancelled", timeout="0000000f"))
    assert a.outcome == Failed("cancelled", timeout="0000000f")
    assert plan.stamps["00000003"].status == "failed"


def test_a_break_leaves_a_retry_like_any_node() -> None:
    g = make(
        [
            node("00000001", "LOOP", "00000002"),
            node("00000002", "RETRY", "00000003", query=RETRY_CONFIG),
            node("00000003", "BREAK", query='{"break_value":"out"}'),
        ],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    # Decided in one go: the attempt breaks, the RETRY passes it on, the loop completes.
    assert plan.spawns == []
    assert plan.instance is not None
    assert (plan.instance.status, plan.instance.output) == ("completed", '"out"')


def test_backoff_grows_by_its_factor_and_stays_finite() -> None:
    assert [backoff_delay(2, 3, n) for n in (1, 2, 3)] == [2, 6, 18]
    assert backoff_delay(0, 10, 50) == 0
    assert backoff_delay(1.5, 1, 1000) == 1.5
    assert backoff_delay(1, 2, 2**31 - 1) == MAX_SLEEP_DELAY
    assert backoff_delay(1e300, 1e300, 3) == MAX_SLEEP_DELAY


# -- df.timeout --------------------------------------------------------------------------------


def test_a_timeout_around_one_statement_is_its_deadline() -> None:
    g = make(
        [
            node("00000001", "THEN", "00000002", "00000003"),
            node("00000002", "TIMEOUT", "00000004", query='{"seconds":5}'),
            sql("00000003"),
            sql("00000004"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert (f.node_id, plan.spawns) == ("00000004", [])
    assert it.deadline() == ("00000002", 1005.0)
    assert it.timed_out("00000002") == Failed("Timed out after 5s", timeout="00000002")
    # Its statement stopped at the deadline: the TIMEOUT fails in its own words.
    it, plan = step(g, f)
    it.complete_step(Failed("canceling statement due to statement timeout", "00000002"))
    assert plan.stamps["00000004"].result == json.dumps(
        "canceling statement due to statement timeout"
    )
    assert plan.stamps["00000002"].result == json.dumps("Timed out after 5s")
    assert plan.instance is not None
    assert plan.instance.output == "Timed out after 5s"
    assert f.state["deadlines"] == {}


def test_a_statement_done_in_time_leaves_no_deadline_behind() -> None:
    g = make(
        [
            node("00000001", "THEN", "00000002", "00000003"),
            node("00000002", "TIMEOUT", "00000004", query='{"seconds":5}', name="t"),
            sql("00000003"),
            sql("00000004"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    step(g, f)[0].start()
    it, _plan = step(g, f)
    it.complete_step(Ok(R1))
    assert f.node_id == "00000003"
    assert it.deadline() is None
    assert f.results == {"t": R1}


def timeout_graph() -> Graph:
    """df.timeout('SELECT 1' |=> 'x' ~> df.sleep(60), 5)."""
    return make(
        [
            node("00000001", "TIMEOUT", "00000002", query='{"seconds":5}'),
            node("00000002", "THEN", "00000003", "00000004"),
            sql("00000003", name="x"),
            node("00000004", "SLEEP", query="60"),
        ],
        "00000001",
    )


def test_a_timeout_around_more_races_its_subtree_against_a_timer() -> None:
    g = timeout_graph()
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    assert (f.status, f.pending, f.wake_at_pending) == ("waiting", 2, 1)
    body, timer = plan.spawns
    assert body.scope == "aaaaaaaa::1::00000002"
    assert body.state["deadlines"] == {"00000001": 1005.0}
    assert (timer.scope, timer.node_id, timer.not_before) == (
        "aaaaaaaa::1::00000001",
        "00000001",
        1005.0,
    )
    assert plan.stamps["00000001"].execution_id == "aaaaaaaa::1"  # (the timer stamps nothing)
    # The timer fires first.
    it, plan = step(g, timer, now=1005.0)
    it.time_out()
    assert (timer.status, timer.outcome) == ("done", Failed("Timed out after 5s", "00000001"))
    assert plan.stamps == {}
    it, plan = step(g, f)
    it.resume([ChildResult(timer.scope, 1, "00000001", timer.outcome, {})], timer.scope)
    assert plan.cancel_scopes == [body.scope]
    assert plan.stamps["00000001"].result == json.dumps("Timed out after 5s")
    assert plan.instance is not None and plan.instance.output == "Timed out after 5s"


def test_a_subtree_done_in_time_cancels_its_timer() -> None:
    g = timeout_graph()
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    body, timer = plan.spawns
    it, plan = step(g, f)
    it.resume([ChildResult(body.scope, 0, "00000002", Ok(R1), {"x": R1})], body.scope)
    assert plan.cancel_scopes == [timer.scope]
    assert f.results == {"x": R1}
    assert plan.instance is not None and plan.instance.output == R1


def test_a_subtree_stopped_at_its_deadline_fails_the_timeout_in_its_words() -> None:
    g = timeout_graph()
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    body, _timer = plan.spawns
    it, plan = step(g, f)
    failed = Failed("JOIN branch 0 failed: canceling statement", "00000001")
    it.resume([ChildResult(body.scope, 0, "00000002", failed, {})], body.scope)
    assert plan.instance is not None and plan.instance.output == "Timed out after 5s"


def test_deadlines_reach_every_fiber_below_and_the_nearest_counts() -> None:
    g = make(
        [
            node("00000001", "TIMEOUT", "00000002", query='{"seconds":50}'),
            node("00000002", "JOIN", "00000003", "00000004"),
            node("00000003", "TIMEOUT", "00000005", query='{"seconds":5}'),
            sql("00000004"),
            sql("00000005"),
        ],
        "00000001",
    )
    f = root_fiber(g)
    it, plan = step(g, f)
    it.start()
    # The subtree forks at once (its branches first, then the subtree and the timer).
    left, right, body, _timer = plan.spawns
    assert body.state["deadlines"] == {"00000001": 1050.0}
    assert left.state["deadlines"] == {"00000001": 1050.0, "00000003": 1005.0}
    assert Interpreter(Context(g, {}, None, 0.0), left, Plan()).deadline() == (
        "00000003",
        1005.0,
    )
    assert right.state["deadlines"] == {"00000001": 1050.0}


def test_failures_keep_their_deadline_through_joins_and_races() -> None:
    assert outcome_from_json(outcome_to_json(Failed("x", "0000000a"))) == Failed("x", "0000000a")
    assert outcome_to_json(Failed("x")) == {"error": "x"}
    g = make(
        [node("00000001", "JOIN", "00000002", "00000003"), sql("00000002"), sql("00000003")],
        "00000001",
    )
    f = root_fiber(g)
    step(g, f)[0].start()
    it, _plan = step(g, f)
    it.resume([ChildResult("s0", 0, "00000002", Failed("late", "0000000a"), {})], "s0")
    assert f.outcome == Failed("JOIN branch 0 failed: late", "0000000a")
