"""Limits on what one workflow may make the system hold: a graph at df.start, a signal's name,
payload and inbox, a SQL step's result. Each fails with a message that says which limit and
what to do, leaves nothing half-written, and the worker goes on serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from pg_durable.engine.identity import RESULT_TOO_LARGE, Role, StepRows, StepRunner
from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.sql import one, raises_exactly
from tests.integration.test_engine import output_of, result_of

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


# -- the result of a SQL step ----------------------------------------------------------------


def bytes_message(limit: int, row: int) -> str:
    return (
        f"SQL step result exceeds pg_durable's limit of {limit} bytes (worker setting "
        f"max_result_bytes) at row {row}; return fewer or smaller rows, e.g. with LIMIT, or "
        "raise the limit"
    )


def rows_message(limit: int) -> str:
    return (
        f"SQL step result exceeds pg_durable's limit of {limit} rows (worker setting "
        "max_result_rows); return fewer rows, e.g. with LIMIT or an aggregate, or raise the limit"
    )


def node_results(conn: Conn, instance_id: str) -> list[tuple[str, Any]]:
    rows = conn.execute(
        "SELECT status, result FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL' "
        "ORDER BY status",
        (instance_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_reset() -> bool:
    """Reset this process's peak resident set size (Linux); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident set size in bytes since the last reset (VmHWM)."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_a_step_returning_200_mb_fails_fast_and_the_worker_stays_small(
    conn: Conn, worker: WorkerThread
) -> None:
    # Warm up: the worker's connections and caches exist before the peak is measured.
    assert run_workflow(conn, "'SELECT 1 AS one'")[1] == "completed"
    measured = peak_rss_reset()
    before = peak_rss() if measured else 0
    started = time.monotonic()
    iid, status = run_workflow(conn, "'SELECT repeat(''x'', 200 * 1024 * 1024) AS big'")
    elapsed = time.monotonic() - started
    assert status == "failed"
    assert output_of(conn, iid) == bytes_message(16 * MIB, 1)
    assert node_results(conn, iid) == [("failed", bytes_message(16 * MIB, 1))]
    assert elapsed < 10, elapsed
    if measured:  # the worker runs in this process: its peak is ours
        assert peak_rss() - before < 64 * MIB, peak_rss() - before
    # The worker goes on serving.
    iid, status = run_workflow(conn, "'SELECT 2 AS two'")
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"two": 2}], "row_count": 1}


def test_many_rows_stop_at_the_row_cap(conn: Conn, worker: WorkerThread) -> None:
    iid, status = run_workflow(conn, "'SELECT g FROM generate_series(1, 1000000) g'")
    assert status == "failed"
    assert output_of(conn, iid) == rows_message(100_000)
    # Up to the cap is fine.
    iid, status = run_workflow(conn, "'SELECT g FROM generate_series(1, 100000) g'")
    assert status == "completed"
    assert result_of(conn, iid)["row_count"] == 100_000


def test_many_rows_stop_at_the_first_row_past_the_byte_cap(
    conn: Conn, worker: WorkerThread
) -> None:
    # Each row is {"r":"xxx…"}: 1,000 bytes of text and 8 of JSON around it.
    iid, status = run_workflow(
        conn, "'SELECT repeat(''x'', 1000) AS r FROM generate_series(1, 20000)'"
    )
    assert status == "failed"
    assert output_of(conn, iid) == bytes_message(16 * MIB, 16 * MIB // 1008 + 1)


def test_a_step_over_the_cap_leaves_nothing_half_written(conn: Conn, worker: WorkerThread) -> None:
    conn.execute("CREATE TABLE steps_done (step int)")
    conn.execute("CREATE TABLE bulk (x int)")
    iid, status = run_workflow(
        conn,
        """'INSERT INTO steps_done VALUES (1)'
           ~> 'INSERT INTO bulk SELECT g FROM generate_series(1, 200000) g RETURNING x'
           ~> 'INSERT INTO steps_done VALUES (3)'""",
    )
    assert status == "failed"
    assert output_of(conn, iid) == rows_message(100_000)
    # The first step committed; the second rolled back whole; the third never ran.
    assert conn.execute("SELECT step FROM steps_done").fetchall() == [(1,)]
    assert one(conn, "SELECT count(*) FROM bulk") == 0
    assert sorted(status for status, _ in node_results(conn, iid)) == [
        "completed",
        "failed",
        "pending",
    ]


# The caps below the worker: one StepRunner, one batch, small caps.


async def run_batch(
    dsn: str, runner: StepRunner, statements: Sequence[str]
) -> tuple[list[StepRows | None], int]:
    """Run ``statements`` as one batch (one transaction, committed); also the number of rows
    of table ``bulk`` afterwards."""
    async with (
        await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, row_factory=dict_row
        ) as control,
        await psycopg.AsyncConnection.connect(dsn) as conn,
    ):
        cur = await control.execute(
            "SELECT oid::int AS oid, rolname FROM pg_roles WHERE rolname = current_user"
        )
        row = await cur.fetchone()
        assert row is not None
        role = Role(row["oid"], row["rolname"])
        await runner.ensure_function(control, role)
        async with conn.transaction():
            results = await runner.run_steps(conn, [(role, s, True) for s in statements], 60.0)
        cur = await control.execute("SELECT count(*) AS n FROM bulk")
        counted = await cur.fetchone()
        assert counted is not None
        return results, int(counted["n"])


def test_the_caps_are_the_workers_not_the_statements(conn: Conn, dsn: str) -> None:
    conn.execute("CREATE TABLE bulk (x int)")
    runner = StepRunner(max_result_bytes=100, max_result_rows=5)
    results, bulk = asyncio.run(
        run_batch(
            dsn,
            runner,
            [
                # Each row is {"r":"xxx…"}: 58 bytes; the second passes 100.
                "SELECT repeat('x', 50) AS r FROM generate_series(1, 3)",
                "INSERT INTO bulk SELECT g FROM generate_series(1, 6) g RETURNING x",
                "SELECT 1 AS one",
            ],
        )
    )
    first, second, third = results
    assert first is not None and first.error is not None
    assert (first.error.sqlstate, first.error.message) == (RESULT_TOO_LARGE, bytes_message(100, 2))
    assert first.rows == []
    assert second is not None and second.error is not None
    assert second.error.message == rows_message(5)
    assert bulk == 0  # the INSERT rolled back with its subtransaction
    assert third is not None and third.error is None and third.rows == ['{"one":1}']


def test_a_batch_starts_no_step_once_its_results_reach_the_caps(conn: Conn, dsn: str) -> None:
    conn.execute("CREATE TABLE bulk (x int)")
    three = "SELECT g FROM generate_series(1, 3) g"  # 3 rows of 7 bytes
    by_rows = StepRunner(max_result_bytes=1000, max_result_rows=5)
    results, _ = asyncio.run(run_batch(dsn, by_rows, [three, three, three]))
    assert [r is not None and len(r.rows) for r in results] == [3, 3, False]
    by_bytes = StepRunner(max_result_bytes=40, max_result_rows=1000)
    results, _ = asyncio.run(run_batch(dsn, by_bytes, [three, three, three]))
    assert [r is not None and len(r.rows) for r in results] == [3, 3, False]
    # A step that fails returns no rows, and counts for nothing.
    failing = "SELECT 1 / 0 AS x"
    results, _ = asyncio.run(run_batch(dsn, by_rows, [failing, three, failing, three]))
    assert [r is not None for r in results] == [True, True, True, True]


def test_the_worker_settings_set_the_caps(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker(max_result_bytes=100, max_result_rows=5)
    iid, status = run_workflow(conn, "'SELECT g FROM generate_series(1, 6) g'")
    assert status == "failed"
    assert output_of(conn, iid) == rows_message(5)
    iid, status = run_workflow(conn, "'SELECT repeat(''x'', 200) AS r'")
    assert status == "failed"
    assert output_of(conn, iid) == bytes_message(100, 1)
