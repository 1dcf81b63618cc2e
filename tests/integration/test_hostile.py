"""Hostile input: every attempt to break in must fail safely (STYLE.md, "hostile input").

A granted, non-superuser role tries to read or change another role's instances, to forge
rows, to inject SQL through values that substitution splices into steps, and to feed the
worker hand-built or oversized graphs. Each test states what must hold afterwards: the other
role's data unchanged, no table dropped, the instance failed with a clear reason, the worker
still serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

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
