"""Everything that waits survives restarts: kill -9 the worker and crash PostgreSQL while
thousands of instances sleep or wait for signals; afterwards every timer fires (at once if its
deadline passed while nothing ran) and every signal is delivered exactly once."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.crash import LEDGER, spawn_worker, wait_until
from tests.fixtures.postgres import Server

Conn = psycopg.Connection[Any]

SLEEPERS = 1000
WAITERS = 1000


def record(step: int) -> str:
    return f"'INSERT INTO ledger (instance, step) VALUES (''{{sys_instance_id}}'', {step})'"


def start_many(conn: Conn, dsl: str, count: int) -> list[str]:
    with conn.transaction():
        rows = conn.execute(
            f"SELECT df.start({dsl}) FROM generate_series(1, %s)", (count,)
        ).fetchall()
    return [str(r[0]) for r in rows]


def signal_all(conn: Conn, ids: list[str], name: str) -> None:
    with conn.transaction():
        for iid in ids:
            conn.execute("SELECT df.signal(%s, %s, %s)", (iid, name, f'"{iid}"'))


def test_waits_survive_a_killed_worker_and_a_crashed_postgres(
    conn: Conn, dsn: str, pg_server: Server
) -> None:
    if pg_server.embedded is None:
        pytest.skip("needs the suite's own PostgreSQL to crash it (PG_DURABLE_TEST_DSN is set)")
    conn.execute(LEDGER)
    sleepers = start_many(conn, f"{record(1)} ~> df.sleep(3) ~> {record(2)}", SLEEPERS)
    waiters = start_many(
        conn,
        f"{record(1)} ~> (df.wait_for_signal('go') |=> 's') "
        "~> 'INSERT INTO ledger (instance, step) SELECT ($s.data)::text, 2'",
        WAITERS,
    )
    early, late = waiters[: WAITERS // 2], waiters[WAITERS // 2 :]

    first = spawn_worker(dsn)
    try:
        # Every instance has done its first step and now sleeps or waits. (Its first step:
        # on a slow machine the first sleepers wake before the last waiters get there.)
        wait_until(
            lambda: (
                conn.execute("SELECT count(*) FROM ledger WHERE step = 1").fetchone()
                == (SLEEPERS + WAITERS,)
            ),
            120,
            "every instance to reach its wait",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()

    # While no worker runs: half of the signals go in, then PostgreSQL crashes.
    signal_all(conn, early, "go")
    conn.close()
    pg_server.embedded.stop("immediate")
    time.sleep(3)  # the sleepers' deadlines pass while everything is down
    pg_server.embedded.start()

    with psycopg.connect(dsn, autocommit=True) as again:
        second = spawn_worker(dsn)
        try:
            signal_all(again, late, "go")
            wait_until(
                lambda: (
                    again.execute(
                        "SELECT count(*) FROM df.instances WHERE status = 'completed'"
                    ).fetchone()
                    == (SLEEPERS + WAITERS,)
                ),
                180,
                "every instance to complete",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        assert again.execute(
            "SELECT count(*) FROM df.instances WHERE status <> 'completed'"
        ).fetchone() == (0,)
        # Exactly once: two ledger rows per instance, each signal delivered to its own.
        rows = dict(
            again.execute("SELECT instance, count(*) FROM ledger GROUP BY instance").fetchall()
        )
        assert rows == {iid: 2 for iid in sleepers + waiters}
        assert again.execute("SELECT count(*) FROM df._signals").fetchone() == (0,)
        assert again.execute("SELECT count(*) FROM df._fibers").fetchone() == (0,)
