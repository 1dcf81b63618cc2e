"""Instances whose SQL steps run in another database of the cluster (database => 'other')."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pg_durable.engine import remote
from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.postgres import Server, role_dsn
from tests.fixtures.sql import error_of
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


@dataclass
class Other:
    """Another database of the cluster, a superuser connection to it, and a LOGIN role (not
    a superuser, granted df usage at home) with a connection to the home database."""

    name: str
    conn: Conn
    role: str
    role_conn: Conn


@pytest.fixture
def other(pg_server: Server, conn: Conn, dsn: str, db_name: str) -> Iterator[Other]:
    name, role = f"{db_name}_other", f"carol_{db_name}"
    password = secrets.token_hex(8)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    conn.execute("SELECT df.grant_usage(%s)", (role,))
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as there:
        there.execute("CREATE TABLE notes (v text)")
        there.execute(f"GRANT SELECT, INSERT ON notes TO {role}")
        there.execute("CREATE TABLE secret (v text)")
        with psycopg.connect(role_dsn(dsn, role, password), autocommit=True) as mine:
            yield Other(name, there, role, mine)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f"DROP OWNED BY {role} CASCADE")
        admin.execute(f"DROP ROLE {role}")


def start_in(conn: Conn, dsl: str, database: str) -> str:
    row = conn.execute(f"SELECT df.start({dsl}, database => %s)", (database,)).fetchone()
    assert row is not None
    return str(row[0])


def test_steps_run_in_the_named_database_as_the_submitter(
    other: Other, worker: WorkerThread, conn: Conn
) -> None:
    iid, status = run_workflow(
        other.role_conn,
        "'INSERT INTO notes VALUES (''from home'') RETURNING v' |=> 'x' "
        "~> 'SELECT current_database() AS db, current_user AS who, $x.v AS v', "
        f"database => '{other.name}'",
    )
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid)["rows"] == [{"db": other.name, "who": other.role, "v": "from home"}]
    assert other.conn.execute("SELECT v FROM notes").fetchall() == [("from home",)]
    # The receipts are gone once the checkpoints are committed.
    assert other.conn.execute("SELECT count(*) FROM df_exec.remote_steps").fetchone() == (0,)


def test_a_step_there_has_only_the_submitters_privileges(
    other: Other, worker: WorkerThread, conn: Conn
) -> None:
    for statement in (
        "SELECT * FROM secret",
        "RESET ROLE",
        "SELECT set_config('role', 'postgres', false)",
    ):
        iid, status = run_workflow(other.role_conn, f"$${statement}$$, database => '{other.name}'")
        assert status == "failed", statement
        assert output_of(conn, iid).startswith("SQL execution failed"), output_of(conn, iid)


def test_a_role_without_connect_on_the_database(
    other: Other, worker: WorkerThread, conn: Conn
) -> None:
    other.conn.execute(f'REVOKE CONNECT ON DATABASE "{other.name}" FROM PUBLIC')
    assert error_of(
        other.role_conn, f"SELECT df.start('SELECT 1', database => '{other.name}')"
    ) == (f'permission denied for database "{other.name}"')
    # Taken away while the instance waits: its step fails with the reason.
    other.conn.execute(f'GRANT CONNECT ON DATABASE "{other.name}" TO {other.role}')
    iid = start_in(other.role_conn, "df.sleep(1) ~> 'SELECT 1'", other.name)
    other.conn.execute(f'REVOKE CONNECT ON DATABASE "{other.name}" FROM {other.role}')

    assert wait_for(conn, iid) == "failed"
    assert output_of(conn, iid) == (
        f'permission denied for database "{other.name}": role "{other.role}" does not have '
        "CONNECT privilege"
    )


def test_a_database_dropped_while_its_instance_waits(
    pg_server: Server, other: Other, worker: WorkerThread, conn: Conn
) -> None:

    iid = start_in(other.role_conn, "df.sleep(1) ~> 'SELECT 1'", other.name)
    other.conn.close()
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{other.name}" WITH (FORCE)')
    assert wait_for(conn, iid) == "failed"
    assert output_of(conn, iid) == f'database "{other.name}" does not exist'
    iid, status = run_workflow(conn, "'SELECT 1'")
    assert status == "completed"


def test_a_step_there_runs_once_when_the_checkpoint_is_lost(
    other: Other, start_worker: Any, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement committed there, then the home transaction was lost before its commit:
    the fiber is claimed again and takes the outcome from the receipt."""
    real_run = remote.RemoteDatabases.run
    lost: list[str] = []

    async def run_then_lose_home(self: Any, home: Any, statement: Any, receipt: str) -> Any:
        outcome = await real_run(self, home, statement, receipt)
        if not lost:
            lost.append(receipt)
            await home.conn.close()  # the home connection drops before the checkpoint commits
            raise psycopg.OperationalError("injected: connection lost")
        return outcome

    monkeypatch.setattr(remote.RemoteDatabases, "run", run_then_lose_home)
    start_worker()
    iid, status = run_workflow(
        other.role_conn,
        "'INSERT INTO notes VALUES (''once'') RETURNING v' |=> 'x' ~> 'SELECT $x.v AS v', "
        f"database => '{other.name}'",
    )
    assert lost, "the fault was never injected"
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid)["rows"] == [{"v": "once"}]
    assert other.conn.execute("SELECT v FROM notes").fetchall() == [("once",)]
