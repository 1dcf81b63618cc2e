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
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from pg_durable.errors import SubstitutionError
from pg_durable.graph.model import STORES_RESULT, Graph, Node
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
#: The longest statement_timeout PostgreSQL takes, in whole seconds (INT_MAX milliseconds).
MAX_STATEMENT_TIMEOUT: Final = 2_147_483
#: How a TIMEOUT node fails once its time is up.
TIMED_OUT: Final = "Timed out after {seconds}s"
#: How a RETRY node fails once its last attempt failed.
RETRIES_EXHAUSTED: Final = "RETRY failed after {attempts} attempt{s}: {message}"
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
    """A node failed with ``message`` (stored as the node's result, a JSON string).

    ``timeout`` names the TIMEOUT node whose deadline the failure is (a statement cancelled at
    it, a step not started past it): that node fails with its own words, and no RETRY inside it
    tries again — the time is up for every attempt."""

    message: str
    timeout: str | None = None


@dataclass(frozen=True, slots=True)
class Broke:
    """A df.break() is travelling to its loop carrying ``value`` (JSON text)."""

    value: str


Outcome = Ok | Failed | Broke


def outcome_to_json(outcome: Outcome) -> dict[str, str]:
    if isinstance(outcome, Ok):
        return {"ok": outcome.result}
    if isinstance(outcome, Failed):
        if outcome.timeout is not None:
            return {"error": outcome.message, "timeout": outcome.timeout}
        return {"error": outcome.message}
    return {"break": outcome.value}


def outcome_from_json(data: dict[str, str]) -> Outcome:
    if "ok" in data:
        return Ok(data["ok"])
    if "error" in data:
        return Failed(data["error"], data.get("timeout"))
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
    #: More of df.nodes.status_details beside execution_id (a RETRY's attempts).
    details: dict[str, object] | None = None


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
        elif root.type == "RETRY" and self.fiber.parent_scope is not None:
            self._start_attempt()
        elif root.type == "TIMEOUT" and self.fiber.spawned_at_node == root.id:
            # The timer of a TIMEOUT: it fires at the deadline (time_out) unless the subtree
            # finishes first and it is cancelled.
            self._stand_at(root.id)
            self.fiber.not_before = _deadline_of(self.fiber, root.id)
        else:
            self._activate(root.id)

    def next_attempt(self) -> None:
        """A RETRY's wait after a failed attempt is over: the next attempt starts."""
        self._start_attempt()

    def time_out(self) -> None:
        """The timer of a TIMEOUT fired: its subtree took too long."""
        node = self.graph.node(self.fiber.root_node)
        self.fiber.not_before = None
        self._fiber_done(Failed(TIMED_OUT.format(seconds=node.timeout), timeout=node.id))

    def deadline(self) -> tuple[str, float] | None:
        """The nearest deadline of the TIMEOUT nodes around the fiber's position: (the TIMEOUT
        node, epoch seconds on the database clock); None if it has none. A statement of the
        fiber is cancelled when it is reached."""
        deadlines = self.fiber.state.get("deadlines")
        if not isinstance(deadlines, dict) or not deadlines:
            return None
        node_id = min(deadlines, key=lambda k: float(deadlines[k]))
        return str(node_id), float(deadlines[node_id])

    def timed_out(self, node_id: str) -> Failed:
        """How a step fails that its TIMEOUT ``node_id``'s deadline stopped before it began."""
        return Failed(TIMED_OUT.format(seconds=self.graph.node(node_id).timeout), timeout=node_id)

    def iterate(self) -> None:
        """A paced loop fiber is due for its next iteration."""
        self.fiber.state.pop("iterate", None)
        self.fiber.not_before = None
        self._start_iteration()

    def complete_step(self, outcome: Outcome) -> None:
        """The step the fiber stands at finished with ``outcome``."""
        self._finish(self.fiber.node_id, outcome)

    def resume(self, children: list[ChildResult], first_done: str | None) -> None:
        """The children the fiber waits for have finished: JOIN or RACE branches, a loop, a
        RETRY's attempts, or (the first of) a TIMEOUT's subtree and timer."""
        self._resume(self.fiber.node_id, children, first_done)

    # -- bookkeeping ------------------------------------------------------------------------
    def _stamp(
        self,
        node_id: str,
        status: str,
        result: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        self.plan.stamps.pop(node_id, None)  # re-insert so the last write is also last in order
        self.plan.stamps[node_id] = Stamp(node_id, status, result, self.fiber.execution_id, details)

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
        elif node.type == "RETRY":
            # The attempts run in a fiber of their own, one generation per attempt: the nodes
            # of a failed attempt are superseded when the next begins, as a loop's iterations.
            self._fork(node_id, [node_id])
        elif node.type == "TIMEOUT":
            assert node.left is not None and node.timeout is not None
            at = self.ctx.now + node.timeout
            if self.graph.node(node.left).type == "SQL" and node.timeout <= MAX_STATEMENT_TIMEOUT:
                # One statement: its statement_timeout is the deadline (the worker sets it).
                self._deadlines()[node_id] = at
                self._activate(node.left)
            else:
                # Anything else races a timer, and what is left of it when the timer wins is
                # cancelled like a lost RACE branch; its statements also stop at the deadline.
                self._fork(node_id, [node.left, node_id], deadline=(node_id, at))
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

    def _fork(
        self, node_id: str, roots: list[str], *, deadline: tuple[str, float] | None = None
    ) -> None:
        """Start child fibers at ``roots`` (JOIN/RACE branches, a loop, a RETRY's attempts, a
        TIMEOUT's subtree and timer) and wait. Children keep the deadlines around the fork,
        and ``deadline`` too (a TIMEOUT's)."""
        node = self.graph.node(node_id)
        children: list[Fiber] = []
        first_spawn = len(self.plan.spawns)
        deadlines = dict(self._deadlines(create=False))
        if deadline is not None:
            deadlines[deadline[0]] = deadline[1]
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
                state={"deadlines": dict(deadlines)} if deadlines else {},
            )
            Interpreter(self.ctx, child, self.plan).start()
            children.append(child)
        done = [c for c in children if c.status == "done"]
        first_wins = node.type in ("RACE", "TIMEOUT")
        needed = 1 if first_wins else len(children)
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
        self.fiber.wake_at_pending = len(children) - 1 if first_wins else 0

    def _deadlines(self, *, create: bool = True) -> dict[str, float]:
        """The fiber's deadlines: TIMEOUT node id → epoch seconds (fiber.state, durable)."""
        found = self.fiber.state.get("deadlines")
        if isinstance(found, dict):
            return found
        deadlines: dict[str, float] = {}
        if create:
            self.fiber.state["deadlines"] = deadlines
        return deadlines

    # -- retries ----------------------------------------------------------------------------
    def _start_attempt(self) -> None:
        """Start the next attempt of the RETRY at the fiber's root: a new generation, with
        the named results the first attempt started with."""
        state = self.fiber.state
        node = self.graph.node(self.fiber.root_node)
        attempt = _int(state.get("attempt")) + 1
        state.pop("retry", None)
        state["attempt"] = attempt
        if attempt == 1 and node.max_attempts > 1:
            state["base_results"] = dict(self.fiber.results)
        self.fiber.generation = attempt
        self._stamp(node.id, "running", details=self._attempt_details(node, attempt))
        assert node.left is not None
        self._activate(node.left)

    def _attempt_details(
        self, node: Node, attempt: int, last_error: str | None = None
    ) -> dict[str, object]:
        """A RETRY's status_details: the attempt, the most there may be, and the error of the
        last attempt that failed, if one did."""
        details: dict[str, object] = {"attempt": attempt, "max_attempts": node.max_attempts}
        last = last_error if last_error is not None else self.fiber.state.get("last_error")
        if isinstance(last, str):
            details["last_error"] = last
        return details

    def _attempt_finished(self, node: Node, outcome: Outcome) -> None:
        """An attempt of the RETRY at the fiber's root finished: done, or wait and retry."""
        state = self.fiber.state
        attempt = max(1, _int(state.get("attempt")))
        if isinstance(outcome, Failed) and outcome.timeout is None and attempt < node.max_attempts:
            wait = backoff_delay(node.backoff_seconds, node.backoff_factor, attempt)
            state["last_error"] = outcome.message
            state["retry"] = True
            # Nothing the failed attempt named is seen by the next one.
            base = state.get("base_results")
            self.fiber.results = dict(base) if isinstance(base, dict) else {}
            details = self._attempt_details(node, attempt)
            details["next_attempt_at"] = _iso(self.ctx.now + wait)
            self._stamp(node.id, "running", details=details)
            self._stand_at(node.id, delay=wait)
            return
        state.pop("base_results", None)
        if isinstance(outcome, Failed):
            details = self._attempt_details(node, attempt, outcome.message)
            if outcome.timeout is None:
                message = RETRIES_EXHAUSTED.format(
                    attempts=attempt, s="" if attempt == 1 else "s", message=outcome.message
                )
                outcome = Failed(message)
            self._stamp(node.id, "failed", json.dumps(outcome.message, ensure_ascii=False), details)
        else:
            details = self._attempt_details(node, attempt)
            result = outcome.result if isinstance(outcome, Ok) else outcome.value
            self._stamp(node.id, "completed", result, details)
        self._finish(node.id, outcome, stamp=False)

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
        if parent.type == "RETRY":
            self._attempt_finished(parent, outcome)
            return
        if parent.type == "TIMEOUT":  # its statement, run in this fiber
            self._deadlines().pop(parent_id, None)
            self._finish(parent_id, _timed_out_as(parent, outcome))
            return
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
                    self._finish(node_id, Failed(message, child.outcome.timeout))
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
        if node.type == "RETRY":
            (child,) = children
            if not isinstance(child.outcome, Failed):
                self.fiber.results.update(child.results)
            # The attempts' fiber stamped the RETRY node itself.
            self._finish(node_id, child.outcome, stamp=False)
            return
        # RACE, TIMEOUT: the first child to finish wins, whatever its outcome.
        winner = next((c for c in children if c.scope == first_done), children[0])
        if node.type == "TIMEOUT":
            # The subtree finished in time, or the timer fired: the other is cancelled.
            for root in (node.left, node.id):
                scope = f"{self.fiber.execution_id}::{root}"
                if scope != winner.scope:
                    self.plan.cancel_scopes.append(scope)
            if not isinstance(winner.outcome, Failed):
                self.fiber.results.update(winner.results)
            self._finish(node_id, _timed_out_as(node, winner.outcome))
            return
        for branch, root in enumerate(node.branches):
            if branch != winner.branch:
                self.plan.cancel_scopes.append(f"{self.fiber.execution_id}::{root}")
                if self.graph.node(root).type == "LOOP":
                    self._stamp(root, "failed", json.dumps(LOST_RACE))
        if isinstance(winner.outcome, Failed):
            side = "left" if winner.branch == 0 else "right"
            message = f"RACE {side} branch failed: {winner.outcome.message}"
            self._finish(node_id, Failed(message, winner.outcome.timeout))
            return
        self.fiber.results.update(winner.results)
        self._finish(node_id, winner.outcome)


def _child_result(child: Fiber) -> ChildResult:
    assert child.outcome is not None
    return ChildResult(child.scope, child.branch, child.root_node, child.outcome, child.results)


def backoff_delay(backoff_seconds: float, backoff_factor: float, attempt: int) -> float:
    """Seconds a RETRY waits after its attempt ``attempt`` failed: backoff_seconds, then
    backoff_factor times more after each further failure (at most MAX_SLEEP_DELAY; the power
    is not computed where it would overflow)."""
    if backoff_seconds <= 0:
        return 0.0
    exponent = attempt - 1
    if backoff_factor > 1 and exponent * math.log(backoff_factor) + math.log(
        backoff_seconds
    ) >= math.log(MAX_SLEEP_DELAY):
        return MAX_SLEEP_DELAY
    return min(backoff_seconds * backoff_factor**exponent, MAX_SLEEP_DELAY)


def _timed_out_as(node: Node, outcome: Outcome) -> Outcome:
    """What a TIMEOUT node's subtree finishing with ``outcome`` means for the node: its own
    deadline's failure becomes its own words (and, handled here, no longer a deadline's)."""
    if isinstance(outcome, Failed) and outcome.timeout == node.id:
        return Failed(TIMED_OUT.format(seconds=node.timeout))
    return outcome


def _deadline_of(fiber: Fiber, node_id: str) -> float | None:
    deadlines = fiber.state.get("deadlines")
    if isinstance(deadlines, dict) and isinstance(deadlines.get(node_id), int | float):
        return float(deadlines[node_id])
    return None


def _iso(epoch: float) -> str:
    """Epoch seconds as an ISO 8601 timestamp in UTC (what a timestamptz column reads)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
