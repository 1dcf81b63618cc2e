"""Advancing claimed fibers: one transaction per batch, its steps and their checkpoints.

A slot claims up to ``batch_size`` runnable fibers (``FOR UPDATE SKIP LOCKED``) in one
transaction. For each, the interpreter decides what runs, the slot runs at most one user
statement for it (sqlstep.py), and the resulting plan — node stamps, the fiber's next
position, new fibers — is written by ``df._commit_steps`` in the same transaction. One COMMIT
makes every statement of the batch and its checkpoint durable together; a crash before it
leaves no trace of any of them, and each step runs once more.

Batching amortises the round trips and the WAL flush of a transaction over several steps. A
batch stops taking new steps once it has run for ``batch_window`` seconds, and a statement
known to be slow only ever runs first in its batch, so a long step delays the commit of at
most the quick steps before it. Whatever a batch cannot record — a statement that needs
autocommit, a conflict between two of its steps, a statement that aborted the transaction —
is run again alone (:meth:`Executor.run_single`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from pg_durable.engine.identity import Role, StepRunner
from pg_durable.engine.sqlstep import (
    BatchConflict,
    Cancelled,
    Connections,
    NeedsAutocommit,
    SqlSteps,
    StatementAborted,
)
from pg_durable.errors import GraphError, SubstitutionError
from pg_durable.graph.interpreter import (
    ChildResult,
    Context,
    Failed,
    Fiber,
    Interpreter,
    Ok,
    Outcome,
    Plan,
    outcome_from_json,
    outcome_to_json,
)
from pg_durable.graph.model import Graph, NodeRow
from pg_durable.graph.sqltext import as_condition_query
from pg_durable.graph.substitution import substitute
from pg_durable.queries import query

logger = logging.getLogger(__name__)

Row = dict[str, Any]
#: Control-flow transitions allowed in one transaction besides the one user statement.
_MAX_INLINE: Final = 64
_GRAPH_CACHE_SIZE: Final = 2048
#: Seconds a fiber stays leased to the worker running its autocommit statement.
AUTOCOMMIT_LEASE: Final = 3600


@dataclass(frozen=True, slots=True)
class LoadedInstance:
    graph: Graph
    role: Role
    variables: dict[str, str]
    label: str | None


@dataclass(slots=True)
class Attempt:
    """Outcomes an earlier, rolled-back attempt at the same fiber version already knows."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)


class InstanceUnrunnable(Exception):
    """The instance cannot run at all (bad graph, dropped role, refused superuser)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A fiber to claim again (at ``version``) and run alone."""

    scope: str
    version: int
    attempt: Attempt

    @classmethod
    def of(cls, row: Row, aborted: _Aborted | None = None) -> Retry:
        attempt = Attempt()
        if aborted is not None and aborted.outcome is not None:
            attempt.outcomes[aborted.node_id] = aborted.outcome
        return cls(str(row["scope"]), int(row["version"]), attempt)


@dataclass(frozen=True, slots=True)
class Batch:
    """What a batch left to do: fibers to run alone, and how many it released unrun."""

    retries: list[Retry]
    released: int


class Postponed(Exception):
    """The fiber's next statement is known to be slow: it goes first in a later batch."""


class _Deferred(Exception):
    """Run this fiber again alone, in a transaction of its own."""


class _NeedsAutocommit(_Deferred):
    """Run ``text`` of ``node_id`` as ``role`` outside any transaction block."""

    def __init__(self, node_id: str, role: Role, text: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.role = role
        self.text = text


class _Aborted(Exception):
    """The transaction is lost; ``node_id`` should record ``outcome`` (None: nothing)."""

    def __init__(self, node_id: str, outcome: Outcome | None) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.outcome = outcome


class Executor:
    """Runs claimed fibers. One per worker; slots call it with their connections."""

    def __init__(self, runner: StepRunner, *, batch_window: float) -> None:
        self.batch_window = batch_window
        self.sql = SqlSteps(runner, slow_seconds=batch_window)
        self._instances: OrderedDict[str, LoadedInstance] = OrderedDict()

    # -- transactions ---------------------------------------------------------------------------
    async def run_batch(self, conns: Connections, rows: list[Row]) -> Batch:
        """Advance the fibers claimed in ``rows`` (their transaction is open on ``conns.conn``)
        and commit."""
        conn = conns.conn
        batched = len(rows) > 1
        plans: list[dict[str, Any]] = []
        alone: list[Retry] = []
        released = 0
        started = time.monotonic()
        try:
            for index, row in enumerate(rows):
                if index and time.monotonic() - started > self.batch_window:
                    released = len(rows) - index  # released at commit, for the next batch
                    break
                try:
                    plan = await self._advance(
                        conns, row, Attempt(), first=index == 0, batched=batched
                    )
                except Postponed:
                    released = len(rows) - index
                    break
                except _Deferred:
                    alone.append(Retry.of(row))
                    continue
                if plan is not None:
                    plans.append(plan)
            await self._commit(conns.conn, plans)
        except (Cancelled, psycopg.errors.QueryCanceled):
            await self._cancelled(conns)
            return Batch([], len(rows))
        except _Aborted as aborted:
            await conn.execute("ROLLBACK")
            if batched:
                return Batch([Retry.of(row) for row in rows], 0)
            # Record what the rolled-back attempt learned, in a new transaction.
            return Batch([Retry.of(rows[0], aborted)], 0)
        except psycopg.OperationalError:
            raise
        except Exception:
            if not batched:
                raise
            # Find the fiber at fault by running each alone; the others lose nothing.
            await conn.execute("ROLLBACK")
            logger.debug("batch of %d rolled back; running its fibers alone", len(rows))
            return Batch([Retry.of(row) for row in rows], 0)
        return Batch(alone, released)

    async def run_single(self, conns: Connections, row: Row, attempt: Attempt) -> None:
        """Advance one fiber in the transaction open on ``conns.conn`` and commit; a statement
        that needs autocommit or that aborted the transaction is dealt with here."""
        conn = conns.conn
        while True:
            version = int(row["version"])
            try:
                plan = await self._advance(conns, row, attempt, first=True, batched=False)
                await self._commit(conn, [] if plan is None else [plan])
                return
            except (Cancelled, psycopg.errors.QueryCanceled):
                await self._cancelled(conns)
                return
            except _Aborted as aborted:
                await conn.execute("ROLLBACK")
                if aborted.outcome is not None:
                    attempt.outcomes[aborted.node_id] = aborted.outcome
            except _NeedsAutocommit as needs:
                # Lease the fiber (and commit), run the statement outside any transaction,
                # then record its outcome under the lease.
                cur = await conn.execute(
                    query("lease_fiber"),
                    {"scope": row["scope"], "version": version, "seconds": AUTOCOMMIT_LEASE},
                )
                leased = await cur.fetchone()
                await conn.execute("COMMIT")
                if leased is None:
                    return
                version = int(leased["version"])
                attempt.outcomes[needs.node_id] = await self.sql.run_autocommit(
                    conns, needs.role, needs.text
                )
            # Claim the fiber again; if another worker got it meanwhile, it runs the step.
            await conn.execute("BEGIN")
            cur = await conn.execute(
                query("claim_scope"), {"scope": row["scope"], "version": version}
            )
            again = await cur.fetchone()
            if again is None:
                await conn.execute("ROLLBACK")
                return
            row = dict(again)

    async def _cancelled(self, conns: Connections) -> None:
        """The worker cancelled a statement of this transaction: roll it all back. The
        fibers stay claimable; whatever is stale about them is found when they are next run."""
        conns.cancel_pending = False
        await conns.conn.execute("ROLLBACK")

    async def _commit(
        self, conn: psycopg.AsyncConnection[Any], plans: list[dict[str, Any]]
    ) -> None:
        if plans:
            cur = await conn.execute(query("commit_steps"), {"plans": Jsonb(plans)})
            for stale in await cur.fetchall():
                logger.debug(
                    "discarded the plan of stale fiber %s",
                    stale["scope"],
                    extra={"action": "stale_step"},
                )
        await conn.execute("COMMIT")
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

    # -- one fiber ------------------------------------------------------------------------------
    async def _advance(
        self, conns: Connections, row: Row, attempt: Attempt, *, first: bool, batched: bool
    ) -> dict[str, Any] | None:
        """Decide and perform the fiber's next transitions; returns its plan (None: the fiber
        was dropped or its instance failed, already written)."""
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
            loaded = await self._load(conn, instance_id)
        except InstanceUnrunnable as exc:
            logger.error("%s", exc, extra={"action": "instance_failed", "instance_id": instance_id})
            await conn.execute(
                query("fail_instance"), {"instance_id": instance_id, "message": str(exc)}
            )
            return None

        fiber = _fiber_from_row(row)
        plan = Plan()
        ctx = Context(loaded.graph, loaded.variables, loaded.label, float(row["db_now"]))
        interp = Interpreter(ctx, fiber, plan)
        graph = loaded.graph
        node = graph.node(fiber.node_id)
        statement_ran = False
        if "start" in fiber.state:
            interp.start()
        elif "iterate" in fiber.state:
            interp.iterate()
        elif node.type in ("JOIN", "RACE") or (node.type == "LOOP" and node.id != fiber.root_node):
            interp.resume(await self._children(conn, fiber), row["first_done"])
        else:
            statement_ran = node.type == "SQL"
            interp.complete_step(
                await self._perform(
                    conns, loaded, fiber, attempt, may_be_slow=first, batched=batched
                )
            )
        # Carry on in this transaction while the fiber is at a step that is due now, but run
        # at most one user statement per fiber and transaction (its checkpoint is this commit).
        for _ in range(_MAX_INLINE):
            if fiber.status != "ready" or fiber.not_before is not None or fiber.delay > 0:
                break
            node = graph.node(fiber.node_id)
            if node.type == "SLEEP" or (node.type == "SQL" and not statement_ran):
                outcome = await self._perform(
                    conns, loaded, fiber, attempt, may_be_slow=first, batched=batched
                )
                statement_ran = statement_ran or node.type == "SQL"
                interp.complete_step(outcome)
            else:
                break
        return _plan_json(fiber, plan, instance_id)

    async def _perform(
        self,
        conns: Connections,
        loaded: LoadedInstance,
        fiber: Fiber,
        attempt: Attempt,
        *,
        may_be_slow: bool,
        batched: bool,
    ) -> Outcome:
        node = loaded.graph.node(fiber.node_id)
        if node.type == "SLEEP":
            return Ok(f'{{"slept":true,"seconds":{node.seconds}}}')
        if node.type != "SQL":
            return Failed(
                f"{node.type} nodes are not supported by this version of the pg_durable worker"
            )
        known = attempt.outcomes.get(node.id)
        if known is not None:
            return known
        try:
            text = substitute(
                node.query or "",
                variables=loaded.variables,
                results=fiber.results,
                instance_id=loaded.graph.instance_id,
                label=loaded.label,
                mode="sql",
            )
        except SubstitutionError as exc:
            return Failed(str(exc))
        if node.id in loaded.graph.conditions:
            text = as_condition_query(text)
        if not may_be_slow and self.sql.is_slow(text):
            raise Postponed
        try:
            return await self.sql.run(
                conns,
                loaded.role,
                text,
                instance_id=loaded.graph.instance_id,
                scope=fiber.scope,
                batched=batched,
            )
        except BatchConflict:
            raise _Deferred from None
        except NeedsAutocommit:
            raise _NeedsAutocommit(node.id, loaded.role, text) from None
        except StatementAborted as exc:
            raise _Aborted(node.id, exc.outcome) from None

    async def _children(
        self, conn: psycopg.AsyncConnection[Any], fiber: Fiber
    ) -> list[ChildResult]:
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
    async def _load(self, conn: psycopg.AsyncConnection[Any], instance_id: str) -> LoadedInstance:
        cached = self._instances.get(instance_id)
        if cached is not None:
            self._instances.move_to_end(instance_id)
            return cached
        cur = await conn.execute(query("load_instance"), {"instance_id": instance_id})
        row = await cur.fetchone()
        if row is None:
            raise InstanceUnrunnable(f"Instance {instance_id} not found")
        if row["rolname"] is None:
            raise InstanceUnrunnable(
                f"Instance {instance_id}: submitted_by role no longer exists in pg_roles"
            )
        if row["rolsuper"] and str(row["superuser_setting"]).lower() not in (
            "on",
            "true",
            "yes",
            "1",
        ):
            raise InstanceUnrunnable(
                f"pg_durable blocked instance {instance_id}: submitted_by role "
                f'"{row["rolname"]}" is a superuser, but '
                "pg_durable.enable_superuser_instances is off"
            )
        cur = await conn.execute(query("load_nodes"), {"instance_id": instance_id})
        rows = [NodeRow(**r) for r in await cur.fetchall()]
        try:
            graph = Graph.from_rows(instance_id, str(row["root_node"]), rows)
        except GraphError as exc:
            raise InstanceUnrunnable(
                f"Invalid workflow graph for instance {instance_id}: {exc}"
            ) from exc
        if row["database"] is not None and not row["same_database"]:
            raise InstanceUnrunnable(
                f'Instance {instance_id}: its steps run in database "{row["database"]}", '
                "and this version of the pg_durable worker runs steps only in the database it "
                "serves"
            )
        variables = {str(k): str(v) for k, v in (row["vars"] or {}).items() if v is not None}
        role = Role(int(row["role_oid"]), str(row["rolname"]), tuple(row["role_settings"]))
        loaded = LoadedInstance(graph, role, variables, row["label"])
        self._instances[instance_id] = loaded
        if len(self._instances) > _GRAPH_CACHE_SIZE:
            self._instances.popitem(last=False)
        return loaded

    def forget_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)


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
    }


def _plan_json(fiber: Fiber, plan: Plan, instance_id: str) -> dict[str, Any]:
    """The plan as df._apply_plan reads it."""
    root_done = fiber.parent_scope is None and fiber.status == "done"
    spawns = [_fiber_json(f) for f in plan.spawns]
    return {
        "instance_id": instance_id,
        "scope": fiber.scope,
        "mark_running": plan.mark_running,
        "stamps": [
            {
                "id": s.node_id,
                "status": s.status,
                "result": s.result,
                "execution_id": s.execution_id,
            }
            for s in plan.stamps.values()
        ],
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
    }


def describe_outcome(outcome: Outcome) -> str:
    """A short text for logs."""
    return json.dumps(outcome_to_json(outcome))[:200]
