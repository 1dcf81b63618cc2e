"""What the client returns: instances, nodes, pages, outcomes and progress, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

__all__ = [
    "JSON",
    "TERMINAL",
    "Instance",
    "Node",
    "Outcome",
    "Page",
    "Progress",
    "Status",
]

#: A JSON value as ``json.loads`` returns it.
JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"

#: An instance's status (df.instances.status).
Status = Literal["pending", "running", "completed", "failed", "cancelled"]

#: The statuses an instance ends in.
TERMINAL: frozenset[Status] = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Instance:
    """One workflow instance, as ``df.list_instances`` and ``df.instance_info`` describe it."""

    id: str
    label: str | None
    status: Status
    #: The generation of its root: 1, or the iteration a root loop is in.
    execution_count: int
    #: The engine's output: the result text once completed, the error once failed.
    output: str | None
    created_at: datetime
    completed_at: datetime | None

    @property
    def finished(self) -> bool:
        """Whether the instance is completed, failed or cancelled."""
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Page:
    """A page of instances, newest first; pass ``next_cursor`` as ``after`` for the next one
    (None: this is the last page)."""

    instances: tuple[Instance, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Node:
    """One node of an instance's graph (``df.instance_nodes``)."""

    id: str
    node_type: str
    query: str | None
    result_name: str | None
    left: str | None
    right: str | None
    #: The physical status: pending, running, completed or failed.
    status: str
    #: What the status means now (SPEC §2.13): pending, running, completed, failed or skipped.
    inferred_status: str
    #: The node's result (JSON text), or its error once failed.
    result: str | None
    status_details: str | None
    updated_at: datetime | None
    #: The generation the node last ran in (a loop's iteration).
    execution_id: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an instance ended."""

    instance_id: str
    status: Status
    #: The root's result once completed (``df.result``, parsed), else None.
    result: JSON
    #: The error text once failed (or the reason it stopped once cancelled), else None.
    error: str | None
    #: Seconds from its start to its end.
    elapsed: float

    @property
    def ok(self) -> bool:
        """Whether the instance completed."""
        return self.status == "completed"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a running instance stands: what :func:`~pg_durable.client.client.progress`
    returns, and what ``await_instance(…, on_progress=…)`` reports at each poll."""

    instance: Instance
    #: Seconds since it started (until it ended, once it has).
    elapsed: float
    nodes_total: int
    #: Nodes whose inferred status is completed, failed or skipped.
    nodes_done: int
    #: The steps running now (or waiting: a sleep, a signal, a schedule), in graph order.
    running: tuple[Node, ...]
