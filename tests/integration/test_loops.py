"""Loops that run for months: constant storage, iterations visible, cap and pacing settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import one
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]

COUNTER = "CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)"


def storage(conn: Conn, instance_id: str) -> tuple[int, int, int, int]:
    """Rows the instance holds in every engine table."""
    return (
        one(conn, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (instance_id,)),
        one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (instance_id,)),
        one(conn, "SELECT count(*) FROM df._signals WHERE instance_id = %s", (instance_id,)),
        one(conn, "SELECT count(*) FROM df._instance_state WHERE instance_id = %s", (instance_id,)),
    )


def test_a_root_loop_keeps_constant_storage_and_reports_its_iterations(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(COUNTER)
    row = conn.execute(
        "SELECT df.start(@> ('UPDATE counter SET n = n + 1 RETURNING n' |=> 'c' "
        "~> ('SELECT $c >= 60' ?> df.break('$c') !> df.sleep(0))))"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    before = storage(conn, iid)
    start_worker(loop_min_interval=0.0)
    seen: set[tuple[int, int, int, int]] = set()
    counts: list[int] = []
    while one(conn, "SELECT df.status(%s)", (iid,)) not in ("completed", "failed"):
        seen.add(storage(conn, iid))
        counts.append(
            one(
                conn,
                "SELECT execution_count FROM df.list_instances() WHERE instance_id = %s",
                (iid,),
            )
        )
        time.sleep(0.01)
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == 60
    # Iterations were visible while it ran, and only ever went up.
    assert counts == sorted(counts) and counts[-1] > 1
    assert (
        one(conn, "SELECT execution_count FROM df.list_instances() WHERE instance_id = %s", (iid,))
        == 60
    )
    executions = conn.execute(
        "SELECT execution_id, status FROM df.instance_executions(%s, 3)", (iid,)
    ).fetchall()
    assert executions == [(60, "Completed"), (59, "ContinuedAsNew"), (58, "ContinuedAsNew")]
    # Storage: the same rows throughout, whatever the number of iterations.
    nodes, _, signals, state = before
    assert {(s[0], s[2], s[3]) for s in seen} <= {(nodes, signals, state)}
    assert {s[1] for s in seen} <= {0, 1}


def test_a_loop_inside_a_sequence_runs_the_prefix_and_suffix_once(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(COUNTER)
    conn.execute("CREATE TABLE marks (what text)")
    row = conn.execute(
        "SELECT df.start('INSERT INTO marks VALUES (''before'')' "
        "~> (@> ('UPDATE counter SET n = n + 1 RETURNING n' |=> 'c' "
        "        ~> ('SELECT $c >= 5' ?> df.break('$c') !> 'SELECT 0'))) |=> 'loop' "
        "~> 'INSERT INTO marks VALUES (''after '' || $loop) RETURNING what')"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    start_worker(loop_min_interval=0.0)
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    assert conn.execute("SELECT what FROM marks ORDER BY what").fetchall() == [
        ("after 5",),
        ("before",),
    ]


def test_the_iteration_cap_is_a_setting(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    row = conn.execute("SELECT df.start(@> 'SELECT 1')").fetchone()
    assert row is not None
    iid = str(row[0])
    start_worker(loop_min_interval=0.0, loop_max_iterations=7)
    assert wait_for(conn, iid) == "failed"
    assert output_of(conn, iid) == (
        "Loop exceeded maximum iteration count of 7. Use df.break() to exit the loop or "
        "restructure the workflow."
    )


def test_iterations_are_paced_by_the_minimum_interval(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(COUNTER)
    row = conn.execute(
        "SELECT df.start(@> ('UPDATE counter SET n = n + 1 RETURNING n' |=> 'c' "
        "~> ('SELECT $c >= 4' ?> df.break() !> 'SELECT 0')))"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    started = time.monotonic()
    start_worker(loop_min_interval=0.5)
    assert wait_for(conn, iid) == "completed"
    # Four iterations, each at least half a second from the start of the one before.
    assert time.monotonic() - started >= 1.5
