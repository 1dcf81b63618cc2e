"""Running a step as the role that submitted it, inescapably.

Each submitting role gets one function ``df_exec.step_<role oid>(statements, returns_rows,
max_bytes, max_rows, not_after, batch_bytes, batch_rows)``: SECURITY DEFINER, owned by that
role, in a schema no other role may use. Inside a security-definer function PostgreSQL refuses
``SET ROLE``, ``RESET ROLE``, ``SET SESSION AUTHORIZATION`` and ``set_config('role', …)`` —
also in anything the statement calls — so the step has exactly the privileges of its submitter
and cannot leave them. The worker needs no password of the role and no ``trust`` in
pg_hba.conf.

The function runs the role's statements of a batch one after the other, returns each one's
rows as ``row_to_json`` texts, and catches each one's error (in a subtransaction) so that a
failing step leaves the worker's transaction usable. Between two of them it cleans the
session, as the role: they are steps of different instances. ``df_exec.run_steps`` calls it for
each run of steps of one role and then cleans the session itself for the next role (or for the
worker's own statements): what one role's step leaves behind — settings, temporary tables,
session locks — never reaches another role. Column names and types come from a protocol-level
Describe of the statement (Parse only, nothing executes) on the slot's side connection under
``SET ROLE``, so names resolve as the submitter would resolve them; it also rejects
multi-statement strings. Descriptions are cached per (role, statement text).

A step's result is capped inside its step function, while the statement's rows are read: the
first row past ``max_bytes`` (of ``row_to_json`` text) or ``max_rows`` ends the statement with
an error of SQLSTATE :data:`RESULT_TOO_LARGE` that names the limit, and its effects roll back
with its subtransaction. The caps are arguments the worker passes (its ``max_result_bytes`` and
``max_result_rows`` settings), out of reach of the statement. They bound a batch as well: no
further step of it starts once the rows it returned reach either cap, so a batch holds less than
twice the caps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.errors import error_from_result
from psycopg.generators import execute
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from pg_durable.engine.roundtrip import Part, run_together
from pg_durable.graph.sqlresult import Column
from pg_durable.queries import query
from pg_durable.settings import DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_RESULT_ROWS

logger = logging.getLogger(__name__)

EXEC_SCHEMA = "df_exec"
#: Pseudo-SQLSTATE of a step whose role's step function does not exist (any more).
MISSING_FUNCTION = "PDMIS"
#: SQLSTATE of a step whose result went past max_result_bytes or max_result_rows; its message
#: says which limit and what to do.
RESULT_TOO_LARGE = "PDLIM"
#: SQLSTATEs of a step sent with its checkpoint that the checkpoint must not follow: it failed
#: (the DETAIL: its error as run_steps reports it, and the seconds it took), or its rows no
#: longer have the columns it was described with.
AHEAD_FAILED = "PDAHD"
AHEAD_SHAPE_CHANGED = "PDAHS"
AnyConn = psycopg.AsyncConnection[Any]
_DESCRIBE_CACHE_SIZE = 4096
# Serialises concurrent creation of one role's function by several workers.
_ENSURE_LOCK_CLASS = 0x50474446


class RoleGone(Exception):
    """The submitting role no longer exists."""


@dataclass(frozen=True, slots=True)
class StepFailure:
    """The error a step's statement raised (caught inside its step function)."""

    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class StepRows:
    """What a step's statement returned: its rows as ``row_to_json`` texts, or its error."""

    rows: list[str]
    error: StepFailure | None
    #: Seconds the statement took.
    seconds: float


@dataclass(frozen=True, slots=True)
class Role:
    """The submitting role of an instance, as resolved when its graph was loaded."""

    oid: int
    name: str
    #: The role's own settings (ALTER ROLE … SET), 'name=value' items in the order they apply.
    settings: tuple[str, ...] = ()

    @property
    def statement_timeout(self) -> str | None:
        """The role's statement_timeout, if it has one. PostgreSQL arms it when a top-level
        statement starts, so a step of such a role runs as a statement of its own."""
        found = None
        for item in self.settings:
            name, _, value = item.partition("=")
            if name.lower() == "statement_timeout":
                found = value
        return found

    @property
    def function(self) -> str:
        # df_exec.run_steps derives the same name from the oid.
        return f"step_{self.oid}"

    @property
    def signature(self) -> str:
        # (df_exec.run_steps looks it up with the same argument types.)
        return (
            f"{EXEC_SCHEMA}.{self.function}"
            "(text[],boolean[],bigint,bigint,timestamptz,bigint,bigint)"
        )


class StepRunner:
    """Creates the per-role functions and runs statements through them. Shared by all slots."""

    def __init__(
        self,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_result_rows: int = DEFAULT_MAX_RESULT_ROWS,
    ) -> None:
        #: Caps of one step's result (and what a batch takes before it starts no more steps).
        self.max_result_bytes = max_result_bytes
        self.max_result_rows = max_result_rows
        #: Held while using the control connection, which all slots share.
        self.lock = asyncio.Lock()
        self._ensured: set[int] = set()
        self._described: OrderedDict[tuple[int, str], tuple[Column, ...]] = OrderedDict()

    def forget(self, role: Role) -> None:
        """Drop what we know about ``role`` (its function vanished, e.g. DROP OWNED BY)."""
        self._ensured.discard(role.oid)
        for key in [k for k in self._described if k[0] == role.oid]:
            del self._described[key]

    async def ensure_function(self, conn: AnyConn, role: Role) -> None:
        """Create ``role``'s step function unless it exists; ``conn`` is an autocommit control
        connection (DDL stays out of step transactions)."""
        if role.oid in self._ensured:
            return
        try:
            await self._create_function(conn, role)
        except psycopg.errors.UndefinedObject as exc:  # ALTER FUNCTION … OWNER TO a gone role
            raise RoleGone(role.name) from exc
        self._ensured.add(role.oid)

    async def _create_function(self, conn: AnyConn, role: Role) -> None:
        async with self.lock, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (_ENSURE_LOCK_CLASS, role.oid % 2**31)
            )
            cur = await conn.execute(query("exec_function"), {"signature": role.signature})
            row = await cur.fetchone()
            if row is None or not row["present"]:
                names = {
                    "function": sql.Identifier(EXEC_SCHEMA, role.function),
                    "role": sql.Identifier(role.name),
                }
                for name in (
                    "create_exec_function",
                    "revoke_exec_function",
                    "lend_exec_schema",
                    "own_exec_function",
                    "take_back_exec_schema",
                ):
                    await conn.execute(sql.SQL(query(name)).format(**names))
                logger.info(
                    "created step function %s for role %s",
                    role.signature,
                    role.name,
                    extra={"action": "create_exec_function"},
                )

    async def role_exists(self, conn: AnyConn, role: Role) -> bool:
        """Whether ``role`` still exists (on the control connection)."""
        async with self.lock:
            cur = await conn.execute(query("role_exists"), {"oid": role.oid})
            return await cur.fetchone() is not None

    async def describe(self, side: AnyConn, role: Role, text: str) -> tuple[Column, ...]:
        """Column names and types of ``text`` as ``role`` sees it, on the autocommit ``side``
        connection (so that a statement that does not parse leaves the step transaction
        intact). Raises the statement's psycopg error if it does not parse."""
        key = (role.oid, text)
        cached = self._described.get(key)
        if cached is not None:
            self._described.move_to_end(key)
            return cached
        if role.settings:  # search_path, above all, decides what names resolve to
            await side.execute(query("role_settings"), {"settings": list(role.settings)})
        try:
            try:
                await side.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role.name)))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                cur = await side.execute(query("role_exists"), {"oid": role.oid})
                if await cur.fetchone() is None:
                    self.forget(role)
                    raise RoleGone(role.name) from exc
                raise
            columns = await _describe(side, text)
        finally:
            await side.execute("RESET ROLE")  # RESET ALL leaves the role alone
            await side.execute("RESET ALL")
        self._described[key] = columns
        if len(self._described) > _DESCRIBE_CACHE_SIZE:
            self._described.popitem(last=False)
        return columns

    def invalidate(self, role: Role, text: str) -> None:
        """Forget the description of ``text`` (the statement's result shape changed)."""
        self._described.pop((role.oid, text), None)

    async def run_steps(
        self,
        conn: AnyConn,
        steps: Sequence[tuple[Role, str, bool]],
        window: float,
        first: Sequence[Part] = (),
    ) -> list[StepRows | None]:
        """Execute each (role, statement, returns rows) in the transaction open on ``conn``,
        in one round trip (df_exec.run_steps) — after the statements ``first``, in the same
        one. None for a step that did not run: the window had passed before its turn."""
        run = (self._payload(steps), window, self.max_result_bytes, self.max_result_rows)
        *_, ran = await run_together(conn, [*first, (query("run_steps"), run)], tuple_row)
        results: list[StepRows | None] = [None] * len(steps)
        for index, rows, error, seconds in ran:
            if error is None:
                results[index] = StepRows(rows, None, float(seconds))
                continue
            failure = json.loads(error)
            if failure["sqlstate"] == MISSING_FUNCTION:  # dropped (DROP OWNED BY, say)
                self.forget(steps[index][0])
            results[index] = StepRows([], StepFailure(failure["sqlstate"], failure["message"]), 0.0)
        return results

    def run_ahead(self, role: Role, text: str, columns: int) -> Part:
        """The statement that runs one step (a statement of ``columns`` columns, each of a type
        whose row_to_json text is its result's) and keeps its result text for
        df._with_step_result, in the round trip of its checkpoint; it raises AHEAD_FAILED or
        AHEAD_SHAPE_CHANGED where the checkpoint must not follow."""
        return (
            query("step_ahead"),
            {
                "steps": self._payload([(role, text, columns > 0)]),
                "columns": columns,
                "max_bytes": self.max_result_bytes,
                "max_rows": self.max_result_rows,
            },
        )

    @staticmethod
    def _payload(steps: Sequence[tuple[Role, str, bool]]) -> Jsonb:
        """Steps as df_exec.run_steps takes them."""
        return Jsonb(
            [
                {"role": role.oid, "sql": text, "rows": rows, "settings": list(role.settings)}
                for role, text, rows in steps
            ]
        )

    async def run_autocommit(self, conn: AnyConn, role: Role, text: str) -> None:
        """Run one of the statements PostgreSQL refuses in a transaction block (the caller has
        checked it with ``sqltext.needs_autocommit``), as ``role``, on an autocommit
        connection. ``SET ROLE`` is safe here because such statements run no user code except
        under PostgreSQL's own security-restricted context."""
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role.name)))
        try:
            await conn.execute(text.encode(), prepare=False)
        finally:
            await conn.execute("RESET ROLE")
            await conn.execute("RESET ALL")


async def _describe(conn: AnyConn, text: str) -> tuple[Column, ...]:
    pgconn = conn.pgconn
    encoding = conn.info.encoding
    async with conn.lock:
        pgconn.send_prepare(b"", text.encode(encoding))
        (result,) = await conn.wait(execute(pgconn))
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise error_from_result(result, encoding=encoding)
        pgconn.send_describe_prepared(b"")
        (result,) = await conn.wait(execute(pgconn))
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise error_from_result(result, encoding=encoding)
        return tuple(
            Column((result.fname(i) or b"").decode(encoding), result.ftype(i))
            for i in range(result.nfields)
        )
