"""A quick lone step goes to the server with its checkpoint: one round trip for both.

When a step's success can only be recorded — its result is not named, nor a condition's —
and its statement ran lately and quickly, the worker sends the statement, its plans and
COMMIT in one query string, the plans naming the result by a marker that the server replaces
(engine/executor.py, docs/performance.md item 24). These tests hold it to what the usual path
does: the same result, byte for byte; the statement run once, whether it succeeds or fails;
a result whose shape changed described anew; a cancel that stops it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from pg_durable.engine import executor, identity, sqlstep
from tests.fixtures.crash import wait_until
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]

#: Values whose JSON needs escapes (a quote, a backslash, a newline, a tab), beyond ASCII, and
#: the other types a result takes as row_to_json prints them.
TRICKY = (
    "SELECT 'a\"b\\c' || chr(10) || chr(9) || 'é ✓' AS t, 42 AS n, true AS b, "
    "NULL::int AS z, DATE '2026-01-01' AS d, '{\"k\": [1]}'::text AS j, "
    "'0e9c1f5a-1d3f-4a8e-9d8e-2f6a0c1e7b11'::uuid AS u"
)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The statements of every round trip that runs or records a step, as sent, in order."""
    log: list[list[str]] = []

    def spying(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run_together(conn: Any, statements: Any, row_factory: Any) -> Any:
            log.append([text for text, _ in statements])
            return await original(conn, statements, row_factory)

        return run_together

    for module in (executor, identity, sqlstep):
        monkeypatch.setattr(module, "run_together", spying(module.run_together))
    return log


def _aheads(sent: list[list[str]]) -> list[list[str]]:
    return [s for s in sent if any("df._step_ahead" in text for text in s)]


def _steps_alone(sent: list[list[str]]) -> list[list[str]]:
    """Round trips that ran a step without its checkpoint."""
    return [s for s in sent if any("df_exec.run_steps" in t for t in s) and not _aheads([s])]


def _start(conn: Conn, workflow: str, *args: Any) -> str:
    return str(one(conn, f"SELECT df.start({workflow})", args))


def _run(conn: Conn, workflow: str, *args: Any) -> str:
    instance_id = _start(conn, workflow, *args)
    assert wait_for(conn, instance_id) == "completed"
    return instance_id


def _recorded(conn: Conn, instance_id: str) -> tuple[Any, ...]:
    """What an instance's run left: its output (text, as stored), df.result, and each node's
    type, status and result."""
    output = one(
        conn, "SELECT output FROM df._instance_state WHERE instance_id = %s", (instance_id,)
    )
    nodes = conn.execute(
        "SELECT node_type, status, result::text FROM df.nodes WHERE instance_id = %s "
        "ORDER BY node_type, result::text",
        (instance_id,),
    ).fetchall()
    return output, one(conn, "SELECT df.result(%s)", (instance_id,)), nodes


def test_a_quick_last_step_goes_with_its_checkpoint_and_leaves_the_same_result(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    start_worker(concurrency=1)
    first = _run(conn, "%s", TRICKY)  # new to the worker: the statement runs on its own
    assert not _aheads(sent)
    del sent[:]
    second = _run(conn, "%s", TRICKY)
    (ahead,) = _aheads(sent)
    assert "COMMIT" in ahead and ahead.index("COMMIT") > ahead.index("RELEASE SAVEPOINT step")
    assert not _steps_alone(sent)  # no round trip of its own
    recorded = _recorded(conn, second)
    assert recorded == _recorded(conn, first)
    assert json.loads(recorded[0])["rows"][0]["t"] == 'a"b\\c\n\té ✓'


def test_branches_and_sequences_record_what_they_recorded_before(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    """One fiber a transaction (batch size 1): every quick step of a JOIN's branches and of a
    sequence goes with its checkpoint the second time — a branch's outcome is held in its
    fiber as text, escaped, until the JOIN reads it; a step that is not its fiber's last is
    followed by the claim of the next in the same string. A step whose result is named, or a
    condition, never goes ahead: a later statement or the branch taken reads it."""
    conn.execute("CREATE TABLE marks (v int)")
    start_worker(concurrency=1, batch_size=1)
    workflow = (
        "%s & 'SELECT 2 AS n' ~> 'INSERT INTO marks VALUES (1)' ~> 'SELECT count(*) FROM marks' "
        "~> ('SELECT 3 AS x' |=> 'x') ~> df.if('SELECT $x > 2', 'SELECT ''yes'' AS a', "
        "'SELECT ''no'' AS a')"
    )
    first = _run(conn, workflow, TRICKY)
    del sent[:]
    second = _run(conn, workflow, TRICKY)
    aheads = _aheads(sent)
    assert len(aheads) == 5, aheads  # both branches, the INSERT, the count, 'yes'
    assert any("BEGIN" in s[s.index("COMMIT") :] for s in aheads)  # the next claimed with it
    recorded_first, recorded_second = _recorded(conn, first), _recorded(conn, second)
    # (The count differs: it counts one mark more.)
    assert recorded_second[2] == [
        row
        if row[2] != '{"rows": [{"count": 1}], "row_count": 1}'
        else (row[0], row[1], '{"rows": [{"count": 2}], "row_count": 1}')
        for row in recorded_first[2]
    ]
    assert recorded_second[:2] == recorded_first[:2]
    assert recorded_second[0] == '{"rows":[{"a":"yes"}],"row_count":1}'
    assert one(conn, "SELECT count(*) FROM marks") == 2


def test_a_step_sent_ahead_runs_once(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    conn.execute("CREATE TABLE marks (v int)")
    start_worker(concurrency=1)
    for _ in range(5):
        _run(conn, "'INSERT INTO marks VALUES (1)'")
    assert len(_aheads(sent)) == 4
    assert one(conn, "SELECT count(*) FROM marks") == 5


def test_a_step_that_fails_ahead_fails_once_with_its_error(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    """Its checkpoint does not follow: the worker rolls back to the savepoint and records the
    failure it was told, without running the statement again."""
    conn.execute("CREATE SEQUENCE runs")
    conn.execute("CREATE TABLE flag (x int)")
    statement = (
        "'SELECT nextval(''runs'') AS run, "
        "CASE WHEN EXISTS (SELECT FROM flag) THEN 1 / (SELECT 0) ELSE 1 END AS v'"
    )
    start_worker(concurrency=1)
    _run(conn, statement)
    conn.execute("INSERT INTO flag VALUES (1)")
    del sent[:]
    failed = _start(conn, statement)
    assert wait_for(conn, failed) == "failed"
    assert len(_aheads(sent)) == 1
    assert "division by zero" in _recorded(conn, failed)[0]
    assert one(conn, "SELECT last_value FROM runs") == 2  # once each
    # The worker goes on as before.
    conn.execute("DELETE FROM flag")
    _run(conn, statement)


def test_a_result_that_changed_shape_is_described_again(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    conn.execute("CREATE TABLE wide (a int)")
    conn.execute("INSERT INTO wide VALUES (1)")
    start_worker(concurrency=1)
    _run(conn, "'SELECT * FROM wide'")
    conn.execute("ALTER TABLE wide ADD COLUMN b text DEFAULT 'x'")
    del sent[:]
    changed = _run(conn, "'SELECT * FROM wide'")
    assert len(_aheads(sent)) == 1
    assert len(_steps_alone(sent)) == 1  # then described anew and run as usual
    assert json.loads(one(conn, "SELECT df.result(%s)", (changed,))) == {
        "rows": [{"a": 1, "b": "x"}],
        "row_count": 1,
    }


def test_a_step_sent_ahead_can_be_cancelled(
    conn: Conn, start_worker: Callable[..., WorkerThread], sent: list[list[str]]
) -> None:
    conn.execute("CREATE TABLE flag (x int)")
    start_worker(concurrency=1)
    statement = (
        "'SELECT 1 AS one FROM pg_sleep(CASE WHEN EXISTS (SELECT FROM flag) THEN 30 ELSE 0 END)'"
    )
    _run(conn, statement)
    conn.execute("INSERT INTO flag VALUES (1)")
    slow = _start(conn, statement)
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE '%df._step_ahead%' AND pid <> pg_backend_pid()"
    )
    wait_until(lambda: one(conn, sleeping) == 1, 10, "the step to run ahead")
    began = time.monotonic()
    one(conn, "SELECT df.cancel(%s, 'stop')", (slow,))
    wait_until(lambda: one(conn, sleeping) == 0, 10, "the step to stop")
    assert time.monotonic() - began < 10
    assert one(conn, "SELECT df.status(%s)", (slow,)) == "cancelled"
    conn.execute("DELETE FROM flag")
    _run(conn, "'SELECT 2'")
