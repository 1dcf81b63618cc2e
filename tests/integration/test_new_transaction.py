"""df.start(…, transaction_mode => 'new') (SPEC §2.2.1): a start committed on a loopback
connection, independently of the caller's transaction, without pg_hba trust.

It needs the dblink extension, which the embedded server of the suite (pgserver) lacks: these
tests run on a private cluster of the machine's own PostgreSQL that has it, and are skipped
(saying why) when no installation here has dblink. The last tests run on the suite's server and
check the clear error without dblink.
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pg_durable import schema
from pg_durable.embedded import EmbeddedPostgres, Installation, installations
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.sql import error_of, one

Conn = psycopg.Connection[Any]

SLOT_CLASS = 1346982470
LOOPBACK_APP = "pg_durable:backend:new-transaction"
TEMPLATE = "nt_template"
_counter = itertools.count()


def _has_dblink(inst: Installation) -> bool:
    pg_config = inst.bin_dir / "pg_config"
    shares = [inst.bin_dir.parent / "share" / "extension"]
    if pg_config.exists():
        try:
            out = subprocess.run(
                [str(pg_config), "--sharedir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            shares.insert(0, Path(out) / "extension")
        except (OSError, subprocess.CalledProcessError):
            pass
    return any((share / "dblink.control").exists() for share in shares)


@dataclass
class Cluster:
    server: EmbeddedPostgres

    def dsn(self, dbname: str, **overrides: str) -> str:
        return make_conninfo(self.server.dsn(dbname), **overrides)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A private cluster of a PostgreSQL installation that has dblink, and a template
    database with the df schema installed by `pg-durable install`'s code, 'new' mode set up."""
    found = [i for i in installations() if _has_dblink(i)]
    if not found:
        pytest.skip(
            "no PostgreSQL installation on this machine has the dblink extension (have: "
            + ", ".join(f"{i.major} ({i.source})" for i in installations())
            + "); transaction_mode => 'new' needs it"
        )
    tmp = Path(tempfile.mkdtemp(prefix="pg-durable-nt-"))
    tmp.chmod(0o755)
    server = EmbeddedPostgres(
        tmp / "data",
        installation=found[0],
        extra_settings={"fsync": "off", "full_page_writes": "off", "max_connections": "100"},
    )
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {TEMPLATE}")
        schema.install(server.dsn(TEMPLATE))
        line = schema.setup_new_transaction_mode(server.dsn(TEMPLATE))
        assert line.startswith("transaction_mode => 'new' enabled: loopback role df_loopback_"), (
            line
        )
        assert "fails" not in line
        yield Cluster(server)
    finally:
        server.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def ndb(cluster: Cluster) -> Iterator[str]:
    """A database of the dblink cluster, cloned from the template (superuser instances on)."""
    name = f"nt_{next(_counter)}_{secrets.token_hex(3)}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        c.execute(f"ALTER DATABASE {name} SET pg_durable.enable_superuser_instances = on")
    yield name
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ndsn(cluster: Cluster, ndb: str) -> str:
    return cluster.dsn(ndb)


@pytest.fixture
def nconn(ndsn: str) -> Iterator[Conn]:
    """An autocommit superuser connection to this test's database."""
    with psycopg.connect(ndsn, autocommit=True) as c:
        yield c


@dataclass
class User:
    name: str
    dsn: str


@pytest.fixture
def make_user(nconn: Conn, ndsn: str, ndb: str) -> Iterator[Callable[..., User]]:
    """Roles private to this test, with a password; granted df usage unless told otherwise."""
    made: list[str] = []

    def factory(suffix: str, *, login: bool = True, usage: bool = True) -> User:
        name = f"{suffix}_{ndb}"
        password = secrets.token_hex(8)
        nconn.execute(
            sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                sql.Identifier(name),
                sql.SQL("LOGIN" if login else "NOLOGIN"),
                sql.Literal(password),
            )
        )
        made.append(name)
        if usage:
            nconn.execute("SELECT df.grant_usage(%s)", (name,))
        return User(name, make_conninfo(ndsn, user=name, password=password))

    yield factory
    nconn.execute("RESET ROLE")
    for name in reversed(made):
        nconn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        nconn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def loopback_sessions(conn: Conn) -> int:
    """Loopback connections still open (their backends go away shortly after a close)."""
    deadline = time.monotonic() + 5
    while True:
        n = one(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (LOOPBACK_APP,),
        )
        if n == 0 or time.monotonic() > deadline:
            return int(n)
        time.sleep(0.05)


def advisory_locks_of(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT classid, objid, objsubid FROM pg_locks "
        "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchall()


# --------------------------------------------------------------------------------------------
# what it does


def test_survives_the_callers_rollback(nconn: Conn, ndsn: str) -> None:
    nconn.execute("BEGIN")
    new_id = one(nconn, "SELECT df.start('SELECT 1', 'kept', NULL, 'new')")
    caller_id = one(nconn, "SELECT df.start('SELECT 1', 'gone')")
    # Committed already: another session sees it before the caller ends its transaction.
    with psycopg.connect(ndsn, autocommit=True) as other:
        assert one(other, "SELECT label FROM df.instances WHERE id = %s", (new_id,)) == "kept"
        assert one(other, "SELECT count(*) FROM df.instances WHERE id = %s", (caller_id,)) == 0
    nconn.execute("ROLLBACK")
    rows = nconn.execute("SELECT id, label, status FROM df.instances").fetchall()
    assert rows == [(new_id, "kept", "pending")]
    assert one(nconn, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (new_id,)) == 1
    assert one(nconn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (new_id,)) == 1
    assert advisory_locks_of(nconn) == []
    assert loopback_sessions(nconn) == 0


def test_graphs_labels_and_database_arrive_intact(nconn: Conn, ndb: str) -> None:
    label = 'it\'s \\ a "label" – ünïcode'
    iid = one(
        nconn,
        "SELECT df.start(('SELECT ''a''' |=> 'x') ~> ('SELECT 1' & 'SELECT 2'), %s, %s, 'NEW')",
        (label, ndb),
    )
    assert one(nconn, "SELECT label FROM df.instances WHERE id = %s", (iid,)) == label
    assert one(nconn, "SELECT database FROM df.instances WHERE id = %s", (iid,)) == ndb
    assert one(nconn, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (iid,)) == 5
    queries = {
        r[0] for r in nconn.execute("SELECT query FROM df.nodes WHERE instance_id = %s", (iid,))
    }
    assert "SELECT 'a'" in queries


def test_submitted_by_the_caller_also_under_set_role(
    nconn: Conn, make_user: Callable[..., User]
) -> None:
    alice = make_user("alice")
    bob = make_user("bob")
    with psycopg.connect(alice.dsn, autocommit=True) as c:
        iid = one(c, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
        # Through RLS: alice sees her own instance.
        assert one(c, "SELECT df.status(%s)", (iid,)) == "pending"
    assert one(nconn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == (
        alice.name
    )
    nconn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bob.name)))
    iid = one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
    nconn.execute("RESET ROLE")
    assert one(nconn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == (
        bob.name
    )
    assert one(
        nconn, "SELECT DISTINCT submitted_by::text FROM df.nodes WHERE instance_id = %s", (iid,)
    ) == (bob.name)


def test_vars_snapshot_sees_only_committed_vars(nconn: Conn) -> None:
    nconn.execute("SELECT df.setvar('a', 'committed')")
    nconn.execute("BEGIN")
    nconn.execute("SELECT df.setvar('a', 'uncommitted')")
    nconn.execute("SELECT df.setvar('b', 'new')")
    new_id = one(nconn, "SELECT df.start('SELECT {a}', transaction_mode => 'new')")
    caller_id = one(nconn, "SELECT df.start('SELECT {a}')")
    nconn.execute("COMMIT")
    snapshot = "SELECT vars FROM df._instance_state WHERE instance_id = %s"
    assert one(nconn, snapshot, (new_id,)) == {"a": "committed"}
    assert one(nconn, snapshot, (caller_id,)) == {"a": "uncommitted", "b": "new"}


def test_the_worker_runs_it_as_the_submitter(
    nconn: Conn, ndsn: str, make_user: Callable[..., User]
) -> None:
    alice = make_user("alice")
    nconn.execute("CREATE TABLE visits (who text)")
    nconn.execute(
        sql.SQL("GRANT INSERT, SELECT ON visits TO {}").format(sql.Identifier(alice.name))
    )
    with psycopg.connect(alice.dsn, autocommit=True) as c:
        c.execute("BEGIN")
        iid = one(
            c,
            "SELECT df.start('INSERT INTO visits SELECT current_user' ~> "
            "'SELECT count(*) AS n FROM visits', 'w', NULL, 'new')",
        )
        c.execute("ROLLBACK")
    worker = WorkerThread(ndsn).start()
    try:
        assert wait_for(nconn, iid) == "completed"
    finally:
        worker.stop()
    assert nconn.execute("SELECT who FROM visits").fetchall() == [(alice.name,)]
    assert one(nconn, "SELECT df.result(%s)", (iid,)) == '{"rows": [{"n": 1}], "row_count": 1}'


def test_the_loopback_session_names_itself(nconn: Conn, ndsn: str) -> None:
    """While the loopback waits for a lock, pg_stat_activity shows who it is."""
    seen: list[tuple[Any, ...]] = []
    with psycopg.connect(ndsn, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE df.instances IN EXCLUSIVE MODE")
        result: dict[str, Any] = {}

        def start() -> None:
            with psycopg.connect(ndsn, autocommit=True) as c:
                result["id"] = one(c, "SELECT df.start('SELECT 1', transaction_mode => 'new')")

        thread = threading.Thread(target=start)
        thread.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            seen = nconn.execute(
                "SELECT usename::text, wait_event_type FROM pg_stat_activity "
                "WHERE application_name = %s",
                (LOOPBACK_APP,),
            ).fetchall()
            time.sleep(0.02)
        blocker.execute("COMMIT")
        thread.join(30)
    assert len(seen) == 1
    assert seen[0][0].startswith("df_loopback_")
    assert "id" in result
    assert loopback_sessions(nconn) == 0


# --------------------------------------------------------------------------------------------
# refusals and SPEC's errors


def test_refused_inside_a_workflow(nconn: Conn) -> None:
    nconn.execute("SET df.in_workflow = 'true'")
    assert error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
        "df.start() with transaction_mode => 'new' cannot be called inside a workflow - a "
        "df.sql() node already runs as a single autocommitted statement, so a plain df.start() "
        "there is already independent of any caller transaction"
    )
    assert loopback_sessions(nconn) == 0


def test_refused_for_a_nologin_role(nconn: Conn, make_user: Callable[..., User]) -> None:
    group = make_user("group", login=False)
    nconn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(group.name)))
    assert error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
        f'current_user "{group.name}" does not have LOGIN privilege. The background worker '
        "must connect as this role to execute SQL. Grant LOGIN to this role or call df.start() "
        "as a role with LOGIN."
    )
    nconn.execute("RESET ROLE")
    assert advisory_locks_of(nconn) == []


def test_superuser_instances_follow_the_callers_setting(nconn: Conn) -> None:
    nconn.execute("SET pg_durable.enable_superuser_instances = off")
    message = error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
    assert message == (
        "df.start() on new transaction failed: pg_durable: superuser instances are disabled. "
        'current_user "postgres" is a superuser, but pg_durable.enable_superuser_instances is '
        "off. Set pg_durable.enable_superuser_instances = on to allow this."
    )
    nconn.execute("SET pg_durable.enable_superuser_instances = on")
    assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")


def test_launch_limit(nconn: Conn, ndsn: str) -> None:
    nconn.execute("SET pg_durable.max_new_transaction_starts = 2")
    nconn.execute("SET pg_durable.new_transaction_start_timeout = 1")
    with psycopg.connect(ndsn, autocommit=True) as h1, psycopg.connect(ndsn, autocommit=True) as h2:
        h1.execute("SELECT pg_advisory_lock(%s, 0)", (SLOT_CLASS,))
        h2.execute("SELECT pg_advisory_lock(%s, 1)", (SLOT_CLASS,))
        started = time.monotonic()
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as caught:
            nconn.execute("SELECT df.start('SELECT 1', transaction_mode => 'new')")
        elapsed = time.monotonic() - started
        assert caught.value.diag.message_primary == (
            "pg_durable: transaction_mode => 'new' launch limit reached "
            "(max_new_transaction_starts=2). Timed out after 1s waiting for a launch slot "
            "before opening the loopback session."
        )
        assert 1.0 <= elapsed < 3.0, elapsed
        assert loopback_sessions(nconn) == 0
        assert advisory_locks_of(nconn) == []
        # A third slot is free once the limit allows one.
        nconn.execute("SET pg_durable.max_new_transaction_starts = 3")
        assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
        # A slot freed while the caller waits is taken (polled every 100 ms).
        nconn.execute("SET pg_durable.max_new_transaction_starts = 2")
        nconn.execute("SET pg_durable.new_transaction_start_timeout = 5")
        timer = threading.Timer(0.5, lambda: h2.execute("SELECT pg_advisory_unlock_all()"))
        started = time.monotonic()
        timer.start()
        assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
        elapsed = time.monotonic() - started
        timer.join()
        assert 0.4 <= elapsed < 2.0, elapsed
    assert advisory_locks_of(nconn) == []


def test_the_limit_defaults_to_two_slots_and_5_s(nconn: Conn, ndsn: str) -> None:
    with psycopg.connect(ndsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, 0), pg_advisory_lock(%s, 1)", (SLOT_CLASS,) * 2)
        started = time.monotonic()
        message = error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
        elapsed = time.monotonic() - started
    assert message == (
        "pg_durable: transaction_mode => 'new' launch limit reached "
        "(max_new_transaction_starts=2). Timed out after 5s waiting for a launch slot before "
        "opening the loopback session."
    )
    assert 5.0 <= elapsed < 7.0, elapsed


def test_invalid_settings_are_named(nconn: Conn) -> None:
    nconn.execute("SET pg_durable.max_new_transaction_starts = 0")
    assert error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
        'invalid value for pg_durable.max_new_transaction_starts: "0" '
        "(expected a whole number from 1 to 1000)"
    )


def test_errors_of_the_start_are_prefixed_and_release_everything(nconn: Conn) -> None:
    nconn.execute("SET pg_durable.max_new_transaction_starts = 1")
    for _ in range(3):  # more failures than slots: each one gave its slot back
        with pytest.raises(psycopg.errors.RaiseException) as caught:
            nconn.execute("""SELECT df.start('{"node_type":"THEN"}', transaction_mode => 'new')""")
        assert caught.value.diag.message_primary == (
            "df.start() on new transaction failed: Invalid durable function graph: root: "
            "THEN nodes need a left_node and a right_node"
        )
        assert advisory_locks_of(nconn) == []
    # The SQLSTATE of the failure is kept.
    with pytest.raises(psycopg.errors.RaiseException) as caught:
        nconn.execute("SELECT df.start('SELECT 1', NULL, 'no_such_db', 'new')")
    assert caught.value.diag.message_primary == (
        'df.start() on new transaction failed: database "no_such_db" does not exist'
    )
    assert error_of(nconn, "SELECT df.start(NULL, transaction_mode => 'new')") == (
        "df.start(): the workflow is NULL"
    )
    assert advisory_locks_of(nconn) == []
    assert loopback_sessions(nconn) == 0
    assert one(nconn, "SELECT count(*) FROM df.instances") == 0
    assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")


def test_a_role_without_usage_is_refused(nconn: Conn, make_user: Callable[..., User]) -> None:
    carol = make_user("carol", usage=False)
    with psycopg.connect(carol.dsn, autocommit=True) as c:
        assert error_of(c, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
            "permission denied for schema df"
        )
    # USAGE on the schema, but no right to write instances: refused as in caller mode.
    nconn.execute(sql.SQL("GRANT USAGE ON SCHEMA df TO {}").format(sql.Identifier(carol.name)))
    with psycopg.connect(carol.dsn, autocommit=True) as c:
        assert error_of(c, "SELECT df.start('SELECT 1')") == "permission denied for table instances"
        assert error_of(c, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
            "df.start() on new transaction failed: permission denied for table instances"
        )
        assert advisory_locks_of(c) == []
    assert one(nconn, "SELECT count(*) FROM df.instances") == 0


def test_a_security_definer_wrapper_whose_owner_the_session_cannot_become(
    nconn: Conn, make_user: Callable[..., User]
) -> None:
    alice = make_user("alice")
    eve = make_user("eve")
    nconn.execute(
        sql.SQL(
            "CREATE FUNCTION public.start_as_owner() RETURNS text LANGUAGE sql "
            "SECURITY DEFINER AS $$ SELECT df.start('SELECT 1', transaction_mode => 'new') $$; "
            "ALTER FUNCTION public.start_as_owner() OWNER TO {eve}"
        ).format(eve=sql.Identifier(eve.name))
    )
    with psycopg.connect(alice.dsn, autocommit=True) as c:
        assert error_of(c, "SELECT public.start_as_owner()") == (
            f"df.start() with transaction_mode => 'new': session user \"{alice.name}\" is not a "
            f'member of role "{eve.name}", which would submit the instance'
        )
        assert advisory_locks_of(c) == []
    # eve herself (and a member of eve) may use it; the instance is eve's.
    with psycopg.connect(eve.dsn, autocommit=True) as c:
        iid = one(c, "SELECT public.start_as_owner()")
    assert one(nconn, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == (
        eve.name
    )


def test_the_loopback_password_alone_cannot_start_anything(
    nconn: Conn, ndsn: str, make_user: Callable[..., User]
) -> None:
    alice = make_user("alice")
    role, password = nconn.execute("SELECT role_name, password FROM df._loopback").fetchone()
    alice_oid = one(nconn, "SELECT %s::regrole::oid", (alice.name,))
    refused = (
        "df._start_on_behalf(): refused — no session of this database is starting this instance"
    )

    def forge(forger: Conn, pid: int) -> str:
        return error_of(
            forger,
            "SELECT df._start_on_behalf('SELECT 1', NULL, NULL, %s, %s)",
            (alice_oid, pid),
        )

    with psycopg.connect(alice.dsn, autocommit=True) as victim:
        victim_pid = one(victim, "SELECT pg_backend_pid()")
        victim.execute("SELECT pg_advisory_lock(12345)")  # holding some lock does not help
        # Without a secret, or with a made-up one; naming alice's session, its own, or none.
        for options in ({}, {"options": "-c pg_durable.loopback_secret=00ff"}):
            with psycopg.connect(
                make_conninfo(ndsn, user=role, password=password, **options), autocommit=True
            ) as forger:
                own = one(forger, "SELECT pg_backend_pid()")
                for pid in (victim_pid, own, 4242):
                    assert forge(forger, pid) == refused
        with psycopg.connect(
            make_conninfo(ndsn, user=role, password=password), autocommit=True
        ) as forger:
            # Nothing else is open to it: not the credentials, not dblink, not df.start.
            assert error_of(forger, "SELECT * FROM df._loopback").startswith("permission denied")
            assert error_of(forger, "SELECT df_dblink.dblink_get_connections()").startswith(
                "permission denied"
            )
            assert error_of(forger, "SELECT df.start('SELECT 1')") == (
                "permission denied for table instances"
            )
            assert error_of(forger, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
                "df.start() on new transaction failed: permission denied for table instances"
            )
            assert error_of(
                forger, "SELECT df._start('SELECT 1', NULL, NULL, %s::oid::regrole)", (alice_oid,)
            ) == ("df._start(): only the owner of schema df may start an instance for another role")
    assert one(nconn, "SELECT count(*) FROM df.instances") == 0


def test_a_caller_cannot_name_another_role(nconn: Conn, make_user: Callable[..., User]) -> None:
    alice = make_user("alice")
    bob = make_user("bob")
    with psycopg.connect(alice.dsn, autocommit=True) as c:
        assert error_of(
            c, "SELECT df._start_new('SELECT 1', NULL, NULL, %s::regrole)", (bob.name,)
        ) == (
            f"df.start() with transaction_mode => 'new': session user \"{alice.name}\" is not a "
            f'member of role "{bob.name}", which would submit the instance'
        )
        assert error_of(
            c, "SELECT df._start('SELECT 1', NULL, NULL, %s::regrole)", (bob.name,)
        ) == ("df._start(): only the owner of schema df may start an instance for another role")
        for function in ("df._start_on_behalf('x', NULL, NULL, 1, 1)", "df._loopback_probe()"):
            assert error_of(c, f"SELECT {function}").startswith("permission denied for function")
        assert error_of(c, "SELECT df.enable_new_transaction_mode()").startswith(
            "permission denied for function"
        )


# --------------------------------------------------------------------------------------------
# setup


def test_setup_in_a_copied_database_makes_its_own_role(cluster: Cluster, nconn: Conn) -> None:
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as t:
        template_role, template_password = t.execute(
            "SELECT role_name, password FROM df._loopback"
        ).fetchone()
    # The copy uses the template's role until it sets up its own.
    assert one(nconn, "SELECT role_name FROM df._loopback") == template_role
    assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
    first = one(nconn, "SELECT df.enable_new_transaction_mode()")
    role, password = nconn.execute("SELECT role_name, password FROM df._loopback").fetchone()
    assert role != template_role and role.startswith("df_loopback_")
    assert first.startswith(f"transaction_mode => 'new' enabled: loopback role {role} connects to")
    # Again: same role, new password.
    nconn.execute("SELECT df.enable_new_transaction_mode()")
    again = nconn.execute("SELECT role_name, password FROM df._loopback").fetchone()
    assert again[0] == role and again[1] != password
    assert one(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
    assert one(nconn, "SELECT df._loopback_probe()") is None
    # The template's loopback is untouched.
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as t:
        assert t.execute("SELECT role_name, password FROM df._loopback").fetchone() == (
            template_role,
            template_password,
        )
        assert one(t, "SELECT df._loopback_probe()") is None
    # Disabled: the role is dropped, and 'new' says it is not set up.
    assert one(nconn, "SELECT df.disable_new_transaction_mode()") == (
        f"transaction_mode => 'new' disabled; role {role} dropped"
    )
    assert one(nconn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        nconn.execute("SELECT df.start('SELECT 1', transaction_mode => 'new')")
    assert caught.value.diag.message_primary == (
        "df.start() with transaction_mode => 'new' is not set up in this database: its loopback "
        "role is missing"
    )


def test_a_schema_owner_that_is_not_a_superuser(cluster: Cluster) -> None:
    """Managed PostgreSQL: the schema owner has CREATEROLE only; a superuser put dblink in
    df_dblink for it. Then `pg-durable install`'s setup works as that owner."""
    tag = secrets.token_hex(3)
    owner, alice, db = f"owner_{tag}", f"alice_{tag}", f"managed_{tag}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD 'pw'")
        c.execute(f"CREATE ROLE {alice} LOGIN PASSWORD 'pw'")
        c.execute(f"CREATE DATABASE {db} OWNER {owner}")
    owner_dsn = cluster.dsn(db, user=owner, password="pw")
    try:
        schema.install(owner_dsn)
        assert schema.setup_new_transaction_mode(owner_dsn) == (
            "transaction_mode => 'new' not enabled: setting it up needs a superuser (or "
            "CREATEROLE once dblink is installed in schema df_dblink); a superuser can enable "
            "it later with SELECT df.enable_new_transaction_mode();"
        )
        with psycopg.connect(cluster.dsn(db), autocommit=True) as c:
            c.execute("CREATE SCHEMA df_dblink")
            c.execute("CREATE EXTENSION dblink SCHEMA df_dblink")
            c.execute(f"GRANT USAGE ON SCHEMA df_dblink TO {owner}")
        line = schema.setup_new_transaction_mode(owner_dsn)
        assert line.startswith("transaction_mode => 'new' enabled: loopback role"), line
        with psycopg.connect(owner_dsn, autocommit=True) as c:
            c.execute("SELECT df.grant_usage(%s)", (alice,))
        with psycopg.connect(cluster.dsn(db, user=alice, password="pw"), autocommit=True) as c:
            c.execute("BEGIN")
            iid = one(c, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
            c.execute("ROLLBACK")
        with psycopg.connect(owner_dsn, autocommit=True) as c:
            assert one(c, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)) == (
                alice
            )
            assert one(c, "SELECT df.disable_new_transaction_mode()").endswith("dropped")
    finally:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            c.execute(f"DROP ROLE IF EXISTS {alice}")
            c.execute(f"DROP ROLE IF EXISTS {owner}")


def test_install_reports_enabled_on_rerun(ndsn: str) -> None:
    assert schema.setup_new_transaction_mode(ndsn).startswith(
        "transaction_mode => 'new' is enabled (loopback role df_loopback_"
    )


def test_a_loopback_that_cannot_connect_is_reported(nconn: Conn) -> None:
    nconn.execute("UPDATE df._loopback SET port = 1")
    message = error_of(nconn, "SELECT df.start('SELECT 1', transaction_mode => 'new')")
    assert message.startswith(
        "df.start() on new transaction failed: could not connect to the loopback "
        "(host 127.0.0.1, port 1) as role df_loopback_"
    )
    assert advisory_locks_of(nconn) == []
    assert one(nconn, "SELECT df._loopback_probe()") is not None


# --------------------------------------------------------------------------------------------
# the suite's own server, which has no dblink


def test_without_dblink_new_mode_is_a_clear_error(conn: Conn, dsn: str) -> None:
    if one(conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'"):
        pytest.skip("the suite's PostgreSQL has dblink")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        conn.execute("SELECT df.start('SELECT 1', transaction_mode => 'new')")
    assert caught.value.diag.message_primary == (
        "df.start() with transaction_mode => 'new' needs the dblink extension, which is not set "
        "up for pg_durable in this database"
    )
    assert "SELECT df.enable_new_transaction_mode();" in (caught.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        conn.execute("SELECT df.enable_new_transaction_mode()")
    assert caught.value.diag.message_primary == (
        "df.start() with transaction_mode => 'new' needs the dblink extension, which this "
        "PostgreSQL server does not have"
    )
    assert schema.setup_new_transaction_mode(dsn).startswith(
        "transaction_mode => 'new' not enabled: this PostgreSQL server has no dblink extension"
    )
    # Everything else works.
    assert one(conn, "SELECT df.start('SELECT 1', transaction_mode => 'caller')")
