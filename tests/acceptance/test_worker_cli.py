"""`pg-durable worker` as an operator runs it: heartbeat in SQL, graceful stop on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_cli import cli, cli_env
from tests.fixtures.engine import wait_for

Conn = psycopg.Connection[Any]


def start_worker(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cli(), "worker", "--dsn", dsn, "--poll-interval", "0.2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def wait_alive(conn: Conn, proc: subprocess.Popen[str]) -> tuple[Any, ...]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        row = conn.execute(
            "SELECT worker_id, pid, concurrency, alive FROM df.workers WHERE pid = %s",
            (proc.pid,),
        ).fetchone()
        if row is not None and row[3]:
            return tuple(row)
        time.sleep(0.05)
    pytest.fail("the worker never showed up alive in df.workers")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_heartbeat_is_visible_and_a_signal_stops_it_gracefully(
    conn: Conn, dsn: str, stop: signal.Signals
) -> None:
    proc = start_worker(dsn, "--concurrency", "3", "--heartbeat-interval", "0.2")
    try:
        worker_id, _pid, concurrency, _alive = wait_alive(conn, proc)
        assert concurrency == 3
        first = conn.execute(
            "SELECT last_seen_at FROM df.workers WHERE worker_id = %s", (worker_id,)
        ).fetchone()
        time.sleep(0.6)
        later = conn.execute(
            "SELECT last_seen_at FROM df.workers WHERE worker_id = %s", (worker_id,)
        ).fetchone()
        assert first is not None and later is not None and later[0] > first[0]

        # A step in flight when the signal arrives finishes within the grace period.
        row = conn.execute("SELECT df.start('SELECT pg_sleep(1)' ~> 'SELECT 2 AS two')").fetchone()
        assert row is not None
        time.sleep(0.5)
        proc.send_signal(stop)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    stopped = conn.execute(
        "SELECT alive, stopped_at IS NOT NULL FROM df.workers WHERE worker_id = %s", (worker_id,)
    ).fetchone()
    assert stopped == (False, True)
    # The sleep committed before the worker left; the rest waits for the next worker.
    assert conn.execute(
        "SELECT status FROM df.nodes WHERE instance_id = %s AND query = 'SELECT pg_sleep(1)'",
        (str(row[0]),),
    ).fetchone() == ("completed",)


def test_json_logs_are_one_object_per_line(conn: Conn, dsn: str) -> None:
    proc = start_worker(dsn, "--log-format", "json", "--log-level", "INFO")
    try:
        wait_alive(conn, proc)
        row = conn.execute("SELECT df.start('SELECT 1')").fetchone()
        assert row is not None
        assert wait_for(conn, str(row[0])) == "completed"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    actions = [r.get("action") for r in records]
    assert "worker_started" in actions and "worker_stopped" in actions
    assert any(
        r.get("action") == "instance_completed" and r.get("instance_id") == row[0] for r in records
    )
    assert all({"level", "message"} <= r.keys() for r in records), records
