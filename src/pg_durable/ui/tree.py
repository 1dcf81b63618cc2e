"""An instance's graph as the dashboard draws it, laid out as df.explain lays it out: a chain
of ``~>`` is one sequence of steps, an IF has a condition, a then and an else, a JOIN or RACE
its branches, a LOOP its body and condition, a RETRY its attempt, a TIMEOUT what runs within
it. No I/O: it works on the nodes df.instance_nodes returned.

Rows can be hand-built (a role holding INSERT on df.nodes), so nothing here trusts them: a
node drawn once is not drawn again (no cycle loops), depth and size are bounded, and nodes the
root does not reach are listed apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pg_durable.client.records import Node

#: Nesting drawn at most (df.start allows 256 levels; a deeper subtree is summed up).
MAX_DEPTH = 64
#: Nodes drawn at most (df.start allows 10,000; the rest are counted).
MAX_NODES = 2000


@dataclass(frozen=True, slots=True)
class Section:
    """A labelled part of a node: its condition, a branch, its body… (``steps`` in order)."""

    title: str
    steps: tuple[Drawn, ...]
    #: Said instead of (or besides) steps: an IF on the rows of a result has no condition node.
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Drawn:
    """A node and the sections under it."""

    node: Node
    sections: tuple[Section, ...]


@dataclass(frozen=True, slots=True)
class Tree:
    """What to draw: the root's sequence, the nodes it does not reach, and how many nodes
    were left out (beyond :data:`MAX_NODES` or :data:`MAX_DEPTH`)."""

    steps: tuple[Drawn, ...]
    unreached: tuple[Node, ...]
    left_out: int


def config(node: Node) -> Mapping[str, object]:
    """The JSON config in a node's query (IF, LOOP, JOIN, SIGNAL, HTTP…), else empty."""
    if node.node_type in ("SQL", "SLEEP") or not node.query:
        return {}
    try:
        value = json.loads(node.query)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def details(node: Node) -> Mapping[str, object]:
    """A node's status_details (execution scope; a RETRY's attempts), else empty."""
    if not node.status_details:
        return {}
    try:
        value = json.loads(node.status_details)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def error(node: Node) -> str | None:
    """A failed node's error: its result is the error as a JSON string."""
    if node.status != "failed" or node.result is None:
        return None
    try:
        value = json.loads(node.result)
    except (ValueError, RecursionError):
        return node.result
    return value if isinstance(value, str) else node.result


def _text(value: object) -> str:
    return "" if value is None else str(value)


def describe(node: Node) -> str:
    """A node in a few words, as df.explain labels it (without the SQL, drawn apart)."""
    cfg = config(node)
    kind = node.node_type
    if kind == "SQL":
        return "SQL"
    if kind == "SLEEP":
        return f"sleep {_text(node.query).strip()}s"
    if kind == "WAIT_SCHEDULE":
        return f"wait for schedule '{_text(cfg.get('cron_expr'))}'"
    if kind in ("HTTP", "HTTP_MULTIPART"):
        return f"{kind} {_text(cfg.get('method'))} {_text(cfg.get('url'))}"
    if kind == "SIGNAL":
        timeout = cfg.get("timeout_seconds")
        after = f" (times out after {timeout}s)" if timeout is not None else ""
        return f"wait for signal '{_text(cfg.get('signal_name'))}'{after}"
    if kind == "LOOP":
        return "LOOP (while)" if cfg.get("condition_node") else "LOOP (infinite)"
    if kind == "BREAK":
        value = cfg.get("break_value")
        return "BREAK" if value is None else f"BREAK '{value}'"
    if kind == "JOIN":
        extras = cfg.get("extra_nodes")
        return f"JOIN ({2 + (len(extras) if isinstance(extras, list) else 0)} branches)"
    if kind == "RETRY":
        return (
            f"RETRY (max {_text(cfg.get('max_attempts'))} attempts, backoff "
            f"{_text(cfg.get('backoff_seconds'))}s ×{_text(cfg.get('backoff_factor'))})"
        )
    if kind == "TIMEOUT":
        return f"TIMEOUT {_text(cfg.get('seconds'))}s"
    if kind == "THEN":
        return "sequence"
    return kind


def signal_names(nodes: list[Node]) -> list[str]:
    """The signals the instance waits for right now (its running SIGNAL steps)."""
    names = []
    for node in nodes:
        if node.node_type == "SIGNAL" and node.inferred_status == "running":
            name = config(node).get("signal_name")
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


class _Builder:
    def __init__(self, nodes: list[Node]) -> None:
        self.by_id = {n.id: n for n in nodes}
        #: Nodes drawn or flattened into a sequence (a THEN).
        self.drawn: set[str] = set()
        self.boxes = 0
        self.limited = False

    def sequence(self, node_id: str | None, depth: int) -> tuple[Drawn, ...]:
        """The steps from ``node_id``: a THEN chain (without a result name of its own)
        flattened into its steps, left to right."""
        ids: list[str] = []
        stack = [node_id] if node_id else []
        while stack:  # iterative: a chain of thousands of steps nests as deep
            current = self.by_id.get(stack.pop())
            if current is None or current.id in self.drawn:
                continue
            if current.node_type == "THEN" and current.result_name is None:
                self.drawn.add(current.id)
                stack.extend(c for c in (current.right, current.left) if c)
            else:
                ids.append(current.id)
        return tuple(d for d in (self.node(i, depth) for i in ids) if d is not None)

    def node(self, node_id: str, depth: int) -> Drawn | None:
        node = self.by_id[node_id]
        if node.id in self.drawn:
            return None
        if self.boxes >= MAX_NODES or depth >= MAX_DEPTH:
            self.limited = True
            return None
        self.drawn.add(node.id)
        self.boxes += 1
        return Drawn(node, self.sections(node, depth + 1))

    def sections(self, node: Node, depth: int) -> tuple[Section, ...]:
        cfg = config(node)
        condition = cfg.get("condition_node")
        condition_id = condition if isinstance(condition, str) else None
        kind = node.node_type
        found: list[Section] = []
        if kind == "IF":
            if condition_id is not None:
                found.append(Section("condition", self.sequence(condition_id, depth)))
            elif cfg.get("condition_type") == "result_has_rows":
                rows_of = _text(cfg.get("result_name"))
                found.append(Section("condition", (), note=f"rows in '{rows_of}'"))
            found.append(Section("then", self.sequence(node.left, depth)))
            found.append(Section("else", self.sequence(node.right, depth)))
        elif kind == "LOOP":
            found.append(Section("body", self.sequence(node.left, depth)))
            if condition_id is not None:
                found.append(Section("while", self.sequence(condition_id, depth)))
        elif kind in ("JOIN", "RACE"):
            extras = cfg.get("extra_nodes") if kind == "JOIN" else None
            branches = [node.left, node.right]
            if isinstance(extras, list):
                branches.extend(e for e in extras if isinstance(e, str))
            for number, branch in enumerate(branches, start=1):
                found.append(Section(f"branch {number}", self.sequence(branch, depth)))
        elif kind == "RETRY":
            found.append(Section("attempt", self.sequence(node.left, depth)))
        elif kind == "TIMEOUT":
            found.append(Section("within", self.sequence(node.left, depth)))
        elif kind == "THEN":  # one with a result name of its own
            steps = self.sequence(node.left, depth) + self.sequence(node.right, depth)
            found.append(Section("steps", steps))
        else:  # a leaf; children of a hand-built one are drawn all the same
            for title, child in (("left", node.left), ("right", node.right)):
                if child:
                    found.append(Section(title, self.sequence(child, depth)))
        return tuple(found)


def build(nodes: list[Node]) -> Tree:
    """The tree to draw of an instance's ``nodes``, in the order client.nodes returns them:
    the root first."""
    builder = _Builder(nodes)
    steps = builder.sequence(nodes[0].id if nodes else None, 0)
    not_drawn = tuple(n for n in nodes if n.id not in builder.drawn)
    if builder.limited:
        # Past a limit, what is not drawn is counted, not listed.
        return Tree(steps=steps, unreached=(), left_out=len(not_drawn))
    return Tree(steps=steps, unreached=not_drawn, left_out=0)
