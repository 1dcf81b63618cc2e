"""pg_durable's Python API for applications: build workflows with Python objects and operators
(:mod:`~pg_durable.client.steps`, :mod:`~pg_durable.client.workflow`), then start, watch and
steer them in your own psycopg connections — synchronously (the functions here, from
:mod:`~pg_durable.client.client`) or with asyncio (the same names in
:mod:`~pg_durable.client.aio`). See docs/python.md.

    from pg_durable import client, sql, sleep

    instance = client.start(conn, sql("SELECT 1") >> sleep(2), label="first")
    outcome = client.await_instance(conn, instance, timeout=60)
"""

from __future__ import annotations

from pg_durable.client import aio
from pg_durable.client.client import (
    await_instance,
    cancel,
    explain,
    info,
    iter_instances,
    list_instances,
    nodes,
    progress,
    result,
    signal,
    start,
    status,
)
from pg_durable.client.errors import (
    InstanceFinished,
    InstanceNotCommitted,
    InstanceNotFound,
    InvalidInstanceId,
    SnapshotFrozen,
    WaitTimeout,
)
from pg_durable.client.records import (
    JSON,
    TERMINAL,
    Instance,
    Node,
    Outcome,
    Page,
    Progress,
    Status,
)
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

__all__ = [
    "JSON",
    "TERMINAL",
    "Instance",
    "InstanceFinished",
    "InstanceNotCommitted",
    "InstanceNotFound",
    "InvalidInstanceId",
    "Node",
    "Outcome",
    "Page",
    "Part",
    "Progress",
    "SnapshotFrozen",
    "Status",
    "Step",
    "WaitTimeout",
    "Workflow",
    "aio",
    "await_instance",
    "break_",
    "cancel",
    "explain",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "info",
    "iter_instances",
    "join",
    "list_instances",
    "loop",
    "nodes",
    "progress",
    "race",
    "result",
    "retry",
    "seq",
    "signal",
    "sleep",
    "sql",
    "start",
    "status",
    "timeout",
    "wait_for_schedule",
    "wait_for_signal",
]
