"""Steps run with exactly the submitter's privileges and cannot leave that role."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.engine import WorkerThread, run_workflow
from tests.fixtures.postgres import role_dsn
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


@pytest.fixture
def alice(conn: Conn, dsn: str) -> Iterator[Conn]:
    """A connection as `alice`: LOGIN, not superuser, granted df usage."""
    password = secrets.token_hex(8)
    conn.execute(f"CREATE ROLE alice LOGIN PASSWORD '{password}'")
    conn.execute("SELECT df.grant_usage('alice')")
    conn.execute("CREATE TABLE public.shared (v text)")
    conn.execute("GRANT SELECT, INSERT ON public.shared TO alice")
    conn.execute("CREATE TABLE public.secret (v text)")
    conn.execute("INSERT INTO public.secret VALUES ('top')")
    with psycopg.connect(role_dsn(dsn, "alice", password), autocommit=True) as c:
        yield c
    conn.execute("DROP OWNED BY alice CASCADE")
    conn.execute("DROP ROLE alice")


def test_steps_run_as_the_submitter(alice: Conn, worker: WorkerThread, conn: Conn) -> None:
    iid, status = run_workflow(alice, "'SELECT current_user::text AS u'")
    assert status == "completed"
    assert result_of(conn, iid) == {"rows": [{"u": "alice"}], "row_count": 1}
    row = conn.execute(
        "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)
    ).fetchone()
    assert row == ("alice",)


ESCAPES = [
    "RESET ROLE",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config(''role'', ''postgres'', false)",
    "DO $$ BEGIN RESET ROLE; END $$",
    "SELECT alice_escape()",
    "SELECT alice_definer_escape()",
]


@pytest.mark.parametrize("attempt", ESCAPES)
def test_a_step_cannot_leave_its_role(
    alice: Conn, worker: WorkerThread, conn: Conn, attempt: str
) -> None:
    alice.execute("CREATE SCHEMA IF NOT EXISTS alice_s")
    conn.execute("GRANT CREATE, USAGE ON SCHEMA public TO alice")
    alice.execute(
        "CREATE OR REPLACE FUNCTION public.alice_escape() RETURNS text LANGUAGE plpgsql AS "
        "$$ BEGIN RESET ROLE; RETURN current_user; END $$"
    )
    alice.execute(
        "CREATE OR REPLACE FUNCTION public.alice_definer_escape() RETURNS text LANGUAGE plpgsql "
        "SECURITY DEFINER AS $$ BEGIN SET ROLE postgres; RETURN current_user; END $$"
    )
    iid, status = run_workflow(
        alice, f"'{attempt}' ~> 'INSERT INTO public.shared SELECT v FROM public.secret RETURNING v'"
    )
    assert status == "failed"
    assert "cannot set parameter" in output_of(conn, iid)
    assert conn.execute("SELECT count(*) FROM public.shared").fetchone() == (0,)


def test_missing_privilege_is_an_ordinary_permission_error(
    alice: Conn, worker: WorkerThread, conn: Conn
) -> None:
    iid, status = run_workflow(alice, "'SELECT v FROM public.secret'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        "SQL execution failed: error returned from database: permission denied for table secret"
    )


def test_submitter_cannot_reach_its_step_function(
    alice: Conn, worker: WorkerThread, conn: Conn
) -> None:
    run_workflow(alice, "'SELECT 1'")
    row = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'df_exec' AND p.proowner = 'alice'::regrole"
    ).fetchone()
    assert row is not None
    signature = row[0]
    for statement in (
        f"ALTER FUNCTION {signature} SECURITY INVOKER",
        f"CREATE OR REPLACE FUNCTION {signature.split('(')[0]}(sql text, r boolean) RETURNS SETOF json "
        "LANGUAGE sql AS 'SELECT NULL::json'",
        f"SELECT {signature.split('(')[0]}('SELECT 1', true)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute(statement)


def test_superuser_instances_are_refused_by_the_worker_when_disabled(
    conn: Conn, dsn: str, worker: WorkerThread
) -> None:
    db = conn.execute("SELECT current_database()").fetchone()
    assert db is not None
    conn.execute(f'ALTER DATABASE "{db[0]}" RESET pg_durable.enable_superuser_instances')
    # The session may enable it for df.start, but the worker reads the server's setting.
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    iid, status = run_workflow(conn, "'SELECT 1'")
    assert status == "failed"
    assert output_of(conn, iid) == (
        f'pg_durable blocked instance {iid}: submitted_by role "postgres" is a superuser, '
        "but pg_durable.enable_superuser_instances is off"
    )


def test_dropped_role_fails_its_instance(alice: Conn, worker: WorkerThread, conn: Conn) -> None:
    row = alice.execute("SELECT df.start('SELECT 1' ~> df.sleep(2) ~> 'SELECT 2')").fetchone()
    assert row is not None
    iid = str(row[0])
    import time

    time.sleep(1.0)
    conn.execute("REASSIGN OWNED BY alice TO postgres")
    conn.execute("DROP OWNED BY alice CASCADE")
    conn.execute("DROP ROLE alice")
    conn.execute("CREATE ROLE alice")  # so the fixture's teardown finds a role to drop
    from tests.fixtures.engine import wait_for

    assert wait_for(conn, iid, 20) == "failed"
    assert "no longer exists" in output_of(conn, iid)
