"""What a step costs the server must not grow with the work in flight.

The engine's statements are planned from statistics that lag the work: tables analyzed while
nothing ran say that no instance runs and no fiber is ready. Planned from those, a statement
that should find one row by its primary key can read every running instance or every ready
fiber instead — once per step, so that a step costs more the more instances are in flight
(docs/performance.md, "Where the time goes"). These tests reproduce that state (VACUUM
ANALYZE of idle tables, then a burst of work) and count the buffers the df tables' heaps and
indexes were read for, per step: a count, unlike a rate, does not depend on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread

#: The tables whose blocks a step reads or writes.
_TABLES = ("instances", "nodes", "vars", "_instance_state", "_fibers", "_signals")
_STEPS = 10
_WORKFLOW = " ~> ".join(["'SELECT 1'"] * _STEPS)


def _blocks(conn: psycopg.Connection[Any]) -> int:
    """Heap and index blocks of the df tables read so far (from shared buffers or not)."""
    row = conn.execute(
        """SELECT sum(coalesce(heap_blks_hit, 0) + coalesce(heap_blks_read, 0)
                      + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0))::bigint
             FROM pg_statio_all_tables
            WHERE schemaname = 'df' AND relname = ANY (%s)""",
        [list(_TABLES)],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _blocks_per_step(dsn: str, start_worker: Callable[..., WorkerThread], instances: int) -> float:
    """Start ``instances`` workflows of ten steps with no worker running, then run them all
    with one worker and return the df blocks read per step while it did."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE df.instances, df.nodes, df._instance_state, df._fibers")
        conn.execute(
            f"SELECT count(df.start({_WORKFLOW})) FROM generate_series(1, %s)", [instances]
        )
        # Counters of this session, read without the snapshot a transaction would keep.
        conn.execute("SET stats_fetch_consistency = none")
        before = _blocks(conn)
        worker = start_worker(concurrency=4)
        deadline = time.monotonic() + 120
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM df.instances"
            ).fetchone()
            assert row is not None
            if row[0] == row[1]:
                break
            assert time.monotonic() < deadline, f"{row[0]} of {row[1]} completed"
            time.sleep(0.2)
        # A backend reports its counters when it exits, at the latest — before it leaves
        # pg_stat_activity, which a client's closing the connection does not wait for.
        worker.stop()
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'pg_durable:worker:%'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the worker's sessions did not end"
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return (_blocks(conn) - before) / (instances * _STEPS)


def test_blocks_per_step_do_not_grow_with_instances_in_flight(
    dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    few = _blocks_per_step(dsn, start_worker, 100)
    many = _blocks_per_step(dsn, start_worker, 2_000)
    # Measured: 45 blocks per step with 100 instances in flight, 60 with 2,000. With the
    # running-instance check of df._commit_steps planned on idx_instances_status (as it was
    # before 2026-11-25): 50 and 1,034.
    assert many < 150, f"{many:.0f} blocks per step with 2,000 instances in flight"
    assert many < 1.5 * few + 20, f"{few:.0f} blocks per step with 100, {many:.0f} with 2,000"
