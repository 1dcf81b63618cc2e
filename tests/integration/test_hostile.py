"""Hostile input: every attempt to break in must fail safely (STYLE.md, "hostile input").

A granted, non-superuser role tries to read or change another role's instances, to forge
rows, to inject SQL through values that substitution splices into steps, and to feed the
worker hand-built or oversized graphs. Each test states what must hold afterwards: the other
role's data unchanged, no table dropped, the instance failed with a clear reason, the worker
still serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import one
from tests.integration.test_admin import Roles

Conn = psycopg.Connection[Any]


@pytest.fixture
def roles(conn: Conn, dsn: str, db_name: str) -> Iterator[Roles]:
    r = Roles(conn, dsn, db_name)
    try:
        yield r
    finally:
        r.drop_all()


@dataclass
class User:
    """A granted LOGIN role that is not a superuser, and a connection as it."""

    name: str
    conn: Conn


def user(roles: Roles, label: str) -> User:
    name = roles.create(label, grant=True)
    return User(name, roles.connect(name))


def start(c: Conn, dsl: str, params: Any = None) -> str:
    return str(one(c, f"SELECT df.start({dsl})", params))


def run(c: Conn, dsl: str, params: Any = None, timeout: float = 20.0) -> tuple[str, str]:
    """Start ``dsl`` as ``c``'s role and wait (through ``c``'s own eyes) for it to finish."""
    iid = start(c, dsl, params)
    return iid, wait_for(c, iid, timeout)


# ===========================================================================================
# 1. Another role's instances, nodes, variables, results and signals

#: What the victim's data holds that no other role may see anywhere.
SECRETS = ("alice-secret", "s3cr3t", "inbox-secret", "alice-label")
DENIED = errors.InsufficientPrivilege
RLS_DENIED = "new row violates row-level security policy for table "


@dataclass
class Attempt:
    """One statement another role runs against the victim's ids, and what it must get:
    ``None`` or ``True`` (that one value), ``"any"`` (any value), ``[]`` (no rows), ``"own"``
    (only rows of its own), an int (rows affected), or an error class and its message (None:
    any message)."""

    sql: str
    expect: object
    message: str | None = None


ATTEMPTS = [
    # Every df function, on every id of the victim.
    Attempt("SELECT df.status(%(done)s)", None),
    Attempt("SELECT df.status(%(waiting)s)", None),
    Attempt("SELECT df.result(%(done)s)", None),
    Attempt("SELECT * FROM df.list_instances()", "own"),
    Attempt("SELECT * FROM df.list_instances('completed', 1000)", "own"),
    Attempt("SELECT * FROM df.list_instances(NULL, 100, NULL)", "own"),
    Attempt("SELECT * FROM df.list_instances(NULL, 100, 'alice-label')", []),
    Attempt("SELECT * FROM df.list_instances(NULL, 100, NULL, %(cursor)s)", "own"),
    Attempt("SELECT * FROM df.instance_info(%(done)s)", []),
    Attempt("SELECT * FROM df.instance_executions(%(done)s)", []),
    Attempt("SELECT * FROM df.instance_executions(%(waiting)s, 10000)", []),
    Attempt("SELECT * FROM df.instance_nodes(%(done)s)", []),
    Attempt("SELECT * FROM df.instance_nodes(%(waiting)s)", []),
    Attempt("SELECT * FROM df.instance_nodes(%(done)s, 5)", []),
    Attempt("SELECT df.explain(%(done)s) = 'Instance ''' || %(done)s || ''' not found'", True),
    Attempt(
        "SELECT df.explain(%(waiting)s) = 'Instance ''' || %(waiting)s || ''' not found'", True
    ),
    # (A DSL expression is evaluated as the caller: its subqueries see only its own rows.)
    Attempt(
        "SELECT df.explain('df.sql((SELECT string_agg(coalesce(result::text, query), '','') "
        "FROM df.nodes))')",
        "any",
    ),
    Attempt(
        "SELECT df.await_instance(%(done)s, 5)", errors.RaiseException, "Instance not found: {done}"
    ),
    Attempt(
        "SELECT df.await_instance(%(waiting)s, 5)",
        errors.RaiseException,
        "Instance not found: {waiting}",
    ),
    Attempt(
        "SELECT df.cancel(%(waiting)s)",
        errors.RaiseException,
        "Instance not found or access denied: {waiting}",
    ),
    Attempt(
        "SELECT df.cancel(%(done)s, 'x')",
        errors.RaiseException,
        "Instance not found or access denied: {done}",
    ),
    Attempt(
        "SELECT df.signal(%(waiting)s, 'go', '{}')",
        errors.RaiseException,
        "Instance not found or access denied: {waiting}",
    ),
    Attempt("SELECT df.getvar('secret')", None),
    Attempt("SELECT df.unsetvar('secret')", "any"),
    Attempt("SELECT df.clearvars()", "any"),
    Attempt("SELECT df.setvar('secret', 'pwned')", "any"),
    # Direct reads: row-level security, or no privilege at all.
    Attempt("SELECT * FROM df.instances", "own"),
    Attempt("SELECT * FROM df.nodes", "own"),
    Attempt("SELECT * FROM df.vars", "own"),
    Attempt("SELECT * FROM df._instance_state", "own"),
    Attempt("SELECT * FROM df._signals", DENIED),
    Attempt("SELECT * FROM df._fibers", DENIED),
    # Direct writes.
    Attempt(
        "UPDATE df.instances SET status = 'cancelled', updated_at = now() "
        "WHERE id IN (%(done)s, %(waiting)s)",
        0,
    ),
    Attempt("UPDATE df.instances SET label = 'x' WHERE id = %(done)s", DENIED),
    Attempt("UPDATE df.nodes SET status = 'completed' WHERE instance_id = %(waiting)s", DENIED),
    Attempt("UPDATE df.vars SET value = 'pwned' WHERE owner = %(alice)s::regrole", 0),
    # Moving a variable of one's own into the victim's namespace (where {var} is raw SQL).
    Attempt("UPDATE df.vars SET owner = %(alice)s::regrole", DENIED, RLS_DENIED + '"vars"'),
    Attempt(
        "INSERT INTO df.vars (name, value, owner) VALUES ('frag', 'pwned', %(alice)s::regrole)",
        DENIED,
        RLS_DENIED + '"vars"',
    ),
    Attempt("DELETE FROM df.vars WHERE owner = %(alice)s::regrole", 0),
    Attempt("DELETE FROM df.instances WHERE id = %(done)s", DENIED),
    Attempt("DELETE FROM df.nodes WHERE instance_id = %(done)s", DENIED),
    Attempt(
        "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by) "
        "VALUES ('0000beef', %(waiting)s, 'SQL', 'SELECT 1', %(alice)s::regrole)",
        DENIED,
        RLS_DENIED + '"nodes"',
    ),
    # A node of one's own in the victim's instance: the (instance, submitter) key refuses it.
    Attempt(
        "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by) "
        "VALUES ('0000beef', %(waiting)s, 'SQL', 'SELECT 1', current_user::regrole)",
        errors.ForeignKeyViolation,
    ),
    Attempt(
        "INSERT INTO df.instances (id, root_node, submitted_by) "
        "VALUES ('0000beef', '0000beef', %(alice)s::regrole)",
        DENIED,
        RLS_DENIED + '"instances"',
    ),
    # (The primary key tells that the id exists — ids are no secret, SPEC §6 — nothing more.)
    Attempt(
        "INSERT INTO df.instances (id, root_node, submitted_by) "
        "VALUES (%(done)s, '0000beef', current_user::regrole)",
        errors.UniqueViolation,
    ),
    Attempt(
        "INSERT INTO df._signals (instance_id, name, data) VALUES (%(waiting)s, 'go', '1')",
        DENIED,
    ),
    Attempt("UPDATE df._signals SET data = '1'", DENIED),
    Attempt("DELETE FROM df._signals", DENIED),
    Attempt("UPDATE df._fibers SET status = 'done'", DENIED),
    Attempt("DELETE FROM df._fibers", DENIED),
    Attempt(
        "INSERT INTO df._fibers (scope, instance_id, root_node, node_id) "
        "VALUES ('x', %(waiting)s, 'x', 'x')",
        DENIED,
    ),
    Attempt("UPDATE df._instance_state SET output = 'forged'", DENIED),
    Attempt("DELETE FROM df._instance_state", DENIED),
    # The engine's own functions.
    Attempt("SELECT df._fail_instance(%(waiting)s, 'forged')", DENIED),
    Attempt("SELECT df._drop_fibers(%(waiting)s, %(waiting)s)", DENIED),
    Attempt("SELECT * FROM df._infer_nodes(%(done)s)", []),
    # Becoming the victim.
    Attempt("SET ROLE {alice}", DENIED),
    Attempt("SET SESSION AUTHORIZATION {alice}", DENIED),
]

#: The victim's rows in every table that holds them, as the owner sees them.
SNAPSHOT = """
SELECT 'instances', to_jsonb(i)::text FROM df.instances i WHERE submitted_by = %(alice)s::regrole
UNION ALL SELECT 'nodes', to_jsonb(n)::text FROM df.nodes n
 WHERE submitted_by = %(alice)s::regrole
UNION ALL SELECT 'vars', to_jsonb(v)::text FROM df.vars v WHERE owner = %(alice)s::regrole
UNION ALL SELECT 'signals', to_jsonb(s)::text FROM df._signals s
 WHERE instance_id IN (%(done)s, %(waiting)s)
UNION ALL SELECT 'fibers', to_jsonb(f)::text FROM df._fibers f
 WHERE instance_id IN (%(done)s, %(waiting)s)
UNION ALL SELECT 'state', to_jsonb(s)::text FROM df._instance_state s
 WHERE instance_id IN (%(done)s, %(waiting)s)
ORDER BY 1, 2
"""


def test_another_roles_data_is_unknown_and_unchanged(
    roles: Roles, conn: Conn, worker: WorkerThread
) -> None:
    """A role tries every df function and every direct read and write on another role's
    finished instance (with results and variables) and waiting instance (with a signal in
    its inbox): all read as unknown or are refused, none hangs, nothing changes."""
    alice, mallory = user(roles, "alice"), user(roles, "mallory")
    alice.conn.execute("SELECT df.setvar('secret', 's3cr3t')")
    done = start(
        alice.conn,
        "'SELECT ''alice-secret'' AS v' |=> 'r' ~> 'SELECT $r.v || ''{secret}'' AS w', "
        "'alice-label'",
    )
    waiting = start(alice.conn, "'SELECT 1 AS one' |=> 'o' ~> df.wait_for_signal('go') |=> 's'")
    assert wait_for(alice.conn, done) == "completed"
    wait_until_waiting(alice, waiting)
    alice.conn.execute("SELECT df.signal(%s, 'other', '{\"x\": \"inbox-secret\"}')", (waiting,))
    assert wait_for(mallory.conn, start(mallory.conn, "'SELECT 1'")) == "completed"
    ids = {
        "done": done,
        "waiting": waiting,
        "alice": alice.name,
        "cursor": one(
            conn, "SELECT df._list_cursor(created_at, id) FROM df.instances WHERE id = %s", (done,)
        ),
    }
    before = conn.execute(SNAPSHOT, ids).fetchall()
    assert [r[0] for r in before].count("signals") == 1

    failures = []
    for attempt in ATTEMPTS:
        started = time.monotonic()
        failure = check_attempt(mallory.conn, ids, attempt)
        if failure is None and time.monotonic() - started > 1:
            failure = f"took {time.monotonic() - started:.1f}s"
        if failure is not None:
            failures.append(f"{attempt.sql}: {failure}")
    assert failures == []
    assert conn.execute(SNAPSHOT, ids).fetchall() == before

    # And the victim's instance carries on as if nothing had happened.
    assert one(alice.conn, "SELECT df.signal(%s, 'go', '\"on\"')", (waiting,)) == "OK"
    assert wait_for(alice.conn, waiting) == "completed"
    assert one(alice.conn, "SELECT df.getvar('secret')") == "s3cr3t"


def check_attempt(c: Conn, ids: dict[str, str], attempt: Attempt) -> str | None:
    """What is wrong with what ``attempt`` did as ``c``'s role (None: it failed safely)."""
    statement: Any = attempt.sql
    if "{alice}" in statement:
        statement = sql.SQL(statement).format(alice=sql.Identifier(ids["alice"]))
    expect = attempt.expect
    if isinstance(expect, type):
        try:
            c.execute(statement, ids)
        except expect as exc:
            wanted = None if attempt.message is None else attempt.message.format(**ids)
            got = exc.diag.message_primary
            return None if wanted is None or got == wanted else f"message {got!r}"
        except psycopg.Error as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"
    try:
        cur = c.execute(statement, ids)
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    if isinstance(expect, int) and not isinstance(expect, bool):
        return None if cur.rowcount == expect else f"{cur.rowcount} rows affected"
    rows = cur.fetchall()
    seen = json.dumps([list(r) for r in rows], default=str)
    for secret in (*SECRETS, ids["done"], ids["waiting"]):
        if secret in seen:
            return f"saw {secret!r} in {seen}"
    if expect in ("own", "any"):
        return None
    if expect == []:
        return None if rows == [] else f"rows {rows}"
    return None if rows == [(expect,)] else f"got {rows}"


# ===========================================================================================
# 3. SQL injection through substituted values


@pytest.fixture
def alice(roles: Roles, conn: Conn) -> User:
    """A submitter owning a table ``victim`` (so a successful injection could drop it) and a
    table ``src`` of hostile values, in a schema of its own."""
    u = user(roles, "alice")
    conn.execute(f"CREATE SCHEMA {u.name} AUTHORIZATION {u.name}")
    conn.execute(f"ALTER ROLE {u.name} SET search_path = {u.name}")
    u.conn.execute(f"SET search_path = {u.name}")
    u.conn.execute("CREATE TABLE victim (v text)")
    u.conn.execute("INSERT INTO victim VALUES ('still here')")
    u.conn.execute("CREATE TABLE src (k int PRIMARY KEY, v text)")
    return u


HOSTILE_VALUES = [
    "'); DROP TABLE victim; --",
    "x'); DROP TABLE victim; --",
    "'''; DROP TABLE victim; --",
    "\\'); DROP TABLE victim; --",
    "a\\b\\\\c\\'",
    "$$); DROP TABLE victim; --$$",
    "$tag$ $$ $x $x.v $x.* {sys_instance_id} {secret}",
    "E'\\x41'",
    "x\n-- comment\n'); DROP TABLE victim; --",
    "/* ') ; DROP TABLE victim; -- */",
    '"; DROP TABLE victim; --',
    "naïve 日本語 🚀 \u202eRTL\u200b zero-width \u00a0 nbsp",
    "",
    " ",
    "-1",
    "--1",
]

#: Every way a step can take a value from a result, each writing what it got into t<k>.
VALUE_STEPS = [
    "INSERT INTO t{k} VALUES (1, $x.v)",
    "INSERT INTO t{k} VALUES (2, $x)",
    "INSERT INTO t{k} VALUES (3, $x.v?)",
    "INSERT INTO t{k} SELECT 4, v FROM $x.*",
]


def victim_intact(u: User) -> None:
    assert one(u.conn, "SELECT v FROM victim") == "still here"


def chain(first: str, steps: list[str]) -> tuple[str, list[str]]:
    """The DSL text ``first ~> steps…`` with every step a parameter, and the parameters."""
    return " ~> ".join([first, *["%s"] * len(steps)]), steps


def output_of_role(u: User, iid: str) -> str | None:
    row = u.conn.execute("SELECT output FROM df.instance_info(%s)", (iid,)).fetchone()
    return None if row is None else row[0]


def run_values(u: User, values: list[str], steps: list[str]) -> None:
    """Run, for each value, ``SELECT v FROM src |=> 'x' ~> steps`` (all at once) and check
    that each step wrote exactly the value into t<k>."""
    started = {}
    for k, value in enumerate(values):
        u.conn.execute("INSERT INTO src VALUES (%s, %s)", (k, value))
        u.conn.execute(f"CREATE TABLE t{k} (n int, v text)")
        dsl, params = chain(
            f"'SELECT v FROM src WHERE k = {k}' |=> 'x'", [s.format(k=k) for s in steps]
        )
        started[k] = start(u.conn, dsl, params)
    for k, value in enumerate(values):
        status = wait_for(u.conn, started[k])
        assert status == "completed", (value, output_of_role(u, started[k]))
        got = u.conn.execute(f"SELECT n, v FROM t{k} ORDER BY n").fetchall()
        assert got == [(n + 1, value) for n in range(len(steps))], value
    victim_intact(u)


def test_result_values_arrive_as_one_literal(alice: User, worker: WorkerThread) -> None:
    """A value taken from a result reaches the statement as one literal, byte for byte,
    through every form of reference; nothing in it is substituted again."""
    run_values(alice, HOSTILE_VALUES, VALUE_STEPS)


def test_result_values_are_literals_also_without_standard_conforming_strings(
    alice: User, worker: WorkerThread, conn: Conn
) -> None:
    """A role's own settings apply to its steps; with standard_conforming_strings off a
    backslash escapes a quote inside '…', so a value must not be able to end its literal."""
    conn.execute(f"ALTER ROLE {alice.name} SET standard_conforming_strings = off")
    conn.execute(f"ALTER ROLE {alice.name} SET escape_string_warning = off")
    run_values(alice, HOSTILE_VALUES, VALUE_STEPS)


@pytest.mark.parametrize("standard_conforming_strings", ["on", "off"])
@pytest.mark.parametrize(
    ("first", "step"),
    [
        # A quote escaped by a backslash would end the literal and comment out the rest.
        (
            "SELECT chr(92) || ''' OR true --' AS v",
            "UPDATE victim SET v = 'changed' WHERE v = $x.v",
        ),
        # A negative number after a minus would start a comment: 1--1 OR v = 'nope' …
        ("SELECT -1 AS v", "UPDATE victim SET v = 'changed' WHERE 1 = 1-$x.v OR v = 'nope'"),
        ("SELECT -1.5::float8 AS v", "UPDATE victim SET v = 'changed' WHERE 1 = 1-$x OR false"),
        ("SELECT -1 AS v", "UPDATE victim SET v = 'changed' FROM $x.* WHERE 1 = 1-x.v OR false"),
    ],
)
def test_a_value_cannot_change_the_shape_of_one_statement(
    alice: User,
    worker: WorkerThread,
    conn: Conn,
    standard_conforming_strings: str,
    first: str,
    step: str,
) -> None:
    """No second statement needed: a value that ends its literal, or that turns what follows
    into a comment, would widen an UPDATE's WHERE to every row."""
    conn.execute(
        f"ALTER ROLE {alice.name} SET standard_conforming_strings = {standard_conforming_strings}"
    )
    conn.execute(f"ALTER ROLE {alice.name} SET escape_string_warning = off")
    iid, status = run(alice.conn, "%s |=> 'x' ~> %s", (first, step))
    assert status == "completed", output_of_role(alice, iid)
    victim_intact(alice)


def wait_until_waiting(u: User, iid: str) -> None:
    """Until the instance's SIGNAL node runs (reads ``running``)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if one(
            u.conn,
            "SELECT count(*) FROM df.nodes WHERE instance_id = %s AND node_type = 'SIGNAL' "
            "AND status = 'running'",
            (iid,),
        ):
            return
        time.sleep(0.02)
    pytest.fail(f"instance {iid} never waited for its signal")


SIGNAL_PAYLOAD = "x'); DROP TABLE victim; --\\' $$ $sig {secret} \u00e9"


@pytest.mark.parametrize(
    ("data", "steps"),
    [
        (
            json.dumps({"v": SIGNAL_PAYLOAD}),
            [
                "INSERT INTO t VALUES (1, ($sig.data)::jsonb->>'v')",
                "INSERT INTO t VALUES (2, $sig::jsonb #>> '{data,v}')",
                "INSERT INTO t SELECT 3, d->>'v' FROM (SELECT $sig.data::jsonb AS d) x",
            ],
        ),
        # Data that is not JSON arrives as a JSON string.
        (
            SIGNAL_PAYLOAD,
            [
                "INSERT INTO t VALUES (1, $sig.data)",
                "INSERT INTO t VALUES (2, $sig::jsonb->>'data')",
            ],
        ),
    ],
)
def test_signal_payloads_arrive_as_data(
    alice: User, worker: WorkerThread, data: str, steps: list[str]
) -> None:
    alice.conn.execute("CREATE TABLE t (n int, v text)")
    dsl, params = chain("df.wait_for_signal('go') |=> 'sig'", steps)
    iid = start(alice.conn, dsl, params)
    wait_until_waiting(alice, iid)
    assert one(alice.conn, "SELECT df.signal(%s, 'go', %s)", (iid, data)) == "OK"
    assert wait_for(alice.conn, iid) == "completed", output_of_role(alice, iid)
    got = alice.conn.execute("SELECT n, v FROM t ORDER BY n").fetchall()
    assert got == [(n + 1, SIGNAL_PAYLOAD) for n in range(len(steps))]
    victim_intact(alice)


def test_a_field_path_past_a_signal_field_fails_safely(alice: User, worker: WorkerThread) -> None:
    """``$sig.data.v`` is ``$sig.data`` (one quoted JSON text) followed by ``.v``: a syntax
    error, never a way out of the literal."""
    alice.conn.execute("CREATE TABLE t (v text)")
    iid = start(
        alice.conn,
        "df.wait_for_signal('go') |=> 'sig' ~> %s",
        ("INSERT INTO t VALUES ($sig.data.v)",),
    )
    wait_until_waiting(alice, iid)
    alice.conn.execute(
        "SELECT df.signal(%s, 'go', %s)", (iid, json.dumps({"v": "x'); DROP TABLE victim; --"}))
    )
    assert wait_for(alice.conn, iid) == "failed"
    assert "syntax error" in str(output_of_role(alice, iid))
    assert one(alice.conn, "SELECT count(*) FROM t") == 0
    victim_intact(alice)


def test_braced_variables_are_raw_sql_by_design_but_one_statement_as_the_submitter(
    alice: User, worker: WorkerThread, conn: Conn
) -> None:
    """SPEC §2.7/§3.2: ``{var}`` is spliced raw (it may hold SQL fragments) — SQL injection by
    design, with the submitter's own privileges; a step stays one statement."""
    conn.execute("CREATE TABLE public.secret (v text)")
    conn.execute("INSERT INTO public.secret VALUES ('top')")
    alice.conn.execute("CREATE TABLE t (v text)")
    alice.conn.execute("SELECT df.setvar('frag', $$'a'), ((SELECT v FROM victim)$$)")
    alice.conn.execute("SELECT df.setvar('two', $$'a'); DROP TABLE victim; --$$)")
    alice.conn.execute("SELECT df.setvar('steal', '(SELECT v FROM public.secret)')")
    # A fragment is SQL: it reads the role's own table.
    iid, status = run(alice.conn, "'INSERT INTO t VALUES ({frag})'")
    assert status == "completed", output_of_role(alice, iid)
    assert alice.conn.execute("SELECT v FROM t ORDER BY v").fetchall() == [
        ("a",),
        ("still here",),
    ]
    # A second statement is refused as a whole.
    iid, status = run(alice.conn, "'INSERT INTO t VALUES ({two})'")
    assert status == "failed"
    assert output_of_role(alice, iid) == (
        "SQL execution failed: error returned from database: "
        "cannot insert multiple commands into a prepared statement"
    )
    # And it runs as the submitter: no access to what the role cannot read.
    iid, status = run(alice.conn, "'INSERT INTO t VALUES ({steal})'")
    assert status == "failed"
    assert output_of_role(alice, iid) == (
        "SQL execution failed: error returned from database: permission denied for table secret"
    )
    victim_intact(alice)
    assert one(alice.conn, "SELECT count(*) FROM t") == 2
