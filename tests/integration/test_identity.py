"""Steps run with exactly the submitter's privileges and cannot leave that role."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pg_durable import schema
from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.postgres import Server, role_dsn
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


@dataclass
class Submitter:
    """A LOGIN role that is not a superuser, granted df usage, and a connection as it."""

    name: str
    conn: Conn


@pytest.fixture
def alice(conn: Conn, dsn: str, db_name: str) -> Iterator[Submitter]:
    # Roles are cluster-wide: a name of this test's own, so tests never share one.
    name = f"alice_{db_name}"
    password = secrets.token_hex(8)
    conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    conn.execute("SELECT df.grant_usage(%s)", (name,))
    conn.execute("CREATE TABLE public.shared (v text)")
    conn.execute(f"GRANT SELECT, INSERT ON public.shared TO {name}")
    conn.execute("CREATE TABLE public.secret (v text)")
    conn.execute("INSERT INTO public.secret VALUES ('top')")
    with psycopg.connect(role_dsn(dsn, name, password), autocommit=True) as c:
        yield Submitter(name, c)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        conn.execute(f"DROP OWNED BY {name} CASCADE")
        conn.execute(f"DROP ROLE {name}")


def test_steps_run_as_the_submitter(alice: Submitter, worker: WorkerThread, conn: Conn) -> None:
    iid, status = run_workflow(alice.conn, "'SELECT current_user::text AS u'")
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"u": alice.name}], "row_count": 1}
    row = conn.execute(
        "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)
    ).fetchone()
    assert row == (alice.name,)


ESCAPES = [
    "RESET ROLE",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config(''role'', ''postgres'', false)",
    "DO $$ BEGIN RESET ROLE; END $$",
    "SELECT public.escape()",
    "SELECT public.definer_escape()",
]


@pytest.mark.parametrize("attempt", ESCAPES)
def test_a_step_cannot_leave_its_role(
    alice: Submitter, worker: WorkerThread, conn: Conn, attempt: str
) -> None:
    conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {alice.name}")
    alice.conn.execute(
        "CREATE FUNCTION public.escape() RETURNS text LANGUAGE plpgsql AS "
        "$$ BEGIN RESET ROLE; RETURN current_user; END $$"
    )
    alice.conn.execute(
        "CREATE FUNCTION public.definer_escape() RETURNS text LANGUAGE plpgsql "
        "SECURITY DEFINER AS $$ BEGIN SET ROLE postgres; RETURN current_user; END $$"
    )
    iid, status = run_workflow(
        alice.conn,
        f"'{attempt}' ~> 'INSERT INTO public.shared SELECT v FROM public.secret RETURNING v'",
    )
    assert status == "failed"
    assert "cannot set parameter" in output_of(conn, iid)
    assert conn.execute("SELECT count(*) FROM public.shared").fetchone() == (0,)


def test_missing_privilege_is_an_ordinary_permission_error(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    iid, status = run_workflow(alice.conn, "'SELECT v FROM public.secret'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        "SQL execution failed: error returned from database: permission denied for table secret"
    )


def test_submitter_cannot_reach_its_step_function(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    run_workflow(alice.conn, "'SELECT 1'")
    row = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'df_exec' AND p.proowner = %s::regrole",
        (alice.name,),
    ).fetchone()
    assert row is not None
    signature = row[0]
    function = signature.split("(")[0]
    for statement in (
        f"ALTER FUNCTION {signature} SECURITY INVOKER",
        f"CREATE OR REPLACE FUNCTION {function}(sql text, r boolean) RETURNS SETOF json "
        "LANGUAGE sql AS 'SELECT NULL::json'",
        f"SELECT {function}('SELECT 1', true)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.conn.execute(statement)


def test_superuser_instances_are_refused_by_the_worker_when_disabled(
    conn: Conn, db_name: str, start_worker: Callable[..., WorkerThread]
) -> None:
    conn.execute(f'ALTER DATABASE "{db_name}" RESET pg_durable.enable_superuser_instances')
    start_worker()
    # The session may enable it for df.start, but the worker reads the server's setting.
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    iid, status = run_workflow(conn, "'SELECT 1'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        f'pg_durable blocked instance {iid}: submitted_by role "postgres" is a superuser, '
        "but pg_durable.enable_superuser_instances is off"
    )


def test_dropped_role_fails_its_instance(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    row = alice.conn.execute("SELECT df.start('SELECT 1' ~> df.sleep(2) ~> 'SELECT 2')").fetchone()
    assert row is not None
    iid = str(row[0])
    time.sleep(1.0)  # the first step has run: the role's step function exists
    conn.execute(f"DROP OWNED BY {alice.name} CASCADE")
    conn.execute(f"DROP ROLE {alice.name}")
    assert wait_for(conn, iid, 20) == "failed"
    assert "no longer exists" in output_of(conn, iid)


def test_the_roles_own_settings_apply_to_its_steps(
    alice: Submitter, worker: WorkerThread, conn: Conn, db_name: str
) -> None:
    conn.execute(f"CREATE SCHEMA {alice.name} AUTHORIZATION {alice.name}")
    conn.execute(f"CREATE TABLE {alice.name}.inbox (v text)")
    conn.execute(f"INSERT INTO {alice.name}.inbox VALUES ('mine')")
    conn.execute(f"ALTER TABLE {alice.name}.inbox OWNER TO {alice.name}")
    conn.execute(f"ALTER ROLE {alice.name} SET search_path = {alice.name}, public")
    conn.execute(f"ALTER ROLE {alice.name} IN DATABASE \"{db_name}\" SET work_mem = '7MB'")
    # A role switch in the role's settings is not taken: the step stays the submitter.
    conn.execute(f"ALTER ROLE {alice.name} SET role = {alice.name}")
    iid, status = run_workflow(
        alice.conn,
        "'SELECT v, current_setting(''work_mem'') AS w, current_user::text AS u FROM inbox'",
    )
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == {
        "rows": [{"v": "mine", "w": "7MB", "u": alice.name}],
        "row_count": 1,
    }
    # The settings do not outlive the step: the worker's own session is back to its defaults.
    iid, _ = run_workflow(conn, "'SELECT current_setting(''work_mem'') AS w'")
    assert result_of(conn, iid) != {"rows": [{"w": "7MB"}], "row_count": 1}


def test_a_step_leaves_nothing_behind_for_the_next_role(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    """Temporary tables, settings and session locks of one role's step are gone before another
    role's step runs on the same connection (one slot, so every step shares it)."""
    conn.execute("CREATE TABLE public.box (v text)")
    conn.execute("INSERT INTO public.box VALUES ('the real one')")
    conn.execute(f"GRANT SELECT ON public.box TO {alice.name}")
    worker.stop()
    single = WorkerThread(worker.settings.dsn, concurrency=1, poll_interval=0.2).start()
    try:
        # alice plants a temporary "box" that would shadow public.box, and a search_path.
        iid, status = run_workflow(
            alice.conn,
            "'CREATE TEMP TABLE box AS SELECT ''planted''::text AS v' "
            "~> 'SELECT set_config(''search_path'', ''pg_temp, public'', false)' "
            "~> 'SELECT pg_advisory_lock(42)'",
        )
        assert status == "completed", output_of(conn, iid)
        iid, status = run_workflow(
            conn, "'SELECT v FROM box' ~> 'SELECT pg_try_advisory_lock(42) AS got'"
        )
        assert status == "completed", output_of(conn, iid)
        rows = conn.execute(
            "SELECT result FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL' "
            "ORDER BY query",
            (iid,),
        ).fetchall()
        assert [r[0] for r in rows] == [
            {"rows": [{"got": True}], "row_count": 1},
            {"rows": [{"v": "the real one"}], "row_count": 1},
        ]
    finally:
        single.stop()


def test_steps_of_one_role_in_one_batch_leave_nothing_behind_for_each_other(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    """A batch's steps of one role run in one call of its step function, which cleans the
    session between them: each step of these instances — one batch on one slot — finds no
    temporary table, setting or session lock that another left behind (it would fail: the
    table exists already, or a division by zero)."""
    worker.stop()
    single = WorkerThread(worker.settings.dsn, concurrency=1, poll_interval=0.2).start()
    try:
        step = (
            "'CREATE TEMP TABLE box AS SELECT 1 / CASE WHEN current_setting(''work_mem'') "
            "= ''1234kB'' OR NOT pg_try_advisory_lock(7) THEN 0 ELSE 1 END AS clean, "
            "set_config(''work_mem'', ''1234kB'', false) AS planted'"
        )
        with alice.conn.transaction():
            ids = []
            for _ in range(8):
                row = alice.conn.execute(f"SELECT df.start({step})").fetchone()
                assert row is not None
                ids.append(str(row[0]))
        for iid in ids:
            assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    finally:
        single.stop()


def test_the_roles_statement_timeout_fails_the_step_that_overruns_it(
    alice: Submitter, worker: WorkerThread, conn: Conn
) -> None:
    conn.execute(f"ALTER ROLE {alice.name} SET statement_timeout = '200ms'")
    iid, status = run_workflow(alice.conn, "'SELECT 1' ~> 'SELECT pg_sleep(3)' ~> 'SELECT 3'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        "SQL execution failed: error returned from database: "
        "canceling statement due to statement timeout"
    )
    iid, status = run_workflow(alice.conn, "'SELECT 1'")
    assert status == "completed"


def test_a_worker_that_is_not_a_superuser_serves_the_roles_it_is_a_member_of(
    pg_server: Server, db_name: str
) -> None:
    """Managed PostgreSQL: the schema is installed, and the worker connects, as a plain role
    that owns the database; it needs membership in each submitting role, nothing more."""
    owner, user = f"owner_{db_name}", f"user_{db_name}"
    database = f"{db_name}_managed"
    owner_pw, user_pw = secrets.token_hex(8), secrets.token_hex(8)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_pw}'")
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{user_pw}'")
        admin.execute(f"GRANT {user} TO {owner}")
        admin.execute(f'CREATE DATABASE "{database}" OWNER {owner}')
    owner_dsn = role_dsn(pg_server.dsn(database), owner, owner_pw)
    try:
        schema.install(owner_dsn)
        with psycopg.connect(owner_dsn, autocommit=True) as c:
            c.execute("SELECT df.grant_usage(%s)", (user,))
            c.execute("CREATE TABLE notes (v text)")
            c.execute(f"GRANT INSERT, SELECT ON notes TO {user}")
        worker = WorkerThread(owner_dsn, concurrency=2, poll_interval=0.2).start()
        try:
            with psycopg.connect(
                role_dsn(pg_server.dsn(database), user, user_pw), autocommit=True
            ) as u:
                iid, status = run_workflow(
                    u,
                    "'INSERT INTO notes VALUES (current_user) RETURNING v' "
                    "~> 'SELECT v, current_user::text AS u FROM notes'",
                )
                assert status == "completed", u.execute(
                    "SELECT output FROM df.instance_info(%s)", (iid,)
                ).fetchone()
                assert u.execute("SELECT df.result(%s)", (iid,)).fetchone() == (
                    f'{{"rows": [{{"u": "{user}", "v": "{user}"}}], "row_count": 1}}',
                )
                # Its step function is its own, in a schema it still cannot use or create in.
                assert u.execute(
                    "SELECT has_schema_privilege('df_exec', 'CREATE'), "
                    "has_schema_privilege('df_exec', 'USAGE')"
                ).fetchone() == (False, False)
        finally:
            worker.stop()
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f"DROP ROLE {user}")
            admin.execute(f"DROP ROLE {owner}")
