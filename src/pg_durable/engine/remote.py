"""SQL steps in another database of the cluster: ``df.start(…, database => 'other')``.

A step's statement and its checkpoint cannot commit in one transaction when they live in two
databases. So a step in another database commits there together with a *receipt* of its
outcome (``df_exec.remote_steps``, keyed by fiber, fiber version and node), and the checkpoint
commits at home afterwards. A worker that dies between the two commits leaves the fiber
claimable at the same version: whoever claims it finds the receipt and takes its outcome
instead of running the statement again, so the statement still runs exactly once. Receipts go
once the checkpoint is committed.

Identity works as at home: the statement runs through the submitter's step function, created
in that database by the worker (engine/identity.py), and only if the submitter holds CONNECT
on it. What the worker needs there — the schema ``df_exec``, the function that runs steps,
the receipts table — is the same SQL file as at home (sql/schema/65_exec.sql); the worker
installs it on first use, so the other database needs no pg_durable installation, only a
worker role that may create a schema in it (a superuser, or the database's owner).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import psycopg
from psycopg import pq, sql
from psycopg.types.json import Jsonb

from pg_durable import schema
from pg_durable.engine.identity import Role, StepRunner
from pg_durable.engine.sqlstep import (
    AConn,
    Connections,
    RunAlone,
    SqlSteps,
    Statement,
    sql_failure,
)
from pg_durable.graph.interpreter import Failed, Outcome, outcome_from_json, outcome_to_json
from pg_durable.queries import query

logger = logging.getLogger(__name__)

#: Times a statement is described again (its result changed shape) before it counts as failed.
_MAX_DESCRIBES: Final = 5


class RemoteDatabases:
    """The other databases a worker runs steps in: per database, its step caches and whether
    the exec kit is in place. Connections belong to the slots (``Connections.remote``)."""

    def __init__(
        self,
        connect: Callable[[str], Awaitable[AConn]],
        runner: Callable[[], StepRunner],
        slow_seconds: float,
    ) -> None:
        #: Opens an autocommit step connection to the named database.
        self._connect = connect
        #: Makes a step runner with the worker's settings (one per database).
        self._runner = runner
        self._slow_seconds = slow_seconds
        self._steps: dict[str, SqlSteps] = {}
        self._kit_ready: set[str] = set()

    def steps(self, database: str) -> SqlSteps:
        found = self._steps.get(database)
        if found is None:
            # Step functions, descriptions and type names are per database.
            found = self._steps[database] = SqlSteps(self._runner(), self._slow_seconds)
        return found

    async def prepare(
        self,
        home: Connections,
        database: str,
        role: Role,
        text: str,
        *,
        instance_id: str,
        scope: str,
        deadline: tuple[str, float] | None = None,
        step_timeout: float = 0.0,
    ) -> Statement | Failed:
        """Describe ``text`` in ``database`` as ``role`` sees it, to run within ``deadline``
        and ``step_timeout`` (see :class:`Statement`); a failure if the role may not connect
        to the database, or the database is gone."""
        cur = await home.conn.execute(
            query("database_access"), {"database": database, "role": role.oid}
        )
        access = await cur.fetchone()
        if access is None:
            return Failed(f'database "{database}" does not exist')
        if not access["can_connect"]:
            return Failed(
                f'permission denied for database "{database}": role "{role.name}" does not '
                "have CONNECT privilege"
            )
        linked = await self.connections(home, database)
        prepared = await self.steps(database).prepare(
            linked, role, text, instance_id=instance_id, scope=scope, batched=False
        )
        if isinstance(prepared, Statement):
            return Statement(
                prepared.role,
                prepared.text,
                prepared.columns,
                instance_id,
                scope,
                database,
                deadline,
                step_timeout,
            )
        return prepared

    async def connections(self, home: Connections, database: str) -> Connections:
        """The slot's connections to ``database`` (opened on first use, or again if lost)."""
        linked = home.remote.get(database)
        if linked is None or _lost(linked.conn) or _lost(linked.side):
            if linked is not None:
                await close(linked)
            del linked
            home.remote.pop(database, None)
            step = await self._connect(database)
            side = await self._connect(database)
            # The side connection is the slot's own: it serves as its DDL connection too.
            linked = home.remote[database] = Connections(conn=step, control=side, side=side)
        if database not in self._kit_ready:
            await self._install_kit(linked.side, database)
            self._kit_ready.add(database)
        return linked

    async def _install_kit(self, conn: AConn, database: str) -> None:
        script = schema.exec_kit_script()
        digest = hashlib.sha256(script.encode()).hexdigest()[:16]
        async with self.steps(database).runner.lock, conn.transaction():
            await conn.execute(query("exec_kit_lock"))
            cur = await conn.execute(query("exec_kit_version"))
            row = await cur.fetchone()
            if row is not None and row["version"] == digest:
                return
            await conn.execute(script.encode())
            await conn.execute(sql.SQL(query("exec_kit_mark")).format(version=sql.Literal(digest)))
        logger.info(
            "installed pg_durable's step runner in database %s",
            database,
            extra={"action": "install_exec_kit"},
        )

    async def run(self, home: Connections, statement: Statement, receipt: str) -> Outcome:
        """Run ``statement`` in its database and commit it there with a receipt of its outcome
        — or take the outcome of an earlier run from its receipt."""
        assert statement.database is not None
        database = statement.database
        steps = self.steps(database)
        linked = await self.connections(home, database)
        conn = linked.conn
        for _ in range(_MAX_DESCRIBES):
            await conn.execute("BEGIN")
            try:
                cur = await conn.execute(query("remote_receipt"), {"key": receipt})
                found = await cur.fetchone()
                if found is not None:
                    await conn.execute("ROLLBACK")
                    return outcome_from_json(found["outcome"])
                (result,) = await steps.run(linked, [statement], 0.0, alone=True)
                assert result is not None
                try:
                    outcome = steps.outcome(statement, result, batched=False)
                except RunAlone:
                    # Described again (or its step function made again) and run once more;
                    # nothing of this attempt commits.
                    await conn.execute("ROLLBACK")
                    again = await self.prepare(
                        home,
                        database,
                        statement.role,
                        statement.text,
                        instance_id=statement.instance_id,
                        scope=statement.scope,
                    )
                    if isinstance(again, Failed):
                        return again
                    statement = again
                    continue
                await conn.execute(
                    query("remote_receipt_insert"),
                    {"key": receipt, "outcome": Jsonb(outcome_to_json(outcome))},
                )
                await conn.execute("COMMIT")
                return outcome
            except BaseException:
                if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")
                raise
        return sql_failure(f"the statement's result kept changing shape: {statement.text!r}")

    async def drop_receipts(self, home: Connections, receipts: list[tuple[str, str]]) -> None:
        """Drop the receipts of steps whose checkpoints are committed (best effort: one left
        behind is never looked up again, and the kit drops those older than a day)."""
        for database, key in receipts:
            linked = home.remote.get(database)
            if linked is None or _lost(linked.side):
                continue
            with contextlib.suppress(psycopg.Error):
                await linked.side.execute(query("remote_receipt_drop"), {"key": key})


def receipt_key(instance_id: str, scope: str, version: int, node_id: str) -> str:
    """What identifies one execution of a step: a fiber runs one statement per version."""
    return json.dumps([instance_id, scope, version, node_id], separators=(",", ":"))


def _lost(conn: AConn) -> bool:
    return conn.closed or conn.broken


async def close(conns: Connections) -> None:
    """Close ``conns`` and the connections to other databases they hold."""
    for linked in conns.remote.values():
        await close(linked)
    conns.remote.clear()
    for conn in {id(c): c for c in (conns.conn, conns.side)}.values():
        if not conn.closed:
            with contextlib.suppress(Exception):
                await conn.close()
