"""Limits on what one workflow may make the system hold: a graph at df.start, a signal's name,
payload and inbox, a SQL step's result. Each fails with a message that says which limit and
what to do, leaves nothing half-written, and the worker goes on serving."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.sql import one, raises_exactly
from tests.integration.test_engine import result_of

Conn = psycopg.Connection[Any]

MIB = 1024 * 1024


def instance_count(conn: Conn) -> int:
    return int(one(conn, "SELECT count(*) FROM df.instances"))


def inbox(conn: Conn, instance_id: str) -> int:
    return int(one(conn, "SELECT count(*) FROM df._signals WHERE instance_id = %s", (instance_id,)))


# -- the graph at df.start ------------------------------------------------------------------


def test_a_graph_over_max_graph_bytes_is_refused_before_anything_is_written(conn: Conn) -> None:
    # 'SELECT ''xxx…''': the statement text alone is 16 MiB and a few bytes.
    size = 16 * MIB + len("SELECT ''")
    with raises_exactly(
        errors.ProgramLimitExceeded,
        f"df.start(): the workflow is {size} bytes, more than pg_durable.max_graph_bytes "
        "(16777216); build it from fewer or smaller steps (keep bulk data in tables, not in "
        "statement text), or raise the setting",
    ):
        conn.execute("SELECT df.start('SELECT ' || quote_literal(repeat('x', 16 * 1024 * 1024)))")
    assert instance_count(conn) == 0
    assert one(conn, "SELECT count(*) FROM df.nodes") == 0


def test_max_graph_bytes_is_a_server_setting(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("SET pg_durable.max_graph_bytes = 2000")
    # 40 steps of ~60 bytes each make an envelope of several kilobytes.
    chain = " ~> ".join(f"'SELECT {i} AS step_number_{i}'" for i in range(40))
    with pytest.raises(
        errors.ProgramLimitExceeded, match=r"more than pg_durable\.max_graph_bytes \(2000\)"
    ):
        conn.execute(f"SELECT df.start({chain})")
    assert instance_count(conn) == 0
    # A graph under the limit starts and runs.
    iid, status = run_workflow(conn, "'SELECT 1 AS one' ~> 'SELECT 2 AS two'")
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"two": 2}], "row_count": 1}


# -- signals --------------------------------------------------------------------------------


def start_waiting(conn: Conn, name: str = "go") -> str:
    return str(one(conn, "SELECT df.start(df.wait_for_signal(%s, 60))", (name,)))


def test_a_signal_name_has_at_most_256_characters(conn: Conn) -> None:
    iid = start_waiting(conn)
    message = "Signal name is too long (257 characters); the limit is 256"
    with raises_exactly(errors.ProgramLimitExceeded, message):
        conn.execute("SELECT df.signal(%s, repeat('n', 257))", (iid,))
    with raises_exactly(errors.ProgramLimitExceeded, message):
        conn.execute("SELECT df.wait_for_signal(repeat('n', 257))")
    assert inbox(conn, iid) == 0
    assert one(conn, "SELECT df.signal(%s, repeat('n', 256))", (iid,)) == "OK"
    assert one(conn, "SELECT df.wait_for_signal(repeat('n', 256)) IS NOT NULL") is True


def test_a_signal_payload_over_max_signal_bytes_is_refused(conn: Conn, start_worker: Any) -> None:
    iid = start_waiting(conn)
    big = "x" * (MIB + 1)
    with raises_exactly(
        errors.ProgramLimitExceeded,
        "Signal data is 1048577 bytes, more than pg_durable.max_signal_bytes (1048576); send a "
        "smaller payload (for example the key of a row that holds the data), or raise the "
        "setting",
    ):
        conn.execute("SELECT df.signal(%s, 'go', %s)", (iid, big))
    # Bytes, not characters: 'é' is two.
    conn.execute("SET pg_durable.max_signal_bytes = 10")
    with pytest.raises(errors.ProgramLimitExceeded, match=r"^Signal data is 12 bytes, "):
        conn.execute("SELECT df.signal(%s, 'go', %s)", (iid, "é" * 6))
    assert inbox(conn, iid) == 0
    # A signal within the limit is delivered, and the workflow ends with it.
    assert one(conn, "SELECT df.signal(%s, 'go', '\"ok\"')", (iid,)) == "OK"
    start_worker()
    assert wait_for(conn, iid) == "completed"
    assert result_of(conn, iid) == {"signal_name": "go", "timed_out": False, "data": "ok"}


def test_an_instance_holds_at_most_10000_signals_not_yet_received(conn: Conn) -> None:
    iid = start_waiting(conn, "never")
    # 9,999 in the inbox already (put there directly: sending them one by one is slow).
    conn.execute(
        "INSERT INTO df._signals (instance_id, name, data, scope) "
        "SELECT %s, 'spam', to_jsonb(g), 'elsewhere' FROM generate_series(1, 9999) g",
        (iid,),
    )
    assert one(conn, "SELECT df.signal(%s, 'spam', '10000')", (iid,)) == "OK"
    with raises_exactly(
        errors.ProgramLimitExceeded,
        f"Instance {iid} already holds 10000 signals not yet received, pg_durable's limit per "
        "instance; its workflow must consume some (df.wait_for_signal) before more can be sent",
    ):
        conn.execute("SELECT df.signal(%s, 'spam', '10001')", (iid,))
    assert inbox(conn, iid) == 10000
    # Once some are received, signals can be sent again.
    conn.execute("DELETE FROM df._signals WHERE instance_id = %s AND data = '1'", (iid,))
    assert one(conn, "SELECT df.signal(%s, 'spam', '10001')", (iid,)) == "OK"


def test_the_inbox_limit_is_per_instance(conn: Conn) -> None:
    full = start_waiting(conn, "never")
    conn.execute(
        "INSERT INTO df._signals (instance_id, name, data, scope) "
        "SELECT %s, 'spam', to_jsonb(g), 'elsewhere' FROM generate_series(1, 10000) g",
        (full,),
    )
    other = start_waiting(conn, "go")
    assert one(conn, "SELECT df.signal(%s, 'go')", (other,)) == "OK"
    with pytest.raises(errors.ProgramLimitExceeded):
        conn.execute("SELECT df.signal(%s, 'x')", (full,))
