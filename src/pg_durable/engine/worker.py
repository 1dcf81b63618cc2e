"""The worker: slots that claim and run fibers, a listener, a heartbeat and a sweeper.

Each slot owns a step connection (and a side connection) and runs one batch at a time
(executor.py), so ``concurrency`` slots run that many transactions at once. Slots wake on
``NOTIFY pg_durable`` (sent by df.start's trigger and by steps that make work runnable), one
per notification, and poll as a fallback — NOTIFY is a hint, the rows are the truth. A lost
connection (PostgreSQL restarted, backend terminated) is logged once and re-established with
exponential backoff; the batch in flight is rolled back by PostgreSQL and runs again, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads

from pg_durable import __version__
from pg_durable.engine import metrics_server, remote
from pg_durable.engine.executor import Batch, Executor
from pg_durable.engine.faults import transient
from pg_durable.engine.http import HttpClient, HttpSteps
from pg_durable.engine.identity import StepRunner
from pg_durable.engine.remote import RemoteDatabases
from pg_durable.engine.roundtrip import run_together
from pg_durable.engine.sqlstep import AConn, Connections
from pg_durable.engine.worker_metrics import WorkerMetrics
from pg_durable.errors import SchemaError
from pg_durable.queries import query
from pg_durable.schema import SCHEMA_VERSION
from pg_durable.settings import Settings

logger = logging.getLogger(__name__)

CHANNEL = "pg_durable"
_SWEEP_INTERVAL = 30.0
#: Fibers the sweep examines per statement, and statements per interval: a table of more
#: fibers than that is swept over several intervals, so that the sweep costs the same whatever
#: the work in flight (fibers left behind are rare; a ready one is dropped when claimed).
_SWEEP_BATCH = 1000
_SWEEP_BATCHES = 10
#: Finished instances removed per transaction (SPEC's reclaim batch).
_PRUNE_BATCH = 1000
#: Notifications of new work per second above which a slot lets a small batch gather first.
_BUSY_RATE = 200
_SMALL_BATCH = 8
# Session settings of every worker connection: results are rendered in UTC/ISO, and df.*
# guards know they run inside a workflow. RESET ALL after each step returns to these.
_STEP_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c df.in_workflow=true"
# A worker cut off from the database (a partition, a machine gone, a frozen process) would hold
# its claims — row locks of an open transaction — until the server notices. Keepalives make
# the server (and libpq) notice a dead peer within about 20 s; a transaction left idle for
# longer than the lease ends the session, so its claims go to other workers within that bound.
_KEEPALIVES = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=2"


def _json_dumps(value: Any) -> bytes:
    """JSON for the worker's statements (a batch's plans are most of what it sends): orjson,
    ten times quicker than the json module; that for what orjson refuses (an integer beyond
    64 bits). Plans need no such thing: their only values of unbounded size are JSON texts
    (steps' results), as strings or as orjson.Fragment — which only orjson can write."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def _json_loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The engine's own json and jsonb values as the worker reads them (fibers' results and
    state, a new instance's graph with its claim): orjson, several times quicker than the
    json module; that for what orjson refuses (nested deeper than it reads). Steps' results
    are no such values: a fiber holds them as JSON text, in strings."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)


@dataclass(slots=True)
class Slot:
    index: int
    conns: Connections | None = None
    #: The instance of the fiber this slot runs alone right now (see _internal_error).
    instance_id: str | None = None
    #: When the batch this slot works on began (monotonic clock); None while it idles.
    batch_started: float | None = None
    #: Waiting for work (in _idle); set again by whoever wakes it through ``wake``.
    idle: bool = False
    #: How many notifications of new work the worker had heard when this slot last began to
    #: look for work (see _idle).
    heard: int = 0
    #: How many it heard while this slot's last batch ran, from its claim to its commit (see
    #: _run_available: whether to let a small batch gather).
    heard_while_working: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Worker:
    """Executes workflows until :meth:`request_stop` is called."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = uuid.uuid4()

        #: What /metrics serves (None: the worker serves no metrics, and counts nothing).
        self.metrics = (
            WorkerMetrics(
                worker_id=str(self.id),
                hostname=socket.gethostname(),
                version=__version__,
                slots=self._slot_counts,
                connect=lambda: self._connect("metrics"),
            )
            if settings.metrics_port
            else None
        )
        self._metrics_server: asyncio.Server | None = None

        def runner() -> StepRunner:
            return StepRunner(
                max_result_bytes=settings.max_result_bytes,
                max_result_rows=settings.max_result_rows,
            )

        self.executor = Executor(
            runner(),
            RemoteDatabases(
                lambda database: self._connect("workflow-sql", step=True, database=database),
                runner,
                slow_seconds=settings.batch_window,
            ),
            HttpSteps(HttpClient(settings.http_max_response_bytes), lambda: self._connect("http")),
            batch_window=settings.batch_window,
            loop_max_iterations=settings.loop_max_iterations,
            loop_min_interval=settings.loop_min_interval,
            step_timeout=settings.step_timeout,
            lease_seconds=settings.lease_seconds,
            metrics=self.metrics,
        )
        self._slots = [Slot(i) for i in range(settings.concurrency)]
        self._stopping = asyncio.Event()
        self._control: AConn | None = None
        self._ddl: AConn | None = None
        self._control_lock = asyncio.Lock()
        self._ddl_lock = asyncio.Lock()
        self._side_tasks: list[asyncio.Task[None]] = []
        #: When the notifications of new work of the last second arrived (see _busy).
        self._arrivals: deque[float] = deque()
        #: Notifications of new work heard so far.
        self._notified = 0
        self.started = asyncio.Event()

    @property
    def log_extra(self) -> dict[str, str]:
        return {"worker_id": str(self.id)}

    def request_stop(self) -> None:
        """Stop claiming work; in-flight steps get ``shutdown_grace`` seconds to finish."""
        if not self._stopping.is_set():
            logger.info("stopping worker", extra={"action": "worker_stopping", **self.log_extra})
        self._stopping.set()

    # -- connections ----------------------------------------------------------------------
    async def _connect(
        self, purpose: str, *, step: bool = False, database: str | None = None
    ) -> AConn:
        dsn = self.settings.dsn
        if database is not None:  # steps of instances that run in another database
            dsn = make_conninfo(dsn, dbname=database)
        idle = f"-c idle_in_transaction_session_timeout={int(self.settings.lease_seconds * 1000)}"
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            row_factory=dict_row,
            application_name=f"pg_durable:worker:{purpose}",
            options=" ".join((_STEP_OPTIONS if step else "-c TimeZone=UTC", _KEEPALIVES, idle)),
            # No prepared statements where steps run: a step may DEALLOCATE ALL (or DISCARD
            # ALL), also from inside a function, and the worker's next statement would fail.
            prepare_threshold=None if step else 5,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=2,
        )
        set_json_dumps(_json_dumps, conn)
        set_json_loads(_json_loads, conn)
        return conn

    async def _control_conn(self) -> AConn:
        if self._control is None or self._control.closed or self._control.broken:
            self._control = await self._connect("management")
        return self._control

    async def _ddl_conn(self) -> AConn:
        """The connection slots share for step-function DDL (serialised by the StepRunner)."""
        # Slots start together: without the lock each would open (and leak) its own.
        async with self._ddl_lock:
            if self._ddl is None or self._ddl.closed or self._ddl.broken:
                if self._ddl is not None:
                    await self._ddl.close()
                self._ddl = await self._connect("management")
            return self._ddl

    async def _check_schema(self) -> None:
        conn = await self._control_conn()
        try:
            cur = await conn.execute(query("schema_version"))
            row = await cur.fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaError(
                "the df schema is not installed in this database: run `pg-durable install`"
            ) from exc
        version = None if row is None else row["value"]
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"this worker needs df schema {SCHEMA_VERSION} but the database has {version}: "
                "run `pg-durable install` to upgrade it"
            )

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stopped. Raises if the database cannot be reached at start-up."""
        if self.metrics is not None:  # first: a port in use stops the worker before it connects
            self._metrics_server = await metrics_server.start(
                self.settings.metrics_host, self.settings.metrics_port, self.metrics.render
            )
        await self._check_schema()
        conn = await self._control_conn()
        await conn.execute(
            query("register_worker"),
            {
                "id": self.id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "concurrency": self.settings.concurrency,
            },
        )
        logger.info(
            "worker started with %d slots",
            self.settings.concurrency,
            extra={"action": "worker_started", **self.log_extra},
        )
        self._side_tasks = [
            asyncio.create_task(
                self._resilient("listener", self._listen), name="pg_durable-listener"
            ),
            asyncio.create_task(
                self._resilient("heartbeat", self._heartbeat), name="pg_durable-heartbeat"
            ),
            asyncio.create_task(self._resilient("sweeper", self._sweep), name="pg_durable-sweeper"),
        ]
        for slot in self._slots:
            slot.task = asyncio.create_task(
                self._slot_loop(slot), name=f"pg_durable-slot-{slot.index}"
            )
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._wake_slots()
        slot_tasks = [s.task for s in self._slots if s.task is not None]
        _done, pending = (
            await asyncio.wait(slot_tasks, timeout=self.settings.shutdown_grace)
            if slot_tasks
            else (set(), set())
        )
        if pending:
            logger.warning(
                "cancelling %d steps still running after the grace period",
                len(pending),
                extra={"action": "worker_cancel_steps", **self.log_extra},
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._side_tasks:
            task.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        if self._metrics_server is not None:
            await metrics_server.stop(self._metrics_server)
        if self.metrics is not None:
            await self.metrics.close()
        with contextlib.suppress(psycopg.Error):
            conn = await self._control_conn()
            await asyncio.shield(conn.execute(query("stop_worker"), {"id": self.id}))
        for slot in self._slots:
            await _close(slot.conns)
        for shared in (self._control, self._ddl):
            if shared is not None:
                await shared.close()
        await self.executor.http.close()
        logger.info("worker stopped", extra={"action": "worker_stopped", **self.log_extra})

    async def _resilient(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run a side task forever, reconnecting with backoff when the database goes away."""
        backoff = _Backoff(self.settings.reconnect_max_backoff)
        while not self._stopping.is_set():
            try:
                await body()
                backoff.reset()
            except psycopg.Error as exc:
                if not transient(exc):
                    raise
                await self._drop_shared_connections()
                delay = backoff.next()
                if backoff.failures == 1:  # one line per outage, not one per attempt
                    logger.warning(
                        "%s interrupted (%s); retrying with backoff",
                        name,
                        _first_line(exc),
                        extra={"action": "reconnect", **self.log_extra},
                    )
                await self._sleep_or_stop(delay)

    async def _drop_shared_connections(self) -> None:
        """Close the connections the side tasks and slots share after an error that says the
        server cannot work right now: one that refuses writes (a standby after a failover) is
        still open, and only a new connection finds out whether it takes writes again."""
        for shared in (self._control, self._ddl):
            if shared is not None and not shared.closed:
                with contextlib.suppress(psycopg.Error):
                    await shared.close()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- side tasks -----------------------------------------------------------------------
    async def _listen(self) -> None:
        conn = await self._connect("poll")
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
            # Anything committed while we were not listening: look once.
            self._wake_slots()
            async for note in conn.notifies():
                payload = note.payload
                if payload == "work":
                    self._on_work()
                elif payload.startswith("cancel:"):
                    await self._cancel_running(_in_instance(payload[len("cancel:") :]))
                elif payload.startswith("cancel-scope:"):
                    await self._cancel_running(_in_scope(payload[len("cancel-scope:") :]))
        finally:
            await conn.close()

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            async with self._control_lock:
                conn = await self._control_conn()
                await conn.execute(query("heartbeat"), {"id": self.id})
            if self.metrics is not None:
                self.metrics.heartbeat_written()
            await self._sleep_or_stop(self.settings.heartbeat_interval)

    async def _sweep(self) -> None:
        after = ""  # where the sweep of fibers goes on (df._sweep_fibers)
        while not self._stopping.is_set():
            for _ in range(_SWEEP_BATCHES):
                async with self._control_lock:
                    conn = await self._control_conn()
                    cur = await conn.execute(
                        query("sweep"), {"after": after, "batch": _SWEEP_BATCH}
                    )
                    row = await cur.fetchone()
                after = "" if row is None or row["last"] is None else row["last"]
                if not after:
                    break
            async with self._control_lock:
                conn = await self._control_conn()
                await conn.execute(query("sweep_signals"))
                await conn.execute(query("wake_signalled"))
            await self._prune()
            await self._sleep_or_stop(_SWEEP_INTERVAL)

    async def _prune(self) -> None:
        """Remove finished instances past pg_durable.retention_days, a batch per transaction
        (the control lock is let go between batches, so nothing waits long for it)."""
        removed = _PRUNE_BATCH
        total = 0
        while removed == _PRUNE_BATCH and not self._stopping.is_set():
            async with self._control_lock:
                conn = await self._control_conn()
                try:
                    cur = await conn.execute(query("prune_finished"), {"batch": _PRUNE_BATCH})
                except psycopg.errors.InvalidParameterValue as exc:
                    logger.warning(
                        "not removing finished instances: %s",
                        exc.diag.message_primary,
                        extra={"action": "retention", **self.log_extra},
                    )
                    return
                row = await cur.fetchone()
            removed = int(row["removed"]) if row is not None else 0
            total += removed
        if total:
            logger.info(
                "removed %d finished instances past their retention period",
                total,
                extra={"action": "retention", **self.log_extra},
            )

    def _on_work(self) -> None:
        """New work was committed somewhere: one slot looks (and, if it finds some, it wakes
        the next — _run_available)."""
        self._arrivals.append(time.monotonic())
        self._notified += 1
        if not self._about_to_look():
            self._wake_slots(1)

    def _busy(self) -> bool:
        """Whether new work arrives faster than a transaction per arrival keeps up with
        (more than _BUSY_RATE notifications in the last second)."""
        now = time.monotonic()
        while self._arrivals and self._arrivals[0] < now - 1.0:
            self._arrivals.popleft()
        return len(self._arrivals) >= _BUSY_RATE

    def _about_to_look(self) -> bool:
        """Whether a slot began a batch less than a batch window ago: it claims again as soon
        as that batch commits, and takes new work with it — a batch rather than a transaction
        per notification. (A slot busy for longer, with a slow statement, say, does not
        count: then another slot wakes.)"""
        recent = time.monotonic() - self.settings.batch_window
        return any(s.batch_started is not None and s.batch_started > recent for s in self._slots)

    def _wake_slots(self, count: int | None = None) -> None:
        """Wake ``count`` idle slots (all of them by default)."""
        for slot in self._slots:
            if count is not None and count <= 0:
                return
            if slot.idle:
                slot.idle = False
                slot.wake.set()
                if count is not None:
                    count -= 1

    def _slot_counts(self) -> tuple[int, int]:
        """Slots on a batch now, and the others (for the metrics)."""
        busy = sum(s.batch_started is not None for s in self._slots)
        return busy, len(self._slots) - busy

    def _awake(self) -> int:
        """Slots at work or woken to look for work: the ones the backlog is shared among."""
        return sum(not s.idle for s in self._slots)

    async def _cancel_running(self, match: Callable[[tuple[str, str]], bool]) -> None:
        """Cancel the statements running for the (instance, scope) pairs that ``match``."""
        for slot in self._slots:
            if slot.conns is None:
                continue
            for conns in (slot.conns, *slot.conns.remote.values()):
                if any(match(running) for running in conns.running):
                    conns.cancel_pending = True
                    with contextlib.suppress(psycopg.Error):
                        await conns.conn.cancel_safe()

    # -- slots ----------------------------------------------------------------------------
    async def _slot_loop(self, slot: Slot) -> None:
        backoff = _Backoff(self.settings.reconnect_max_backoff)
        while not self._stopping.is_set():
            try:
                if slot.conns is None or _lost(slot.conns.conn) or _lost(slot.conns.side):
                    await _close(slot.conns)
                    slot.conns = None
                    slot.conns = Connections(
                        conn=await self._connect("workflow-sql", step=True),
                        control=await self._ddl_conn(),
                        side=await self._connect("workflow-sql", step=True),
                    )
                    if backoff.failures:
                        logger.info(
                            "slot %d reconnected",
                            slot.index,
                            extra={"action": "reconnected", **self.log_extra},
                        )
                next_timer = await self._run_available(slot, slot.conns)
                backoff.reset()
                if not self._stopping.is_set():
                    # Nothing is left for it: it waits for work — or looks again at once if
                    # some was announced since its last claim began (_idle).
                    await self._idle(slot, next_timer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc):
                    await self._internal_error(slot, exc)
                    continue
                refused = slot.conns is not None and not (
                    _lost(slot.conns.conn) or _lost(slot.conns.side)
                )
                await _close(slot.conns)
                if refused:  # the server refused work on a live connection (read-only, full)
                    await self._drop_shared_connections()
                slot.conns = None
                delay = backoff.next()
                if backoff.failures == 1:
                    logger.warning(
                        "slot %d interrupted (%s); reconnecting with backoff",
                        slot.index,
                        _first_line(exc),
                        extra={"action": "reconnect", **self.log_extra},
                    )
                await self._sleep_or_stop(delay)
            finally:
                slot.instance_id = None
                slot.batch_started = None

    async def _run_available(self, slot: Slot, conns: Connections) -> float | None:
        """Claim and run batches until nothing is left runnable: until a claim finds nothing
        (returns None), or a batch that took all there was to take left nothing behind
        (returns the seconds until the next timer, read with its commit) — that a claim
        would find nothing then needs no round trip to learn: new work announces itself."""
        conn = conns.conn
        gathered = False
        while not self._stopping.is_set():
            awake = [s for s in self._slots if not s.idle]
            lane = next(i for i, s in enumerate(awake) if s is slot)
            slot.heard = self._notified
            rows = await self._claim(conn, len(awake), lane)
            if not rows:
                slot.batch_started = None
                return None
            if (
                len(rows) < _SMALL_BATCH
                and not gathered
                and self._busy()
                and slot.heard_while_working > 0
                and not any(s.idle for s in self._slots if s is not slot)
            ):
                # Work trickles in faster than a transaction each keeps up with — some arrived
                # while this slot's last batch ran — and every other slot is at work: let it
                # gather for a batch window and take it all in one batch. (Otherwise nothing
                # is behind: a client that starts one workflow after the other's result, whose
                # next workflow can only arrive once this slot's commit is done, would wait
                # the window every time.)
                await conn.execute("ROLLBACK")  # (releases them)
                await self._sleep_or_stop(self.settings.batch_window)
                gathered = True
                continue
            gathered = False
            slot.batch_started = time.monotonic()
            if rows[0]["backlog"] > len(rows):
                # There is more: one more slot looks (and, if it finds some, the next).
                self._wake_slots(1)
            batch = await self._run_batch(slot, conns, [dict(r) for r in rows])
            # Branches that became runnable together run on slots of their own, at once.
            self._wake_slots(batch.spawned)
            # Carry on with the fibers the batch left runnable, while nothing else needs doing.
            while batch.continued:
                if self._stopping.is_set() or batch.retries or batch.released:
                    await conn.execute("ROLLBACK")  # release them
                    break
                slot.batch_started = time.monotonic()
                batch = await self._run_batch(slot, conns, batch.continued)
                self._wake_slots(batch.spawned)
            slot.heard_while_working = self._notified - slot.heard  # (heard: as of its claim)
            if batch.released:
                self._wake_slots(1)
            for retry in batch.retries:
                await conn.execute("BEGIN")
                cur = await conn.execute(
                    query("claim_scope"), {"scope": retry.scope, "version": retry.version}
                )
                row = await cur.fetchone()
                if row is None:
                    await conn.execute("ROLLBACK")
                    continue
                # A failure here that is not the statement's own fails this instance.
                slot.instance_id = str(row["instance_id"])
                await self.executor.run_single(conns, dict(row))
                slot.instance_id = None
            if (
                batch.next_timer is not None
                # (The claim counts the backlog up to a limit: a full batch may have left more.)
                and rows[0]["backlog"] <= len(rows) < self.settings.batch_size
                and not (batch.retries or batch.released or batch.spawned)
            ):
                slot.batch_started = None
                return batch.next_timer
        return None

    async def _run_batch(self, slot: Slot, conns: Connections, rows: list[dict[str, Any]]) -> Batch:
        # A batch of several fibers runs each alone when one of them fails unexpectedly; a
        # failure of a lone fiber is its instance's to carry (see _internal_error), else the
        # fiber would be claimed again, and fail again, for ever.
        slot.instance_id = str(rows[0]["instance_id"]) if len(rows) == 1 else None
        batch = await self.executor.run_batch(conns, rows, go_on=True)
        slot.instance_id = None
        return batch

    async def _claim(self, conn: AConn, awake: int, lane: int) -> list[dict[str, Any]]:
        """Begin a transaction and claim this slot's share of the runnable fibers: the
        backlog divided among the ``awake`` slots; from a long queue, those of its ``lane``
        (one per awake slot), or any if its lane has none. No fibers: no transaction."""
        began = time.monotonic()
        share = {"batch_size": self.settings.batch_size, "slots": awake, "lane": lane}
        _, rows = await run_together(conn, [("BEGIN", None), (query("claim"), share)], dict_row)
        if self.metrics is not None:
            self.metrics.claimed(time.monotonic() - began)
        if not rows:
            await conn.execute("ROLLBACK")
        return rows

    async def _idle(self, slot: Slot, next_timer: float | None) -> None:
        """Wait for work: a notification, the next timer (``next_timer`` seconds away, or
        asked here if None), or the next poll."""
        assert slot.conns is not None
        if next_timer is None:
            cur = await slot.conns.conn.execute(query("next_run_at"))
            row = await cur.fetchone()
            assert row is not None  # (a function's value: always one row)
            next_timer = float(row["seconds"])
        timeout = max(0.0, min(self.settings.poll_interval, next_timer))
        if timeout <= 0 or self._notified != slot.heard:
            # Work was announced since this slot last looked: the notification may have woken
            # no one (this slot was about to look, or no slot was idle yet), so it looks
            # again rather than wait for it until the next poll.
            return
        slot.idle = True
        try:
            # (A timeout scope, not wait_for: no task of its own to wrap the wait in, so a
            # woken slot runs at the loop's next turn — it is on the path to every claim.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await slot.wake.wait()
        finally:
            slot.idle = False
            slot.wake.clear()

    async def _internal_error(self, slot: Slot, exc: Exception) -> None:
        instance_id = slot.instance_id
        logger.error(
            "internal error while running instance %s: %s",
            instance_id,
            exc,
            exc_info=exc,
            extra={"action": "internal_error", "instance_id": instance_id or "", **self.log_extra},
        )
        await _close(slot.conns)
        slot.conns = None
        if instance_id is None:
            await self._sleep_or_stop(1.0)
            return
        # Fail the instance rather than retrying a step that crashes the worker forever.
        with contextlib.suppress(psycopg.Error):
            async with self._control_lock:
                conn = await self._control_conn()
                await conn.execute(
                    query("fail_instance"),
                    {
                        "instance_id": instance_id,
                        "message": (
                            f"internal error in the pg_durable worker: {type(exc).__name__}: {exc}"
                        ),
                    },
                )
                if self.metrics is not None:
                    self.metrics.instance_failed()


class _Backoff:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, … up to ``ceiling``."""

    def __init__(self, ceiling: float) -> None:
        self.ceiling = ceiling
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        base = min(self.ceiling, 0.1 * 2 ** (self.failures - 1))
        return float(base * (0.5 + random.random() / 2))

    def reset(self) -> None:
        self.failures = 0


def _in_instance(instance_id: str) -> Callable[[tuple[str, str]], bool]:
    """Matches a step of ``instance_id``."""
    return lambda running: running[0] == instance_id


def _in_scope(scope: str) -> Callable[[tuple[str, str]], bool]:
    """Matches a step of fiber ``scope`` or of any fiber below it."""
    return lambda running: running[1] == scope or running[1].startswith(scope + "::")


def _lost(conn: AConn) -> bool:
    return conn.closed or conn.broken


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _close(conns: Connections | None) -> None:
    if conns is not None:
        await remote.close(conns)
