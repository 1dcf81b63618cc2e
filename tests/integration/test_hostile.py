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
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]


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
# 2. Forged rows and forged statuses


def insert_graph(c: Conn, iid: str, nodes: list[tuple[Any, ...]], root: str | None = None) -> None:
    """Insert an instance and its nodes ``(id, type, query, left, right[, result_name])`` as
    ``c``'s role, the way df.start would (only the columns the grants allow), and commit."""
    with c.transaction():
        c.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by) "
            "VALUES (%s, %s, current_user::regrole)",
            (iid, root or nodes[0][0]),
        )
        for node in nodes:
            node_id, kind, query_, left, right, *name = node
            c.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, right_node, "
                "result_name, submitted_by) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                "current_user::regrole)",
                (node_id, iid, kind, query_, left, right, name[0] if name else None),
            )


FORGED_ROWS: list[tuple[str, tuple[Any, ...], type[psycopg.Error]]] = [
    # Ids that are not 8 lowercase hex digits.
    ("instances", ("ABCDEF12", "aaaaaaaa"), errors.CheckViolation),
    ("instances", ("abc", "aaaaaaaa"), errors.CheckViolation),
    ("instances", ("' or 1=1", "aaaaaaaa"), errors.CheckViolation),
    ("instances", ("", "aaaaaaaa"), errors.CheckViolation),
    ("instances", ("123456789", "aaaaaaaa"), errors.StringDataRightTruncation),
    ("instances", (None, "aaaaaaaa"), errors.NotNullViolation),
    ("instances", ("aaaaaaaa", "../../.."), errors.CheckViolation),
    ("nodes", ("XYZ", "SQL", "SELECT 1", None, None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "SQL", "SELECT 1", "NOTANID!", None), errors.CheckViolation),
    # Types and shapes the table does not admit.
    ("nodes", ("aaaaaaaa", "EVIL", "SELECT 1", None, None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "sql", "SELECT 1", None, None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "SQL", None, None, None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "SQL", "SELECT 1", "bbbbbbbb", None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "THEN", "SELECT 1", "bbbbbbbb", "cccccccc"), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "THEN", None, "bbbbbbbb", None), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "LOOP", None, "bbbbbbbb", "cccccccc"), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "SQL", "SELECT 1", None, None, "a b"), errors.CheckViolation),
    ("nodes", ("aaaaaaaa", "SQL", "SELECT 1", None, None, "x); --"), errors.CheckViolation),
    # Children that do not exist, or belong to another instance: refused at commit.
    ("nodes", ("aaaaaaaa", "THEN", None, "bbbbbbbb", "cccccccc"), errors.ForeignKeyViolation),
]


@pytest.mark.parametrize(("table", "row", "error"), FORGED_ROWS)
def test_forged_rows_are_refused(
    roles: Roles, table: str, row: tuple[Any, ...], error: type[psycopg.Error]
) -> None:
    u = user(roles, "forger")
    with pytest.raises(error):
        if table == "instances":
            with u.conn.transaction():
                u.conn.execute(
                    "INSERT INTO df.instances (id, root_node, submitted_by) "
                    "VALUES (%s, %s, current_user::regrole)",
                    row,
                )
        else:
            insert_graph(u.conn, "0000000f", [row])
    assert one(u.conn, "SELECT count(*) FROM df.instances") == 0
    assert one(u.conn, "SELECT count(*) FROM df.nodes") == 0


@pytest.mark.parametrize(
    "column",
    [
        "instances.status",
        "instances.created_at",
        "instances.updated_at",
        "instances.completed_at",
        "nodes.status",
        "nodes.result",
        "nodes.error",
        "nodes.status_details",
        "nodes.created_at",
    ],
)
def test_engine_owned_columns_cannot_be_forged(roles: Roles, column: str) -> None:
    """A role may insert only what df.start inserts: a finished status, a result or a
    back-dated row (which retention or pagination would trust) is refused."""
    u = user(roles, "forger")
    table, name = column.split(".")
    value = {"status": "completed", "result": '{"rows": []}', "status_details": "{}"}.get(
        name, "now()"
    )
    if table == "instances":
        statement = (
            f"INSERT INTO df.instances (id, root_node, submitted_by, {name}) "
            "VALUES ('0000000f', '0000000a', current_user::regrole, %s)"
        )
    else:
        statement = (
            f"INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, {name}) "
            "VALUES ('0000000a', '0000000f', 'SQL', 'SELECT 1', current_user::regrole, %s)"
        )
    with pytest.raises(errors.InsufficientPrivilege):
        u.conn.execute(statement, (value if value != "now()" else "2000-01-01",))


def fibers_of(conn: Conn, iid: str) -> int:
    return int(one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)))


def test_a_role_cannot_mark_its_running_instance_completed(
    roles: Roles, conn: Conn, worker: WorkerThread
) -> None:
    """SPEC §3.2 grants UPDATE (status, updated_at) for df.cancel; any other status a role
    writes itself is refused, and the instance runs on to its end."""
    u = user(roles, "forger")
    conn.execute("CREATE TABLE public.ran (v int)")
    conn.execute(f"GRANT INSERT, SELECT ON public.ran TO {u.name}")
    iid = start(u.conn, "'SELECT 1' ~> df.sleep(1) ~> 'INSERT INTO public.ran VALUES (1)'")
    wait_until(lambda: one(u.conn, "SELECT df.status(%s)", (iid,)) == "running")
    for status in ("completed", "failed", "pending", "bogus"):
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            u.conn.execute(
                "UPDATE df.instances SET status = %s, updated_at = now() WHERE id = %s",
                (status, iid),
            )
        assert caught.value.diag.message_primary == (
            f"Instance {iid}: its status is the engine's to change; a role may only cancel its "
            "own pending or running instance (df.cancel)"
        )
    assert wait_for(u.conn, iid) == "completed"
    assert one(conn, "SELECT count(*) FROM public.ran") == 1
    assert consistency_problems(conn, iid) == []


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.05)


def consistency_problems(conn: Conn, iid: str) -> list[str]:
    """What is inconsistent between the instance's status and the engine's state."""
    status, completed_at, root_status, fibers, finished = conn.execute(
        "SELECT i.status, i.completed_at, n.status, "
        "       (SELECT count(*) FROM df._fibers f WHERE f.instance_id = i.id), "
        "       s.finished_at "
        "  FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node "
        "  LEFT JOIN df._instance_state s ON s.instance_id = i.id WHERE i.id = %s",
        (iid,),
    ).fetchone() or (None, None, None, 0, None)
    problems = []
    if status in ("completed", "failed", "cancelled") and fibers:
        problems.append(f"{status} with {fibers} fiber(s) left")
    if status in ("pending", "running") and not fibers:
        problems.append(f"{status} with nothing left to run it")
    if status == "completed" and (completed_at is None or root_status != "completed"):
        problems.append(f"completed without completed_at or a completed root ({root_status})")
    if status in ("completed", "failed") and finished is None:
        problems.append(f"{status} but the engine never finished it")
    return problems


@pytest.mark.parametrize(
    ("dsl", "forged"),
    [
        # Were they allowed: a waiting instance marked completed would keep its waiting fiber
        # forever, with no completed_at and no output;
        ("df.wait_for_signal('go')", ["completed"]),
        # a finished instance set back to running (or pending) would have nothing to run it;
        ("'SELECT 1'", ["running"]),
        ("'SELECT 1'", ["pending"]),
        # one marked completed, then running again once its timer was given up, stuck.
        ("df.sleep(1) ~> 'SELECT 1'", ["completed", "sleep", "running"]),
    ],
)
def test_a_status_forged_by_its_owner_leaves_no_half_state(
    roles: Roles, conn: Conn, worker: WorkerThread, dsl: str, forged: list[str]
) -> None:
    u = user(roles, "forger")
    iid = start(u.conn, dsl)
    if "wait_for_signal" in dsl:
        wait_until_waiting(u, iid)
    elif "sleep" in dsl:
        wait_until(lambda: one(u.conn, "SELECT df.status(%s)", (iid,)) == "running")
    else:
        wait_for(u.conn, iid)
    refused = False
    for status in forged:
        if status == "sleep":  # until the timer fires and its fiber is given up
            wait_until(lambda: fibers_of(conn, iid) == 0)
            continue
        try:
            u.conn.execute(
                "UPDATE df.instances SET status = %s, updated_at = now() WHERE id = %s",
                (status, iid),
            )
        except psycopg.Error:
            refused = True
    time.sleep(1.0)
    assert refused
    assert consistency_problems(conn, iid) == []


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


# ===========================================================================================
# 4. Hand-built graphs that bypass the DSL's checks


def sql_node(q: str) -> dict[str, Any]:
    return {"node_type": "SQL", "query": q}


def env(**fields: Any) -> str:
    return json.dumps(fields)


GRAPH = "Invalid durable function graph: "
THEN_SLEEP = "{'node_type': 'THEN'}"

START_REJECTS = [
    (
        env(node_type="HTTP_MULTIPART", query='{"url": "http://localhost/", "parts": []}'),
        GRAPH + "root: parts must contain at least one part",
    ),
    (
        env(node_type="LOOP", left_node=sql_node("a"), right_node=sql_node("b")),
        GRAPH + "root: LOOP nodes need a left_node (the body) and no right_node",
    ),
    (
        env(node_type="THEN", left_node=sql_node("a")),
        GRAPH + "root: THEN nodes need a left_node and a right_node",
    ),
    (
        env(node_type="RACE", right_node=sql_node("a")),
        GRAPH + "root: RACE nodes need a left_node and a right_node",
    ),
    (
        env(node_type="IF", left_node=sql_node("a"), right_node=sql_node("b")),
        GRAPH + "root: IF nodes need a condition_node",
    ),
    (
        env(
            node_type="IF",
            left_node=sql_node("a"),
            right_node=sql_node("b"),
            condition_node=sql_node("c"),
            query='{"condition_type":"result_has_rows","result_name":"r"}',
        ),
        GRAPH + "root: an IF has either a condition_node or a result_has_rows query, not both",
    ),
    (
        env(
            node_type="IF",
            left_node=sql_node("a"),
            right_node=sql_node("b"),
            query='{"condition_type":"rm -rf","result_name":"r"}',
        ),
        GRAPH + 'root: query in IF must be {"condition_type":"result_has_rows",'
        '"result_name":"<name>"}',
    ),
    (
        env(node_type="SQL", query="a", left_node=sql_node("b")),
        GRAPH + "root: SQL nodes cannot have children",
    ),
    (env(node_type="SQL"), GRAPH + "root: SQL nodes need a query"),
    (
        env(node_type="SQL", query="a", condition_node=sql_node("b")),
        GRAPH + "root: condition_node is not valid for SQL nodes",
    ),
    (
        env(node_type=5, query="a"),
        "Invalid durable function: Unknown node_type '5'. Valid types: SQL, THEN, IF, JOIN, "
        "LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, RETRY, TIMEOUT",
    ),
    (
        env(node_type="SQL", query="a", result_name=5),
        "Invalid durable function: Malformed Durofut JSON with node_type 'SQL': invalid type: "
        "integer `5`, expected a string",
    ),
    *[
        (
            env(
                node_type="THEN",
                left_node=sql_node("a"),
                right_node={"node_type": "SLEEP", "query": q},
            ),
            GRAPH + "root.right: query in SLEEP must be a non-negative whole number of seconds",
        )
        for q in ("-5", "1.5", "abc", "", "1e3", "0x10", "5; DROP TABLE x")
    ],
    (
        env(node_type="SLEEP", query="99999999999999999999"),
        'value "99999999999999999999" is out of range for type bigint',
    ),
    (
        env(node_type="WAIT_SCHEDULE", query='{"cron_expr": 5}'),
        GRAPH + 'root: query in WAIT_SCHEDULE must be {"cron_expr":"<cron expression>"}',
    ),
    (
        env(node_type="BREAK", query="not json"),
        GRAPH + "root: query in BREAK must be a JSON config object",
    ),
    (env(node_type="HTTP", query="[]"), GRAPH + "root: query in HTTP must be a JSON config object"),
]


@pytest.mark.parametrize(("fut", "message"), START_REJECTS)
def test_df_start_rejects_a_hand_built_graph_precisely(
    roles: Roles, fut: str, message: str
) -> None:
    u = user(roles, "builder")
    with pytest.raises(psycopg.Error) as caught:
        u.conn.execute("SELECT df.start(%s)", (fut,))
    assert caught.value.diag.message_primary == message
    assert one(u.conn, "SELECT count(*) FROM df.instances") == 0


def test_df_start_rejects_a_bad_hand_built_schedule(roles: Roles) -> None:
    u = user(roles, "builder")
    with pytest.raises(errors.RaiseException) as caught:
        u.conn.execute(
            "SELECT df.start(%s)",
            (env(node_type="WAIT_SCHEDULE", query='{"cron_expr": "61 * * * *"}'),),
        )
    assert str(caught.value.diag.message_primary).startswith(
        GRAPH + "root: Invalid cron expression '61 * * * *': "
    )


#: Graphs df.start accepts, or rows a role inserts itself, that the worker must fail with a
#: clear reason: (how, graph, what the instance's output says).
WORKER_FAILS: list[tuple[str, Any, str]] = [
    # Through df.start, as a role that may not make HTTP requests (and HTTP is off).
    (
        "start",
        env(node_type="HTTP", query='{"url": "http://169.254.169.254/latest/meta-data/"}'),
        "Blocked: outbound HTTP requests are disabled. Set pg_durable.http_policy to "
        "'allow-list' (with pg_durable.http_allowed_hosts) or 'allow-all' to enable them.",
    ),
    (
        "start",
        env(
            node_type="HTTP_MULTIPART",
            query='{"url": "http://localhost/", "parts": [{"name": "f", "data_b64": ""}]}',
        ),
        "Blocked: outbound HTTP requests are disabled. Set pg_durable.http_policy to "
        "'allow-list' (with pg_durable.http_allowed_hosts) or 'allow-all' to enable them.",
    ),
    ("start", env(node_type="BREAK", query='{"break_value": 5}'), "break_value must be a string"),
    (
        "start",
        env(node_type="BREAK", query='{"break_value": null}'),
        "df.break() was called outside of a loop. df.break() may only be used inside df.loop().",
    ),
    (
        "start",
        env(
            node_type="IF",
            left_node=sql_node("SELECT 1"),
            right_node=sql_node("SELECT 2"),
            query='{"condition_type":"result_has_rows","result_name":"nope"}',
        ),
        "df.if_rows: result 'nope' not found",
    ),
    # Rows inserted directly (id, type, query, left, right).
    (
        "insert",
        [
            ("aaaaaaaa", "THEN", None, "bbbbbbbb", "aaaaaaaa"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
        ],
        "node aaaaaaaa is reachable twice (graphs must be trees)",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "THEN", None, "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "THEN", None, "dddddddd", "aaaaaaaa"),
            ("dddddddd", "SQL", "SELECT 2", None, None),
        ],
        "node aaaaaaaa is reachable twice (graphs must be trees)",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "IF", '{"condition_node": "aaaaaaaa"}', "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "SQL", "SELECT 2", None, None),
        ],
        "node aaaaaaaa is reachable twice (graphs must be trees)",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "LOOP", '{"condition_node": "deadbeef"}', "bbbbbbbb", None),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
        ],
        "node aaaaaaaa (LOOP) refers to missing node deadbeef",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "JOIN", '{"extra_nodes": ["{other}"]}', "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "SQL", "SELECT 2", None, None),
        ],
        "node aaaaaaaa (JOIN) refers to missing node {other}",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "JOIN", '{"extra_nodes": "bbbbbbbb"}', "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "SQL", "SELECT 2", None, None),
        ],
        "node aaaaaaaa (JOIN): extra_nodes must be a list of node ids",
    ),
    (
        "insert",
        [
            ("aaaaaaaa", "IF", '{"condition_node": 5}', "bbbbbbbb", "cccccccc"),
            ("bbbbbbbb", "SQL", "SELECT 1", None, None),
            ("cccccccc", "SQL", "SELECT 2", None, None),
        ],
        "node aaaaaaaa (IF): condition_node must be a string",
    ),
    (
        "insert",
        [("aaaaaaaa", "SLEEP", "abc", None, None)],
        "node aaaaaaaa (SLEEP): seconds must be a whole number",
    ),
    (
        "insert",
        [("aaaaaaaa", "SLEEP", "99999999999999999999", None, None)],
        "node aaaaaaaa (SLEEP): seconds must fit in a bigint",
    ),
    (
        "insert",
        [("aaaaaaaa", "SIGNAL", '{"signal_name": "go", "timeout_seconds": 1e30}', None, None)],
        "node aaaaaaaa (SIGNAL): timeout_seconds must be a positive integer",
    ),
    (
        "insert",
        [
            (
                "aaaaaaaa",
                "SIGNAL",
                '{"signal_name": "go", "timeout_seconds": 10000000000000}',
                None,
                None,
            )
        ],
        "node aaaaaaaa (SIGNAL): timeout_seconds must be a positive integer (at most 2147483647)",
    ),
    (
        "insert",
        [("aaaaaaaa", "SIGNAL", '{"signal_name": ""}', None, None)],
        "node aaaaaaaa (SIGNAL): query needs a non-empty signal_name",
    ),
    (
        "insert",
        [("aaaaaaaa", "WAIT_SCHEDULE", '{"cron_expr": "61 * * * *"}', None, None)],
        "Invalid cron expression '61 * * * *': ",
    ),
    (
        "insert",
        [
            (
                "aaaaaaaa",
                "BREAK",
                '{"break_value": null, "x": ' + "[" * 5000 + "]" * 5000 + "}",
                None,
                None,
            )
        ],
        "node aaaaaaaa (BREAK): query is JSON nested too deeply",
    ),
    # Gigantic: more nodes than a graph may have (counted over every row, reachable or not),
    # and a chain one level deeper than the limit.
    ("insert", "count", "Workflow exceeds maximum node count of 10000 (it has 10001 nodes)."),
    ("insert", "depth", "Graph exceeds maximum nesting depth of 256 (at node "),
]


def insert_big(c: Conn, iid: str, kind: str) -> None:
    """10,001 SQL nodes (one reachable), or 257 nested LOOPs around a SQL step."""
    with c.transaction():
        c.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by) "
            "VALUES (%s, '00000000', current_user::regrole)",
            (iid,),
        )
        if kind == "count":
            c.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by) "
                "SELECT lpad(to_hex(g), 8, '0'), %s, 'SQL', 'SELECT 1', current_user::regrole "
                "FROM generate_series(0, 10000) g",
                (iid,),
            )
        else:
            c.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, submitted_by) "
                "SELECT lpad(to_hex(g), 8, '0'), %s, CASE WHEN g = 257 THEN 'SQL' ELSE 'LOOP' END, "
                "CASE WHEN g = 257 THEN 'SELECT 1' END, "
                "CASE WHEN g < 257 THEN lpad(to_hex(g + 1), 8, '0') END, current_user::regrole "
                "FROM generate_series(0, 257) g",
                (iid,),
            )


def test_the_worker_fails_a_malformed_graph_with_a_clear_reason_and_carries_on(
    roles: Roles, conn: Conn, worker: WorkerThread
) -> None:
    """Never a crashed or stuck worker, never an instance left running: each instance fails
    with the reason in df.status/df.instance_info, and a normal instance still completes."""
    u = user(roles, "builder")
    other = start(u.conn, "'SELECT 1' ~> 'SELECT 2'")
    other_node = one(u.conn, "SELECT max(id) FROM df.nodes WHERE instance_id = %s", (other,))
    started: dict[str, str] = {}
    for k, (how, graph, expected) in enumerate(WORKER_FAILS):
        if how == "start":
            iid = start(u.conn, "%s", (graph,))
        else:
            iid = f"{k:08x}"
            if isinstance(graph, str):
                insert_big(u.conn, iid, graph)
            else:
                rows = [
                    tuple(v.replace("{other}", other_node) if isinstance(v, str) else v for v in r)
                    for r in graph
                ]
                insert_graph(u.conn, iid, rows)
        started[iid] = expected.replace("{other}", other_node)
    problems = []
    for iid, expected in started.items():
        status = wait_for(u.conn, iid)
        output = output_of_role(u, iid) or ""
        if status != "failed" or expected not in output:
            problems.append(f"{iid}: {status} {output[:300]!r}, expected {expected!r}")
        if fibers_of(conn, iid):
            problems.append(f"{iid}: fibers left")
    assert problems == []
    assert wait_for(u.conn, other) == "completed"
    assert wait_for(u.conn, start(u.conn, "'SELECT 1'")) == "completed"


# ===========================================================================================
# 5. Gigantic and deeply nested input


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_a_50_mb_statement_runs_or_is_refused_clearly(roles: Roles, worker: WorkerThread) -> None:
    """Through df.start (which may cap a workflow's size) and inserted directly (no cap
    there but the worker's): the statement runs, or the refusal says what is too big."""
    u = user(roles, "big")
    text = "SELECT length('" + "x" * 50_000_000 + "') AS n"
    expected = {"rows": [{"n": 50_000_000}], "row_count": 1}
    try:
        iid = start(u.conn, "%s", (text,))
    except errors.ProgramLimitExceeded as exc:
        assert "50000022 bytes" in str(exc.diag.message_primary)
    else:
        assert wait_for(u.conn, iid, 60) == "completed", output_of_role(u, iid)
        assert one(u.conn, "SELECT df.result(%s)::jsonb", (iid,)) == expected
    insert_graph(u.conn, "0000b19b", [("0000000a", "SQL", text, None, None)])
    status = wait_for(u.conn, "0000b19b", 60)
    if status == "completed":
        assert one(u.conn, "SELECT df.result('0000b19b')::jsonb") == expected
    else:
        assert "50000022" in str(output_of_role(u, "0000b19b"))


def test_a_deeply_nested_break_value_is_kept_as_a_string(
    roles: Roles, worker: WorkerThread
) -> None:
    """PostgreSQL reads JSON thousands of levels deep, Python a thousand: such a break value
    cannot be checked, so it is kept as a string rather than failing the worker."""
    u = user(roles, "deep")
    iid = start(u.conn, "df.loop(df.break(%s))", (deep(3000),))
    assert wait_for(u.conn, iid) == "completed", output_of_role(u, iid)
    assert one(u.conn, "SELECT df.result(%s)::jsonb", (iid,)) == deep(3000)
    assert wait_for(u.conn, start(u.conn, "'SELECT 1'")) == "completed"


def test_a_sleep_longer_than_a_timestamp_sleeps_until_cancelled(
    roles: Roles, conn: Conn, worker: WorkerThread
) -> None:
    u = user(roles, "sleeper")
    iid = start(u.conn, "df.sleep(9223372036854775807) ~> 'SELECT 1'")
    wait_until(
        lambda: (
            one(
                conn,
                "SELECT count(*) FROM df._fibers WHERE instance_id = %s AND run_at > now() + "
                "interval '900 years'",
                (iid,),
            )
            == 1
        )
    )
    assert one(u.conn, "SELECT df.status(%s)", (iid,)) == "running"
    assert wait_for(u.conn, start(u.conn, "'SELECT 1'")) == "completed"
    u.conn.execute("SELECT df.cancel(%s)", (iid,))
    assert fibers_of(conn, iid) == 0


def test_a_step_result_nested_too_deeply_fails_its_step(roles: Roles, worker: WorkerThread) -> None:
    u = user(roles, "deep")
    iid = start(u.conn, "%s", (f"SELECT '{deep(3000)}'::jsonb AS v",))
    time.sleep(3)
    assert one(u.conn, "SELECT df.status(%s)", (iid,)) == "failed"
    assert "nested too deeply" in str(output_of_role(u, iid))


def test_a_signal_payload_nested_too_deeply_stalls_nothing(
    roles: Roles, worker: WorkerThread
) -> None:
    u = user(roles, "deep")
    iid = start(u.conn, "df.wait_for_signal('go') |=> 's' ~> 'SELECT 1'")
    wait_until_waiting(u, iid)
    u.conn.execute("SELECT df.signal(%s, 'go', %s)", (iid, deep(3000)))
    ok = start(u.conn, "'SELECT 1'")
    time.sleep(3)
    assert one(u.conn, "SELECT df.status(%s)", (ok,)) == "completed"
    # (Taken in a batch with other fibers, it may fail — as an internal error of the worker.)
    assert one(u.conn, "SELECT df.status(%s)", (iid,)) in ("completed", "failed")
    assert "internal error" not in str(output_of_role(u, iid))


def test_an_error_that_cuts_a_character_in_two_is_still_text(roles: Roles) -> None:
    """PostgreSQL's lexer names an unexpected character by its first byte: df.explain's
    report of such an expression must still be text a client can decode."""
    u = user(roles, "utf")
    explained = one(u.conn, "SELECT df.explain(%s)", ("~> 0\x80",))
    assert explained.startswith("Failed to evaluate expression: ")
    assert "\\302" in explained
    # (A message that is valid text stays as it is.)
    assert one(u.conn, "SELECT df.explain(%s)", ("df.nope('é')",)) == (
        "Failed to evaluate expression: function df.nope(unknown) does not exist"
    )


def test_gigantic_graphs_built_with_the_dsl_get_the_spec_texts(roles: Roles) -> None:
    """SPEC §2.1's limits, reached through the operators rather than hand-written JSON (the
    DSL does not check them; df.start does, with the exact texts)."""
    u = user(roles, "big")
    build = (
        "DO $$ DECLARE wf text := 'SELECT 0'; BEGIN "
        "FOR i IN 1 .. {n} LOOP wf := {grow}; END LOOP; PERFORM df.start(wf); END $$"
    )
    # Doubled 13 times: 16,383 nodes, 13 levels deep; 12 times: 8,191.
    with pytest.raises(errors.RaiseException) as caught:
        u.conn.execute(build.format(n=13, grow="wf & wf"))
    assert caught.value.diag.message_primary == (
        "Workflow exceeds maximum node count of 10000. Split it into several workflows "
        "(for example, one instance per batch)."
    )
    u.conn.execute(build.format(n=12, grow="wf & wf"))
    # A step inside 257 loops is 257 edges below the root.
    with pytest.raises(errors.RaiseException) as caught:
        u.conn.execute(build.format(n=257, grow="@> wf"))
    assert caught.value.diag.message_primary == (
        "Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into "
        "multiple instances."
    )
    u.conn.execute(build.format(n=256, grow="@> wf"))
    assert one(u.conn, "SELECT count(*) FROM df.instances") == 2


# ===========================================================================================
# 6. Role names that need quoting


@pytest.mark.parametrize("label", ["Mixed Case", "quo'te", 'dq"uote', "select", "semi;colon"])
def test_a_role_whose_name_needs_quoting_runs_workflows(
    roles: Roles, conn: Conn, worker: WorkerThread, label: str
) -> None:
    """Its name reaches SQL only as an identifier: steps (described under SET ROLE, run
    through its step function), its variables, signals and monitoring all work."""
    u = user(roles, label)
    assert one(u.conn, "SELECT df.setvar('k', 'v')") == "OK"
    iid = start(
        u.conn,
        "'SELECT current_user AS who, ''{k}'' AS k' |=> 'me' "
        "~> (df.wait_for_signal('go') |=> 'sig') "
        "~> 'SELECT $me.who AS who, ($sig.data::jsonb->>''n'')::int AS n'",
    )
    wait_until_waiting(u, iid)
    assert one(u.conn, "SELECT df.signal(%s, 'go', '{\"n\": 7}')", (iid,)) is not None
    assert wait_for(u.conn, iid) == "completed", output_of_role(u, iid)
    assert json.loads(one(u.conn, "SELECT df.result(%s)", (iid,))) == {
        "rows": [{"who": u.name, "n": 7}],
        "row_count": 1,
    }
    assert one(u.conn, "SELECT count(*) FROM df.list_instances()") == 1
    assert one(conn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == (
        one(conn, "SELECT quote_ident(%s)", (u.name,))
    )


# ===========================================================================================
# 7. Steps that reach into the worker's session


@pytest.mark.parametrize(
    "statement",
    [
        "DEALLOCATE ALL",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
        "DISCARD PLANS",
        "SELECT pg_advisory_lock(1)",
        "SET statement_timeout = 1",
    ],
)
def test_a_step_cannot_disturb_the_workers_session(
    roles: Roles, worker: WorkerThread, statement: str
) -> None:
    """What a step does to the session it runs in (dropping prepared statements, taking a
    lock, changing settings) neither fails the worker's own statements nor reaches the steps
    that run after it on the same connection."""
    u = user(roles, "session")
    before = [start(u.conn, "'SELECT 1' ~> 'SELECT 2'") for _ in range(8)]
    iid, status = run(u.conn, f"$x${statement}$x$ ~> 'SELECT pg_sleep(0.01)'")
    assert status == "completed", output_of_role(u, iid)
    # (DISCARD ALL refuses to run in a transaction block, so it can be no step at all.)
    iid, status = run(u.conn, "'DISCARD ALL'")
    assert (status, output_of_role(u, iid)) == (
        "failed",
        "SQL execution failed: error returned from database: "
        "DISCARD ALL cannot run inside a transaction block",
    )
    after = [start(u.conn, "'SELECT 1' ~> 'SELECT pg_sleep(0.01)'") for _ in range(16)]
    for other in before + after:
        assert wait_for(u.conn, other) == "completed", output_of_role(u, other)
