"""Exactly once across crashes: kill -9 the worker mid-step, crash PostgreSQL mid-workflow.

Every step appends a row to a ledger that has a UNIQUE (instance, step) constraint, so a step
that ran twice would fail its instance, and a lost step would leave a gap.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.crash import LEDGER, spawn_worker, wait_until
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.postgres import Server

Conn = psycopg.Connection[Any]


def step(n: int, sleep: float = 0.0) -> str:
    if sleep:
        return (
            f"'WITH s AS (SELECT pg_sleep({sleep})) "
            f"INSERT INTO ledger (instance, step) SELECT ''{{sys_instance_id}}'', {n} FROM s'"
        )
    return f"'INSERT INTO ledger (instance, step) VALUES (''{{sys_instance_id}}'', {n})'"


def start(conn: Conn, dsl: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        row = conn.execute(f"SELECT df.start({dsl})").fetchone()
        assert row is not None
        ids.append(str(row[0]))
    return ids


def assert_exactly_once(conn: Conn, ids: list[str], steps: int) -> None:
    for iid in ids:
        assert wait_for(conn, iid, 60) == "completed"
    rows = conn.execute("SELECT instance, count(*) FROM ledger GROUP BY instance").fetchall()
    assert dict(rows) == {iid: steps for iid in ids}


def test_kill_9_mid_step_rolls_the_step_back_and_runs_it_once_more(conn: Conn, dsn: str) -> None:
    conn.execute(LEDGER)
    ids = start(conn, f"{step(1)} ~> {step(2, sleep=1.5)} ~> {step(3)}", 4)
    first = spawn_worker(dsn)
    try:
        # Wait until the slow step is executing in the worker, then kill it without mercy.
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                    "AND application_name = 'pg_durable:worker:workflow-sql' "
                    "AND datname = current_database()"
                ).fetchone()
                != (0,)
            ),
            30,
            "the slow step to start",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        # Step 2's effects are not committed by the killed worker.
        assert conn.execute("SELECT count(*) FROM ledger WHERE step = 2").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM df.instances WHERE status IN ('pending', 'running')"
        ).fetchone() == (len(ids),)
    finally:
        if first.poll() is None:
            first.kill()
    second = spawn_worker(dsn)
    try:
        assert_exactly_once(conn, ids, 3)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


def test_a_frozen_worker_loses_its_claims_within_the_lease(conn: Conn, dsn: str) -> None:
    """A worker cut off mid-step (a partition; here its process is stopped with SIGSTOP) keeps
    its transaction open and its claims locked, until the server ends the session once the
    transaction has been idle for the lease: then another worker runs the step, once."""
    conn.execute(LEDGER)
    ids = start(conn, f"{step(1, sleep=1.0)} ~> {step(2)}", 1)
    frozen = spawn_worker(dsn, lease_seconds=3)
    try:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                    "AND datname = current_database()"
                ).fetchone()
                != (0,)
            ),
            30,
            "the slow step to start",
        )
        os.kill(frozen.pid, signal.SIGSTOP)
        started = time.monotonic()
        other = spawn_worker(dsn, lease_seconds=3)
        try:
            assert_exactly_once(conn, ids, 2)
            # Not before the frozen worker's session ended (idle for 3 s after the step).
            assert time.monotonic() - started > 2.5
        finally:
            other.send_signal(signal.SIGTERM)
            other.wait(30)
    finally:
        frozen.kill()
        frozen.wait(10)


def test_postgres_crash_mid_workflow_resumes_every_instance(
    conn: Conn, dsn: str, pg_server: Server, worker: WorkerThread
) -> None:
    if pg_server.embedded is None:
        pytest.skip("needs the suite's own PostgreSQL to crash it (PG_DURABLE_TEST_DSN is set)")
    conn.execute(LEDGER)
    dsl = (
        f"{step(1)} ~> {step(2, sleep=0.5)} ~> df.sleep(1) "
        f"~> ({step(3)} & {step(4, sleep=0.5)}) ~> {step(5)}"
    )
    ids = start(conn, dsl, 8)
    wait_until(
        lambda: conn.execute("SELECT count(*) FROM ledger").fetchone() not in ((0,),),
        30,
        "the first steps",
    )
    conn.close()
    pg_server.embedded.stop("immediate")  # a crash: no shutdown checkpoint, recovery on start
    time.sleep(0.5)
    pg_server.embedded.start()
    with psycopg.connect(dsn, autocommit=True) as again:
        assert_exactly_once(again, ids, 5)
