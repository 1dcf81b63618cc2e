"""Running one SQL step: describe it, execute it as its submitter, shape its result.

The statement runs in the transaction that holds its fiber's row lock, through the submitter's
step function (engine/identity.py), which catches the statement's error in a subtransaction:
a failing step is an ordinary outcome and the transaction goes on to record it. What cannot be
recorded in the same transaction is raised instead, for the executor to handle:

* :class:`NeedsAutocommit` — VACUUM, CREATE INDEX CONCURRENTLY and their like refuse to run in
  a transaction block; they run again outside one (at least once).
* :class:`BatchConflict` — a deadlock or serialization failure between steps that share a
  batch transaction; the step runs again in a transaction of its own.
* :class:`StatementAborted` — the statement took the transaction down with it (a statement
  timeout, the submitter's step function dropped with its role); the transaction is rolled
  back and the outcome recorded in the next one.
* :class:`Cancelled` — the worker cancelled the statement (a lost RACE, a cancelled instance,
  shutdown); the transaction is rolled back and nothing is recorded.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import DictRow

from pg_durable.engine.identity import Role, RoleGone, StepRunner
from pg_durable.errors import StepError
from pg_durable.graph.interpreter import Failed, Ok, Outcome
from pg_durable.graph.sqlresult import SUPPORTED_TYPE_OIDS, build_result, check_columns
from pg_durable.graph.sqltext import needs_autocommit
from pg_durable.queries import query

logger = logging.getLogger(__name__)

AConn = psycopg.AsyncConnection[DictRow]
EMPTY_RESULT: Final = '{"rows":[],"row_count":0}'
#: SQLSTATEs of a step that lost to another step of the same batch, not to its own logic.
_CONFLICTS: Final = frozenset({"40P01", "40001"})
_ACTIVE_SQL_TRANSACTION: Final = "25001"
_SLOW_CACHE_SIZE: Final = 4096


class NeedsAutocommit(Exception):
    """The statement must run outside a transaction block."""


class BatchConflict(Exception):
    """The statement conflicted with another step of its batch; run it alone."""


class StatementAborted(Exception):
    """The statement aborted the transaction; ``outcome`` is what to record after rollback
    (None: nothing — run the step again)."""

    def __init__(self, outcome: Outcome | None) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Cancelled(Exception):
    """The worker cancelled the running statement; roll back, record nothing."""


@dataclass(slots=True)
class Connections:
    """What a slot lends the executor: its step connection (a transaction is open on it), the
    worker's autocommit connection for step-function DDL, and an autocommit side connection
    (describing statements, running those that refuse transaction blocks).

    ``running`` names the (instance, scope) whose statement runs right now, so the worker can
    cancel it; ``cancel_pending`` says the worker has sent a cancel that no statement has
    received yet."""

    conn: AConn
    control: AConn
    side: AConn
    running: tuple[str, str] | None = None
    cancel_pending: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SqlSteps:
    """Runs SQL steps for every slot of a worker (the caches are shared)."""

    def __init__(self, runner: StepRunner, slow_seconds: float) -> None:
        self.runner = runner
        #: A statement that once ran longer than this is not batched with other steps.
        self.slow_seconds = slow_seconds
        self._slow: OrderedDict[str, None] = OrderedDict()
        self._type_names: dict[int, str] = {}

    def is_slow(self, text: str) -> bool:
        return text in self._slow

    async def run(
        self,
        conns: Connections,
        role: Role,
        text: str,
        *,
        instance_id: str,
        scope: str,
        batched: bool,
    ) -> Outcome:
        """Run ``text`` as ``role`` in the open transaction and return its outcome."""
        gone = Failed(f"Instance {instance_id}: submitted_by role no longer exists in pg_roles")
        try:
            await self.runner.ensure_function(conns.control, role)
            columns = await self.runner.describe(conns.side, role, text)
        except RoleGone:
            return gone
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if batched:
                # The statement may refer to what an earlier step of this batch created (the
                # side connection cannot see it yet): decide in a transaction of its own.
                raise BatchConflict from exc
            return _sql_failure(exc.diag.message_primary or str(exc))
        unknown = [c.type_oid for c in columns if c.type_oid not in SUPPORTED_TYPE_OIDS]
        if unknown:
            await self._learn_type_names(conns.control, unknown)
            try:
                check_columns(columns, lambda oid: self._type_names.get(oid, str(oid)))
            except StepError as exc:
                return Failed(str(exc))
        conns.running = (instance_id, scope)
        started = time.monotonic()
        try:
            result = await self.runner.run(conns.conn, role, text, bool(columns))
        except pgerrors.QueryCanceled as exc:
            if conns.cancel_pending:
                conns.cancel_pending = False
                raise Cancelled from exc
            raise StatementAborted(_sql_failure(exc.diag.message_primary or str(exc))) from exc
        except pgerrors.UndefinedFunction as exc:
            # The step function vanished (DROP OWNED BY, or the role was dropped).
            self.runner.forget(role)
            if await self.runner.role_exists(conns.control, role):
                raise StatementAborted(_sql_failure(str(exc.diag.message_primary))) from exc
            raise StatementAborted(gone) from exc
        finally:
            conns.running = None
        self._note_duration(text, time.monotonic() - started)
        if result.error is not None:
            if result.error.sqlstate == _ACTIVE_SQL_TRANSACTION and needs_autocommit(text):
                raise NeedsAutocommit
            if batched and result.error.sqlstate in _CONFLICTS:
                raise BatchConflict
            self.runner.invalidate(role, text)
            return _sql_failure(result.error.message)
        try:
            return Ok(build_result(columns, result.rows))
        except StepError:
            # The rows do not match the description: the statement's result shape changed
            # since it was described (ALTER TABLE). Describe again next time; this time, let
            # the step run again in a transaction of its own.
            self.runner.invalidate(role, text)
            raise StatementAborted(None) from None

    async def run_autocommit(self, conns: Connections, role: Role, text: str) -> Outcome:
        """Run one of the statements PostgreSQL refuses in a transaction block, on the side
        connection, as ``role``. No transaction may be open on the step connection meanwhile:
        CREATE INDEX CONCURRENTLY waits for every older transaction."""
        try:
            await self.runner.run_autocommit(conns.side, role, text)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            return _sql_failure(exc.diag.message_primary or str(exc))
        return Ok(EMPTY_RESULT)

    def _note_duration(self, text: str, seconds: float) -> None:
        if seconds > self.slow_seconds:
            self._slow[text] = None
            self._slow.move_to_end(text)
            if len(self._slow) > _SLOW_CACHE_SIZE:
                self._slow.popitem(last=False)
        else:
            self._slow.pop(text, None)

    async def _learn_type_names(self, control: AConn, oids: list[int]) -> None:
        missing = [o for o in oids if o not in self._type_names]
        if not missing:
            return
        async with self.runner.lock:
            cur = await control.execute(query("type_names"), {"oids": missing})
            for r in await cur.fetchall():
                self._type_names[int(r["oid"])] = str(r["typname"])


def _sql_failure(message: str) -> Failed:
    return Failed(f"SQL execution failed: error returned from database: {message}")
