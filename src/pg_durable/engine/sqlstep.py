"""SQL steps: describe a statement, run a batch's statements as their submitters, shape results.

A step's statement runs in the transaction that holds its fiber's row lock, through the
submitter's step function (engine/identity.py), which catches the statement's error in a
subtransaction: a failing step is an ordinary outcome and the transaction goes on to record
it. A batch runs at most one statement per fiber, so its statements are independent and all
run in one round trip. What cannot be recorded in the same transaction is raised instead, for
the executor to deal with:

* :class:`NeedsAutocommit` — VACUUM, CREATE INDEX CONCURRENTLY and their like refuse to run in
  a transaction block; they run again outside one (at least once).
* :class:`RunAlone` — a deadlock or serialization failure between steps of one batch, or a
  statement that must be described again: the step runs again in a transaction of its own.
* :class:`StatementAborted` — a statement of a batch took the transaction down with it (a
  statement timeout); everything is rolled back and each step runs again alone, where such a
  statement is rolled back to a savepoint and its error recorded.
* :class:`Cancelled` — the worker cancelled the statements (a lost RACE, a cancelled instance,
  shutdown); everything is rolled back and nothing is recorded.

A step may have limits on its time: the worker's ``step_timeout`` setting, and the deadline of
a ``df.timeout`` around it. Both become the ``statement_timeout`` of the statement that runs
it — when tighter than the one that applies already (the role's own, the database's): the
smallest applies. A step with a deadline runs alone (PostgreSQL arms a statement timeout when a
top-level statement starts); a batch runs under the step timeout, and a batch that reaches it
is rolled back and each of its steps runs again alone, under its own.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import DictRow, dict_row

from pg_durable.engine.faults import transient
from pg_durable.engine.identity import (
    AHEAD_FAILED,
    MISSING_FUNCTION,
    RESULT_TOO_LARGE,
    Role,
    RoleGone,
    StepFailure,
    StepRows,
    StepRunner,
)
from pg_durable.engine.roundtrip import Part, run_together
from pg_durable.errors import ResultShapeChanged, StepError
from pg_durable.graph.interpreter import Failed, Ok, Outcome
from pg_durable.graph.sqlresult import (
    SUPPORTED_TYPE_OIDS,
    Column,
    build_result,
    check_columns,
    verbatim,
)
from pg_durable.graph.sqltext import needs_autocommit
from pg_durable.queries import query

logger = logging.getLogger(__name__)

AConn = psycopg.AsyncConnection[DictRow]
EMPTY_RESULT: Final = '{"rows":[],"row_count":0}'
#: SQLSTATEs of a step that lost to another step of the same batch, not to its own logic.
_CONFLICTS: Final = frozenset({"40P01", "40001"})
_ACTIVE_SQL_TRANSACTION: Final = "25001"
#: Pseudo-SQLSTATEs of a statement cancelled by the limits the worker set: the deadline of a
#: df.timeout, or its step_timeout setting.
DEADLINE_REACHED: Final = "PDDLN"
STEP_TIMEOUT_REACHED: Final = "PDSTO"
#: Statements whose last duration the worker remembers (by hash: a hint, not a record).
_DURATIONS_CACHE_SIZE: Final = 16_384


class NeedsAutocommit(Exception):
    """The statement must run outside a transaction block."""


class RunAlone(Exception):
    """Run the step again in a transaction of its own."""


class StatementAborted(Exception):
    """A statement of a batch aborted the transaction: roll back, run each step alone."""


class Cancelled(Exception):
    """The worker cancelled the running statements; roll back, record nothing."""


@dataclass(slots=True)
class Connections:
    """What a slot lends the executor: its step connection (a transaction is open on it), the
    worker's autocommit connection for step-function DDL, and an autocommit side connection
    (describing statements, running those that refuse transaction blocks).

    ``running`` names the (instance, scope) pairs whose statements run right now, so that the
    worker can cancel them; ``cancel_pending`` says the worker has sent a cancel that no
    statement has received yet."""

    conn: AConn
    control: AConn
    side: AConn
    running: list[tuple[str, str]] = field(default_factory=list)
    cancel_pending: bool = False
    #: The slot's connections to other databases, by name (engine/remote.py).
    remote: dict[str, Connections] = field(default_factory=dict)
    #: Signals taken from the inbox by the fibers of the open transaction (engine/executor.py).
    taken_signals: list[int] = field(default_factory=list)
    #: Whether the open transaction holds a lone step's ``SAVEPOINT step`` (released before
    #: its plans are written: executor.py, _commit).
    savepoint: bool = False


@dataclass(frozen=True, slots=True)
class Statement:
    """A described statement, ready to run as ``role``."""

    role: Role
    text: str
    columns: tuple[Column, ...]
    instance_id: str
    scope: str
    #: The database it runs in, if not the worker's own (engine/remote.py).
    database: str | None = None
    #: The nearest deadline of a df.timeout around the step: (its TIMEOUT node, epoch seconds
    #: on the database clock).
    deadline: tuple[str, float] | None = None
    #: The worker's step_timeout, in seconds (0: none).
    step_timeout: float = 0.0


class SqlSteps:
    """Prepares and runs SQL steps for every slot of a worker (the caches are shared)."""

    def __init__(self, runner: StepRunner, slow_seconds: float) -> None:
        self.runner = runner
        #: A statement that once ran longer than this is not batched after other steps.
        self.slow_seconds = slow_seconds
        #: Whether the statements seen lately (hashes of their texts, the latest last) took
        #: longer than slow_seconds when they last ran.
        self._seen: OrderedDict[int, bool] = OrderedDict()
        self._type_names: dict[int, str] = {}

    def is_slow(self, text: str) -> bool:
        """Whether ``text`` took longer than ``slow_seconds`` when it last ran."""
        return self._seen.get(hash(text)) is True

    def is_quick(self, text: str) -> bool:
        """Whether ``text`` has run lately, and did not take longer than ``slow_seconds`` (nor
        had to run outside a transaction block)."""
        return self._seen.get(hash(text)) is False

    async def prepare(
        self,
        conns: Connections,
        role: Role,
        text: str,
        *,
        instance_id: str,
        scope: str,
        batched: bool,
        deadline: tuple[str, float] | None = None,
        step_timeout: float = 0.0,
    ) -> Statement | Failed:
        """Describe ``text`` as ``role`` sees it, to run within ``deadline`` and
        ``step_timeout`` (see :class:`Statement`); a statement that cannot run (it does not
        parse, its result has a type pg_durable cannot map, its role is gone) is a failure."""
        try:
            await self.runner.ensure_function(conns.control, role)
            columns = await self.runner.describe(conns.side, role, text)
        except RoleGone:
            return _role_gone(instance_id)
        except psycopg.Error as exc:
            if transient(exc):  # (creating the step function on a read-only server, say)
                raise
            if batched:
                # The statement may refer to what an earlier step of this batch created (the
                # side connection cannot see it yet): decide in a transaction of its own.
                raise RunAlone from exc
            return sql_failure(exc.diag.message_primary or str(exc))
        if any(c.type_oid not in SUPPORTED_TYPE_OIDS for c in columns):
            await self._learn_type_names(conns.control, [c.type_oid for c in columns])
            try:
                check_columns(columns, lambda oid: self._type_names.get(oid, str(oid)))
            except StepError as exc:
                return Failed(str(exc))
        return Statement(role, text, columns, instance_id, scope, None, deadline, step_timeout)

    async def run(
        self,
        conns: Connections,
        statements: Sequence[Statement],
        window: float,
        *,
        alone: bool = False,
    ) -> list[StepRows | None]:
        """Run ``statements`` in the open transaction, in one round trip. None for those not
        started because ``window`` seconds had passed before their turn.

        ``alone``: one statement, after ``SAVEPOINT step`` — a statement that aborts the
        transaction (a statement timeout) is rolled back to it and reported as its error, and
        the caller may roll back to it to run the statement again.
        """
        conn = conns.conn
        conns.running = [(s.instance_id, s.scope) for s in statements]
        steps = [(s.role, s.text, bool(s.columns)) for s in statements]
        limit = None
        try:
            if not alone:
                # (Steps with a deadline run alone.) A batch that reaches it runs again alone.
                await _limit_time(conn, None, max(s.step_timeout for s in statements), True)
                return await self.runner.run_steps(conn, steps, window)
            statement = statements[0]
            timeout = statement.role.statement_timeout
            first: list[Part] = [("SAVEPOINT step", None)]
            if timeout is not None:
                first.append((query("local_statement_timeout"), {"value": timeout}))
            conns.savepoint = True
            if statement.deadline is not None or statement.step_timeout > 0:
                # The worker's own time limit is set, and read back, before the statement.
                await run_together(conn, first, dict_row)
                first = []
                limit = await _limit_time(conn, statement.deadline, statement.step_timeout, True)
            # (The savepoint and the role's own timeout in the statement's round trip.)
            return await self.runner.run_steps(conn, steps, window, first)
        except pgerrors.QueryCanceled as exc:
            if conns.cancel_pending:
                conns.cancel_pending = False
                raise Cancelled from exc
            if not alone:
                raise StatementAborted from exc
            # A statement timeout (the role's own setting, or one of ours): the statement's
            # failure.
            await conn.execute("ROLLBACK TO SAVEPOINT step")
            message = exc.diag.message_primary or str(exc)
            sqlstate = limit or str(exc.sqlstate)
            return [StepRows([], StepFailure(sqlstate, message), 0.0)]
        finally:
            conns.running = []

    def outcome(self, statement: Statement, result: StepRows, *, batched: bool) -> Outcome:
        """What ``statement``'s result means for its step."""
        self._note_duration(statement.text, result.seconds)
        error = result.error
        if error is not None:
            if error.sqlstate == RESULT_TOO_LARGE:
                return Failed(error.message)  # it names the limit and what to do
            if error.sqlstate in (DEADLINE_REACHED, STEP_TIMEOUT_REACHED):
                return timed_out(statement, error.sqlstate, error.message)
            if error.sqlstate == _ACTIVE_SQL_TRANSACTION and needs_autocommit(statement.text):
                # Never quick for a transaction: it runs outside one (is_quick says no).
                self._note_duration(statement.text, math.inf)
                raise NeedsAutocommit
            if error.sqlstate == MISSING_FUNCTION or (batched and error.sqlstate in _CONFLICTS):
                raise RunAlone  # (the step function is created again on the way)
            self.runner.invalidate(statement.role, statement.text)
            return sql_failure(error.message)
        try:
            return Ok(build_result(statement.columns, result.rows))
        except ResultShapeChanged:
            # The statement's result changed shape since it was described (ALTER TABLE).
            # Describe it again and run it alone.
            self.runner.invalidate(statement.role, statement.text)
            raise RunAlone from None
        except StepError as exc:
            return Failed(str(exc))

    def can_run_ahead(self, statement: Statement) -> bool:
        """Whether ``statement`` may go in the round trip of its checkpoint (the caller knows
        that its success would only be recorded): it ran lately and quickly, in this database,
        under no time limit of its own, and its rows are their own result text
        (df._step_ahead makes that text on the server)."""
        return (
            statement.database is None
            and statement.deadline is None
            and statement.step_timeout == 0
            and statement.role.statement_timeout is None
            and verbatim(statement.columns)
            and self.is_quick(statement.text)
        )

    def run_ahead(self, statement: Statement) -> Part:
        """The statement that runs ``statement`` ahead of its checkpoint (can_run_ahead)."""
        return self.runner.run_ahead(statement.role, statement.text, len(statement.columns))

    def ran_ahead(self, statement: Statement, seconds: float) -> None:
        """``statement`` ran ahead of its checkpoint in ``seconds`` (inf: until a statement
        timeout cancelled it — it runs as a slow statement from then on)."""
        self._note_duration(statement.text, seconds)

    def ahead_outcome(
        self, statement: Statement, exc: psycopg.Error
    ) -> tuple[Outcome, float] | None:
        """What a statement run ahead of its checkpoint means for its step, and the seconds
        it took, from the error that stopped the checkpoint (AHEAD_FAILED,
        AHEAD_SHAPE_CHANGED; the caller has rolled back to the savepoint); None: it must run
        again (described anew, say)."""
        if exc.sqlstate != AHEAD_FAILED:  # its result changed shape since it was described
            self.runner.invalidate(statement.role, statement.text)
            return None
        failure = json.loads(exc.diag.message_detail or "")
        seconds = float(failure["seconds"])
        result = StepRows([], StepFailure(failure["sqlstate"], failure["message"]), seconds)
        try:
            return self.outcome(statement, result, batched=False), seconds
        except (RunAlone, NeedsAutocommit):
            return None

    def _note_duration(self, text: str, seconds: float) -> None:
        key = hash(text)
        self._seen[key] = seconds > self.slow_seconds
        self._seen.move_to_end(key)
        if len(self._seen) > _DURATIONS_CACHE_SIZE:
            self._seen.popitem(last=False)

    async def run_autocommit(
        self, conns: Connections, role: Role, text: str, limits: Statement | None = None
    ) -> Outcome:
        """Run one of the statements PostgreSQL refuses in a transaction block, on the side
        connection, as ``role`` (within the time ``limits`` allows). No transaction may be open
        on the step connection meanwhile: CREATE INDEX CONCURRENTLY waits for every older
        transaction."""
        limit = None
        try:
            if limits is not None:
                limit = await _limit_time(conns.side, limits.deadline, limits.step_timeout, False)
            await self.runner.run_autocommit(conns.side, role, text)
        except pgerrors.QueryCanceled as exc:
            if limits is None or limit is None:
                raise
            return timed_out(limits, limit, exc.diag.message_primary or str(exc))
        except psycopg.Error as exc:
            if transient(exc):
                raise
            return sql_failure(exc.diag.message_primary or str(exc))
        finally:
            if limit is not None and not conns.side.closed:
                await conns.side.execute("RESET statement_timeout")
        return Ok(EMPTY_RESULT)

    async def _learn_type_names(self, control: AConn, oids: list[int]) -> None:
        missing = [o for o in oids if o not in self._type_names]
        if not missing:
            return
        async with self.runner.lock:
            cur = await control.execute(query("type_names"), {"oids": missing})
            for r in await cur.fetchall():
                self._type_names[int(r["oid"])] = str(r["typname"])


async def _limit_time(
    conn: AConn, deadline: tuple[str, float] | None, step_timeout: float, local: bool
) -> str | None:
    """Set the statement_timeout of the next statement on ``conn`` (of its transaction with
    ``local``, else of the session) to the tighter of the deadline and the step timeout, unless
    a tighter one applies already. Returns DEADLINE_REACHED or STEP_TIMEOUT_REACHED for the one
    it set, None if it set none."""
    if deadline is None and step_timeout <= 0:
        return None
    cur = await conn.execute(
        query("limit_statement_time"),
        {
            "deadline": None if deadline is None else deadline[1],
            "step_ms": math.ceil(step_timeout * 1000),
            "local": local,
        },
    )
    row = await cur.fetchone()
    applied = None if row is None else row["applied"]
    if applied == "deadline":
        return DEADLINE_REACHED
    return STEP_TIMEOUT_REACHED if applied == "step" else None


def timed_out(statement: Statement, limit: str, message: str) -> Failed:
    """A step whose statement the worker's limit cancelled: the deadline of a df.timeout (which
    that TIMEOUT node turns into its own failure) or the step_timeout setting."""
    if limit == DEADLINE_REACHED and statement.deadline is not None:
        return Failed(sql_failure(message).message, timeout=statement.deadline[0])
    return sql_failure(
        f"{message} (the worker's step_timeout of {statement.step_timeout:g}s: make the step "
        "quicker, or raise the setting)"
    )


def sql_failure(message: str) -> Failed:
    """A step whose statement failed, in pg_durable's words."""
    return Failed(f"SQL execution failed: error returned from database: {message}")


def _role_gone(instance_id: str) -> Failed:
    return Failed(f"Instance {instance_id}: submitted_by role no longer exists in pg_roles")
