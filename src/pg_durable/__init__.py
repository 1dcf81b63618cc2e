"""pg_durable for Python: durable execution of SQL workflows inside PostgreSQL.

Build a workflow with Python objects and operators, start it in your own transaction, await it:

    from pg_durable import client, sql, sleep

    instance = client.start(conn, sql("SELECT 1") >> sleep(2), label="first")
    outcome = client.await_instance(conn, instance, timeout=60)

:mod:`pg_durable.client` holds the synchronous functions, :mod:`pg_durable.client.aio` the same
for asyncio (docs/python.md).
"""

from __future__ import annotations

from pg_durable import client
from pg_durable.client.steps import (
    Part,
    break_,
    http,
    http_multipart,
    if_,
    if_rows,
    join,
    loop,
    race,
    retry,
    seq,
    sleep,
    sql,
    timeout,
    wait_for_schedule,
    wait_for_signal,
)
from pg_durable.client.workflow import Step, Workflow
from pg_durable.errors import PgDurableError

__version__ = "0.1.0"

__all__ = [
    "Part",
    "PgDurableError",
    "Step",
    "Workflow",
    "__version__",
    "break_",
    "client",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "join",
    "loop",
    "race",
    "retry",
    "seq",
    "sleep",
    "sql",
    "timeout",
    "wait_for_schedule",
    "wait_for_signal",
]
