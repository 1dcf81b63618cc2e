"""The workflow graph as a Python value: :class:`Workflow`, its operators and its JSON envelope.

A :class:`Workflow` is one node of the envelope the SQL DSL builds (SPEC §1.3): a node type,
up to three children (``left_node``, ``right_node``, ``condition_node``), JOIN's extra
branches, a ``query`` text and a ``result_name``. :meth:`Workflow.to_json` writes it exactly as
the SQL constructors do — compact JSON, fields in serde's order, absent fields omitted, strings
escaped as PostgreSQL's ``to_json`` escapes them — so ``sql("SELECT 1") >> sleep(2)`` and
``SELECT 'SELECT 1' ~> df.sleep(2)`` are the same text, byte for byte.

The operators follow the DSL: ``a >> b`` is ``a ~> b`` (sequence), ``a & b`` is ``a & b``
(join), ``a | b`` is ``a | b`` (race). Unlike SQL, where all of them share one precedence,
Python binds ``>>`` tighter than ``&``, and ``&`` tighter than ``|``: parenthesise as you mean.

Serialising and parsing walk the tree with an explicit stack, so a graph as deep as df.start
accepts (and deeper) never hits Python's recursion limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Final

__all__ = ["KNOWN_NODE_TYPES", "Step", "Workflow", "as_step", "check_result_name", "json_text"]

#: Node types df.start knows (10_dsl.sql's auto-wrap list).
KNOWN_NODE_TYPES: Final = frozenset(
    {
        "SQL",
        "THEN",
        "IF",
        "JOIN",
        "LOOP",
        "BREAK",
        "RACE",
        "SLEEP",
        "WAIT_SCHEDULE",
        "HTTP",
        "HTTP_MULTIPART",
        "SIGNAL",
        "RETRY",
        "TIMEOUT",
    }
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_DESERIALIZE = "Invalid Durofut JSON: failed to deserialize workflow step: "


def json_text(value: str) -> str:
    """``value`` as a JSON string, escaped exactly as PostgreSQL's ``to_json(text)`` does.

    Both escape ``"``, ``\\``, ``\\b \\f \\n \\r \\t`` and every other control character below
    U+0020 as ``\\u00xx`` (lower-case hex), and leave everything else — DEL and non-ASCII
    included — as it is.
    """
    return json.dumps(value, ensure_ascii=False)


def check_result_name(name: str) -> str:
    """``name`` if it can name a result (``df.as``'s rule), else ValueError with its message."""
    if name == "":
        raise ValueError("df.as: result name cannot be empty")
    if _IDENTIFIER.fullmatch(name) is None:
        raise ValueError(
            f"df.as: result name '{name}' is not a valid identifier — "
            "must match [a-zA-Z_][a-zA-Z0-9_]*"
        )
    return name


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Workflow:
    """One node of a workflow graph, with its subtree; build it with the constructors of
    :mod:`pg_durable.client.steps` and the operators ``>>``, ``&`` and ``|``.

    Equal workflows have equal envelopes (``==`` compares :meth:`to_json`), and a workflow is
    hashable. Immutable: every operator returns a new node.
    """

    node_type: str
    left: Workflow | None = None
    right: Workflow | None = None
    condition: Workflow | None = None
    extra: tuple[Workflow, ...] | None = None
    query: str | None = None
    result_name: str | None = None

    # -- operators ---------------------------------------------------------------------------

    def __rshift__(self, other: Step) -> Workflow:
        """``self >> other``: ``other`` runs after ``self`` (``~>``, ``df.seq``)."""
        return Workflow("THEN", left=self, right=as_step(other))

    def __rrshift__(self, other: str) -> Workflow:
        """``"SQL" >> self``."""
        return Workflow("THEN", left=as_step(other), right=self)

    def __and__(self, other: Step) -> Workflow:
        """``self & other``: both at once, wait for both (``&``, ``df.join``)."""
        return Workflow("JOIN", left=self, right=as_step(other))

    def __rand__(self, other: str) -> Workflow:
        """``"SQL" & self``."""
        return Workflow("JOIN", left=as_step(other), right=self)

    def __or__(self, other: Step) -> Workflow:
        """``self | other``: both at once, the first to finish wins (``|``, ``df.race``)."""
        return Workflow("RACE", left=self, right=as_step(other))

    def __ror__(self, other: str) -> Workflow:
        """``"SQL" | self``."""
        return Workflow("RACE", left=as_step(other), right=self)

    def as_(self, name: str) -> Workflow:
        """This node with its result stored under ``name`` (``|=>``, ``df.as``); an earlier
        name is replaced.

        Raises:
            ValueError: ``name`` is not an identifier (``[A-Za-z_][A-Za-z0-9_]*``).
        """
        return replace(self, result_name=check_result_name(name))

    # -- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The envelope: the text the SQL DSL returns for the same graph, and what
        ``df.start`` takes."""
        out: list[str] = []
        stack: list[Workflow | str] = [self]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                out.append(item)
                continue
            out.append('{"node_type":' + json_text(item.node_type))
            tail = ""
            if item.query is not None:
                tail += ',"query":' + json_text(item.query)
            if item.result_name is not None:
                tail += ',"result_name":' + json_text(item.result_name)
            # Pushed in reverse: the closing text first, the left child last.
            stack.append(tail + "}")
            if item.extra is not None:
                stack.append("]")
                for k in range(len(item.extra) - 1, -1, -1):
                    stack.append(item.extra[k])
                    if k > 0:
                        stack.append(",")
                stack.append(',"extra_nodes":[')
            for slot, child in (
                ("condition_node", item.condition),
                ("right_node", item.right),
                ("left_node", item.left),
            ):
                if child is not None:
                    stack.append(child)
                    stack.append(f',"{slot}":')
        return "".join(out)

    @classmethod
    def from_json(cls, text: str) -> Workflow:
        """The workflow of an envelope (one a SQL constructor returned, or one written by hand),
        read the way the DSL reads one: null and unknown fields are dropped.

        Raises:
            ValueError: ``text`` is not JSON, or not an envelope (the DSL's message).
        """
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"not a workflow envelope: {exc}") from None
        return _from_value(value)

    # -- the rest ------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workflow):
            return NotImplemented
        return self is other or self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        text = self.to_json()
        if len(text) > 200:
            text = text[:197] + "..."
        return f"Workflow({text})"

    def __str__(self) -> str:
        return self.to_json()


#: What a composer accepts: a workflow, or SQL text (a SQL step, or an envelope's text).
Step = Workflow | str


def as_step(step: Step) -> Workflow:
    """``step`` as a workflow, auto-wrapped as the DSL's composers do (``Durofut::ensure``).

    A :class:`Workflow` is used as it is. Text that is an envelope — a JSON object whose
    ``node_type`` is a known node type — is read as one (:meth:`Workflow.from_json`); any
    other text (plain SQL, other JSON) becomes a SQL step with that query, like ``sql(text)``.

    Raises:
        TypeError: ``step`` is neither.
        ValueError: an envelope that does not deserialise (the DSL's message).
    """
    if isinstance(step, Workflow):
        return step
    if not isinstance(step, str):
        raise TypeError(f"a workflow step is a Workflow or SQL text, not {type(step).__name__}")
    if step.lstrip(" \t\r\n").startswith("{"):
        try:
            value = json.loads(step, parse_constant=_reject_constant)
        except (json.JSONDecodeError, RecursionError, ValueError):
            value = None
        if (
            isinstance(value, dict)
            and isinstance(value.get("node_type"), str)
            and value["node_type"] in KNOWN_NODE_TYPES
        ):
            return _from_value(value)
    return Workflow("SQL", query=step)


def _reject_constant(name: str) -> object:
    # jsonb has no NaN or Infinity: such text is no envelope for PostgreSQL either.
    raise ValueError(f"{name} is not JSON")


def _unexpected(value: object) -> str:
    """serde's words for an unexpected JSON value (df._serde_unexpected)."""
    if isinstance(value, str):
        return "string " + json_text(value)
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "null"


def _from_value(value: object) -> Workflow:
    """A parsed envelope as a workflow (df._canonical's checks), built bottom-up."""
    # Post-order over (json value, "done") pairs: children are built before their parent.
    pending: list[tuple[object, bool]] = [(value, False)]
    built: list[Workflow] = []
    while pending:
        node, done = pending.pop()
        if not isinstance(node, dict):
            raise ValueError(
                f"{_DESERIALIZE}invalid type: {_unexpected(node)}, expected struct Durofut"
            )
        children = [node.get(slot) for slot in ("left_node", "right_node", "condition_node")]
        extra = node.get("extra_nodes")
        if not done:
            if node.get("node_type") is None:
                raise ValueError(f"{_DESERIALIZE}missing field `node_type`")
            for slot in ("node_type", "query", "result_name"):
                if node.get(slot) is not None and not isinstance(node[slot], str):
                    raise ValueError(
                        f"{_DESERIALIZE}invalid type: {_unexpected(node[slot])}, expected a string"
                    )
            if extra is not None and not isinstance(extra, list):
                raise ValueError(
                    f"{_DESERIALIZE}invalid type: {_unexpected(extra)}, expected a sequence"
                )
            # Pushed in reverse, so that they are checked in pre-order, left first (as
            # df._canonical checks them) and built left first.
            pending.append((node, True))
            for child in reversed(extra or []):
                pending.append((child, False))
            for child in reversed(children):
                if child is not None:
                    pending.append((child, False))
            continue
        count = sum(c is not None for c in children) + len(extra or [])
        it = iter(reversed([built.pop() for _ in range(count)]))
        left, right, condition = (None if c is None else next(it) for c in children)
        extras = None if extra is None else tuple(next(it) for _ in extra)
        built.append(
            Workflow(
                node["node_type"],
                left=left,
                right=right,
                condition=condition,
                extra=extras,
                query=node.get("query"),
                result_name=node.get("result_name"),
            )
        )
    return built[0]
