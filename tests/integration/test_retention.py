"""Finished instances are removed after pg_durable.retention_days; running ones never."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, run_workflow
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]


def count(conn: Conn, table: str, iid: str) -> int:
    column = "id" if table == "df.instances" else "instance_id"
    return int(one(conn, f"SELECT count(*) FROM {table} WHERE {column} = %s", (iid,)))


def traces(conn: Conn, iid: str) -> dict[str, int]:
    return {
        t: count(conn, t, iid)
        for t in ("df.instances", "df.nodes", "df._instance_state", "df._fibers", "df._signals")
    }


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.05)


def test_finished_instances_past_retention_go_and_the_rest_stay(
    conn: Conn, db_name: str, start_worker: Callable[..., WorkerThread]
) -> None:
    first = start_worker()
    old_done, _ = run_workflow(conn, "'SELECT 1' ~> 'SELECT 2'")
    old_failed, _ = run_workflow(conn, "'SELECT 1/0'")
    recent, _ = run_workflow(conn, "'SELECT 1'")
    waiting = one(conn, "SELECT df.start(df.wait_for_signal('go') ~> 'SELECT 3')")
    conn.execute("SELECT df.signal(%s, 'other', '{}')", (waiting,))  # something in its inbox
    old_cancelled = one(conn, "SELECT df.start(df.sleep(3600))")
    conn.execute("SELECT df.cancel(%s)", (old_cancelled,))
    first.stop()
    # Finished two days ago (the owner may write updated_at; a role may not).
    conn.execute(
        "UPDATE df.instances SET updated_at = now() - interval '2 days' WHERE id = ANY(%s)",
        ([old_done, old_failed, old_cancelled, waiting],),
    )
    conn.execute(f'ALTER DATABASE "{db_name}" SET pg_durable.retention_days = 1')
    start_worker()  # prunes at start, then every sweep
    for iid in (old_done, old_failed, old_cancelled):
        wait_until(lambda iid=iid: count(conn, "df.instances", iid) == 0)
        assert traces(conn, iid) == dict.fromkeys(traces(conn, iid), 0)
    # Finished recently, or still running (however old): kept.
    assert count(conn, "df.instances", recent) == 1
    assert traces(conn, waiting)["df._fibers"] == 1
    assert traces(conn, waiting)["df._signals"] == 1
    conn.execute("SELECT df.signal(%s, 'go', '{}')", (waiting,))
    wait_until(lambda: one(conn, "SELECT df.status(%s)", (waiting,)) == "completed")


def test_retention_zero_removes_finished_instances_at_the_next_pass(
    conn: Conn, db_name: str, start_worker: Callable[..., WorkerThread]
) -> None:
    first = start_worker()
    done = [run_workflow(conn, "'SELECT 1'")[0] for _ in range(3)]
    first.stop()
    conn.execute(f'ALTER DATABASE "{db_name}" SET pg_durable.retention_days = 0')
    start_worker()
    wait_until(
        lambda: one(conn, "SELECT count(*) FROM df.instances WHERE id = ANY(%s)", (done,)) == 0
    )


def test_an_invalid_retention_setting_removes_nothing_and_says_why(
    conn: Conn, db_name: str, start_worker: Callable[..., WorkerThread], caplog: Any
) -> None:
    first = start_worker()
    iid, _ = run_workflow(conn, "'SELECT 1'")
    first.stop()
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.retention_days = 'soon'")
    with caplog.at_level(logging.WARNING, logger="pg_durable.engine.worker"):
        start_worker()
        wait_until(lambda: "retention_days" in caplog.text)
    assert (
        'pg_durable.retention_days must be a number of days from 0 to 36500 (got "soon")'
        in caplog.text
    )
    assert count(conn, "df.instances", iid) == 1
    iid, status = run_workflow(conn, "'SELECT 2'")
    assert status == "completed"
