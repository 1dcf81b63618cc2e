"""The client's operations, once, for both the sync and the async client (no I/O here).

Each operation is a generator: it yields a :class:`Query` (a statement of ``queries.sql`` by
name, with its parameters) and is sent back that query's rows as dicts, or yields a
:class:`Pause` and is sent back nothing; it returns its value. ``client.py`` runs them on a
``psycopg.Connection``, ``aio.py`` on a ``psycopg.AsyncConnection``. So the SQL, the checks
and the shaping of rows into :mod:`records <pg_durable.client.records>` exist once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

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
from pg_durable.client.workflow import Step, Workflow, as_step

T = TypeVar("T")
Row = dict[str, Any]

#: Node types that do the work (the others only arrange it): what "running" points at.
LEAF_TYPES = frozenset(
    {"SQL", "SLEEP", "SIGNAL", "WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "BREAK"}
)
_ID = re.compile(r"[0-9a-f]{8}")
#: The first wait between polls; it doubles up to the caller's poll interval, so a quick
#: workflow is seen finished quickly and a long one is not polled more than asked.
_FIRST_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Query:
    """Run the statement ``name`` of queries.sql with ``params``; send back its rows."""

    name: str
    params: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` (without holding anything); send back nothing."""

    seconds: float


Operation = Generator[Query | Pause, list[Row], T]


def instance_id(text: str) -> str:
    """``text`` as an instance id: 8 hexadecimal characters (either case; stored lower-case).

    Raises:
        InvalidInstanceId: it is not one. (An id is checked before it reaches SQL: df.explain,
            for one, evaluates text that is not an id.)
    """
    if not isinstance(text, str):
        raise InvalidInstanceId(f"an instance id is a str, not {type(text).__name__}")
    normalized = text.strip().lower()
    if _ID.fullmatch(normalized) is None:
        raise InvalidInstanceId(
            f"{text!r} is not an instance id: expected 8 hexadecimal characters, like 3f9a0c21"
        )
    return normalized


def _status(value: object) -> Status:
    if value not in ("pending", "running", "completed", "failed", "cancelled"):
        raise ValueError(f"unexpected instance status {value!r}")
    return value


def _instance(row: Row) -> Instance:
    return Instance(
        id=row["id"] if "id" in row else row["instance_id"],
        label=row["label"],
        status=_status(row["status"]),
        execution_count=int(row["execution_count"]),
        output=row["output"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


def _node(row: Row) -> Node:
    return Node(
        id=row["node_id"],
        node_type=row["node_type"],
        query=row["query"],
        result_name=row["result_name"],
        left=row["left_node"],
        right=row["right_node"],
        status=row["status"],
        inferred_status=row["inferred_status"],
        result=row["result"],
        status_details=row["status_details"],
        updated_at=row["updated_at"],
        execution_id=int(row["execution_id"]),
    )


def _children(node: Node) -> list[str]:
    """The ids of a node's children in graph order: left, right, condition, extra branches
    (an IF's or LOOP's condition and a JOIN's extras are kept in its query)."""
    kids = [k for k in (node.left, node.right) if k]
    if node.node_type in ("IF", "LOOP", "JOIN") and node.query:
        try:
            config = json.loads(node.query)
        except ValueError:
            config = None
        if isinstance(config, dict):
            condition = config.get("condition_node")
            if isinstance(condition, str):
                kids.append(condition)
            extras = config.get("extra_nodes")
            if isinstance(extras, list):
                kids.extend(e for e in extras if isinstance(e, str))
    return kids


def in_graph_order(nodes: list[Node], root: str | None) -> list[Node]:
    """``nodes`` in pre-order from ``root``; nodes it does not reach come last, by id."""
    by_id = {n.id: n for n in nodes}
    ordered: list[Node] = []
    seen: set[str] = set()
    stack = [root] if root in by_id else []
    while stack:
        current = by_id[stack.pop()]
        if current.id in seen:
            continue
        seen.add(current.id)
        ordered.append(current)
        stack.extend(k for k in reversed(_children(current)) if k in by_id and k not in seen)
    ordered.extend(sorted((n for n in nodes if n.id not in seen), key=lambda n: n.id))
    return ordered


def _json(text: str | None) -> JSON:
    return None if text is None else cast(JSON, json.loads(text))


# -- operations -----------------------------------------------------------------------------


def start(
    workflow: Step,
    label: str | None,
    database: str | None,
    transaction_mode: Literal["caller", "new"],
) -> Operation[str]:
    """df.start; the instance id."""
    envelope = as_step(workflow).to_json()
    rows = yield Query(
        "client_start",
        {
            "envelope": envelope,
            "label": label,
            "database": database,
            "transaction_mode": transaction_mode,
        },
    )
    return str(rows[0]["instance_id"])


def _instance_row(iid: str) -> Operation[Row]:
    rows = yield Query("client_instance", {"id": iid})
    if not rows:
        raise InstanceNotFound(iid)
    return rows[0]


def info(text: str) -> Operation[Instance]:
    """The instance (df.instances, df.instance_info)."""
    row = yield from _instance_row(instance_id(text))
    return _instance(row)


def status(text: str) -> Operation[Status]:
    """Its status."""
    return (yield from info(text)).status


def result(text: str) -> Operation[JSON]:
    """df.result, parsed: the root's result once completed, else None."""
    iid = instance_id(text)
    rows = yield Query("client_result", {"id": iid})
    if rows[0]["status"] is None:
        raise InstanceNotFound(iid)
    return _json(rows[0]["result"])


def nodes(text: str) -> Operation[list[Node]]:
    """df.instance_nodes, in graph order from the root."""
    row = yield from _instance_row(instance_id(text))
    found = yield Query("client_nodes", {"id": row["id"]})
    return in_graph_order([_node(r) for r in found], row["root_node"])


def progress(text: str) -> Operation[Progress]:
    """How far the instance has come."""
    row = yield from _instance_row(instance_id(text))
    found = yield Query("client_nodes", {"id": row["id"]})
    return _progress(row, in_graph_order([_node(r) for r in found], row["root_node"]))


def _progress(row: Row, graph: list[Node]) -> Progress:
    return Progress(
        instance=_instance(row),
        elapsed=float(row["elapsed"]),
        nodes_total=len(graph),
        nodes_done=sum(n.inferred_status in ("completed", "failed", "skipped") for n in graph),
        running=tuple(
            n for n in graph if n.inferred_status == "running" and n.node_type in LEAF_TYPES
        ),
    )


def _outcome(iid: str, row: Row) -> Operation[Outcome]:
    state = _status(row["status"])
    value: JSON = None
    if state == "completed":
        rows = yield Query("client_result", {"id": iid})
        value = _json(rows[0]["result"])
    error = row["output"] if state != "completed" else None
    if state == "cancelled" and error is None:
        error = "cancelled"
    return Outcome(
        instance_id=iid, status=state, result=value, error=error, elapsed=float(row["elapsed"])
    )


def await_instance(
    text: str,
    timeout: float | None,
    poll_interval: float,
    on_progress: Callable[[Progress], None] | None,
) -> Operation[Outcome]:
    """Poll until the instance has finished; its outcome.

    Raises:
        WaitTimeout: not finished within ``timeout`` seconds (None: no limit).
        InstanceNotCommitted: it was started in the transaction polling for it.
        SnapshotFrozen: the transaction polling for it cannot see what workers commit.
    """
    iid = instance_id(text)
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive (or None to wait as long as it takes)")
    if poll_interval <= 0:
        raise ValueError("poll_interval must be positive")
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = min(_FIRST_POLL, poll_interval)
    while True:
        row = yield from _instance_row(iid)
        if row["this_transaction"]:
            raise InstanceNotCommitted(iid)
        if row["frozen"] and row["status"] not in TERMINAL:
            raise SnapshotFrozen(iid)
        if on_progress is not None:
            found = yield Query("client_nodes", {"id": iid})
            on_progress(_progress(row, in_graph_order([_node(r) for r in found], row["root_node"])))
        if row["status"] in TERMINAL:
            return (yield from _outcome(iid, row))
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            assert timeout is not None
            raise WaitTimeout(iid, row["status"], timeout)
        yield Pause(pause if left is None else min(pause, left))
        pause = min(pause * 2, poll_interval)


def signal(text: str, name: str, data: JSON) -> Operation[None]:
    """df.signal: ``data`` as JSON (a str as df.signal takes text: JSON text is that value,
    other text a string)."""
    iid = instance_id(text)
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    rows = yield Query("client_signal", {"id": iid, "name": name, "data": payload})
    state = rows[0]["status"]
    if state is None:
        raise InstanceNotFound(iid)
    if rows[0]["reply"] is None:
        raise InstanceFinished(iid, state)


def cancel(text: str, reason: str | None) -> Operation[bool]:
    """df.cancel; whether the instance was still pending or running (so this cancelled it)."""
    iid = instance_id(text)
    rows = yield Query("client_cancel", {"id": iid, "reason": reason})
    state = rows[0]["status"]
    if state is None:
        raise InstanceNotFound(iid)
    return state not in TERMINAL


def cursor_before(moment: datetime) -> str:
    """A df.list_instances cursor after which come the instances created before ``moment``.

    The cursor's format is SPEC §1.7's (hex of ``v1|<created_at>|<id>``): the last instant
    before ``moment`` (timestamps have microseconds) and an id below every id, ``0``.
    """
    if moment.tzinfo is None:
        raise ValueError("a time bound needs a time zone (an aware datetime)")
    at = (moment - timedelta(microseconds=1)).astimezone(UTC)
    text = "v1|" + at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00|0"
    return text.encode("utf-8").hex()


def list_page(
    status: Status | None,
    label: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: str | None,
) -> Operation[Page]:
    """One page of df.list_instances (keyset-paginated), newest first, created in
    [since, until)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if since is not None and since.tzinfo is None:
        raise ValueError("a time bound needs a time zone (an aware datetime)")
    start_at = after if after is not None else (None if until is None else cursor_before(until))
    rows = yield Query(
        "client_list",
        {"status": status, "label": label, "limit": limit, "after": start_at},
    )
    found = []
    next_cursor = rows[0]["next_cursor"] if rows else None
    for row in rows:
        if until is not None and row["created_at"] >= until:
            continue
        if since is not None and row["created_at"] < since:
            next_cursor = None  # newest first: all that follows is older still
            break
        found.append(_instance(row))
    return Page(instances=tuple(found), next_cursor=next_cursor)


def explain(target: Workflow | str) -> Operation[str]:
    """df.explain of a workflow (a dry run) or of an instance id (the live tree)."""
    text = target.to_json() if isinstance(target, Workflow) else instance_id(target)
    rows = yield Query("client_explain", {"input": text})
    return str(rows[0]["tree"])
