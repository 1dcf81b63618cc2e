"""The workers' sweep: fibers nobody will ever run are removed, a batch at a time.

A fiber is left behind when its instance finished or was removed while it waited, or when its
parent moved on without it (a losing RACE branch held by a worker when the race was decided,
say). One that is ready is dropped by the worker that claims it; one that waits — for a
signal, for a timer next year — would stay for good without the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pg_durable.engine import worker as worker_module
from pg_durable.queries import query
from tests.fixtures.crash import wait_until
from tests.fixtures.engine import WorkerThread
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]


def _start(conn: Conn) -> str:
    return str(one(conn, "SELECT df.start('SELECT 1')"))


def _fiber(
    conn: Conn,
    scope: str,
    instance_id: str,
    *,
    parent_scope: str | None = None,
    spawned_at_node: str | None = None,
    parent_generation: int | None = None,
    status: str = "waiting",
) -> None:
    """A fiber written as the engine leaves it, waiting for good unless said otherwise."""
    conn.execute(
        """INSERT INTO df._fibers (scope, instance_id, parent_scope, spawned_at_node,
                                   parent_generation, root_node, node_id, status, run_at)
           VALUES (%s, %s, %s, %s, %s, 'n1', 'n1', %s, 'infinity')""",
        [scope, instance_id, parent_scope, spawned_at_node, parent_generation, status],
    )


def _left_behind_and_alive(conn: Conn) -> tuple[set[str], set[str]]:
    """Fibers of every kind the sweep must remove, and of every kind it must keep."""
    running = _start(conn)  # its root fiber is ready: alive
    waiting = _start(conn)  # its root fiber waits at a JOIN for its branches
    conn.execute(
        "UPDATE df._fibers SET status = 'waiting', node_id = 'j1', generation = 2 WHERE scope = %s",
        [waiting],
    )
    finished = _start(conn)
    conn.execute("UPDATE df.instances SET status = 'completed' WHERE id = %s", [finished])
    _fiber(conn, "gone0001", "gone0001")  # its instance was removed
    for scope, node, generation, status in (
        ("2::b1", "j1", 2, "waiting"),  # a branch of the JOIN: alive
        ("2::b2", "j1", 2, "done"),  # a finished branch, for the JOIN to collect: alive
        ("1::b1", "j1", 1, "waiting"),  # of an earlier pass of the parent
        ("2::c1", "k1", 2, "waiting"),  # of another node of the parent
    ):
        _fiber(
            conn,
            f"{waiting}::{scope}",
            waiting,
            parent_scope=waiting,
            spawned_at_node=node,
            parent_generation=generation,
            status=status,
        )
    # A parent that does not wait for it, and one that is gone.
    _fiber(
        conn,
        f"{running}::1::b1",
        running,
        parent_scope=running,
        spawned_at_node="n1",
        parent_generation=1,
    )
    _fiber(
        conn,
        "gone0002::1::b1",
        running,
        parent_scope="gone0002",
        spawned_at_node="n1",
        parent_generation=1,
    )
    alive = {running, waiting, f"{waiting}::2::b1", f"{waiting}::2::b2"}
    left_behind = {
        finished,
        "gone0001",
        f"{waiting}::1::b1",
        f"{waiting}::2::c1",
        f"{running}::1::b1",
        "gone0002::1::b1",
    }
    return left_behind, alive


def _fibers(conn: Conn) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT scope FROM df._fibers")}


def test_the_sweep_removes_the_fibers_nobody_will_run_a_batch_at_a_time(conn: Conn) -> None:
    left_behind, alive = _left_behind_and_alive(conn)
    everything = _fibers(conn)
    assert everything == left_behind | alive
    after, batches = "", []
    while (last := one(conn, query("sweep"), {"after": after, "batch": 3})) is not None:
        after = str(last)
        batches.append(after)
    assert len(set(batches)) == len(batches) == -(-len(everything) // 3)  # 3 fibers a batch
    assert _fibers(conn) == alive


def test_the_sweep_skips_a_fiber_another_transaction_holds(conn: Conn, dsn: str) -> None:
    finished = _start(conn)
    conn.execute("UPDATE df.instances SET status = 'completed' WHERE id = %s", [finished])
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM df._fibers WHERE scope = %s FOR UPDATE", [finished])
        conn.execute("SET lock_timeout = '5s'")  # waiting for the lock would fail the test
        assert one(conn, query("sweep"), {"after": "", "batch": 100}) == finished
        assert _fibers(conn) == {finished}
    conn.execute(query("sweep"), {"after": "", "batch": 100})
    assert _fibers(conn) == set()


def test_a_worker_sweeps_the_whole_table_over_its_rounds(
    conn: Conn, start_worker: Callable[..., WorkerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round examines a bounded number of fibers; the next round goes on from there."""
    monkeypatch.setattr(worker_module, "_SWEEP_BATCH", 1)
    monkeypatch.setattr(worker_module, "_SWEEP_BATCHES", 2)
    monkeypatch.setattr(worker_module, "_SWEEP_INTERVAL", 0.2)
    finished = _start(conn)
    conn.execute("UPDATE df.instances SET status = 'completed' WHERE id = %s", [finished])
    conn.execute("UPDATE df._fibers SET status = 'waiting', run_at = 'infinity'")
    for n in range(1, 8):
        _fiber(conn, f"gone000{n}", f"gone000{n}")
    start_worker()
    wait_until(lambda: not _fibers(conn), 20, "every fiber left behind swept")


def test_the_sweep_removes_the_signals_of_instances_that_ended(conn: Conn) -> None:
    running, finished = _start(conn), _start(conn)
    for instance_id in (running, finished):
        conn.execute("SELECT df.signal(%s, 'go', '{}')", [instance_id])
    conn.execute("UPDATE df.instances SET status = 'completed' WHERE id = %s", [finished])
    conn.execute(
        "INSERT INTO df._signals (instance_id, name, data) VALUES ('gone0001', 'go', '{}')"
    )
    conn.execute(query("sweep_signals"))
    left = conn.execute("SELECT instance_id FROM df._signals").fetchall()
    assert left == [(running,)]
