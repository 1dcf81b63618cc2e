"""The workflow graph as the worker sees it: nodes loaded from df.nodes, checked once.

``df.start`` validates graphs built with the DSL, but a role holding INSERT on df.nodes can
hand-build rows, so the worker checks again what it needs to run safely (known types, children
that exist, a tree reachable from the root, well-formed configs) and fails the instance with a
clear reason instead of crashing on a malformed row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pg_durable.errors import GraphError

LEAF_TYPES: Final = frozenset(
    {"SQL", "SLEEP", "WAIT_SCHEDULE", "BREAK", "HTTP", "HTTP_MULTIPART", "SIGNAL"}
)
#: Wrappers of one subtree (the left child) with a JSON config: df.retry and df.timeout.
WRAPPER_TYPES: Final = frozenset({"RETRY", "TIMEOUT"})
NODE_TYPES: Final = LEAF_TYPES | WRAPPER_TYPES | {"THEN", "IF", "JOIN", "LOOP", "RACE"}
#: Node types whose named result is stored (SLEEP, WAIT_SCHEDULE and BREAK ignore `|=>`).
STORES_RESULT: Final = frozenset(
    {
        "SQL",
        "THEN",
        "IF",
        "JOIN",
        "RACE",
        "LOOP",
        "SIGNAL",
        "HTTP",
        "HTTP_MULTIPART",
        "RETRY",
        "TIMEOUT",
    }
)
MAX_DEPTH: Final = 256
MAX_NODES: Final = 10_000
#: Largest SLEEP duration: df.sleep takes a bigint.
MAX_SLEEP_SECONDS: Final = 2**63 - 1
#: Largest SIGNAL timeout: df.wait_for_signal takes an int.
MAX_SIGNAL_TIMEOUT: Final = 2**31 - 1
#: Largest max_attempts of a RETRY and seconds of a TIMEOUT: df.retry and df.timeout take ints.
MAX_INT: Final = 2**31 - 1

#: What df.retry and df.timeout (10_dsl.sql) refuse, in their words.
RETRY_ATTEMPTS_ERROR: Final = "max_attempts must be at least 1"
RETRY_BACKOFF_ERROR: Final = "backoff_seconds must be a finite number, 0 or more"
RETRY_FACTOR_ERROR: Final = "backoff_factor must be a finite number, 1 or more"
TIMEOUT_SECONDS_ERROR: Final = "seconds must be positive"

_RESULT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_SECONDS = re.compile(r"\s*(-?)[0-9]+\s*", re.ASCII)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One df.nodes row, as loaded."""

    id: str
    node_type: str
    query: str | None
    result_name: str | None
    left_node: str | None
    right_node: str | None


@dataclass(frozen=True, slots=True)
class Node:
    """A checked node. ``children`` lists child ids in execution order per node type."""

    id: str
    type: str
    query: str | None
    result_name: str | None
    left: str | None = None
    right: str | None = None
    condition: str | None = None
    extras: tuple[str, ...] = ()
    #: SLEEP seconds.
    seconds: int = 0
    #: BREAK: the raw break value text (None for `df.break()`).
    break_value: str | None = None
    #: IF built with df.if_rows: the result name it tests.
    rows_of: str | None = None
    #: SIGNAL: the signal awaited, and the seconds after which the wait times out (None: never).
    #: TIMEOUT: the seconds its subtree may take.
    signal: str | None = None
    timeout: int | None = None
    #: WAIT_SCHEDULE: the cron expression.
    cron: str | None = None
    #: RETRY: attempts at most, the wait after the first failed attempt, and the factor each
    #: following wait grows by.
    max_attempts: int = 1
    backoff_seconds: float = 0.0
    backoff_factor: float = 1.0

    @property
    def children(self) -> tuple[str, ...]:
        if self.type == "THEN" or self.type == "RACE":
            return tuple(c for c in (self.left, self.right) if c)
        if self.type == "JOIN":
            return tuple(c for c in (self.left, self.right) if c) + self.extras
        if self.type == "IF":
            return tuple(c for c in (self.condition, self.left, self.right) if c)
        if self.type == "LOOP":
            return tuple(c for c in (self.left, self.condition) if c)
        if self.type in WRAPPER_TYPES:
            return (self.left,) if self.left else ()
        return ()

    @property
    def branches(self) -> tuple[str, ...]:
        """Parallel branches of a JOIN or RACE, in branch order."""
        return tuple(c for c in (self.left, self.right) if c) + self.extras


@dataclass(slots=True)
class Graph:
    """An instance's checked graph plus the parent of every node."""

    instance_id: str
    root: str
    nodes: dict[str, Node]
    parent: dict[str, str] = field(default_factory=dict)
    #: Nodes that are the condition of an IF or of a while-loop.
    conditions: frozenset[str] = frozenset()

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    @classmethod
    def from_rows(cls, instance_id: str, root: str, rows: Iterable[NodeRow]) -> Graph:
        """Check and build the graph of ``instance_id``; raises GraphError with the reason."""
        by_id: dict[str, NodeRow] = {}
        for row in rows:
            if row.id in by_id:
                raise GraphError(f"node {row.id} appears twice")
            by_id[row.id] = row
        if len(by_id) > MAX_NODES:
            raise GraphError(
                f"Workflow exceeds maximum node count of {MAX_NODES} (it has {len(by_id)} "
                "nodes). Split it into several workflows (for example, one instance per batch)."
            )
        if root not in by_id:
            raise GraphError(f"root node {root} does not exist")
        nodes = {node_id: _parse(row) for node_id, row in by_id.items()}
        graph = cls(instance_id, root, nodes)
        graph._link()
        return graph

    def _link(self) -> None:
        conditions: set[str] = set()
        stack: list[tuple[str, int]] = [(self.root, 0)]
        seen = {self.root}
        while stack:
            node_id, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise GraphError(
                    f"Graph exceeds maximum nesting depth of {MAX_DEPTH} (at node {node_id}). "
                    "Simplify the workflow or break it into multiple instances."
                )
            node = self.nodes[node_id]
            for child in node.children:
                if child not in self.nodes:
                    raise GraphError(f"node {node_id} ({node.type}) refers to missing node {child}")
                if child in seen:
                    raise GraphError(f"node {child} is reachable twice (graphs must be trees)")
                seen.add(child)
                self.parent[child] = node_id
                stack.append((child, depth + 1))
            if node.condition is not None:
                conditions.add(node.condition)
        self.conditions = frozenset(conditions)


def _reject_constant(name: str) -> object:
    # NaN and ±Infinity are not JSON (jsonb rejects them); Python's parser accepts them.
    raise ValueError(f"{name} is not JSON")


def _config(row: NodeRow) -> Mapping[str, object]:
    try:
        value = json.loads(row.query or "", parse_constant=_reject_constant)
    except ValueError as exc:
        raise GraphError(f"node {row.id} ({row.node_type}): query must be JSON config") from exc
    except RecursionError:  # (a hand-built row: the worker must not fail on every claim)
        raise GraphError(
            f"node {row.id} ({row.node_type}): query is JSON nested too deeply"
        ) from None
    if not isinstance(value, dict):
        raise GraphError(f"node {row.id} ({row.node_type}): query must be a JSON config object")
    return value


def _str_or_none(row: NodeRow, config: Mapping[str, object], key: str) -> str | None:
    value = config.get(key)
    if value is None or isinstance(value, str):
        return value
    raise GraphError(f"node {row.id} ({row.node_type}): {key} must be a string")


def _required_str(row: NodeRow, config: Mapping[str, object], key: str) -> str:
    value = _str_or_none(row, config, key)
    if not value:
        raise GraphError(f"node {row.id} ({row.node_type}): query needs a non-empty {key}")
    return value


def _seconds(row: NodeRow) -> int:
    match = _SECONDS.fullmatch(row.query or "")
    if match is None:
        raise GraphError(f"node {row.id} (SLEEP): seconds must be a whole number")
    if match.group(1):
        raise GraphError(f"node {row.id} (SLEEP): Sleep duration must be non-negative")
    seconds = int(match.group(0))
    if seconds > MAX_SLEEP_SECONDS:
        raise GraphError(f"node {row.id} (SLEEP): seconds must fit in a bigint")
    return seconds


def _leaf(row: NodeRow, config: Mapping[str, object]) -> Node:
    """A WAIT_SCHEDULE, SIGNAL or HTTP node with the fields the worker reads from its config."""
    if row.node_type == "WAIT_SCHEDULE":
        return _node(row, cron=_required_str(row, config, "cron_expr"))
    if row.node_type == "SIGNAL":
        timeout = config.get("timeout_seconds")
        # (At most what df.wait_for_signal takes, an int: a deadline past what a timestamptz
        # holds would fail every commit of the step.)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not 0 < timeout <= MAX_SIGNAL_TIMEOUT
        ):
            raise GraphError(
                f"node {row.id} (SIGNAL): timeout_seconds must be a positive integer "
                f"(at most {MAX_SIGNAL_TIMEOUT}) or null"
            )
        return _node(row, signal=_required_str(row, config, "signal_name"), timeout=timeout)
    _required_str(row, config, "url")  # HTTP, HTTP_MULTIPART
    return _node(row)


def _number(row: NodeRow, config: Mapping[str, object], key: str, default: float) -> float:
    value = config.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GraphError(f"node {row.id} ({row.node_type}): {key} must be a finite number")
    return float(value)


def _count(row: NodeRow, config: Mapping[str, object], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphError(f"node {row.id} ({row.node_type}): {key} must be a whole number")
    return value


def _wrapper(row: NodeRow) -> Node:
    """A RETRY or TIMEOUT: one child, and what df.retry or df.timeout put in its config (the
    same rules and texts, for a hand-built row)."""
    if not row.left_node or row.right_node:
        raise GraphError(f"node {row.id} ({row.node_type}) needs a left child and no right child")
    config = _config(row)
    if row.node_type == "TIMEOUT":
        seconds = _count(row, config, "seconds")
        if not 0 < seconds <= MAX_INT:
            raise GraphError(f"node {row.id} (TIMEOUT): {TIMEOUT_SECONDS_ERROR}")
        return _node(row, left=row.left_node, timeout=seconds)
    attempts = _count(row, config, "max_attempts")
    backoff = _number(row, config, "backoff_seconds", 1.0)
    factor = _number(row, config, "backoff_factor", 2.0)
    for bad, message in (
        (not 1 <= attempts <= MAX_INT, RETRY_ATTEMPTS_ERROR),
        (backoff < 0, RETRY_BACKOFF_ERROR),
        (factor < 1, RETRY_FACTOR_ERROR),
    ):
        if bad:
            raise GraphError(f"node {row.id} (RETRY): {message}")
    return _node(
        row,
        left=row.left_node,
        max_attempts=attempts,
        backoff_seconds=backoff,
        backoff_factor=factor,
    )


def _node(row: NodeRow, **fields: Any) -> Node:
    """The node of ``row`` with ``fields`` (made once: a frozen dataclass of this many fields
    takes microseconds to make, and a graph is parsed for every new instance)."""
    return Node(row.id, row.node_type, row.query, row.result_name, **fields)


def _parse(row: NodeRow) -> Node:
    kind = row.node_type
    if kind not in NODE_TYPES:
        raise GraphError(f"node {row.id} has unknown node_type {kind!r}")
    if row.result_name is not None and not _RESULT_NAME.fullmatch(row.result_name):
        raise GraphError(
            f"node {row.id} ({kind}): result_name {row.result_name!r} is not a valid identifier"
            " — must match [a-zA-Z_][a-zA-Z0-9_]*"
        )
    if kind in LEAF_TYPES:
        if row.left_node or row.right_node:
            raise GraphError(f"node {row.id} ({kind}) is a leaf and cannot have children")
        if row.query is None:
            raise GraphError(f"node {row.id} ({kind}) has no query")
    if kind == "SQL":
        return _node(row)
    if kind == "SLEEP":
        return _node(row, seconds=_seconds(row))
    if kind == "BREAK":
        config = _config(row)
        return _node(row, break_value=_str_or_none(row, config, "break_value"))
    if kind in ("WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "SIGNAL"):
        return _leaf(row, _config(row))
    if kind in WRAPPER_TYPES:
        return _wrapper(row)
    # Compound nodes.
    if kind in ("THEN", "RACE", "JOIN", "IF") and not (row.left_node and row.right_node):
        raise GraphError(f"node {row.id} ({kind}) needs both a left and a right child")
    if kind == "THEN" or kind == "RACE":
        return _node(row, left=row.left_node, right=row.right_node)
    if kind == "JOIN":
        extras: tuple[str, ...] = ()
        if row.query is not None:
            raw = _config(row).get("extra_nodes", [])
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise GraphError(f"node {row.id} (JOIN): extra_nodes must be a list of node ids")
            extras = tuple(raw)
        return _node(row, left=row.left_node, right=row.right_node, extras=extras)
    if kind == "IF":
        config = _config(row)
        has_condition = config.get("condition_node") is not None
        if config.get("condition_type") is not None:
            if has_condition:
                raise GraphError(
                    f"node {row.id} (IF): an IF has either a condition_node or a "
                    "result_has_rows condition, not both"
                )
            if config["condition_type"] != "result_has_rows":
                raise GraphError(
                    f"node {row.id} (IF): unknown condition_type {config['condition_type']!r}"
                    " (the only one is 'result_has_rows')"
                )
            name = _required_str(row, config, "result_name")
            return _node(row, left=row.left_node, right=row.right_node, rows_of=name)
        if not has_condition:
            raise GraphError(
                f"node {row.id} (IF): query needs a condition_node or a result_has_rows condition"
            )
        condition = _required_str(row, config, "condition_node")
        return _node(row, left=row.left_node, right=row.right_node, condition=condition)
    # LOOP
    if not row.left_node or row.right_node:
        raise GraphError(f"node {row.id} (LOOP) needs a body and no right child")
    cond = None
    if row.query is not None:
        config = _config(row)
        if config.get("condition_node") is not None:
            cond = _required_str(row, config, "condition_node")
    return _node(row, left=row.left_node, condition=cond)
