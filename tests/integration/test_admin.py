"""Administration: per-role variables, df.version, df.target_database, granting and revoking."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from pg_durable import __version__, schema
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one, raises_exactly

Conn = psycopg.Connection[Any]

DENIED_SCHEMA = "permission denied for schema df"


def notices(c: Conn) -> list[str]:
    """Collect the NOTICE messages ``c`` receives from now on."""
    got: list[str] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "NOTICE" and diag.message_primary is not None:
            got.append(diag.message_primary)

    c.add_notice_handler(handler)
    return got


def can_use_df(c: Conn) -> None:
    """The minimal proof that ``c``'s role may use pg_durable."""
    iid = one(c, "SELECT df.start('SELECT 1')")
    assert one(c, "SELECT df.status(%s)", (iid,)) == "pending"


# -------------------------------------------------------------------------------------------
# Variables


def test_vars_round_trip(roles: Roles) -> None:
    c = roles.connect(roles.create("vars", grant=True))
    assert one(c, "SELECT df.setvar('greeting', 'hello')") == "OK"
    assert one(c, "SELECT df.getvar('greeting')") == "hello"
    assert one(c, "SELECT df.setvar('greeting', 'bonjour')") == "OK"
    assert one(c, "SELECT df.getvar('greeting')") == "bonjour"
    assert one(c, "SELECT df.setvar('other', 'x')") == "OK"
    assert one(c, "SELECT count(*) FROM df.vars") == 2
    assert one(c, "SELECT df.unsetvar('greeting')") == "OK"
    assert one(c, "SELECT df.getvar('greeting')") is None
    assert one(c, "SELECT df.unsetvar('never-set')") == "OK"
    assert one(c, "SELECT df.getvar('other')") == "x"
    assert one(c, "SELECT df.clearvars()") == "OK"
    assert one(c, "SELECT df.getvar('other')") is None
    assert one(c, "SELECT count(*) FROM df.vars") == 0


def test_var_functions_are_strict(conn: Conn) -> None:
    assert one(conn, "SELECT df.setvar('a', NULL)") is None
    assert one(conn, "SELECT df.setvar(NULL, 'x')") is None
    assert one(conn, "SELECT df.getvar(NULL)") is None
    assert one(conn, "SELECT df.unsetvar(NULL)") is None
    assert one(conn, "SELECT count(*) FROM df.vars") == 0


def test_vars_are_per_role(roles: Roles) -> None:
    a = roles.connect(roles.create("va", grant=True))
    b = roles.connect(roles.create("vb", grant=True))
    a.execute("SELECT df.setvar('k', 'from a')")
    b.execute("SELECT df.setvar('k', 'from b')")
    b.execute("SELECT df.setvar('only_b', '1')")
    assert one(a, "SELECT df.getvar('k')") == "from a"
    assert one(b, "SELECT df.getvar('k')") == "from b"
    assert one(a, "SELECT df.getvar('only_b')") is None
    assert a.execute("SELECT name, value FROM df.vars").fetchall() == [("k", "from a")]
    a.execute("SELECT df.clearvars()")
    assert one(a, "SELECT df.getvar('k')") is None
    assert one(b, "SELECT df.getvar('k')") == "from b"
    a.execute("SELECT df.unsetvar('only_b')")
    assert one(b, "SELECT df.getvar('only_b')") == "1"


def test_superuser_getvar_reads_only_its_own(conn: Conn, roles: Roles) -> None:
    user = roles.create("vu", grant=True)
    u = roles.connect(user)
    u.execute("SELECT df.setvar('k', 'user value')")
    assert one(conn, "SELECT df.getvar('k')") is None
    conn.execute("SELECT df.setvar('k', 'superuser value')")
    assert one(conn, "SELECT df.getvar('k')") == "superuser value"
    assert one(u, "SELECT df.getvar('k')") == "user value"
    # The superuser bypasses RLS on the table itself, but the functions touch its rows only.
    assert one(conn, "SELECT count(*) FROM df.vars") == 2
    conn.execute("SELECT df.unsetvar('k')")
    assert one(u, "SELECT df.getvar('k')") == "user value"
    conn.execute("SELECT df.setvar('k', 'again')")
    conn.execute("SELECT df.clearvars()")
    assert one(u, "SELECT df.getvar('k')") == "user value"
    assert one(conn, "SELECT owner::text FROM df.vars") == user


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "SELECT df.setvar('a', '1')",
            "df.setvar() cannot be called inside a workflow - "
            "set variables before starting the workflow",
        ),
        (
            "SELECT df.unsetvar('a')",
            "df.unsetvar() cannot be called inside a workflow - "
            "unset variables before starting the workflow",
        ),
        (
            "SELECT df.clearvars()",
            "df.clearvars() cannot be called inside a workflow - "
            "clear variables before starting the workflow",
        ),
    ],
)
def test_var_helpers_refuse_inside_a_workflow(conn: Conn, call: str, message: str) -> None:
    conn.execute("SELECT df.setvar('a', 'kept')")
    conn.execute("SET df.in_workflow = 'true'")
    with raises_exactly(errors.RaiseException, message):
        conn.execute(call)
    # Reading is allowed in a workflow, and nothing was changed.
    assert one(conn, "SELECT df.getvar('a')") == "kept"
    conn.execute("SET df.in_workflow = 'false'")
    assert one(conn, call) == "OK"


@pytest.mark.parametrize(
    ("expr", "helper"),
    [
        ("df.setvar('a', '1') ~> 'SELECT 1'", "df.setvar()"),
        ("'SELECT 1' ~> df.setvar('a', '1')", "df.setvar()"),
        ("df.seq(df.unsetvar('a'), 'SELECT 1')", "df.unsetvar()"),
        ("df.clearvars() ~> 'SELECT 1'", "df.clearvars()"),
        ("df.loop(df.setvar('a', '1'))", "df.setvar()"),
        ("df.setvar('a', '1') |=> 'x'", "df.setvar()"),
    ],
)
def test_var_helpers_cannot_be_workflow_steps(conn: Conn, expr: str, helper: str) -> None:
    message = f"{helper} cannot be used as a workflow step. Call {helper} before df.start()."
    with raises_exactly(errors.RaiseException, message):
        conn.execute(f"SELECT {expr}")
    # The mark lasts for one statement only: composing afterwards is fine.
    conn.execute("SELECT df.setvar('a', '1')")
    assert json.loads(one(conn, "SELECT 'SELECT 1' ~> 'SELECT 2'"))["node_type"] == "THEN"


def test_a_function_may_set_variables_and_then_start_a_workflow(conn: Conn) -> None:
    """One statement (a DO block) may call df.setvar and then df.start: only the helper's own
    return value is refused as a step."""
    conn.execute(
        "DO $$ BEGIN PERFORM df.setvar('table_name', 'orders'); "
        "PERFORM df.start('SELECT 1' ~> 'SELECT 2', 'from a DO block'); END $$"
    )
    assert one(conn, "SELECT count(*) FROM df.instances WHERE label = 'from a DO block'") == 1


def test_vars_are_snapshotted_at_start(conn: Conn, roles: Roles) -> None:
    u = roles.connect(roles.create("snap", grant=True))
    u.execute("SELECT df.setvar('table_name', 'orders')")
    u.execute("SELECT df.setvar('n', '3')")
    iid = one(u, "SELECT df.start('SELECT count(*) FROM {table_name}')")
    u.execute("SELECT df.setvar('table_name', 'changed later')")
    conn.execute("SELECT df.setvar('table_name', 'superuser var')")
    snapshot = one(conn, "SELECT vars FROM df._instance_state WHERE instance_id = %s", (iid,))
    assert snapshot == {"table_name": "orders", "n": "3"}


# -------------------------------------------------------------------------------------------
# df.version, df.target_database


def test_version_names_the_package_version(conn: Conn, roles: Roles) -> None:
    pattern = rf"^{re.escape(__version__)} \(built \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$"
    assert re.match(pattern, one(conn, "SELECT df.version()"))
    u = roles.connect(roles.create("ver", grant=True))
    assert one(u, "SELECT df.version()") == one(conn, "SELECT df.version()")


def test_target_database_defaults_to_the_current_database(conn: Conn, db_name: str) -> None:
    assert one(conn, "SELECT df.target_database()") == db_name
    conn.execute("SET pg_durable.database = 'elsewhere'")
    assert one(conn, "SELECT df.target_database()") == "elsewhere"
    conn.execute("SET pg_durable.database = ''")
    assert one(conn, "SELECT df.target_database()") == db_name


# -------------------------------------------------------------------------------------------
# Granting and revoking


def test_grant_usage_lets_a_role_use_pg_durable(conn: Conn, roles: Roles) -> None:
    user = roles.create("user")
    got = notices(conn)
    conn.execute("SELECT df.grant_usage(%s)", (user,))
    assert got == [f'pg_durable: granted df usage privileges to "{user}"']
    u = roles.connect(user)

    assert one(u, "SELECT df.setvar('v', '1')") == "OK"
    iid = one(u, "SELECT df.start('SELECT {v}' ~> 'SELECT 2', label => 'mine')")
    assert one(conn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == user
    assert one(u, "SELECT df.status(%s)", (iid,)) == "pending"
    assert one(u, "SELECT df.result(%s)", (iid,)) is None
    listed = u.execute(
        "SELECT instance_id, label, status, execution_count FROM df.list_instances()"
    ).fetchall()
    assert listed == [(iid, "mine", "pending", 1)]
    paged = u.execute("SELECT instance_id FROM df.list_instances(NULL, 10, 'mine')").fetchall()
    assert paged == [(iid,)]
    info = u.execute(
        "SELECT instance_id, function_version, status FROM df.instance_info(%s)", (iid,)
    ).fetchall()
    assert info == [(iid, __version__, "pending")]
    assert u.execute("SELECT count(*) FROM df.instance_executions(%s)", (iid,)).fetchall() == [(1,)]
    nodes = u.execute(
        "SELECT node_type, inferred_status FROM df.instance_nodes(%s) ORDER BY node_type",
        (iid,),
    ).fetchall()
    assert nodes == [("SQL", "pending"), ("SQL", "pending"), ("THEN", "pending")]
    assert u.execute("SELECT count(*) FROM df.instance_nodes(%s, 5)", (iid,)).fetchall() == [(3,)]
    assert one(u, "SELECT df.cancel(%s)", (iid,)) == f"Instance {iid} cancelled: Cancelled by user"
    assert one(u, "SELECT df.status(%s)", (iid,)) == "cancelled"
    assert one(u, "SELECT df.await_instance(%s, 1)", (iid,)) == "cancelled"
    assert one(u, "SELECT df.run()") == "Triggered run for all pending instances"
    # Starting in an explicit transaction that rolls back leaves nothing.
    with u.transaction(force_rollback=True):
        u.execute("SELECT df.start('SELECT 3')")
    assert one(u, "SELECT count(*) FROM df.instances") == 1


def test_granted_roles_see_only_their_own_instances(conn: Conn, roles: Roles) -> None:
    a = roles.connect(roles.create("own_a", grant=True))
    b = roles.connect(roles.create("own_b", grant=True))
    ia = one(a, "SELECT df.start('SELECT 1')")
    ib = one(b, "SELECT df.start('SELECT 1')")
    assert a.execute("SELECT instance_id FROM df.list_instances()").fetchall() == [(ia,)]
    assert one(a, "SELECT df.status(%s)", (ib,)) is None
    assert a.execute("SELECT instance_id FROM df._instance_state").fetchall() == [(ia,)]
    assert a.execute("SELECT * FROM df.instance_info(%s)", (ib,)).fetchall() == []
    with raises_exactly(errors.RaiseException, f"Instance not found or access denied: {ib}"):
        a.execute("SELECT df.cancel(%s)", (ib,))
    assert one(conn, "SELECT status FROM df.instances WHERE id = %s", (ib,)) == "pending"


def test_column_grants_limit_direct_writes(roles: Roles) -> None:
    u = roles.connect(roles.create("cols", grant=True))
    iid = one(u, "SELECT df.start('SELECT 1')")
    with pytest.raises(errors.InsufficientPrivilege):
        u.execute("UPDATE df.instances SET label = 'x' WHERE id = %s", (iid,))
    with pytest.raises(errors.InsufficientPrivilege):
        u.execute("UPDATE df.nodes SET status = 'completed' WHERE instance_id = %s", (iid,))
    with pytest.raises(errors.InsufficientPrivilege):
        u.execute("DELETE FROM df.instances WHERE id = %s", (iid,))
    with pytest.raises(errors.InsufficientPrivilege):
        u.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by, status) "
            "VALUES ('0000000a', '0000000b', current_user::regrole, 'completed')"
        )
    with pytest.raises(errors.InsufficientPrivilege):
        u.execute("UPDATE df._instance_state SET output = 'forged'")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT df.start('SELECT 1')",
        "SELECT df.status('0000000a')",
        "SELECT df.result('0000000a')",
        "SELECT * FROM df.list_instances()",
        "SELECT * FROM df.instance_info('0000000a')",
        "SELECT * FROM df.instance_nodes('0000000a')",
        "SELECT df.cancel('0000000a')",
        "SELECT df.await_instance('0000000a')",
        "SELECT df.setvar('a', '1')",
        "SELECT df.getvar('a')",
        "SELECT df.clearvars()",
        "SELECT df.version()",
        "SELECT df.target_database()",
        "SELECT df.sql('SELECT 1')",
        "SELECT df.grant_usage('x')",
        "SELECT 'SELECT 1' ~> 'SELECT 2'",
        "SELECT * FROM df.instances",
        "SELECT * FROM df.vars",
        "SELECT * FROM df.workers",
    ],
)
def test_an_ungranted_role_is_denied(roles: Roles, statement: str) -> None:
    c = roles.connect(roles.create("nogrant"))
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        c.execute(statement)


def test_nothing_is_granted_to_public(conn: Conn) -> None:
    public_schema_acl = conn.execute(
        "SELECT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE n.nspname IN ('df', 'df_exec') AND a.grantee = 0"
    ).fetchall()
    assert public_schema_acl == []
    public_table_acl = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.relnamespace IN ('df'::regnamespace, 'df_exec'::regnamespace) "
        "AND a.grantee = 0"
    ).fetchall()
    assert public_table_acl == []
    closed = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.oid IN ('df.grant_usage(text,boolean,boolean)'::regprocedure, "
        "'df.revoke_usage(text)'::regprocedure, 'df.metrics()'::regprocedure) "
        "AND NOT has_function_privilege('public', p.oid, 'EXECUTE')"
    ).fetchall()
    assert len(closed) == 3
    # df_exec: nobody but its owner holds any privilege.
    acl = conn.execute(
        "SELECT a.grantee, n.nspowner FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE n.nspname = 'df_exec'"
    ).fetchall()
    assert all(grantee == owner for grantee, owner in acl)


def test_a_granted_role_gets_nothing_internal(conn: Conn, roles: Roles) -> None:
    user = roles.create("internal", grant=True)
    u = roles.connect(user)
    for statement in [
        "SELECT * FROM df._fibers",
        "SELECT * FROM df._workers",
        "SELECT * FROM df.workers",
        "SELECT * FROM df.metrics()",
        "SELECT df.grant_usage('x')",
        "SELECT df.revoke_usage('x')",
    ]:
        with pytest.raises(errors.InsufficientPrivilege):
            u.execute(statement)
    # No function closed to PUBLIC (the engine's, the admin ones) is open to a plain user.
    opened = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = 'df'::regnamespace "
        "AND NOT has_function_privilege('public', p.oid, 'EXECUTE') "
        "AND has_function_privilege(%s, p.oid, 'EXECUTE')",
        (user,),
    ).fetchall()
    assert opened == []
    assert one(conn, "SELECT has_schema_privilege(%s, 'df_exec', 'USAGE')", (user,)) is False
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema df_exec"):
        u.execute("CREATE FUNCTION df_exec.f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema df"):
        u.execute("CREATE TABLE df.mine (x int)")


def test_revoke_usage_takes_access_away(conn: Conn, roles: Roles) -> None:
    user = roles.create("revoked", grant=True)
    u = roles.connect(user)
    can_use_df(u)
    got = notices(conn)
    conn.execute("SELECT df.revoke_usage(%s)", (user,))
    me = one(conn, "SELECT current_user")
    assert got == [f'pg_durable: revoked df usage privileges granted by "{me}" from "{user}"']
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        u.execute("SELECT df.status('0000000a')")
    left = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.relnamespace = 'df'::regnamespace AND a.grantee = %s::regrole",
        (f'"{user}"',),
    ).fetchall()
    assert left == []
    col_left = conn.execute(
        "SELECT attrelid::regclass::text, attname FROM pg_attribute at, aclexplode(at.attacl) a "
        "WHERE at.attrelid IN ('df.instances'::regclass, 'df.nodes'::regclass) "
        "AND a.grantee = %s::regrole",
        (f'"{user}"',),
    ).fetchall()
    assert col_left == []
    # Granting again restores access; revoking twice is harmless.
    conn.execute("SELECT df.grant_usage(%s)", (user,))
    can_use_df(u)
    conn.execute("SELECT df.revoke_usage(%s)", (user,))
    conn.execute("SELECT df.revoke_usage(%s)", (user,))


def test_grant_usage_is_additive(conn: Conn, roles: Roles) -> None:
    admin = roles.create("additive", with_grant=True)
    a = roles.connect(admin)
    a.execute("SELECT * FROM df.metrics()")
    # A plain grant afterwards does not take the admin functions away.
    conn.execute("SELECT df.grant_usage(%s)", (admin,))
    a.execute("SELECT * FROM df.metrics()")


def test_unknown_role_and_null(conn: Conn) -> None:
    with pytest.raises(errors.UndefinedObject, match='role "no_such_role_x" does not exist'):
        conn.execute("SELECT df.grant_usage('no_such_role_x')")
    with pytest.raises(errors.UndefinedObject, match='role "no_such_role_x" does not exist'):
        conn.execute("SELECT df.revoke_usage('no_such_role_x')")
    with pytest.raises(errors.RaiseException, match="role name must not be NULL"):
        conn.execute("SELECT df.grant_usage(NULL)")
    with pytest.raises(errors.RaiseException, match="role name must not be NULL"):
        conn.execute("SELECT df.revoke_usage(NULL)")


@pytest.mark.parametrize("label", ["Mixed Case", "has space", "quo'te", 'dq"uote', "select"])
def test_role_names_that_need_quoting(conn: Conn, roles: Roles, label: str) -> None:
    user = roles.create(label)
    got = notices(conn)
    conn.execute("SELECT df.grant_usage(%s)", (user,))
    u = roles.connect(user)
    can_use_df(u)
    assert one(u, "SELECT df.setvar('k', 'v')") == "OK"
    assert one(u, "SELECT df.getvar('k')") == "v"
    conn.execute("SELECT df.revoke_usage(%s)", (user,))
    me = one(conn, "SELECT current_user")
    assert got == [
        f'pg_durable: granted df usage privileges to "{user}"',
        f'pg_durable: revoked df usage privileges granted by "{me}" from "{user}"',
    ]
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        u.execute("SELECT df.getvar('k')")


def test_public_means_every_role(conn: Conn, roles: Roles) -> None:
    u = roles.connect(roles.create("via_public"))
    conn.execute("SELECT df.grant_usage('public')")
    can_use_df(u)
    conn.execute("SELECT df.revoke_usage('public')")
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        u.execute("SELECT df.status('0000000a')")


def test_a_role_with_execute_but_no_grant_options_cannot_grant(conn: Conn, roles: Roles) -> None:
    admin = roles.create("half_admin", grant=True)
    target = roles.create("half_target")
    conn.execute(
        sql.SQL(
            "GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), "
            "df.revoke_usage(text) TO {}"
        ).format(sql.Identifier(admin))
    )
    a = roles.connect(admin)
    with pytest.raises(
        errors.InsufficientPrivilege,
        match=re.escape(
            f'permission denied to grant df usage: role "{admin}" does not hold USAGE ON SCHEMA df '
            "WITH GRANT OPTION"
        ),
    ):
        a.execute("SELECT df.grant_usage(%s)", (target,))
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied to revoke df usage"):
        a.execute("SELECT df.revoke_usage(%s)", (target,))


def test_with_grant_makes_delegated_admins(conn: Conn, roles: Roles) -> None:
    admin = roles.create("admin", with_grant=True)
    a = roles.connect(admin)
    assert a.execute("SELECT * FROM df.metrics()").fetchone() is not None

    # The admin grants usage onwards, and can make further admins.
    user = roles.create("deleg_user")
    sub = roles.create("sub_admin")
    got = notices(a)
    a.execute("SELECT df.grant_usage(%s)", (user,))
    a.execute("SELECT df.grant_usage(%s, with_grant => true)", (sub,))
    assert got == [
        f'pg_durable: granted df usage privileges to "{user}"',
        f'pg_durable: granted df usage privileges to "{sub}"',
    ]
    u = roles.connect(user)
    can_use_df(u)
    s = roles.connect(sub)
    sub_user = roles.create("sub_user")
    s.execute("SELECT df.grant_usage(%s)", (sub_user,))
    su = roles.connect(sub_user)
    can_use_df(su)
    # A plain user cannot grant.
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
        u.execute("SELECT df.grant_usage(%s)", (sub_user,))

    # The admin revokes what it granted.
    got.clear()
    a.execute("SELECT df.revoke_usage(%s)", (user,))
    assert got == [f'pg_durable: revoked df usage privileges granted by "{admin}" from "{user}"']
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        u.execute("SELECT df.status('0000000a')")

    # Revoking an admin takes away what it handed on as well (CASCADE).
    conn.execute("SELECT df.revoke_usage(%s)", (admin,))
    for c in (a, s, su):
        with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
            c.execute("SELECT df.status('0000000a')")


def test_revoke_only_removes_the_callers_grants(conn: Conn, roles: Roles) -> None:
    admin = roles.create("rv_admin", with_grant=True)
    user = roles.create("rv_user", grant=True)  # granted by the superuser
    a = roles.connect(admin)
    a.execute("SELECT df.grant_usage(%s)", (user,))  # and by the admin
    a.execute("SELECT df.revoke_usage(%s)", (user,))
    can_use_df(roles.connect(user))
    # Self-revoke is a harmless no-op.
    a.execute("SELECT df.revoke_usage(%s)", (admin,))
    can_use_df(a)
    a.execute("SELECT * FROM df.metrics()")


HTTP_FUNCTIONS = (
    "df.http(text,text,text,jsonb,integer)",
    "df.http_multipart(text,text,jsonb,jsonb,integer)",
)


def test_include_http_needs_the_http_functions(conn: Conn, roles: Roles) -> None:
    """An installation whose HTTP functions were dropped (to take HTTP away for good) says so
    instead of granting half of what was asked."""
    user = roles.create("nohttp")
    for f in HTTP_FUNCTIONS:
        conn.execute(f"DROP FUNCTION {f}")
    with pytest.raises(
        errors.UndefinedFunction,
        match=re.escape(
            "df.grant_usage: include_http => true, but "
            "df.http(text,text,text,jsonb,integer), "
            "df.http_multipart(text,text,jsonb,jsonb,integer) "
            "does not exist in this installation of pg_durable"
        ),
    ):
        conn.execute("SELECT df.grant_usage(%s, include_http => true)", (user,))
    # Nothing was granted.
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        roles.connect(user).execute("SELECT df.status('0000000a')")


def has_http(conn: Conn, role: str) -> list[bool]:
    return [
        one(conn, "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, f))
        for f in HTTP_FUNCTIONS
    ]


def test_include_http(conn: Conn, roles: Roles) -> None:
    user = roles.create("http_user")
    plain = roles.create("http_plain", grant=True)
    conn.execute("SELECT df.grant_usage(%s, include_http => true)", (user,))
    assert has_http(conn, user) == [True, True]
    assert has_http(conn, plain) == [False, False]
    u = roles.connect(user)
    u.execute("SET pg_durable.http_policy = 'allow-all'")
    assert one(u, "SELECT df.http('https://example.org')").startswith('{"node_type":"HTTP"')
    with raises_exactly(errors.InsufficientPrivilege, "permission denied for function http"):
        roles.connect(plain).execute("SELECT df.http('https://example.org')")
    conn.execute("SELECT df.revoke_usage(%s)", (user,))
    assert has_http(conn, user) == [False, False]


def test_delegated_http_needs_http_with_grant_option(conn: Conn, roles: Roles) -> None:
    admin = roles.create("adm_nohttp", with_grant=True)
    http_admin = roles.create("adm_http")
    conn.execute(
        "SELECT df.grant_usage(%s, include_http => true, with_grant => true)", (http_admin,)
    )
    target = roles.create("http_target")
    a = roles.connect(admin)
    with pytest.raises(
        errors.InsufficientPrivilege,
        match=re.escape(
            f'permission denied to grant df usage: role "{admin}" does not hold EXECUTE ON '
            "FUNCTION df.http(text,text,text,jsonb,integer) WITH GRANT OPTION"
        ),
    ):
        a.execute("SELECT df.grant_usage(%s, include_http => true)", (target,))
    assert has_http(conn, target) == [False, False]
    # Holding EXECUTE without the grant option is not enough either.
    conn.execute(
        sql.SQL(
            "GRANT EXECUTE ON FUNCTION df.http(text,text,text,jsonb,integer), "
            "df.http_multipart(text,text,jsonb,jsonb,integer) TO {}"
        ).format(sql.Identifier(admin))
    )
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied to grant df usage"):
        a.execute("SELECT df.grant_usage(%s, include_http => true)", (target,))
    # An admin without HTTP can still revoke (the HTTP revokes are skipped for it).
    a.execute("SELECT df.grant_usage(%s)", (target,))
    a.execute("SELECT df.revoke_usage(%s)", (target,))

    h = roles.connect(http_admin)
    h.execute("SELECT df.grant_usage(%s, include_http => true)", (target,))
    assert has_http(conn, target) == [True, True]
    h.execute("SELECT df.revoke_usage(%s)", (target,))
    assert has_http(conn, target) == [False, False]


@pytest.fixture
def owned_db(conn: Conn, roles: Roles, db_name: str) -> Iterator[tuple[str, str]]:
    """A database owned by a plain role that installed the df schema itself (as on managed
    PostgreSQL): (database name, owner role)."""
    owner = roles.create("installer")
    name = f"{db_name}_owned"
    conn.execute(
        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
    )
    try:
        schema.install(roles.dsn(owner, name))
        yield name, owner
    finally:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_a_non_superuser_owner_can_grant(roles: Roles, owned_db: tuple[str, str]) -> None:
    name, owner = owned_db
    o = roles.connect(owner, name)
    assert one(o, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    admin = roles.create("owned_admin")
    user = roles.create("owned_user")
    o.execute("SELECT df.grant_usage(%s, with_grant => true)", (admin,))
    roles.connect(admin, name).execute("SELECT df.grant_usage(%s)", (user,))
    u = roles.connect(user, name)
    can_use_df(u)
    o.execute("SELECT df.revoke_usage(%s)", (admin,))
    with raises_exactly(errors.InsufficientPrivilege, DENIED_SCHEMA):
        u.execute("SELECT df.status('0000000a')")
