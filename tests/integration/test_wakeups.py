"""A worker hears of new work by NOTIFY and never sleeps through it.

A client that starts each workflow as soon as the previous one completes sends its df.start
while the worker is busy finishing up: its last claim found nothing, and it is about to wait.
The notification arrives then, with no slot idle to wake. Before, the slot went to sleep all
the same and the workflow waited for the next poll (a second by default; one workflow in
three with a worker of one slot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from tests.fixtures.engine import WorkerThread
from tests.fixtures.sql import one

_DONE_TRIGGER = """
CREATE FUNCTION public.test_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('test_done', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER test_done AFTER UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION public.test_done();
"""


def test_a_workflow_started_as_the_last_one_ends_runs_at_once(
    conn: psycopg.Connection[Any], dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(_DONE_TRIGGER)
    # A poll far longer than the test may take: every workflow runs because it was heard of.
    start_worker(concurrency=1, poll_interval=60.0)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN test_done")
        for n in range(40):
            instance_id = one(conn, "SELECT df.start('SELECT 1')")
            done = [note.payload for note in listener.notifies(timeout=5, stop_after=1)]
            assert done == [instance_id], f"workflow {n + 1} of 40 did not complete within 5 s"
