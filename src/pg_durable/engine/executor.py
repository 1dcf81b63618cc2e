"""Advancing claimed fibers: one transaction per batch, its steps and their checkpoints.

A slot claims up to ``batch_size`` runnable fibers (``FOR UPDATE SKIP LOCKED``) in one
transaction and advances each in three phases:

1. the interpreter (graph/interpreter.py) decides what the fiber does next, until it needs a
   user statement — at most one per fiber and transaction, since a step's checkpoint is the
   commit that follows it;
2. all the batch's statements run in one round trip (sqlstep.py), each as its submitter, each
   in a subtransaction of its own;
3. their outcomes go back to the interpreter, and ``df._commit_steps`` writes every fiber's
   plan — node stamps, next position, new fibers — before one COMMIT makes the statements and
   their checkpoints durable together. A crash before it leaves no trace of any of them, and
   each step runs once more.

Batching amortises round trips and the WAL flush over several steps. The statements of a
batch stop starting once ``batch_window`` seconds have passed, and a statement known to be
slow only ever runs first in its batch, so a quick step waits at most that long, or for one
slow step, before its effects commit. What a batch cannot record — a statement that needs
autocommit, two steps of one batch that deadlock, a statement that aborted the transaction —
runs again alone (:meth:`Executor.run_single`).

A fiber claimed alone skips phase 2 when its step's success can only be recorded (its result
is neither named nor a condition's) and its statement is known to be quick: phase 3 runs with
a marker for the result, and the statement goes in the round trip of the plans and COMMIT
(:meth:`Executor._ahead_of`). If it fails, the plans do not follow: the transaction goes back
to the savepoint before the statement and records the failure as phase 3 would have.

An HTTP step never waits on the network inside a transaction: it runs alone, leases its fiber
(for the request's timeout and a margin) and commits, sends its request, then claims the fiber
again and records the response (:meth:`Executor.run_single`, engine/http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pg_durable.engine.faults import transient
from pg_durable.engine.http import Admitted, HttpSteps
from pg_durable.engine.http_request import describe
from pg_durable.engine.identity import AHEAD_FAILED, AHEAD_SHAPE_CHANGED, Role, StepRunner
from pg_durable.engine.remote import RemoteDatabases, receipt_key
from pg_durable.engine.roundtrip import Part, run_together
from pg_durable.engine.sqlstep import (
    Cancelled,
    Connections,
    NeedsAutocommit,
    RunAlone,
    SqlSteps,
    Statement,
)
from pg_durable.engine.worker_metrics import StampJournal, WorkerMetrics
from pg_durable.errors import GraphError, StepError, SubstitutionError
from pg_durable.graph.interpreter import (
    ChildResult,
    Context,
    Failed,
    Fiber,
    Interpreter,
    Ok,
    Outcome,
    Plan,
    Stamp,
    outcome_from_json,
    outcome_to_json,
)
from pg_durable.graph.model import Graph, Node, NodeRow
from pg_durable.graph.sqltext import as_condition_query
from pg_durable.graph.substitution import substitute
from pg_durable.queries import query

logger = logging.getLogger(__name__)

Row = dict[str, Any]
AnyConn = psycopg.AsyncConnection[Any]
#: Control-flow transitions allowed in one transaction besides the one user statement.
_MAX_INLINE: Final = 64
#: Nodes of instance graphs the worker keeps in memory (about 0.5 KB each), so that a wake-up
#: of a recently seen instance — a timer, a signal — does not load its graph again.
_GRAPH_CACHE_NODES: Final = 20_000
#: Seconds a fiber stays leased past its HTTP request's timeout: time to claim it again and
#: record the response. A worker that dies mid-request holds the step up no longer than that.
HTTP_LEASE_MARGIN: Final = 30
#: Times a fiber's statement runs again (alone) before that counts as an internal error.
_MAX_RERUNS: Final = 5
#: Steps done in the worker's transaction, without a user statement.
_INLINE_STEPS: Final = frozenset({"SLEEP", "SIGNAL", "WAIT_SCHEDULE"})
#: What stands for the result of a step sent with its checkpoint, in the plans (_ahead_of):
#: a JSON string no result can hold by chance — a random part, new in every worker process.
_AHEAD_MARKER: Final = f"df-step-result-{secrets.token_hex(16)}"
_AHEAD_RESULT: Final = f'"{_AHEAD_MARKER}"'
_AHEAD_ESCAPED: Final = f'\\"{_AHEAD_MARKER}\\"'
#: The deadline of a wait without one (epoch seconds of the year 3000).
_FOREVER: Final = 32503680000.0


@dataclass(frozen=True, slots=True)
class LoadedInstance:
    graph: Graph
    role: Role
    variables: dict[str, str]
    label: str | None
    #: The database its SQL steps run in, when not the worker's own.
    database: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """A fiber to claim again (at ``version``) and run alone."""

    scope: str
    version: int

    @classmethod
    def of(cls, row: Row) -> Retry:
        return cls(str(row["scope"]), int(row["version"]))


@dataclass(frozen=True, slots=True)
class Batch:
    """What a batch left to do: fibers to run alone, how many it released unrun, and the
    fibers claimed again to go on with (in a transaction left open)."""

    retries: list[Retry]
    released: int
    continued: list[Row] = field(default_factory=list)
    #: New fibers it made runnable at once (JOIN and RACE branches): for other slots.
    spawned: int = 0
    #: Seconds until the next timer (inf: none), read in its commit's round trip when it
    #: left nothing to go on with; None if not read.
    next_timer: float | None = None


class InstanceUnrunnable(Exception):
    """The instance cannot run at all (bad graph, dropped role, refused superuser)."""


class _NeedsAutocommit(Exception):
    """Run ``statement`` of ``node_id`` outside any transaction block."""

    def __init__(self, node_id: str, statement: Statement) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.statement = statement


class _NeedsNetwork(Exception):
    """Send the admitted HTTP request of ``node_id`` with no transaction open."""

    def __init__(self, node_id: str, admitted: Admitted) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.admitted = admitted


class _AheadStopped(Exception):
    """The step sent with its checkpoint did not succeed (or could not be sent): advance the
    fiber again, with ``known`` outcomes (empty: the statement runs again, as usual) — its
    statement's, which took ``seconds``."""

    def __init__(self, known: dict[str, Outcome], seconds: float | None = None) -> None:
        super().__init__()
        self.known = known
        self.seconds = seconds


@dataclass(slots=True)
class _Run:
    """One fiber on its way through a transaction."""

    row: Row
    loaded: LoadedInstance
    fiber: Fiber
    plan: Plan
    interp: Interpreter
    #: Outcomes of the fiber's steps known already (a statement run outside any transaction).
    known: dict[str, Outcome]
    #: The node whose statement this transaction runs for the fiber (at most one).
    statement_node: str | None = None
    #: That statement, while it waits for the batch to run it.
    statement: Statement | None = None
    #: (database, key) of the receipt its statement left in another database, if it did.
    receipt: tuple[str, str] | None = None
    #: Signals it took from the inbox: they leave it with its plan.
    signals: list[int] = field(default_factory=list)
    #: Run by run_single, which may commit in the middle of the step to work outside any
    #: transaction (an HTTP request); in a batch such a step is run alone instead.
    alone: bool = False
    #: Seconds its statement took, for the metrics (None: it ran none, or not here).
    seconds: float | None = None
    #: Whether its statement may go with its checkpoint (_run_alone), and the statement if it
    #: does: the step is then complete with _AHEAD_RESULT standing for its result.
    may_run_ahead: bool = False
    ahead: Statement | None = None


class Executor:
    """Runs claimed fibers. One per worker; slots call it with their connections."""

    def __init__(
        self,
        runner: StepRunner,
        remote: RemoteDatabases,
        http: HttpSteps,
        *,
        batch_window: float,
        loop_max_iterations: int = 100_000,
        loop_min_interval: float = 1.0,
        step_timeout: float = 0.0,
        lease_seconds: float = 30.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.batch_window = batch_window
        self.loop_max_iterations = loop_max_iterations
        self.loop_min_interval = loop_min_interval
        #: Seconds a SQL step's statement may run (0: no limit but the role's own).
        self.step_timeout = step_timeout
        self.lease_seconds = lease_seconds
        self.sql = SqlSteps(runner, slow_seconds=batch_window)
        self.remote = remote
        self.http = http
        #: Instances by id, as loaded (or why they cannot run), least recently used first, and
        #: the number of graph nodes they hold.
        self._instances: OrderedDict[str, LoadedInstance | InstanceUnrunnable] = OrderedDict()
        self._cached_nodes = 0
        #: Counts what committed plans did (None: the worker serves no metrics).
        self.metrics = metrics

    # -- transactions ---------------------------------------------------------------------------
    async def run_batch(self, conns: Connections, rows: list[Row], *, go_on: bool) -> Batch:
        """Advance the fibers claimed in ``rows`` (their transaction is open on ``conns.conn``)
        and commit. With ``go_on``, the fibers this left runnable at once are claimed again
        in the same round trip as the COMMIT: :attr:`Batch.continued` (a transaction is then
        open for them)."""
        batched = len(rows) > 1
        continued: list[Row] = []
        stopped: _AheadStopped | None = None
        try:
            while True:
                try:
                    if stopped is None:
                        runs, alone, released = await self._advance(conns, rows)
                    else:  # (a lone fiber, whose step ran ahead and did not succeed)
                        runs, alone, released = await self._advance(
                            conns, rows, stopped.known, ahead=False
                        )
                        for run in runs if stopped.known else []:
                            run.seconds = stopped.seconds
                    scopes = [r.fiber.scope for r in runs if _due_now(r.fiber)] if go_on else []
                    continued, next_timer = await self._commit(
                        conns, runs, scopes, timer=go_on and not scopes
                    )
                    break
                except _AheadStopped as again:
                    stopped = again  # (the claim holds: back to the savepoint)
            spawned = sum(_due_now(f) for r in runs for f in r.plan.spawns)
        except (Cancelled, psycopg.errors.QueryCanceled):
            await self._rollback(conns)
            return Batch([], len(rows))
        except (_NeedsAutocommit, _NeedsNetwork):  # (one fiber only) run_single knows how
            await self._rollback(conns)
            return Batch([Retry.of(rows[0])], 0)
        except Exception as exc:
            if not batched or transient(exc):
                raise
            # A statement aborted the transaction, or something went wrong with one fiber:
            # run each alone, where the one at fault is found; the others lose nothing.
            await self._rollback(conns)
            logger.debug("batch of %d rolled back; running its fibers alone", len(rows))
            return Batch([Retry.of(row) for row in rows], 0)
        return Batch([Retry.of(row) for row in alone], released, continued, spawned, next_timer)

    async def run_single(
        self, conns: Connections, row: Row, known: dict[str, Outcome] | None = None
    ) -> None:
        """Advance one fiber in the transaction open on ``conns.conn`` and commit; a statement
        that must run outside a transaction block is dealt with here."""
        conn = conns.conn
        known = {} if known is None else known
        try:
            runs, _, _ = await self._advance(conns, [row], known, single=True)
            await self._commit(conns, runs, [])
            return
        except (Cancelled, psycopg.errors.QueryCanceled):
            await self._rollback(conns)
            return
        except _NeedsAutocommit as needs:
            # Lease the fiber (and commit), run the statement outside any transaction, then
            # record its outcome under the lease.
            lease = {"scope": row["scope"], "seconds": self.lease_seconds}
            cur = await conn.execute(query("lease_fiber"), {**lease, "version": row["version"]})
            leased = await cur.fetchone()
            await conn.execute("COMMIT")
            if leased is None:
                return
            statement = needs.statement
            renewing = asyncio.create_task(
                self._renew_lease(conn, {**lease, "version": leased["version"]})
            )
            began = time.monotonic()
            try:
                if statement.database is None:
                    known[needs.node_id] = await self.sql.run_autocommit(
                        conns, statement.role, statement.text, statement
                    )
                else:
                    linked = await self.remote.connections(conns, statement.database)
                    steps = self.remote.steps(statement.database)
                    known[needs.node_id] = await steps.run_autocommit(
                        linked, statement.role, statement.text, statement
                    )
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            if self.metrics is not None:
                self.metrics.step_took("SQL", time.monotonic() - began)
        except _NeedsNetwork as network:
            # Lease the fiber for as long as the request may take (and commit): no transaction
            # waits on the network. If this worker dies meanwhile, the lease runs out and
            # another worker sends the request again, with the same idempotency key.
            request = network.admitted.request
            cur = await conn.execute(
                query("lease_request"),
                {
                    "scope": row["scope"],
                    "version": row["version"],
                    "seconds": request.timeout + HTTP_LEASE_MARGIN,
                    "node_id": network.node_id,
                    "key": f"{row['instance_id']}-{network.node_id}-{row['version']}",
                },
            )
            leased = await cur.fetchone()
            await conn.execute("COMMIT")
            if leased is None:
                return
            began = time.monotonic()
            known[network.node_id] = await self.http.send(network.admitted, str(leased["key"]))
            if self.metrics is not None:
                self.metrics.step_took(request.kind, time.monotonic() - began)
        # Claim the fiber again, as leased; if the lease ran out and another worker took it,
        # that worker runs the statement (or sends the request) again: at least once.
        await conn.execute("BEGIN")
        cur = await conn.execute(
            query("claim_scope"), {"scope": row["scope"], "version": int(leased["version"])}
        )
        again = await cur.fetchone()
        if again is None:
            await conn.execute("ROLLBACK")
            return
        await self.run_single(conns, dict(again), known)

    async def _renew_lease(self, conn: AnyConn, lease: dict[str, Any]) -> None:
        """Keep the fiber leased while its statement runs outside any transaction: renewed
        every third of the lease, so a worker that dies, or loses the database, gives the step
        up to another within ``lease_seconds`` (which runs it again: at least once)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await conn.execute(query("renew_lease"), lease)
            except psycopg.Error as exc:
                logger.warning(
                    "could not renew the lease of fiber %s (%s)",
                    lease["scope"],
                    exc,
                    extra={"action": "lease_lost"},
                )
                return

    async def _rollback(self, conns: Connections) -> None:
        """Roll the transaction back. After a cancel the fibers stay claimable; whatever is
        stale about them is found when they are next run."""
        conns.cancel_pending = False
        await conns.conn.execute("ROLLBACK")

    async def _commit(
        self, conns: Connections, runs: list[_Run], go_on: list[str], *, timer: bool = False
    ) -> tuple[list[Row], float | None]:
        """Write the plans of ``runs`` and commit; then, in the same round trip, begin a
        transaction and claim the fibers ``go_on`` names, if any are runnable (else that
        transaction ends) — or else, with ``timer``, read the seconds until the next timer
        (next_run_at; None if not read): a slot left with nothing to do need not ask apart."""
        plans = [_plan_json(r) for r in runs]
        claimed: list[Row] = []
        next_timer: float | None = None
        statements: list[Part] = []
        ahead = next((r for r in runs if r.ahead is not None), None)  # (a lone fiber's)
        if ahead is not None:
            statements += self._ahead_of(ahead, plans)
        else:
            if conns.savepoint:
                # Written inside the savepoint, the rows the claim locked would be changed by
                # a subtransaction of the transaction that holds their locks, and each would
                # get a MultiXact for its xmax: a MultiXact per step, and dead row versions
                # that no scan recognises as dead (the queue's index entries of finished
                # fibers were walked by every claim until the next VACUUM).
                statements.append(("RELEASE SAVEPOINT step", None))
                conns.savepoint = False
            if plans:
                statements.append((query("commit_steps"), {"plans": Jsonb(plans)}))
        written = len(statements) - 1  # (the plans' statement, if there are plans)
        statements.append(("COMMIT", None))
        if go_on:
            statements += [("BEGIN", None), (query("claim_continued"), {"scopes": go_on})]
        elif timer:
            statements.append((query("next_run_at"), None))
        results = await self._commit_round_trip(conns, statements, ahead)
        if go_on:
            claimed = results[-1]
            if not claimed:
                await conns.conn.execute("ROLLBACK")
        elif timer:
            next_timer = float(results[-1][0]["seconds"])
        discarded = {str(row["scope"]) for row in results[written]} if plans else set()
        for scope in discarded:
            logger.debug(
                "discarded the plan of stale fiber %s", scope, extra={"action": "stale_step"}
            )
        if self.metrics is not None:
            for run in runs:
                if run.fiber.scope not in discarded:
                    self.metrics.committed(run.loaded.graph, run.plan, run.seconds)
        receipts = [run.receipt for run in runs if run.receipt is not None]
        if receipts:
            await self.remote.drop_receipts(conns, receipts)
        for plan in plans:
            outcome = plan["instance"]
            if outcome is not None:
                self.forget_instance(plan["instance_id"])
                logger.info(
                    "instance %s %s",
                    plan["instance_id"],
                    outcome["status"],
                    extra={
                        "action": f"instance_{outcome['status']}",
                        "instance_id": plan["instance_id"],
                    },
                )
        return claimed, next_timer

    def _ahead_of(self, run: _Run, plans: list[dict[str, Any]]) -> list[Part]:
        """The statements that run ``run``'s step and write ``plans``, in which _AHEAD_RESULT
        stands for its result: df._with_step_result puts the result in its place, as JSON
        where the plans hold JSON and escaped where they hold it inside a string."""
        assert run.ahead is not None
        text = orjson.dumps(plans).decode()
        if text.count(_AHEAD_MARKER) != text.count(_AHEAD_RESULT) + text.count(_AHEAD_ESCAPED):
            # (Nested deeper than that, which no plan is: the step runs first, as usual.)
            raise _AheadStopped({})
        return [
            ("SAVEPOINT step", None),
            self.sql.run_ahead(run.ahead),
            ("RELEASE SAVEPOINT step", None),
            (query("commit_steps_ahead"), {"plans": text, "marker": _AHEAD_MARKER}),
        ]

    async def _commit_round_trip(
        self, conns: Connections, statements: list[Part], ahead: _Run | None
    ) -> list[list[Row]]:
        """Send the statements of a commit; with the step of ``ahead`` among them, say what
        stopped them before the checkpoint, if anything did (_AheadStopped)."""
        if ahead is None:
            return await run_together(conns.conn, statements, dict_row)
        statement = ahead.ahead
        assert statement is not None
        conns.running = [(statement.instance_id, statement.scope)]
        try:
            results = await run_together(conns.conn, statements, dict_row)
        except psycopg.Error as exc:
            if exc.sqlstate in (AHEAD_FAILED, AHEAD_SHAPE_CHANGED):
                # The savepoint was taken before the statement and is released after it: back
                # to where the claim left the transaction, the step recorded as usual.
                await run_together(
                    conns.conn,
                    [("ROLLBACK TO SAVEPOINT step", None), ("RELEASE SAVEPOINT step", None)],
                    dict_row,
                )
                told = self.sql.ahead_outcome(statement, exc)
                if told is None:
                    raise _AheadStopped({}) from None
                outcome, seconds = told
                raise _AheadStopped({str(ahead.statement_node): outcome}, seconds) from None
            if isinstance(exc, psycopg.errors.QueryCanceled) and not conns.cancel_pending:
                # A statement timeout (not the role's: such a step never goes ahead): it runs
                # as a slow one next time, where its timeout is recorded as its failure.
                self.sql.ran_ahead(statement, math.inf)
            raise
        finally:
            conns.running = []
        ahead.seconds = float(results[1][0]["seconds"])
        self.sql.ran_ahead(statement, ahead.seconds)
        return results

    # -- the three phases -----------------------------------------------------------------------
    async def _advance(
        self,
        conns: Connections,
        rows: list[Row],
        known: dict[str, Outcome] | None = None,
        *,
        single: bool = False,
        ahead: bool = True,
    ) -> tuple[list[_Run], list[Row], int]:
        """Advance the claimed fibers (``known``: outcomes known already, for a lone fiber;
        ``single``: for run_single; ``ahead``: a lone step may go with its checkpoint); returns
        those to commit, the rows to run alone, and how many were released without running
        (the window had passed)."""
        conns.taken_signals = []  # a new transaction
        conns.savepoint = False
        batched = len(rows) > 1
        runs: list[_Run] = []
        alone: list[Row] = []
        await self._load(
            conns.conn, [r for r in rows if r["instance_status"] in ("pending", "running")]
        )
        for row in rows:
            try:
                run = await self._start(
                    conns, row, known, batched=batched, alone=single, ahead=ahead
                )
            except RunAlone:
                alone.append(row)
                continue
            if run is not None:
                runs.append(run)
        released = 0
        waiting = [run for run in runs if run.statement is not None]
        if batched and waiting:
            released = await self._run_batched(conns, runs, waiting, alone)
        elif waiting:
            await self._run_alone(conns, waiting[0])
        return runs, alone, released

    async def _run_batched(
        self, conns: Connections, runs: list[_Run], waiting: list[_Run], alone: list[Row]
    ) -> int:
        """Phases 2 and 3 for a batch: run its statements, hand their outcomes back. Fibers
        that cannot be recorded here move from ``runs`` to ``alone``; returns how many were
        released unrun (the window had passed)."""
        statements = [run.statement for run in waiting if run.statement is not None]
        results = await self.sql.run(conns, statements, self.batch_window)
        released = 0
        for run, statement, result in zip(waiting, statements, results, strict=True):
            run.statement = None
            runs.remove(run)
            if result is None:
                released += 1
                continue
            try:
                outcome = self.sql.outcome(statement, result, batched=True)
            except (RunAlone, NeedsAutocommit):
                alone.append(run.row)
                continue
            runs.append(run)
            run.seconds = result.seconds
            run.interp.complete_step(outcome)
            await self._carry_on(conns, run, batched=True)
        return released

    async def _run_alone(self, conns: Connections, run: _Run) -> None:
        """Phases 2 and 3 for a fiber in a transaction of its own. Its statement runs after a
        savepoint: if it must run again (described anew, or its step function made again),
        its effects are undone and it runs again without the fiber ever being released."""
        statement = run.statement
        if statement is not None and statement.database is not None:
            await self._run_elsewhere(conns, run, statement)
            return
        if statement is not None and self._may_run_ahead(run, statement):
            run.statement = None
            run.ahead = statement
            run.interp.complete_step(Ok(_AHEAD_RESULT))
            await self._carry_on(conns, run, batched=False)
            return
        for _ in range(_MAX_RERUNS):
            statement = run.statement
            assert statement is not None
            (result,) = await self.sql.run(conns, [statement], self.batch_window, alone=True)
            assert result is not None  # the window only holds back statements after the first
            run.statement = None
            try:
                outcome = self.sql.outcome(statement, result, batched=False)
            except RunAlone:
                await conns.conn.execute("ROLLBACK TO SAVEPOINT step")
                run.statement_node = None
                await self._step(conns, run, batched=False)
                if run.statement is None:
                    break  # decided without running it (it no longer prepares)
                continue
            except NeedsAutocommit:
                raise _NeedsAutocommit(str(run.statement_node), statement) from None
            run.seconds = result.seconds
            run.interp.complete_step(outcome)
            break
        else:
            raise RuntimeError(f"the step of fiber {run.fiber.scope} had to run again too often")
        await self._carry_on(conns, run, batched=False)

    def _may_run_ahead(self, run: _Run, statement: Statement) -> bool:
        """Whether the fiber's statement may go in the round trip of its checkpoint: its
        success can only be recorded, never read in this transaction — its result is not
        named (a later statement of the fiber could read it) nor a condition's — and it is a
        statement that may (SqlSteps.can_run_ahead)."""
        if not run.may_run_ahead:
            return False
        node = run.loaded.graph.node(str(run.statement_node))
        return (
            not node.result_name
            and node.id not in run.loaded.graph.conditions
            and self.sql.can_run_ahead(statement)
        )

    async def _run_elsewhere(self, conns: Connections, run: _Run, statement: Statement) -> None:
        """Phases 2 and 3 for a fiber whose statement runs in another database: it commits
        there with a receipt before this transaction commits the checkpoint."""
        assert statement.database is not None
        node_id = str(run.statement_node)
        key = receipt_key(run.fiber.instance_id, run.fiber.scope, int(run.row["version"]), node_id)
        run.statement = None
        # This transaction waits, idle, while the statement runs there: however long that is,
        # it must not end the session (the worker's idle_in_transaction_session_timeout).
        await conns.conn.execute(query("no_idle_timeout"))
        began = time.monotonic()
        try:
            outcome = await self.remote.run(conns, statement, key)
        except NeedsAutocommit:
            raise _NeedsAutocommit(node_id, statement) from None
        run.seconds = time.monotonic() - began
        run.receipt = (statement.database, key)
        run.interp.complete_step(outcome)
        await self._carry_on(conns, run, batched=False)

    async def _start(
        self,
        conns: Connections,
        row: Row,
        known: dict[str, Outcome] | None,
        *,
        batched: bool,
        alone: bool,
        ahead: bool,
    ) -> _Run | None:
        """Phase 1 for one fiber: decide, up to its statement if it has one. None: the fiber
        was dropped or its instance failed (already written)."""
        conn = conns.conn
        instance_id = str(row["instance_id"])
        if row["instance_status"] not in ("pending", "running"):
            # Cancelled (or otherwise finished): nothing of it runs any more.
            await conn.execute(
                query("drop_fibers"), {"instance_id": instance_id, "scope": row["scope"]}
            )
            self.forget_instance(instance_id)
            return None
        try:
            loaded = self._loaded_instance(instance_id)
        except InstanceUnrunnable as exc:
            logger.error("%s", exc, extra={"action": "instance_failed", "instance_id": instance_id})
            await conn.execute(
                query("fail_instance"), {"instance_id": instance_id, "message": str(exc)}
            )
            if self.metrics is not None:  # (counted again if its batch runs again: rare)
                self.metrics.instance_failed()
            return None
        fiber = _fiber_from_row(row)
        plan = Plan() if self.metrics is None else Plan(StampJournal())
        ctx = Context(
            loaded.graph,
            loaded.variables,
            loaded.label,
            float(row["db_now"]),
            max_iterations=self.loop_max_iterations,
            min_iteration_seconds=self.loop_min_interval,
            max_result_bytes=self.sql.runner.max_result_bytes,
        )
        run = _Run(
            row,
            loaded,
            fiber,
            plan,
            Interpreter(ctx, fiber, plan),
            {} if known is None else known,
            alone=alone,
            may_run_ahead=ahead and not alone,
        )
        node = loaded.graph.node(fiber.node_id)
        if "start" in fiber.state:
            run.interp.start()
            if fiber.parent_scope is None and node_at(run).type == "SQL":
                # The instance reads `running`, and its first step too, from this commit on —
                # not only once that step is done: unless its statement is known to be quick,
                # it runs in the next transaction. (A quick one runs in this one: a commit and
                # a round trip less between df.start and its result. A first step that only
                # waits — a timer, a signal — starts in this one too.)
                await self._step(conns, run, batched=batched, unless_new_or_slow=True)
                if run.statement is not None or run.statement_node is None:
                    return run
        elif "iterate" in fiber.state:
            run.interp.iterate()
        elif "retry" in fiber.state:
            run.interp.next_attempt()
        elif node.type == "TIMEOUT" and fiber.spawned_at_node == node.id:
            run.interp.time_out()  # (its timer: the deadline has come)
        elif node.type in ("JOIN", "RACE", "RETRY", "TIMEOUT") or (
            node.type == "LOOP" and node.id != fiber.root_node
        ):
            run.interp.resume(await self._children(conn, fiber), row["first_done"])
        else:
            await self._step(conns, run, batched=batched)
            if run.statement is not None:
                return run
        await self._carry_on(conns, run, batched=batched)
        return run

    async def _carry_on(self, conns: Connections, run: _Run, *, batched: bool) -> None:
        """Go on while the fiber is at a step that is due now: sleeps of zero seconds and
        control flow, and one statement (its checkpoint is this transaction's commit)."""
        fiber = run.fiber
        for _ in range(_MAX_INLINE):
            if fiber.status != "ready" or fiber.not_before is not None or fiber.delay > 0:
                return
            node = run.loaded.graph.node(fiber.node_id)
            if node.type == "SQL" and run.statement_node is not None:
                self._stamp_running_when_run(run, node)  # (its statement runs next time)
                return
            if node.type not in _INLINE_STEPS and node.type != "SQL":
                return
            await self._step(conns, run, batched=batched)
            if run.statement is not None:
                return

    def _stamp_running_when_run(self, run: _Run, node: Node) -> None:
        """Leave the fiber's next SQL step ``node`` unstamped (pending) until the transaction
        that runs it, if its statement is known to be quick: that transaction stamps it
        completed, so the running stamp would be written for no reader — and node stamps are
        most of what a step costs the server. A statement new to the worker, or slow when it
        last ran, is stamped running in this transaction, so that df.nodes shows it running
        while it runs; so is one that runs outside the transaction that records it (in
        another database, or one that refuses a transaction block)."""
        stamp = run.plan.stamps.get(node.id)
        if stamp is None or stamp.status != "running" or run.loaded.database is not None:
            return
        try:
            text = self._statement_text(run, node)
        except SubstitutionError:
            return  # (it fails when it runs)
        if self.sql.is_quick(text):
            del run.plan.stamps[node.id]

    def _statement_text(self, run: _Run, node: Node) -> str:
        """The statement SQL step ``node`` runs: its query with the fiber's variables and
        results in it (raises SubstitutionError)."""
        loaded = run.loaded
        text = substitute(
            node.query or "",
            variables=loaded.variables,
            results=run.fiber.results,
            instance_id=loaded.graph.instance_id,
            label=loaded.label,
            mode="sql",
        )
        if node.id in loaded.graph.conditions:
            text = as_condition_query(text)
        return text

    async def _step(
        self, conns: Connections, run: _Run, *, batched: bool, unless_new_or_slow: bool = False
    ) -> None:
        """Complete the step the fiber stands at, or leave its statement for phase 2.
        ``unless_new_or_slow``: leave a statement that has not run lately, or that was slow,
        where it is (the fiber stays at its node, ``run.statement_node`` None)."""
        loaded, fiber = run.loaded, run.fiber
        node = loaded.graph.node(fiber.node_id)
        if node.type == "SLEEP":
            run.interp.complete_step(Ok(f'{{"slept":true,"seconds":{node.seconds}}}'))
            return
        if node.type == "SIGNAL":
            await self._wait_for_signal(conns, run, node)
            return
        if node.type == "WAIT_SCHEDULE":
            await self._wait_for_schedule(conns.conn, run, node)
            return
        if node.type in ("HTTP", "HTTP_MULTIPART"):
            await self._http_step(run, node)
            return
        if node.type != "SQL":
            run.interp.complete_step(
                Failed(
                    f"{node.type} nodes are not supported by this version of the pg_durable worker"
                )
            )
            return
        run.statement_node = node.id
        outcome = run.known.get(node.id)
        if outcome is not None:
            run.interp.complete_step(outcome)
            return
        deadline = run.interp.deadline()
        if deadline is not None and deadline[1] <= float(run.row["db_now"]):
            # The time of a df.timeout around it is up: it does not start.
            run.interp.complete_step(run.interp.timed_out(deadline[0]))
            return
        try:
            text = self._statement_text(run, node)
        except SubstitutionError as exc:
            run.interp.complete_step(Failed(str(exc)))
            return
        if unless_new_or_slow and not self.sql.is_quick(text):
            run.statement_node = None
            return
        if batched and (
            self.sql.is_slow(text)
            or loaded.role.statement_timeout is not None
            or deadline is not None
            or loaded.database is not None
        ):
            # A slow statement does not hold up a batch's quick ones; a statement timeout
            # (the role's, a df.timeout's) counts from the start of a top-level statement; a
            # statement in another database commits there first.
            raise RunAlone
        if loaded.database is not None:
            prepared = await self.remote.prepare(
                conns,
                loaded.database,
                loaded.role,
                text,
                instance_id=loaded.graph.instance_id,
                scope=fiber.scope,
                deadline=deadline,
                step_timeout=self.step_timeout,
            )
        else:
            prepared = await self.sql.prepare(
                conns,
                loaded.role,
                text,
                instance_id=loaded.graph.instance_id,
                scope=fiber.scope,
                batched=batched,
                deadline=deadline,
                step_timeout=self.step_timeout,
            )
        if isinstance(prepared, Failed):
            run.interp.complete_step(prepared)
        else:
            run.statement = prepared

    async def _http_step(self, run: _Run, node: Node) -> None:
        """Complete an HTTP step with its response, once sent (run_single sends it, with no
        transaction open); before that, describe and admit its request."""
        loaded, fiber = run.loaded, run.fiber
        # (Read, not taken: a lease later in this chain — an autocommit step next — drops
        # this transaction's plan, and the response must still be the one already received.)
        outcome = run.known.get(node.id)
        if outcome is None:
            if not run.alone:
                raise RunAlone  # (a batch's transaction cannot wait for the network)
            try:
                request = describe(
                    node,
                    variables=loaded.variables,
                    results=fiber.results,
                    instance_id=loaded.graph.instance_id,
                    label=loaded.label,
                )
                admitted = await self.http.admit(request, loaded.role.oid)
            except StepError as exc:
                outcome = Failed(str(exc))
            else:
                raise _NeedsNetwork(node.id, admitted)
        if isinstance(outcome, Ok):
            # Done with its idempotency key (lease_request). A failed request keeps it: sent
            # again by a retry of the step, it is the same request.
            fiber.state.pop("request", None)
        run.interp.complete_step(outcome)

    async def _wait_for_signal(self, conns: Connections, run: _Run, node: Node) -> None:
        """Complete the SIGNAL step with the oldest signal of its name in the inbox, or with a
        timeout once its deadline has passed; else the fiber waits (df.signal wakes it).

        The signal is only read here. It leaves the inbox with the fiber's plan (its id in
        ``signals``, deleted by df._commit_steps): a transaction that commits without the plan
        — the fiber went on to run alone, or leased itself for an autocommit statement —
        leaves the signal where it was, for the fiber to take again."""
        conn = conns.conn
        fiber, now = run.fiber, float(run.row["db_now"])
        until = _wait_until(fiber, node.id)
        if until is None:
            until = now + node.timeout if node.timeout is not None else _FOREVER
            fiber.state["wait"] = {"node": node.id, "until": until}
        # Under the instance's signal lock: a signal sent from now on sees this fiber waiting.
        await conn.execute(query("signal_lock"), {"instance_id": fiber.instance_id})
        cur = await conn.execute(
            query("take_signal"),
            {
                "instance_id": fiber.instance_id,
                "name": node.signal,
                "scope": fiber.scope,
                # Taken already by another fiber of this transaction, not committed yet.
                "taken": conns.taken_signals,
            },
        )
        got = await cur.fetchone()
        if got is not None:
            conns.taken_signals.append(int(got["id"]))
            run.signals.append(int(got["id"]))
        if got is None and now < until:
            fiber.awaiting = node.signal
            fiber.not_before = until
            return
        del fiber.state["wait"]
        data = "null" if got is None or got["data"] is None else str(got["data"])
        result = (
            f'{{"signal_name":{json.dumps(node.signal)},'
            f'"timed_out":{"true" if got is None else "false"},"data":{data}}}'
        )
        run.interp.complete_step(Ok(result))

    async def _wait_for_schedule(self, conn: AnyConn, run: _Run, node: Node) -> None:
        """Wait for the next tick of the node's cron expression after the moment it is reached
        (database clock, pg_durable.cron_timezone), then complete."""
        fiber, now = run.fiber, float(run.row["db_now"])
        until = _wait_until(fiber, node.id)
        if until is None:
            cur = await conn.execute(query("schedule_tick"), {"expr": node.cron})
            row = await cur.fetchone()
            tick = row["tick"] if row is not None else {}
            if "at" not in tick:
                run.interp.complete_step(Failed(str(tick.get("error", "no next tick"))))
                return
            until = float(tick["at"])
            fiber.state["wait"] = {"node": node.id, "until": until}
        if now < until:
            fiber.not_before = until
            return
        del fiber.state["wait"]
        run.interp.complete_step(Ok('{"scheduled":true}'))

    async def _children(self, conn: AnyConn, fiber: Fiber) -> list[ChildResult]:
        cur = await conn.execute(
            query("children"),
            {"scope": fiber.scope, "node_id": fiber.node_id, "generation": fiber.generation},
        )
        return [
            ChildResult(
                scope=str(r["scope"]),
                branch=int(r["branch"]),
                root_node=str(r["root_node"]),
                outcome=outcome_from_json(r["outcome"]),
                results=dict(r["results"] or {}),
            )
            for r in await cur.fetchall()
        ]

    # -- the instance's frozen graph ------------------------------------------------------------
    async def _load(self, conn: AnyConn, rows: list[Row]) -> None:
        """Load into the cache the instances of the claimed ``rows`` it does not hold: from
        the rows themselves (a new instance's first claim brings its graph along), the others
        in one query. An instance that cannot run is cached as the reason why."""
        instance_ids = [str(r["instance_id"]) for r in rows]
        wanted = [i for i in dict.fromkeys(instance_ids) if i not in self._instances]
        if not wanted:
            return
        found = {str(r["instance_id"]): r["loaded"] for r in rows if r.get("loaded") is not None}
        missing = [i for i in wanted if i not in found]
        if missing:
            cur = await conn.execute(query("load_instances"), {"instance_ids": missing})
            found.update((str(row["id"]), row) for row in await cur.fetchall())
        for instance_id in wanted:
            row = found.get(instance_id)
            try:
                loaded: LoadedInstance | InstanceUnrunnable = _loaded(instance_id, row)
            except InstanceUnrunnable as exc:
                loaded = exc
            self._instances[instance_id] = loaded
            self._cached_nodes += _size(loaded)
        # Least recently used first; never an instance of this batch.
        batch = set(instance_ids)
        while self._cached_nodes > _GRAPH_CACHE_NODES:
            oldest = next(iter(self._instances))
            if oldest in batch:
                break
            self._cached_nodes -= _size(self._instances.pop(oldest))

    def _loaded_instance(self, instance_id: str) -> LoadedInstance:
        """The cached instance (see _load); raises InstanceUnrunnable for one that cannot run."""
        loaded = self._instances[instance_id]
        self._instances.move_to_end(instance_id)
        if isinstance(loaded, InstanceUnrunnable):
            raise loaded
        return loaded

    def forget_instance(self, instance_id: str) -> None:
        forgotten = self._instances.pop(instance_id, None)
        if forgotten is not None:
            self._cached_nodes -= _size(forgotten)


def node_at(run: _Run) -> Node:
    """The node the fiber stands at."""
    return run.loaded.graph.node(run.fiber.node_id)


def _size(loaded: LoadedInstance | InstanceUnrunnable) -> int:
    """What an instance costs the graph cache: its nodes."""
    return len(loaded.graph.nodes) if isinstance(loaded, LoadedInstance) else 1


def _loaded(instance_id: str, row: Row | None) -> LoadedInstance:
    """An instance as the worker runs it, from its load_instances row; raises
    InstanceUnrunnable with the reason it cannot run."""
    if row is None:
        raise InstanceUnrunnable(f"Instance {instance_id} not found")
    if row["rolname"] is None:
        raise InstanceUnrunnable(
            f"Instance {instance_id}: submitted_by role no longer exists in pg_roles"
        )
    if row["rolsuper"] and str(row["superuser_setting"]).lower() not in ("on", "true", "yes", "1"):
        raise InstanceUnrunnable(
            f"pg_durable blocked instance {instance_id}: submitted_by role "
            f'"{row["rolname"]}" is a superuser, but pg_durable.enable_superuser_instances is off'
        )
    rows = [NodeRow(*n) for n in row["nodes"] or ()]
    try:
        graph = Graph.from_rows(instance_id, str(row["root_node"]), rows)
    except GraphError as exc:
        message = f"Invalid workflow graph for instance {instance_id}: {exc}"
        raise InstanceUnrunnable(message) from exc
    variables = {str(k): str(v) for k, v in (row["vars"] or {}).items() if v is not None}
    role = Role(int(row["role_oid"]), str(row["rolname"]), tuple(row["role_settings"]))
    database = None if row["database"] is None or row["same_database"] else str(row["database"])
    return LoadedInstance(graph, role, variables, row["label"], database)


def _wait_until(fiber: Fiber, node_id: str) -> float | None:
    """When the wait the fiber started at ``node_id`` (a signal or a schedule) ends: epoch
    seconds; None if it has not started one there."""
    wait = fiber.state.get("wait")
    if isinstance(wait, dict) and wait.get("node") == node_id:
        until = wait.get("until")
        if isinstance(until, int | float):
            return float(until)
    return None


def _due_now(fiber: Fiber) -> bool:
    """Whether the fiber is runnable again the moment its plan commits."""
    return fiber.status == "ready" and fiber.delay == 0 and fiber.not_before is None


def _fiber_from_row(row: Row) -> Fiber:
    return Fiber(
        scope=str(row["scope"]),
        instance_id=str(row["instance_id"]),
        root_node=str(row["root_node"]),
        node_id=str(row["node_id"]),
        parent_scope=row["parent_scope"],
        branch=int(row["branch"]),
        spawned_at_node=row["spawned_at_node"],
        parent_generation=row["parent_generation"],
        generation=int(row["generation"]),
        results=dict(row["results"] or {}),
        state=dict(row["state"] or {}),
    )


def _fiber_json(fiber: Fiber) -> dict[str, Any]:
    return {
        "scope": fiber.scope,
        "parent_scope": fiber.parent_scope,
        "branch": fiber.branch,
        "spawned_at_node": fiber.spawned_at_node,
        "parent_generation": fiber.parent_generation,
        "root_node": fiber.root_node,
        "node_id": fiber.node_id,
        "status": fiber.status,
        "delay": fiber.delay,
        "not_before": fiber.not_before,
        "generation": fiber.generation,
        "results": fiber.results,
        "state": fiber.state,
        "pending": fiber.pending,
        "wake_at_pending": fiber.wake_at_pending,
        "outcome": outcome_to_json(fiber.outcome) if fiber.outcome is not None else None,
        "awaiting": fiber.awaiting,
    }


def _stamp_json(stamp: Stamp) -> dict[str, Any]:
    """A stamp as df._write_stamps reads it: the result as the JSON it is (orjson embeds the
    text as it is: nothing escaped here, nothing parsed again there), status_details whole."""
    details: dict[str, object] = {"execution_id": stamp.execution_id}
    if stamp.details is not None:
        details.update(stamp.details)
    payload: dict[str, Any] = {
        "id": stamp.node_id,
        "status": stamp.status,
        "status_details": details,
    }
    if stamp.result is not None:  # (a JSON null would be a result: the literal null)
        payload["result"] = orjson.Fragment(stamp.result)
    return payload


def _plan_json(run: _Run) -> dict[str, Any]:
    """The plan of a fiber's transaction, as df._apply_plan and df._apply_moves read it."""
    fiber, plan = run.fiber, run.plan
    root_done = fiber.parent_scope is None and fiber.status == "done"
    spawns = [_fiber_json(f) for f in plan.spawns]
    payload: dict[str, Any] = {
        "instance_id": fiber.instance_id,
        "scope": fiber.scope,
        "mark_running": plan.mark_running,
        "stamps": [_stamp_json(s) for s in plan.stamps.values()],
        "spawns": spawns,
        "deletes": plan.deletes,
        "cancel_scopes": plan.cancel_scopes,
        "fiber": None if root_done else _fiber_json(fiber),
        "instance": (
            {
                "status": plan.instance.status,
                "output": plan.instance.output,
                "execution_count": plan.instance.execution_count,
            }
            if plan.instance is not None
            else None
        ),
        "notify": any(s["status"] == "ready" and not s["delay"] for s in spawns),
        "signals": run.signals,
    }
    if fiber.parent_scope is None and fiber.generation != int(run.row["generation"]):
        payload["execution_count"] = fiber.generation  # a root loop's next iteration
    return payload
