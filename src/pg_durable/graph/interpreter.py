"""What runs next: the workflow interpreter, free of I/O.

The worker claims a fiber (one execution scope: the root, a JOIN/RACE branch or a loop), asks
this module what to do, performs the one step it names (a SQL statement, a finished sleep), and
hands the outcome back. Every decision — which node becomes active, what a compound node
returns, which named results are visible, when a loop iterates, how failures and breaks
propagate — is made here and recorded in a :class:`Plan`, which the worker writes to the
database in the same transaction as the step itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from pg_durable.errors import SubstitutionError
from pg_durable.graph.model import STORES_RESULT, Graph
from pg_durable.graph.substitution import substitute
from pg_durable.graph.truthiness import break_value_json, is_truthy

BREAK_OUTSIDE_LOOP: Final = (
    "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
)
LOST_RACE: Final = "Loop branch cancelled after losing RACE"
JOIN_TOO_LARGE: Final = (
    "JOIN result exceeds pg_durable's limit of {cap} bytes (worker setting max_result_bytes); "
    "have the branches return less (keep bulk data in tables), or raise the limit"
)
#: The longest a SLEEP really waits. df.sleep takes any bigint, but a timer far beyond this is
#: beyond what a timestamptz can hold (9223372036854775807 seconds would fail every commit of
#: the step); a thousand years is forever to any workflow, and a cancel still ends it.
MAX_SLEEP_DELAY: Final = 1000 * 365.25 * 86400
#: Runnable leaves: the worker performs them; everything else is control flow decided here.
STEP_TYPES: Final = frozenset({"SQL", "SLEEP", "WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "SIGNAL"})


@dataclass(frozen=True, slots=True)
class Ok:
    """A node finished; ``result`` is its result text: JSON, in its original key order. Every
    producer makes JSON (SQL results, sleep and break values, JOIN arrays), so it is stored
    and composed as it is, without parsing it again."""

    result: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A node failed with ``message`` (stored as the node's result, a JSON string)."""

    message: str


@dataclass(frozen=True, slots=True)
class Broke:
    """A df.break() is travelling to its loop carrying ``value`` (JSON text)."""

    value: str


Outcome = Ok | Failed | Broke


def outcome_to_json(outcome: Outcome) -> dict[str, str]:
    if isinstance(outcome, Ok):
        return {"ok": outcome.result}
    if isinstance(outcome, Failed):
        return {"error": outcome.message}
    return {"break": outcome.value}


def outcome_from_json(data: dict[str, str]) -> Outcome:
    if "ok" in data:
        return Ok(data["ok"])
    if "error" in data:
        return Failed(data["error"])
    return Broke(data["break"])


@dataclass(slots=True)
class Fiber:
    """A fiber's state: loaded from df._fibers, changed by the interpreter, written back."""

    scope: str
    instance_id: str
    root_node: str
    node_id: str
    parent_scope: str | None = None
    branch: int = 0
    spawned_at_node: str | None = None
    parent_generation: int | None = None
    generation: int = 1
    results: dict[str, str] = field(default_factory=dict)
    state: dict[str, object] = field(default_factory=dict)
    status: str = "ready"
    #: Seconds from the commit until the fiber is runnable again (a sleep).
    delay: float = 0.0
    #: Epoch seconds (database clock) before which the fiber must not run (loop pacing, the
    #: deadline of a signal wait, the next tick of a schedule).
    not_before: float | None = None
    #: The signal the fiber waits for at its SIGNAL node (df.signal wakes it).
    awaiting: str | None = None
    pending: int = 0
    wake_at_pending: int = 0
    outcome: Outcome | None = None

    @property
    def execution_id(self) -> str:
        return f"{self.scope}::{self.generation}"


@dataclass(frozen=True, slots=True)
class Stamp:
    node_id: str
    status: str
    #: JSON text stored in df.nodes.result (None clears it).
    result: str | None
    execution_id: str


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A finished child fiber, as its parent sees it on resume."""

    scope: str
    branch: int
    root_node: str
    outcome: Outcome
    results: dict[str, str]


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    status: str  # "completed" | "failed"
    output: str
    execution_count: int


@dataclass(slots=True)
class Plan:
    """Everything one transaction writes besides the user's own statement."""

    stamps: dict[str, Stamp] = field(default_factory=dict)
    spawns: list[Fiber] = field(default_factory=list)
    #: Finished children consumed by their parent.
    deletes: list[str] = field(default_factory=list)
    #: Losing RACE branches: delete them (and their descendants) and cancel their steps.
    cancel_scopes: list[str] = field(default_factory=list)
    instance: InstanceOutcome | None = None
    mark_running: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    """Instance-wide inputs of the interpreter."""

    graph: Graph
    variables: dict[str, str]
    label: str | None
    #: Database clock (epoch seconds) of the current transaction.
    now: float
    max_iterations: int = 100_000
    min_iteration_seconds: float = 1.0
    #: The cap of one result the worker holds (its max_result_bytes): a JOIN's result is its
    #: branches' results together, each within the cap, but not necessarily their sum.
    max_result_bytes: int | None = None


class Interpreter:
    """Advances one fiber; all effects go to ``plan`` (shared with spawned children)."""

    def __init__(self, ctx: Context, fiber: Fiber, plan: Plan) -> None:
        self.ctx = ctx
        self.fiber = fiber
        self.plan = plan
        self.graph = ctx.graph

    # -- entry points -----------------------------------------------------------------------
    def start(self) -> None:
        """First activation of the fiber at its root node."""
        self.fiber.state.pop("start", None)
        if self.fiber.parent_scope is None:
            self.plan.mark_running = True
        root = self.graph.node(self.fiber.root_node)
        if root.type == "LOOP":
            self._start_iteration()
        else:
            self._activate(root.id)

    def iterate(self) -> None:
        """A paced loop fiber is due for its next iteration."""
        self.fiber.state.pop("iterate", None)
        self.fiber.not_before = None
        self._start_iteration()

    def complete_step(self, outcome: Outcome) -> None:
        """The step the fiber stands at finished with ``outcome``."""
        self._finish(self.fiber.node_id, outcome)

    def resume(self, children: list[ChildResult], first_done: str | None) -> None:
        """The children the fiber waits for (JOIN, RACE or a loop) have finished."""
        self._resume(self.fiber.node_id, children, first_done)

    # -- bookkeeping ------------------------------------------------------------------------
    def _stamp(self, node_id: str, status: str, result: str | None = None) -> None:
        self.plan.stamps.pop(node_id, None)  # re-insert so the last write is also last in order
        self.plan.stamps[node_id] = Stamp(node_id, status, result, self.fiber.execution_id)

    def _stand_at(self, node_id: str, *, delay: float = 0.0) -> None:
        self.fiber.node_id = node_id
        self.fiber.status = "ready"
        self.fiber.delay = delay

    # -- activation: descend from a node to the first thing that needs the worker ------------
    def _activate(self, node_id: str) -> None:
        node = self.graph.node(node_id)
        self._stamp(node_id, "running")
        if node.type in STEP_TYPES:
            delay = min(float(node.seconds), MAX_SLEEP_DELAY) if node.type == "SLEEP" else 0.0
            self._stand_at(node_id, delay=delay)
        elif node.type == "BREAK":
            try:
                raw = None
                if node.break_value is not None:
                    raw = substitute(
                        node.break_value,
                        variables=self.ctx.variables,
                        results=self.fiber.results,
                        instance_id=self.ctx.graph.instance_id,
                        label=self.ctx.label,
                        mode="raw",
                    )
            except SubstitutionError as exc:
                self._finish(node_id, Failed(str(exc)))
                return
            self._finish(node_id, Broke(break_value_json(raw)))
        elif node.type == "THEN":
            assert node.left is not None
            self._activate(node.left)
        elif node.type == "IF":
            if node.rows_of is not None:
                self._if_rows(node_id, node.rows_of)
            else:
                assert node.condition is not None
                self._activate(node.condition)
        elif node.type in ("JOIN", "RACE"):
            self._fork(node_id, list(node.branches))
        elif node.type == "LOOP":
            if node_id == self.fiber.root_node:
                self._start_iteration()
            else:
                self._fork(node_id, [node_id])
        else:  # pragma: no cover - model.py admits only known types
            raise AssertionError(node.type)

    def _if_rows(self, node_id: str, name: str) -> None:
        node = self.graph.node(node_id)
        text = self.fiber.results.get(name)
        if text is None:
            self._finish(node_id, Failed(f"df.if_rows: result '{name}' not found"))
            return
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # (nested too deeply to be a SQL result)
            value = None
        count = value.get("row_count") if isinstance(value, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            self._finish(
                node_id,
                Failed(f"df.if_rows: result '{name}' is not a SQL result (missing row_count)"),
            )
            return
        branch = node.left if count > 0 else node.right
        assert branch is not None
        self._activate(branch)

    def _fork(self, node_id: str, roots: list[str]) -> None:
        """Start child fibers at ``roots`` (JOIN/RACE branches, or one loop) and wait."""
        node = self.graph.node(node_id)
        children: list[Fiber] = []
        first_spawn = len(self.plan.spawns)
        for branch, root in enumerate(roots):
            child = Fiber(
                scope=f"{self.fiber.execution_id}::{root}",
                instance_id=self.fiber.instance_id,
                root_node=root,
                node_id=root,
                parent_scope=self.fiber.scope,
                branch=branch,
                spawned_at_node=node_id,
                parent_generation=self.fiber.generation,
                results=dict(self.fiber.results),
            )
            Interpreter(self.ctx, child, self.plan).start()
            children.append(child)
        done = [c for c in children if c.status == "done"]
        needed = 1 if node.type == "RACE" else len(children)
        if len(done) >= needed:
            # Decided without waiting (e.g. a branch that breaks at once): consume the children
            # in this transaction; nothing of theirs is written but their stamps.
            del self.plan.spawns[first_spawn:]
            results = [_child_result(c) for c in done]
            first = done[0].scope if done else None
            self._resume(node_id, results, first)
            return
        self.plan.spawns.extend(children)
        self.fiber.node_id = node_id
        self.fiber.status = "waiting"
        self.fiber.pending = len(children) - len(done)
        self.fiber.wake_at_pending = len(children) - 1 if node.type == "RACE" else 0

    # -- loops ------------------------------------------------------------------------------
    def _start_iteration(self) -> None:
        root = self.fiber.root_node
        node = self.graph.node(root)
        iteration = _int(self.fiber.state.get("iteration")) + 1
        if iteration > self.ctx.max_iterations:
            self._finish(
                root,
                Failed(
                    f"Loop exceeded maximum iteration count of {self.ctx.max_iterations}. "
                    "Use df.break() to exit the loop or restructure the workflow."
                ),
            )
            return
        self.fiber.state["iteration"] = iteration
        self.fiber.state["iteration_started"] = self.ctx.now
        self.fiber.generation = iteration
        self._stamp(root, "running")
        assert node.left is not None
        self._activate(node.left)

    def _next_iteration(self) -> None:
        started = self.fiber.state.get("iteration_started")
        due = (float(started) if isinstance(started, int | float) else self.ctx.now) + (
            self.ctx.min_iteration_seconds
        )
        if self.ctx.now < due:
            # Pace the loop: the next iteration starts no earlier than `due`.
            self.fiber.state["iterate"] = True
            self.fiber.node_id = self.fiber.root_node
            self.fiber.status = "ready"
            self.fiber.not_before = due
            return
        self._start_iteration()

    # -- completion: climb from a finished node ----------------------------------------------
    def _finish(self, node_id: str, outcome: Outcome, *, stamp: bool = True) -> None:
        node = self.graph.node(node_id)
        if stamp:
            if isinstance(outcome, Ok):
                self._stamp(node_id, "completed", outcome.result)
            elif isinstance(outcome, Broke):
                self._stamp(node_id, "completed", outcome.value)
            else:
                self._stamp(node_id, "failed", json.dumps(outcome.message, ensure_ascii=False))
        if isinstance(outcome, Ok) and node.result_name and node.type in STORES_RESULT:
            self.fiber.results[node.result_name] = outcome.result
        if node_id == self.fiber.root_node:
            self._fiber_done(outcome)
            return
        self._child_finished(self.graph.parent[node_id], node_id, outcome)

    def _child_finished(self, parent_id: str, child_id: str, outcome: Outcome) -> None:
        parent = self.graph.node(parent_id)
        if isinstance(outcome, Failed):
            self._finish(parent_id, outcome)
            return
        if parent.type == "LOOP":
            # Only a fiber's own root can be a LOOP here: inner loops are child fibers.
            if isinstance(outcome, Broke):
                self._finish(parent_id, Ok(outcome.value))
            elif child_id == parent.left:
                self.fiber.state["last_body"] = outcome.result
                if parent.condition is not None:
                    self._activate(parent.condition)
                else:
                    self._next_iteration()
            elif is_truthy(outcome.result):
                self._next_iteration()
            else:
                last = self.fiber.state.get("last_body")
                self._finish(parent_id, Ok(last if isinstance(last, str) else "null"))
            return
        if isinstance(outcome, Broke):
            self._finish(parent_id, outcome)
            return
        if parent.type == "THEN":
            if child_id == parent.left:
                assert parent.right is not None
                self._activate(parent.right)
            else:
                self._finish(parent_id, outcome)
        elif parent.type == "IF":
            if child_id == parent.condition:
                branch = parent.left if is_truthy(outcome.result) else parent.right
                assert branch is not None
                self._activate(branch)
            else:
                self._finish(parent_id, outcome)
        else:  # pragma: no cover - JOIN/RACE children are always child fibers
            raise AssertionError(f"{parent.type} node {parent_id} finished in-fiber")

    def _fiber_done(self, outcome: Outcome) -> None:
        fiber = self.fiber
        if fiber.parent_scope is not None:
            fiber.status = "done"
            fiber.outcome = outcome
            return
        # The root fiber: the instance is over.
        fiber.status = "done"
        fiber.outcome = outcome
        if isinstance(outcome, Broke):
            self._stamp(fiber.root_node, "failed", json.dumps(BREAK_OUTSIDE_LOOP))
            outcome = Failed(BREAK_OUTSIDE_LOOP)
        if isinstance(outcome, Ok):
            self.plan.instance = InstanceOutcome("completed", outcome.result, fiber.generation)
        else:
            self.plan.instance = InstanceOutcome("failed", outcome.message, fiber.generation)

    def _resume(self, node_id: str, children: list[ChildResult], first_done: str | None) -> None:
        node = self.graph.node(node_id)
        children = sorted(children, key=lambda c: c.branch)
        self.plan.deletes.extend(c.scope for c in children)
        if node.type == "LOOP":
            (child,) = children
            self.fiber.results.update(child.results)
            # The loop fiber stamped the LOOP node itself.
            self._finish(node_id, child.outcome, stamp=False)
            return
        if node.type == "JOIN":
            for child in children:
                self.fiber.results.update(child.results)
            for child in children:
                if isinstance(child.outcome, Failed):
                    message = f"JOIN branch {child.branch} failed: {child.outcome.message}"
                    self._finish(node_id, Failed(message))
                    return
            for child in children:
                if isinstance(child.outcome, Broke):
                    self._finish(node_id, child.outcome)
                    return
            parts = [c.outcome.result for c in children if isinstance(c.outcome, Ok)]
            cap = self.ctx.max_result_bytes
            if cap is not None and sum(len(p.encode()) + 1 for p in parts) + 1 > cap:
                self._finish(node_id, Failed(JOIN_TOO_LARGE.format(cap=cap)))
                return
            self._finish(node_id, Ok("[" + ",".join(parts) + "]"))
            return
        # RACE: the first child to finish wins, whatever its outcome.
        winner = next((c for c in children if c.scope == first_done), children[0])
        for branch, root in enumerate(node.branches):
            if branch != winner.branch:
                self.plan.cancel_scopes.append(f"{self.fiber.execution_id}::{root}")
                if self.graph.node(root).type == "LOOP":
                    self._stamp(root, "failed", json.dumps(LOST_RACE))
        if isinstance(winner.outcome, Failed):
            side = "left" if winner.branch == 0 else "right"
            self._finish(node_id, Failed(f"RACE {side} branch failed: {winner.outcome.message}"))
            return
        self.fiber.results.update(winner.results)
        self._finish(node_id, winner.outcome)


def _child_result(child: Fiber) -> ChildResult:
    assert child.outcome is not None
    return ChildResult(child.scope, child.branch, child.root_node, child.outcome, child.results)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
