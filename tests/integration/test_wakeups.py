"""A worker hears of new work by NOTIFY and never sleeps through it.

A client that starts each workflow as soon as the previous one completes sends its df.start
while the worker is busy finishing up: its last claim found nothing, and it is about to wait.
The notification arrives then, with no slot idle to wake. Before, the slot went to sleep all
the same and the workflow waited for the next poll (a second by default; one workflow in
three with a worker of one slot).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pg_durable.embedded import free_port
from pg_durable.engine import worker
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import one
from tests.integration.test_metrics import scrape, value

_DONE_TRIGGER = """
CREATE FUNCTION public.test_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('test_done', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER test_done AFTER UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION public.test_done();
"""


def _run_one_after_the_other(conn: psycopg.Connection[Any], dsn: str, count: int) -> None:
    """Start ``count`` one-step workflows, each as soon as the last one has completed."""
    conn.execute(_DONE_TRIGGER)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN test_done")
        for n in range(count):
            instance_id = one(conn, "SELECT df.start('SELECT 1')")
            done = [note.payload for note in listener.notifies(timeout=5, stop_after=1)]
            assert done == [instance_id], f"workflow {n + 1} of {count} did not complete in 5 s"


def test_a_workflow_started_as_the_last_one_ends_runs_at_once(
    conn: psycopg.Connection[Any], dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    # A poll far longer than the test may take: every workflow runs because it was heard of.
    start_worker(concurrency=1, poll_interval=60.0)
    _run_one_after_the_other(conn, dsn, 40)


def test_a_slot_that_took_all_there_was_does_not_claim_again_to_find_nothing(
    conn: psycopg.Connection[Any], dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    """A claim that found one fiber of a backlog of one, whose batch then finished and left
    nothing runnable, had nothing to find when the slot claimed once more — a round trip
    between the commit and the sleep, during which the next workflow's notification found no
    slot idle and waited for it (0.3 ms of a lone step's 3). The slot goes to sleep at once,
    with the next timer read in its commit's round trip; new work announces itself."""
    port = free_port()
    start_worker(concurrency=1, poll_interval=60.0, metrics_port=port)
    before = value(scrape(port), "pg_durable_claim_duration_seconds_count")
    _run_one_after_the_other(conn, dsn, 40)
    claims = value(scrape(port), "pg_durable_claim_duration_seconds_count") - before
    # One claim each (a notification that arrives before the slot has gone to sleep makes it
    # look at once: that claim is the one that takes the workflow). Claiming again after each
    # made it 60 to 80.
    assert 40 <= claims <= 44, claims


def test_a_sequential_client_never_waits_for_a_batch_to_gather(
    conn: psycopg.Connection[Any],
    dsn: str,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When work arrives faster than a transaction each keeps up with, a slot that claims a
    small batch lets more gather for a batch window first. A client that starts each workflow
    after the last one's result passed the rate that counts as fast (200 a second) on its own,
    and on a worker of one slot (whose other slots, none, are all at work) its workflows
    waited the window again and again. Its next workflow cannot arrive while a batch runs —
    only once the commit is done — and a slot gathers only if work arrived meanwhile. (Here
    any rate is fast, and the window long: each wait would be plain.)"""
    monkeypatch.setattr(worker, "_BUSY_RATE", 1)
    port = free_port()
    start_worker(concurrency=1, poll_interval=60.0, batch_window=0.25, metrics_port=port)
    before = value(scrape(port), "pg_durable_claim_duration_seconds_count")
    began = time.monotonic()
    _run_one_after_the_other(conn, dsn, 20)
    took = time.monotonic() - began
    claims = value(scrape(port), "pg_durable_claim_duration_seconds_count") - before
    # A gathered batch is claimed twice (taken, let go, taken again after the window): it was
    # about 40 claims and 5 s for these 20. (A notification that arrives before the slot has
    # gone to sleep makes it look once more: a claim or two more.)
    assert 20 <= claims <= 25, claims
    assert took < 2.0, took


def test_a_slot_that_took_a_full_batch_claims_again(
    conn: psycopg.Connection[Any], dsn: str, start_worker: Callable[..., WorkerThread]
) -> None:
    """The claim counts the backlog only up to what the slots could take: a slot that took a
    full batch cannot tell whether more was left, and looks again rather than sleep until the
    next poll (one notification announced all of them)."""
    start_worker(concurrency=1, poll_interval=60.0, batch_size=4)
    started = one(conn, "SELECT array_agg(df.start('SELECT 1')) FROM generate_series(1, 12)")
    assert [wait_for(conn, instance_id, timeout=10) for instance_id in started] == [
        "completed"
    ] * 12


def test_a_burst_announced_once_runs_on_several_slots(
    conn: psycopg.Connection[Any], start_worker: Callable[..., WorkerThread]
) -> None:
    """A burst of work started in one transaction sends one notification, which wakes one
    slot; its claim tells it that more is left than it took, and it wakes another, which does
    the same. The claim's count of the backlog stopped at a full batch, so a slot that took
    one could never tell: it ran the whole burst alone, the other slots asleep until their next
    poll (a third fewer steps a second on 1,000 × 10)."""
    start_worker(concurrency=4, poll_interval=60.0, batch_size=8)
    time.sleep(0.5)  # every slot has looked once and gone to sleep
    started = one(
        conn,
        "SELECT array_agg(df.start('SELECT pg_backend_pid() AS pid')) FROM generate_series(1, 200)",
    )
    assert {wait_for(conn, instance_id) for instance_id in started} == {"completed"}
    # Each slot runs its steps on a connection of its own.
    slots = one(conn, "SELECT count(DISTINCT df.result(id)) FROM unnest(%s::text[]) id", [started])
    assert slots > 1
