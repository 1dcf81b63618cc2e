"""A worker that dies during an autocommit step: another runs the step within the lease.

A statement PostgreSQL refuses in a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, …)
runs outside the step's transaction, under a lease on its fiber that the worker renews while
the statement runs. The chaos suite found that a worker killed mid-statement (or cut off, or
whose PostgreSQL restarted) left the fiber leased for an hour (the lease was a fixed 3,600 s);
since ``--lease-seconds`` (30 s by default) another worker takes the step over within that
bound, and runs it again: at least once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.crash import spawn_cli_worker, spawn_worker, wait_until

Conn = psycopg.Connection[Any]

#: The lease of the worker that dies (short: the test waits for it to run out).
LEASE_SECONDS = 3
#: Time for the lease to run out, and for the other worker to run the step again.
RECLAIM_SECONDS = LEASE_SECONDS + 10


def test_a_dead_workers_autocommit_step_runs_again_within_the_lease(
    conn: Conn, dsn: str, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE scratch (n int)")
    # An open transaction that wrote to the table holds CREATE INDEX CONCURRENTLY up: it waits
    # for it to end, so the step is surely running when the worker dies.
    blocker = psycopg.connect(dsn)
    blocker.execute("INSERT INTO scratch VALUES (1)")
    row = conn.execute(
        "SELECT df.start(df.seq('CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON scratch (n)', "
        "'SELECT 1'))"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    log = (tmp_path / "first-worker.log").open("ab")
    first = spawn_cli_worker(dsn, "--lease-seconds", str(LEASE_SECONDS), log=log)
    try:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE '%%CREATE INDEX CONCURRENTLY%%' AND pid <> pg_backend_pid()"
                ).fetchone()
                != (0,)
            ),
            30,
            "the autocommit step to start",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
        blocker.rollback()
        blocker.close()
    second = spawn_worker(dsn)
    try:
        deadline = time.monotonic() + RECLAIM_SECONDS
        status = None
        while time.monotonic() < deadline:
            status = conn.execute(
                "SELECT status FROM df.instances WHERE id = %s", (iid,)
            ).fetchone()
            if status == ("completed",):
                break
            time.sleep(0.2)
        lease = conn.execute(
            "SELECT run_at - now() FROM df._fibers WHERE instance_id = %s", (iid,)
        ).fetchone()
        assert status == ("completed",), f"instance {iid} is {status}, its fiber waits {lease}"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
