"""Lost signals the chaos suite found (fixed: a wait only reads its signal; the signal leaves
the inbox with the fiber's plan, in df._commit_steps), reproduced without any fault.

A SIGNAL step takes its signal from the inbox (``take_signal``: a DELETE in the transaction of
the fiber) and the fiber goes on to the step after the wait in the same transaction. When that
transaction then commits something other than the fiber's plan, the DELETE commits without the
wait's completion, and the fiber, run again, finds an empty inbox and waits for ever:

* the step after the wait is an autocommit statement (VACUUM, CREATE INDEX CONCURRENTLY):
  ``Executor.run_single`` commits the fiber's lease (``lease_fiber``) in that transaction,
  and the fiber, claimed again, stands at the SIGNAL node still;
* a batch: the worker claimed several waiting fibers together and moves one to a
  transaction of its own (``RunAlone``: its next statement is one it has seen run slowly,
  ``SqlSteps.is_slow``; or a conflict, a missing step function, a result of another shape;
  or ``NeedsAutocommit``); ``_advance`` drops what the interpreter did for it, the batch
  commits the rest — the DELETE included.

Under chaos the second needs no shared statement: a fault rolls a batch back after the step
after the wait ran slowly once, and the fiber, claimed again in a batch, meets its own step
"known slow".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread, wait_for

Conn = psycopg.Connection[Any]

WAITERS = 20


def test_a_wait_followed_by_an_autocommit_step_keeps_its_signal(
    conn: Conn, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker()
    conn.execute("CREATE TABLE scratch (n int)")
    row = conn.execute(
        "SELECT df.start(df.seq(df.wait_for_signal('go'), 'VACUUM scratch'))"
    ).fetchone()
    assert row is not None
    iid = str(row[0])
    conn.execute("SELECT df.signal(%s, 'go', '1')", (iid,))
    deadline = time.monotonic() + 8
    status = None
    while time.monotonic() < deadline and status != ("completed",):
        status = conn.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()
        time.sleep(0.1)
    inbox = conn.execute("SELECT count(*) FROM df._signals").fetchone()
    assert (status, inbox) == (("completed",), (0,))


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
