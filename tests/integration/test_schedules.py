"""WAIT_SCHEDULE in the worker: the next tick is computed when the node runs, scheduled loops
wait tick after tick, df.cancel stops them."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import one
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


def start(conn: Conn, dsl: str) -> str:
    return str(one(conn, f"SELECT df.start({dsl})"))


def waiting_until(conn: Conn, instance_id: str) -> dt.datetime:
    """When the instance's fiber that waits for a schedule runs next."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT f.run_at FROM df._fibers f JOIN df.nodes n "
            "ON n.instance_id = f.instance_id AND n.id = f.node_id "
            "WHERE f.instance_id = %s AND n.node_type = 'WAIT_SCHEDULE' "
            "AND f.run_at > now()",
            (instance_id,),
        ).fetchone()
        if row is not None:
            return row[0]  # type: ignore[no-any-return]  # a timestamptz column
        time.sleep(0.02)
    pytest.fail(f"instance {instance_id} never waited for its schedule")


def next_minute(conn: Conn) -> dt.datetime:
    return one(conn, "SELECT date_trunc('minute', now()) + interval '1 minute'")  # type: ignore[no-any-return]


def test_a_schedule_waits_for_its_next_tick_in_the_configured_time_zone(
    conn: Conn, db_name: str, start_worker: Any
) -> None:
    # Every day at 12:00 in Kolkata (UTC+05:30, no DST): 06:30 UTC.
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.cron_timezone = 'Asia/Kolkata'")
    start_worker()
    iid = start(conn, "df.wait_for_schedule('0 12 * * *')")
    until = waiting_until(conn, iid)
    assert until.astimezone(dt.UTC).time() == dt.time(6, 30)
    assert dt.timedelta(0) < until - one(conn, "SELECT now()") <= dt.timedelta(days=1)
    stamps = conn.execute("SELECT status FROM df.nodes WHERE instance_id = %s", (iid,)).fetchall()
    assert stamps == [("running",)]


def test_a_scheduled_loop_waits_tick_after_tick_until_cancelled(
    conn: Conn, worker: WorkerThread
) -> None:
    conn.execute("CREATE TABLE runs (at timestamptz DEFAULT clock_timestamp())")
    iid = start(conn, "@> ('INSERT INTO runs DEFAULT VALUES' ~> df.wait_for_schedule('* * * * *'))")
    assert waiting_until(conn, iid) == next_minute(conn)
    assert one(conn, "SELECT count(*) FROM runs") == 1
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "running"
    conn.execute("SELECT df.cancel(%s)", (iid,))
    assert wait_for(conn, iid) == "cancelled"
    time.sleep(0.5)
    assert one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)) == 0
    assert one(conn, "SELECT count(*) FROM runs") == 1


def test_a_schedule_that_cannot_be_computed_fails_its_node(
    conn: Conn, db_name: str, start_worker: Any
) -> None:
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.cron_timezone = 'Mars/Olympus'")
    start_worker()
    iid = start(conn, "df.wait_for_schedule('* * * * *')")
    assert wait_for(conn, iid) == "failed"
    assert "Mars/Olympus" in output_of(conn, iid)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PG_DURABLE_SLOW"), reason="waits two real minutes (PG_DURABLE_SLOW=1)"
)
def test_a_scheduled_loop_runs_once_per_tick(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE runs (at timestamptz DEFAULT clock_timestamp())")
    iid = start(
        conn,
        "@> ((df.wait_for_schedule('* * * * *') ~> 'INSERT INTO runs DEFAULT VALUES RETURNING at')"
        " |=> 'r' ~> ('SELECT count(*) >= 2 FROM runs' ?> df.break('$r.at') !> 'SELECT 0'))",
    )
    assert wait_for(conn, iid, 200) == "completed"
    ticks = [r[0] for r in conn.execute("SELECT at FROM runs ORDER BY at").fetchall()]
    assert len(ticks) == 2
    assert all(t.second < 2 for t in ticks)  # right after each minute boundary
    assert ticks[1] - ticks[0] == dt.timedelta(minutes=1) + (ticks[1] - ticks[0]) % dt.timedelta(
        minutes=1
    )
    assert result_of(conn, iid) is not None
