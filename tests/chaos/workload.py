"""The ledger workload: shapes of instances, what each must leave in the ledger, and the check.

Every SQL step of every shape appends one row (instance id, step tag) to ``ledger``. The table
has no UNIQUE constraint on purpose: a step that ran twice shows as two rows and is counted,
rather than failing its instance. What each instance must leave is known before it starts
(the tags are fixed; a loop's are numbered by a counter the loop carries in a named result, so
an iteration that ran twice would leave a duplicate, not a later number), so the check
compares the ledger against the set the workload expects: exactly once for every transactional
step, at most once for a race's loser, nothing else. The one autocommit step (CREATE INDEX
CONCURRENTLY, which PostgreSQL refuses in a transaction block) is at least once: its index
exists.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]

SETUP = (
    "CREATE TABLE ledger (instance text NOT NULL, tag text NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE INDEX ON ledger (instance)",
    # Signals the sender delivered: written in df.signal's transaction, so a retry after a
    # connection lost at COMMIT can tell whether the first attempt landed.
    "CREATE TABLE chaos_sent (instance text, seq int, name text NOT NULL, data text NOT NULL, "
    "sent_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (instance, seq))",
    "CREATE TABLE scratch (n int)",
    "INSERT INTO scratch SELECT generate_series(1, 100)",
)
TERMINAL = ("completed", "failed", "cancelled")


def lit(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def step(tag: str, sleep: float = 0.0) -> str:
    """A step appending (instance, ``tag``) to the ledger; ``sleep`` s long when given."""
    if sleep:
        return lit(
            "INSERT INTO ledger (instance, tag) "
            f"SELECT '{{sys_instance_id}}', '{tag}' FROM pg_sleep({sleep})"
        )
    return lit(f"INSERT INTO ledger (instance, tag) VALUES ('{{sys_instance_id}}', '{tag}')")


def record(prefix: str, result: str) -> str:
    """A step appending the tag ``prefix`` || the data of the signal named ``result``."""
    return lit(
        "INSERT INTO ledger (instance, tag) "
        f"VALUES ('{{sys_instance_id}}', '{prefix}' || ${result}.data)"
    )


def seq(*parts: str) -> str:
    out = parts[0]
    for part in parts[1:]:
        out = f"df.seq({out}, {part})"
    return out


def wait(name: str, result: str | None = None) -> str:
    node = f"df.wait_for_signal({lit(name)})"
    return node if result is None else f"df.as({node}, {lit(result)})"


@dataclass(frozen=True, slots=True)
class Shape:
    """A kind of instance: its DSL (an SQL expression) and what it must leave behind."""

    name: str
    dsl: str
    #: Ledger tags that must be there exactly once.
    steps: tuple[str, ...]
    #: Tags that may be there at most once (a step of a race's losing branch).
    maybe: tuple[str, ...] = ()
    #: Signals (name, data) the sender delivers, in this order.
    signals: tuple[tuple[str, str], ...] = ()
    status: str = "completed"
    #: Has the autocommit step: index ix_<instance id> exists afterwards.
    autocommit: bool = False
    #: The step right before its first wait: a signal sent before that step's row was
    #: written reached the inbox before the wait did.
    before_wait: str | None = None
    #: Prefixes of the tags that carry a received signal's data (``record``).
    received: tuple[str, ...] = ()


_LOOP_BODY = seq(
    "df.as("
    + lit(
        "INSERT INTO ledger (instance, tag) VALUES ('{sys_instance_id}', 'loop:' || ($it + 1)) "
        "RETURNING $it + 1 AS n"
    )
    + ", 'it')",
    "df.if('SELECT $it >= 3', df.break('done'), 'SELECT 1')",
)

SHAPES: tuple[Shape, ...] = (
    Shape(
        "sequence",
        seq(step("s1"), step("s2"), step("s3", sleep=0.3), step("s4"), step("s5")),
        ("s1", "s2", "s3", "s4", "s5"),
    ),
    Shape(
        "join",
        seq(
            step("j0"),
            f"df.join3({step('ja')}, {seq(step('jb1'), step('jb2', sleep=0.2))}, {step('jc')})",
            step("j9"),
        ),
        ("j0", "ja", "jb1", "jb2", "jc", "j9"),
    ),
    Shape(
        # The right branch wins (the left sleeps for ten minutes); rx1 may or may not run.
        "race",
        seq(
            step("r0"),
            f"df.race({seq(step('rx1'), 'df.sleep(600)', step('rx2'))}, "
            f"{seq(step('ry1'), step('ry2'))})",
            step("r9"),
        ),
        ("r0", "ry1", "ry2", "r9"),
        maybe=("rx1",),
    ),
    Shape(
        "loop",
        seq(step("l0"), "df.as('SELECT 0 AS n', 'it')", f"df.loop({_LOOP_BODY})", step("l9")),
        ("l0", "loop:1", "loop:2", "loop:3", "l9"),
    ),
    Shape("sleep", seq(step("z1"), "df.sleep(2)", step("z2")), ("z1", "z2")),
    Shape(
        # Two signals of one name: FIFO, each consumed once.
        "signals",
        seq(
            "df.sleep(1)",
            step("g0"),
            wait("go", "a"),
            record("got1:", "a"),
            wait("go", "b"),
            record("got2:", "b"),
        ),
        ("g0", "got1:first", "got2:second"),
        signals=(("go", "first"), ("go", "second")),
        before_wait="g0",
        received=("got1:", "got2:"),
    ),
    Shape(
        "signal_race",
        seq(
            "df.sleep(1)",
            step("q0"),
            f"df.race({seq('df.sleep(600)', step('qlose'))}, {seq(wait('go'), step('qwin'))})",
            step("q9"),
        ),
        ("q0", "qwin", "q9"),
        signals=(("go", "x"),),
        before_wait="q0",
    ),
    Shape(
        "signal_join",
        seq(
            "df.sleep(1)",
            step("k0"),
            f"df.join({seq(wait('left'), step('kl'))}, "
            f"{seq('df.sleep(1)', wait('right', 'r'), record('kr:', 'r'))})",
            step("k9"),
        ),
        ("k0", "kl", "kr:R", "k9"),
        signals=(("left", "L"), ("right", "R")),
        before_wait="k0",
        received=("kr:",),
    ),
    Shape(
        "autocommit",
        seq(
            step("m1"),
            lit('CREATE INDEX CONCURRENTLY IF NOT EXISTS "ix_{sys_instance_id}" ON scratch (n)'),
            step("m2"),
        ),
        ("m1", "m2"),
        autocommit=True,
    ),
    Shape(
        # Fails by design: the step after the division by zero never runs.
        "failing",
        seq(step("f1"), "'SELECT 1/0'", step("f2")),
        ("f1",),
        status="failed",
    ),
)
#: How often each shape comes round (the mix of a run, in order).
MIX: tuple[str, ...] = (
    "sequence",
    "join",
    "signals",
    "race",
    "loop",
    "sequence",
    "sleep",
    "signal_race",
    "join",
    "signal_join",
    "autocommit",
    "signals",
    "failing",
)
BY_NAME = {shape.name: shape for shape in SHAPES}


def envelopes(conn: Conn) -> dict[str, str]:
    """Each shape's workflow as the JSON df.start takes (built once by the DSL functions)."""
    out = {}
    for shape in SHAPES:
        row = conn.execute(f"SELECT {shape.dsl}").fetchone()
        assert row is not None
        out[shape.name] = str(row[0])
    return out


@dataclass(slots=True)
class Started:
    """An instance the workload started."""

    label: str
    shape: Shape
    instance_id: str


@dataclass(slots=True)
class Verdict:
    """What the ledger and the engine's tables say after the run."""

    instances: int = 0
    steps_expected: int = 0
    steps_found: int = 0
    duplicates: int = 0
    lost: int = 0
    unexpected: int = 0
    autocommit_steps: int = 0
    autocommit_missing: int = 0
    race_losers_run: int = 0
    signals_sent: int = 0
    signals_before_wait: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    wrong_status: list[str] = field(default_factory=list)
    #: Unfinished instances that wait for a signal somebody took (every signal was sent, their
    #: inbox is empty), by id: what their fiber shows. Checked on their own: the other checks
    #: leave them out.
    lost_signals: dict[str, str] = field(default_factory=dict)
    #: Steps that never ran because their instance lost a signal (not in ``lost``).
    lost_after_signal: int = 0
    #: Signals received by the wait after the one that lost its signal (not in ``unexpected``).
    misdelivered: int = 0
    #: Fibers of finished instances, and of unfinished ones not in ``lost_signals``.
    fibers_left: int = 0
    signals_left: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 40:  # enough to see the pattern
            self.problems.append(text)


def verify(conn: Conn, started: list[Started]) -> Verdict:
    """Compare the ledger and the engine's tables with what ``started`` must have left."""
    v = Verdict(instances=len(started))
    statuses = dict(conn.execute("SELECT id, status FROM df.instances").fetchall())
    rows: dict[str, Counter[str]] = {}
    first_row: dict[tuple[str, str], Any] = {}
    for instance, tag, count, at in conn.execute(
        "SELECT instance, tag, count(*), min(at) FROM ledger GROUP BY 1, 2"
    ):
        rows.setdefault(instance, Counter())[tag] = count
        first_row[instance, tag] = at
    indexes = {
        r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'ix\\_%'")
    }
    sent = conn.execute("SELECT instance, sent_at FROM chaos_sent").fetchall()
    v.signals_sent = len(sent)
    known = {s.instance_id: s for s in started}
    for instance, sent_at in sent:
        shape = known[instance].shape
        pre = first_row.get((instance, shape.before_wait or ""))
        if pre is None or sent_at < pre:
            v.signals_before_wait += 1

    # Every signal has been sent (and the instances given time): a fiber still waiting with
    # nothing in its instance's inbox waits for a signal somebody consumed.
    for iid, scope, name in conn.execute(
        "SELECT f.instance_id, f.scope, f.awaiting FROM df._fibers f "
        "JOIN df.instances i ON i.id = f.instance_id "
        "WHERE i.status IN ('pending', 'running') AND f.awaiting IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM df._signals s WHERE s.instance_id = f.instance_id)"
    ):
        v.lost_signals[iid] = f"fiber {scope} waits for {name!r}, inbox empty"
    for s in started:
        iid, shape = s.instance_id, s.shape
        status = statuses.get(iid)
        v.by_status[str(status)] += 1
        if status != shape.status:
            v.wrong_status.append(f"{iid} ({shape.name}): {status}, expected {shape.status}")
        found = rows.pop(iid, Counter())
        v.steps_expected += len(shape.steps)
        for tag in shape.steps:
            n = found.pop(tag, 0)
            v.steps_found += min(n, 1)
            if n == 0 and iid in v.lost_signals:
                v.lost_after_signal += 1
            elif n == 0:
                v.lost += 1
                v.problem(f"lost: {iid} ({shape.name}) step {tag!r} has no ledger row")
            elif n > 1:
                v.duplicates += n - 1
                v.problem(f"duplicate: {iid} ({shape.name}) step {tag!r} has {n} ledger rows")
        for tag in shape.maybe:
            n = found.pop(tag, 0)
            v.race_losers_run += min(n, 1)
            if n > 1:
                v.duplicates += n - 1
                v.problem(f"duplicate: {iid} ({shape.name}) step {tag!r} has {n} ledger rows")
        for tag, n in found.items():
            if iid in v.lost_signals and tag.startswith(shape.received):
                # The wait that lost a signal received the next one: the same fault.
                v.misdelivered += n
                continue
            v.unexpected += n
            v.problem(f"unexpected: {iid} ({shape.name}) has {n} ledger row(s) {tag!r}")
        if shape.autocommit:
            v.autocommit_steps += 1
            if f"ix_{iid}" not in indexes:
                v.autocommit_missing += 1
                v.problem(f"lost: {iid} ({shape.name}) autocommit step left no index")
    for iid, found in rows.items():
        v.unexpected += sum(found.values())
        v.problem(f"unexpected: ledger rows of an instance nobody started: {iid} {dict(found)}")

    row = conn.execute(
        "SELECT count(*) FROM df._fibers WHERE instance_id <> ALL(%s)", (list(v.lost_signals),)
    ).fetchone()
    v.fibers_left = int(row[0]) if row else -1
    row = conn.execute("SELECT count(*) FROM df._signals").fetchone()
    v.signals_left = int(row[0]) if row else -1
    return v


def describe(conn: Conn, instance_id: str) -> str:
    """An instance's nodes and fibers as text, for a report on one that did not finish."""
    lines = [f"instance {instance_id}:"]
    for r in conn.execute(
        "SELECT node_id, node_type, status, inferred_status, left(coalesce(result, ''), 120) "
        "FROM df.instance_nodes(%s) ORDER BY updated_at",
        (instance_id,),
    ):
        lines.append("  node " + " | ".join(str(x) for x in r))
    for r in conn.execute(
        "SELECT scope, node_id, status, run_at - now(), generation, awaiting, version "
        "FROM df._fibers WHERE instance_id = %s",
        (instance_id,),
    ):
        lines.append("  fiber " + " | ".join(str(x) for x in r))
    for r in conn.execute(
        "SELECT name, data, scope FROM df._signals WHERE instance_id = %s", (instance_id,)
    ):
        lines.append("  inbox " + json.dumps([str(x) for x in r]))
    for r in conn.execute(
        "SELECT seq, name, data, sent_at FROM chaos_sent WHERE instance = %s ORDER BY seq",
        (instance_id,),
    ):
        lines.append("  sent " + " | ".join(str(x) for x in r))
    for r in conn.execute(
        "SELECT tag, at FROM ledger WHERE instance = %s ORDER BY at", (instance_id,)
    ):
        lines.append("  ledger " + " | ".join(str(x) for x in r))
    return "\n".join(lines)
