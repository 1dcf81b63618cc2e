"""What a worker counts and serves on ``/metrics``: the ``pg_durable_*`` families.

Steps are counted from the plans a worker commits, never from work that rolled back: a batch
that runs again alone, a step cut short by a lost connection or a stale fiber counts once,
when its checkpoint commits. A plan's stamps keep only each node's last status, so the plans
of a worker that exposes metrics record every stamp in a :class:`StampJournal` — a node
started and finished in one transaction (a zero-second sleep, a signal already in the inbox)
counts as both.

The queue gauges come from the database: one statement, each count bounded by
:data:`QUEUE_COUNT_LIMIT` rows of the ``_fibers_ready`` index, run when a scrape finds the last
sample older than :data:`QUEUE_SAMPLE_SECONDS` (so frequent scrapes, or several scrapers, do
not add load), on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import psycopg

from pg_durable.engine.metrics import Counter, Gauge, Histogram, Labels, Registry
from pg_durable.graph.interpreter import STEP_TYPES, Plan, Stamp
from pg_durable.graph.model import Graph
from pg_durable.queries import query

logger = logging.getLogger(__name__)

#: Seconds a sample of the queue serves scrapes before the next one queries again.
QUEUE_SAMPLE_SECONDS: Final = 5.0
#: Most fibers each queue gauge counts: a larger queue reads as this many (at least).
QUEUE_COUNT_LIMIT: Final = 10_000
#: Seconds a scrape waits for the queue sample before it answers with the last one.
_SAMPLE_TIMEOUT: Final = 2.0
#: Seconds: a step's work, from a trivial statement to a long HTTP request or batch job.
_STEP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300
)  # fmt: skip
#: Seconds: a claim's round trip, a fraction of a millisecond on an idle local server.
_CLAIM_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5
)  # fmt: skip

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class StampJournal(dict[str, Stamp]):
    """A plan's stamps (node id → its last stamp) that also remembers every stamp written,
    in order, as (node id, status)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def __setitem__(self, node_id: str, stamp: Stamp) -> None:
        self.events.append((node_id, stamp.status))
        super().__setitem__(node_id, stamp)


class WorkerMetrics:
    """The metrics of one worker: updated by its executor and slots, rendered per scrape."""

    def __init__(
        self,
        *,
        worker_id: str,
        hostname: str,
        version: str,
        slots: Callable[[], tuple[int, int]],
        connect: Connect,
    ) -> None:
        """``slots`` tells how many slots are busy and idle now; ``connect`` opens the
        connection the queue gauges are sampled on."""
        self.registry = r = Registry()
        by_type = ("node_type",)
        self.started = r.add(
            Counter(
                "pg_durable_steps_started_total",
                "Steps started (committed as running), by node type; each attempt of a retry "
                "counts.",
                by_type,
            )
        )
        self.completed = r.add(
            Counter("pg_durable_steps_completed_total", "Steps completed, by node type.", by_type)
        )
        self.failed = r.add(
            Counter(
                "pg_durable_steps_failed_total",
                "Steps failed (their error recorded, timeouts included), by node type.",
                by_type,
            )
        )
        self.step_seconds = r.add(
            Histogram(
                "pg_durable_step_duration_seconds",
                "Time a step's work took in this worker: a SQL statement, an HTTP request.",
                _STEP_BUCKETS,
                by_type,
            )
        )
        self.instances = r.add(
            Counter(
                "pg_durable_instances_finished_total",
                "Workflow instances this worker finished, by status (completed, failed).",
                ("status",),
            )
        )
        self.claim_seconds = r.add(
            Histogram(
                "pg_durable_claim_duration_seconds",
                "Round trip of a claim for runnable fibers (those that found none included).",
                _CLAIM_BUCKETS,
            )
        )
        self._queue = _QueueSample(connect)
        r.add(
            Gauge(
                "pg_durable_queue_depth",
                f"Fibers runnable now in the database (at most {QUEUE_COUNT_LIMIT} counted; "
                f"sampled at most every {QUEUE_SAMPLE_SECONDS:g} s).",
                reading=lambda: self._queue.read("runnable"),
            )
        )
        r.add(
            Gauge(
                "pg_durable_fibers_waiting",
                "Fibers due later in the database, by what they wait for: timer (a sleep, a "
                "retry's backoff, a schedule, a loop's pace, a step leased outside any "
                "transaction) or signal (among the first "
                f"{QUEUE_COUNT_LIMIT} by due time).",
                ("reason",),
                reading=self._queue.waiting,
            )
        )
        r.add(
            Gauge(
                "pg_durable_queue_sampled_timestamp_seconds",
                "When the queue gauges were last read from the database (Unix time).",
                reading=lambda: self._queue.read("sampled_at"),
            )
        )
        up = r.add(Gauge("pg_durable_worker_up", "1 while the worker runs."))
        up.set(1)
        info = r.add(
            Gauge(
                "pg_durable_worker_info",
                "The worker's identity (as in df.workers); always 1.",
                ("worker_id", "hostname", "version"),
            )
        )
        info.set(1, worker_id, hostname, version)
        r.add(
            Gauge("pg_durable_worker_start_time_seconds", "When the worker started (Unix time).")
        ).set(time.time())
        self.heartbeat = r.add(
            Gauge(
                "pg_durable_worker_last_heartbeat_timestamp_seconds",
                "When the worker last wrote its heartbeat to df._workers (Unix time).",
            )
        )
        r.add(
            Gauge(
                "pg_durable_worker_slots",
                "The worker's slots by state: busy (on a batch) or idle.",
                ("state",),
                reading=lambda: _slot_states(slots()),
            )
        )

    # -- updates (cheap: called for every batch) --------------------------------------------
    def committed(self, graph: Graph, plan: Plan, seconds: float | None) -> None:
        """Count what a committed plan did; ``seconds``: how long its SQL statement took."""
        stamps = plan.stamps
        events = stamps.events if isinstance(stamps, StampJournal) else ()
        for node_id, status in events:
            node_type = graph.nodes[node_id].type
            if node_type not in STEP_TYPES:
                continue
            if status == "running":
                self.started.inc(node_type)
            elif status == "completed":
                self.completed.inc(node_type)
            elif status == "failed":
                self.failed.inc(node_type)
        if seconds is not None:
            self.step_seconds.observe(seconds, "SQL")
        if plan.instance is not None:
            self.instances.inc(plan.instance.status)

    def step_took(self, node_type: str, seconds: float) -> None:
        """A step's work done outside any transaction (an HTTP request, an autocommit
        statement) took ``seconds``."""
        self.step_seconds.observe(seconds, node_type)

    def instance_failed(self) -> None:
        """The worker failed an instance that could not run (a bad graph, a dropped role)."""
        self.instances.inc("failed")

    def claimed(self, seconds: float) -> None:
        self.claim_seconds.observe(seconds)

    def heartbeat_written(self) -> None:
        self.heartbeat.set(time.time())

    # -- scrapes ----------------------------------------------------------------------------
    async def render(self) -> str:
        """The text a scrape gets (the queue sampled again first if its sample is old)."""
        await self._queue.refresh()
        return self.registry.render()

    async def close(self) -> None:
        await self._queue.close()


class _QueueSample:
    """The queue gauges' last reading from the database, and when it was taken."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._tried = -QUEUE_SAMPLE_SECONDS  # (monotonic clock)
        self._failing = False
        self.values: dict[str, float] = {}

    def read(self, name: str) -> list[tuple[Labels, float]]:
        """The series of one gauge: none until a sample succeeded."""
        return [((), self.values[name])] if name in self.values else []

    def waiting(self) -> list[tuple[Labels, float]]:
        return [((r,), self.values[r]) for r in ("timer", "signal") if r in self.values]

    async def refresh(self) -> None:
        """Sample the queue again if the last attempt is older than QUEUE_SAMPLE_SECONDS; a
        database that does not answer in time leaves the last sample (and its timestamp)."""
        async with self._lock:  # concurrent scrapes: one query, the others read its result
            if time.monotonic() - self._tried < QUEUE_SAMPLE_SECONDS:
                return
            self._tried = time.monotonic()
            try:
                await asyncio.wait_for(self._sample(), _SAMPLE_TIMEOUT)
            except (psycopg.Error, TimeoutError) as exc:
                if not self._failing:  # one line per outage
                    logger.warning(
                        "could not sample the queue for /metrics: %s",
                        str(exc).strip() or type(exc).__name__,
                        extra={"action": "metrics_sample_failed"},
                    )
                self._failing = True
                await self.close()
            else:
                self._failing = False

    async def _sample(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await self._connect()
        cur = await self._conn.execute(query("metrics_queue"), {"limit": QUEUE_COUNT_LIMIT})
        row = await cur.fetchone()
        if row is not None:
            self.values = {
                "runnable": float(row["runnable"]),
                "timer": float(row["timers"]),
                "signal": float(row["signals"]),
                "sampled_at": time.time(),
            }

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


def _slot_states(counts: tuple[int, int]) -> Iterable[tuple[Labels, float]]:
    busy, idle = counts
    return [(("busy",), float(busy)), (("idle",), float(idle))]
