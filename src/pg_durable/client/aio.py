"""The client for asyncio: the functions of :mod:`pg_durable.client.client`, awaited, on a
``psycopg.AsyncConnection`` of your own — the same SQL, checks and results (both run
:mod:`~pg_durable.client.operations`).

    from pg_durable import sql, sleep
    from pg_durable.client import aio

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            instance = await aio.start(conn, sql("SELECT 1") >> sleep(2))
        outcome = await aio.await_instance(conn, instance, timeout=60)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.rows import dict_row

from pg_durable.client import operations
from pg_durable.client.operations import Operation, Pause, Row
from pg_durable.client.records import JSON, Instance, Node, Outcome, Page, Progress, Status
from pg_durable.client.workflow import Step, Workflow
from pg_durable.queries import query

__all__ = [
    "await_instance",
    "cancel",
    "explain",
    "info",
    "iter_instances",
    "list_instances",
    "nodes",
    "progress",
    "result",
    "signal",
    "start",
    "status",
]

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]


async def run(conn: Connection, operation: Operation[T]) -> T:
    """Run one of :mod:`~pg_durable.client.operations` on ``conn``."""
    try:
        request = next(operation)
        while True:
            rows: list[Row] = []
            if isinstance(request, Pause):
                await asyncio.sleep(request.seconds)
            else:
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query(request.name), request.params)
                    rows = await cur.fetchall() if cur.description is not None else []
            request = operation.send(rows)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def start(
    conn: Connection,
    workflow: Step,
    *,
    label: str | None = None,
    database: str | None = None,
    transaction_mode: Literal["caller", "new"] = "caller",
) -> str:
    """Start ``workflow`` (``df.start``) and return its instance id.

    Args:
        conn: runs the start, as its role and in its transaction: a rollback leaves nothing.
        workflow: a :class:`~pg_durable.client.workflow.Workflow`, or SQL text (one step).
        label: shown by listings; ``list_instances(label=…)`` finds it.
        database: run the steps in another database of the cluster.
        transaction_mode: ``"new"`` commits the start on its own (needs the setup of
            docs/admin.md), whatever becomes of the caller's transaction.

    Raises:
        psycopg.Error: df.start refused the workflow (the message says which node and why).
    """
    return await run(conn, operations.start(workflow, label, database, transaction_mode))


async def status(conn: Connection, instance_id: str) -> Status:
    """The instance's status: pending, running, completed, failed or cancelled.

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.status(instance_id))


async def info(conn: Connection, instance_id: str) -> Instance:
    """The instance: label, status, output, times.

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.info(instance_id))


async def result(conn: Connection, instance_id: str) -> JSON:
    """The workflow's result once it completed (``df.result``, parsed), else None.

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.result(instance_id))


async def nodes(conn: Connection, instance_id: str) -> list[Node]:
    """Every node of the instance with its inferred status, in graph order.

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.nodes(instance_id))


async def progress(conn: Connection, instance_id: str) -> Progress:
    """How far the instance has come: nodes done of all, the steps running, time elapsed.

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.progress(instance_id))


async def await_instance(
    conn: Connection,
    instance_id: str,
    *,
    timeout: float | None = 30.0,
    poll_interval: float = 0.5,
    on_progress: Callable[[Progress], None] | None = None,
) -> Outcome:
    """Wait until the instance has finished and return how it ended.

    It polls (quickly at first, then every ``poll_interval`` seconds), so it sees what other
    transactions commit: use an autocommit connection, or one in READ COMMITTED.

    Args:
        timeout: seconds to wait at most; None waits as long as it takes.
        on_progress: called with the instance's :class:`Progress` at every poll.

    Raises:
        WaitTimeout: still not finished after ``timeout`` seconds.
        InstanceNotCommitted: it was started in this connection's open transaction.
        SnapshotFrozen: the connection is in a REPEATABLE READ or SERIALIZABLE transaction.
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(
        conn, operations.await_instance(instance_id, timeout, poll_interval, on_progress)
    )


async def signal(conn: Connection, instance_id: str, name: str, data: JSON = "{}") -> None:
    """Send the signal ``name`` to the instance (``df.signal``); a wait for it receives ``data``.

    ``data`` is sent as JSON; a str is taken as ``df.signal`` takes text (JSON text is that
    value, other text a string). A signal sent before the workflow waits for it is kept.

    Raises:
        InstanceNotFound: no such instance, or another role's.
        InstanceFinished: it has finished.
    """
    await run(conn, operations.signal(instance_id, name, data))


async def cancel(conn: Connection, instance_id: str, reason: str | None = None) -> bool:
    """Cancel the instance (``df.cancel``); True if it was still pending or running, False
    if it had already finished (nothing changes then).

    Raises:
        InstanceNotFound: no such instance, or another role's.
    """
    return await run(conn, operations.cancel(instance_id, reason))


async def list_instances(
    conn: Connection,
    *,
    status: Status | None = None,
    label: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    after: str | None = None,
) -> Page:
    """One page of the instances the role can see, newest first (``df.list_instances``).

    Args:
        status, label: only instances with this status, this label.
        since, until: only instances created at or after ``since``, before ``until``.
        limit: at most this many (the server caps it: ``pg_durable.list_instances_max_limit``).
        after: the ``next_cursor`` of the page before.
    """
    return await run(conn, operations.list_page(status, label, since, until, limit, after))


async def iter_instances(
    conn: Connection,
    *,
    status: Status | None = None,
    label: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 100,
) -> AsyncIterator[Instance]:
    """Every instance :func:`list_instances` would list, page after page."""
    after: str | None = None
    while True:
        page = await list_instances(
            conn,
            status=status,
            label=label,
            since=since,
            until=until,
            limit=page_size,
            after=after,
        )
        for instance in page.instances:
            yield instance
        if page.next_cursor is None:
            return
        after = page.next_cursor


async def explain(conn: Connection, target: Workflow | str) -> str:
    """``df.explain``: the tree of a workflow not started (a dry run, validated as df.start
    would) or of an instance, by id, with each node's status."""
    return await run(conn, operations.explain(target))
