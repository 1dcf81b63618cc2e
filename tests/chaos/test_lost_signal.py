"""A lost signal the chaos suite found, reproduced without any fault.

A worker that claims several waiting fibers in one batch takes each one's signal from the inbox
(``take_signal``: a DELETE in the batch's transaction) and goes on to the SQL step after the
wait. When that statement is one the worker has seen run slowly (``SqlSteps.is_slow``: longer
than ``batch_window``), ``Executor._step`` raises ``RunAlone``; ``_advance`` moves the fiber to
``alone`` and drops what the interpreter did — but not the DELETE, which commits with the rest
of the batch. Run again alone, the fiber finds its inbox empty and waits for ever.

Under chaos the same happens without a shared statement: a fault rolls back a batch after the
step ran slowly once, and the fiber, claimed again in a batch, meets its own step "known slow".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, wait_for

Conn = psycopg.Connection[Any]

LOST_SIGNAL_BUG = (
    "lost signal: a fiber claimed in a batch consumes its signal (take_signal) and is then "
    "sent to run alone (RunAlone: its next statement is known slow), and the batch commits "
    "the consumed signal without the wait's completion"
)
WAITERS = 20


@pytest.mark.xfail(strict=True, reason=LOST_SIGNAL_BUG)
def test_a_signal_taken_in_a_batch_is_not_lost_when_its_next_step_runs_alone(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker(concurrency=1)  # one slot: the signalled fibers are claimed in one batch
    dsl = "df.seq(df.wait_for_signal('go'), 'SELECT pg_sleep(0.1)')"
    # One instance first, so that the worker knows the step after the wait is slow.
    row = conn.execute(f"SELECT df.start({dsl})").fetchone()
    assert row is not None
    conn.execute("SELECT df.signal(%s, 'go', '1')", (row[0],))
    assert wait_for(conn, str(row[0]), 20) == "completed"

    with conn.transaction():
        ids = [
            str(r[0])
            for r in conn.execute(f"SELECT df.start({dsl}) FROM generate_series(1, %s)", (WAITERS,))
        ]
    deadline = time.monotonic() + 20
    while conn.execute(
        "SELECT count(*) FROM df._fibers WHERE awaiting = 'go' AND instance_id = ANY(%s)", (ids,)
    ).fetchone() != (WAITERS,):
        assert time.monotonic() < deadline, "the instances never reached their wait"
        time.sleep(0.05)
    with conn.transaction():  # all at once: one batch takes them
        for iid in ids:
            conn.execute("SELECT df.signal(%s, 'go', '1')", (iid,))

    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        statuses = dict(
            conn.execute(
                "SELECT status, count(*) FROM df.instances WHERE id = ANY(%s) GROUP BY 1", (ids,)
            ).fetchall()
        )
        if statuses.get("completed") == WAITERS:
            break
        time.sleep(0.1)
    inbox = conn.execute("SELECT count(*) FROM df._signals").fetchone()
    assert (statuses, inbox) == ({"completed": WAITERS}, (0,))
