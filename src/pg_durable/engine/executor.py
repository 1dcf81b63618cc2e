"""Executing one claimed fiber: one transaction, at most one user statement.

The transaction that holds the fiber's row lock runs the user's statement (through the
submitter's step function), the interpreter's decisions, and ``df._commit_step`` — and commits
them together. If the statement fails, the transaction is rolled back, the fiber is claimed
again at the same version, and the failure is recorded instead (a statement PostgreSQL refuses
in a transaction block is then run in autocommit, at least once).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from pg_durable.engine.identity import Role, StepRunner
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
    outcome_from_json,
    outcome_to_json,
)
from pg_durable.graph.model import Graph, NodeRow
from pg_durable.graph.sqlresult import SUPPORTED_TYPE_OIDS, build_result, check_columns
from pg_durable.graph.sqltext import as_condition_query, needs_autocommit
from pg_durable.graph.substitution import substitute
from pg_durable.queries import query

logger = logging.getLogger(__name__)

AConn = psycopg.AsyncConnection[DictRow]
#: Control-flow transitions allowed in one transaction besides the one user statement.
_MAX_INLINE: Final = 64
_GRAPH_CACHE_SIZE: Final = 2048
EMPTY_RESULT: Final = '{"rows":[],"row_count":0}'
STALE: Final = "PD001"
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
    """What an earlier, rolled-back attempt at the same fiber version learned."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)


class UserStatementFailed(Exception):
    """The user's statement failed; the transaction is aborted and must be rolled back.

    ``outcome`` is None when the statement must run again in autocommit (``role``, ``text``).
    """

    def __init__(
        self, node_id: str, outcome: Outcome | None, role: Role | None = None, text: str = ""
    ) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.outcome = outcome
        self.role = role
        self.text = text


class InstanceUnrunnable(Exception):
    """The instance cannot run at all (bad graph, dropped role, refused superuser)."""


@dataclass(slots=True)
class Connections:
    """What a slot lends the executor: its step connection (a transaction is open on it when
    :meth:`Executor.process` is called), the worker's autocommit control connection (DDL of
    step functions), an autocommit side connection for statements that refuse transaction
    blocks, and whether the worker asked to cancel the running statement."""

    conn: AConn
    control: AConn
    open_side: Callable[[], Awaitable[AConn]]
    side: AConn | None = None
    cancel_requested: bool = False

    async def side_conn(self) -> AConn:
        if self.side is None or self.side.closed or self.side.broken:
            self.side = await self.open_side()
        return self.side


@dataclass(frozen=True, slots=True)
class Continue:
    """The fiber is runnable again at once: claim it by version in the next transaction."""

    scope: str
    version: int
    instance_id: str


class Executor:
    """Runs claimed fibers. One per worker; slots call :meth:`process` with their connection."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self._instances: OrderedDict[str, LoadedInstance] = OrderedDict()
        self._type_names: dict[int, str] = {}

    # -- the instance's frozen graph ----------------------------------------------------------
    async def _load(self, conn: AConn, instance_id: str) -> LoadedInstance:
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
        variables = {str(k): str(v) for k, v in (row["vars"] or {}).items() if v is not None}
        loaded = LoadedInstance(
            graph, Role(int(row["role_oid"]), str(row["rolname"])), variables, row["label"]
        )
        self._instances[instance_id] = loaded
        if len(self._instances) > _GRAPH_CACHE_SIZE:
            self._instances.popitem(last=False)
        return loaded

    def forget_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)

    # -- one transaction ----------------------------------------------------------------------
    async def process(self, conns: Connections, row: dict[str, Any]) -> Continue | None:
        """Advance the fiber in ``row`` (claimed in the transaction open on ``conns.conn``)
        and commit. Returns what to continue with, if anything."""
        conn = conns.conn
        attempt = Attempt()
        while True:
            try:
                return await self._attempt(conns, row, attempt)
            except UserStatementFailed as failure:
                await conn.execute("ROLLBACK")
                version = int(row["version"])
                if failure.outcome is None:
                    leased = await self._run_autocommit_step(conns, row, failure)
                    if leased is None:
                        return None
                    version, outcome = leased
                else:
                    outcome = failure.outcome
                attempt.outcomes[failure.node_id] = outcome
                # Claim the fiber again; if another worker got it meanwhile, it repeats the
                # (rolled back) step itself.
                await conn.execute("BEGIN")
                cur = await conn.execute(
                    query("claim_scope"), {"scope": row["scope"], "version": version}
                )
                again = await cur.fetchone()
                if again is None:
                    await conn.execute("ROLLBACK")
                    return None
                row = dict(again)

    async def _attempt(
        self, conns: Connections, row: dict[str, Any], attempt: Attempt
    ) -> Continue | None:
        conn = conns.conn
        instance_id = str(row["instance_id"])
        if row["instance_status"] not in ("pending", "running"):
            # Cancelled (or otherwise finished): nothing of it runs any more.
            await conn.execute(
                query("drop_stale_fiber"), {"instance_id": instance_id, "scope": instance_id}
            )
            await conn.execute("COMMIT")
            self.forget_instance(instance_id)
            return None
        try:
            loaded = await self._load(conn, instance_id)
        except InstanceUnrunnable as exc:
            logger.error("%s", exc, extra={"action": "instance_failed", "instance_id": instance_id})
            await conn.execute(
                query("fail_instance"), {"instance_id": instance_id, "message": str(exc)}
            )
            await conn.execute("COMMIT")
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
            children = await self._children(conn, fiber)
            interp.resume(children, row["first_done"])
        else:
            outcome = await self._perform(conns, loaded, fiber, attempt)
            statement_ran = node.type == "SQL"
            interp.complete_step(outcome)

        # Carry on in this transaction while the fiber is at a step that is due now, but run
        # at most one user statement per transaction (its checkpoint is this commit).
        for _ in range(_MAX_INLINE):
            if fiber.status != "ready" or fiber.not_before is not None or fiber.delay > 0:
                break
            node = graph.node(fiber.node_id)
            if node.type == "SLEEP" or (node.type == "SQL" and not statement_ran):
                statement_ran = statement_ran or node.type == "SQL"
                outcome = await self._perform(conns, loaded, fiber, attempt)
                interp.complete_step(outcome)
            else:
                break

        if plan.instance is not None:
            self.forget_instance(instance_id)
        payload = _plan_json(fiber, plan, instance_id)
        try:
            await conn.execute(query("commit_step"), {"plan": Jsonb(payload)})
        except psycopg.Error as exc:
            if exc.sqlstate != STALE:
                raise
            # A lost race or a cancelled instance: this step's work must not commit.
            await conn.execute("ROLLBACK")
            await conn.execute(
                query("drop_stale_fiber"), {"instance_id": instance_id, "scope": fiber.scope}
            )
            logger.debug(
                "discarded stale step of fiber %s: %s",
                fiber.scope,
                exc.diag.message_primary,
                extra={"action": "stale_step", "instance_id": instance_id},
            )
            return None
        # A statement may have changed session settings; they must not leak into the next step.
        await conn.execute("RESET ALL")
        await conn.execute("COMMIT")
        if plan.instance is not None:
            logger.info(
                "instance %s %s",
                instance_id,
                plan.instance.status,
                extra={"action": f"instance_{plan.instance.status}", "instance_id": instance_id},
            )
        if fiber.status == "ready" and fiber.delay == 0 and fiber.not_before is None:
            return Continue(fiber.scope, int(row["version"]) + 1, instance_id)
        return None

    async def _children(self, conn: AConn, fiber: Fiber) -> list[ChildResult]:
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

    # -- steps --------------------------------------------------------------------------------
    async def _perform(
        self, conns: Connections, loaded: LoadedInstance, fiber: Fiber, attempt: Attempt
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
        return await self._run_sql(conns, loaded, node.id, text)

    async def _run_sql(
        self, conns: Connections, loaded: LoadedInstance, node_id: str, text: str
    ) -> Outcome:
        conn, control = conns.conn, conns.control
        role = loaded.role
        await self.runner.ensure_function(control, role)
        try:
            columns = await self.runner.describe(conn, role, text)
            unknown = [c.type_oid for c in columns if c.type_oid not in SUPPORTED_TYPE_OIDS]
            if unknown:
                await self._learn_type_names(conn, unknown)
            try:
                check_columns(columns, lambda oid: self._type_names.get(oid, str(oid)))
            except StepError as exc:
                return Failed(str(exc))
            rows = await self.runner.run(conn, role, text, bool(columns))
        except pgerrors.UndefinedFunction as exc:
            self.runner.forget(role)
            if not await self.runner.role_exists(control, role):
                raise UserStatementFailed(
                    node_id,
                    Failed(
                        f"Instance {loaded.graph.instance_id}: submitted_by role no longer "
                        "exists in pg_roles"
                    ),
                ) from exc
            raise UserStatementFailed(node_id, _sql_failure(exc)) from exc
        except psycopg.OperationalError:
            raise
        except pgerrors.QueryCanceled as exc:
            if conns.cancel_requested:
                # The worker cancelled it (lost race, cancelled instance, shutdown): nothing
                # is recorded; the rollback undoes the step.
                raise
            raise UserStatementFailed(node_id, _sql_failure(exc)) from exc
        except psycopg.Error as exc:
            self.runner.invalidate(role, text)
            if exc.sqlstate == "25001" and needs_autocommit(text):
                raise UserStatementFailed(node_id, None, role, text) from exc
            raise UserStatementFailed(node_id, _sql_failure(exc)) from exc
        return Ok(build_result(columns, rows))

    async def _run_autocommit_step(
        self, conns: Connections, row: dict[str, Any], failure: UserStatementFailed
    ) -> tuple[int, Outcome] | None:
        """Run a statement PostgreSQL refuses in a transaction block (VACUUM, CREATE INDEX
        CONCURRENTLY, …) with no transaction open on the step connection — CREATE INDEX
        CONCURRENTLY waits for every older transaction, ours included. The fiber is leased
        meanwhile (run_at pushed into the future, committed), so no other worker takes it; if
        this worker dies, the lease runs out and the step runs again: at least once.

        Returns the fiber's new version and the step's outcome, or None if the fiber moved on.
        """
        conn = conns.conn
        assert failure.role is not None
        await conn.execute("BEGIN")
        cur = await conn.execute(
            query("lease_fiber"),
            {"scope": row["scope"], "version": row["version"], "seconds": AUTOCOMMIT_LEASE},
        )
        leased = await cur.fetchone()
        await conn.execute("COMMIT")
        if leased is None:
            return None
        outcome = await self._perform_autocommit(conns, failure.role, failure.text)
        return int(leased["version"]), outcome

    async def _perform_autocommit(self, conns: Connections, role: Role, text: str) -> Outcome:
        side = await conns.side_conn()
        try:
            await self.runner.run_autocommit(side, role, text)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            return _sql_failure(exc)
        return Ok(EMPTY_RESULT)

    async def _learn_type_names(self, conn: AConn, oids: list[int]) -> None:
        missing = [o for o in oids if o not in self._type_names]
        if not missing:
            return
        cur = await conn.execute(query("type_names"), {"oids": missing})
        for r in await cur.fetchall():
            self._type_names[int(r["oid"])] = str(r["typname"])


def _sql_failure(exc: psycopg.Error) -> Failed:
    message = exc.diag.message_primary or str(exc)
    return Failed(f"SQL execution failed: error returned from database: {message}")


def _fiber_from_row(row: dict[str, Any]) -> Fiber:
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
    root_done = fiber.parent_scope is None and fiber.status == "done"
    spawns = [_fiber_json(f) for f in plan.spawns]
    payload: dict[str, Any] = {
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
    return payload


def describe_outcome(outcome: Outcome) -> str:
    """A short text for logs."""
    return json.dumps(outcome_to_json(outcome))[:200]
