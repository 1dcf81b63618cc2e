"""Signals: df.wait_for_signal and df.signal, the durable inbox, timeouts, branches, loops."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from pg_durable.queries import query
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.postgres import role_dsn
from tests.fixtures.sql import raises_exactly
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


def start(conn: Conn, dsl: str, label: str | None = None) -> str:
    row = conn.execute(f"SELECT df.start({dsl}, %s)", (label,)).fetchone()
    assert row is not None
    return str(row[0])


def signal(conn: Conn, instance_id: str, name: str, data: str | None = None) -> str:
    if data is None:
        row = conn.execute("SELECT df.signal(%s, %s)", (instance_id, name)).fetchone()
    else:
        row = conn.execute("SELECT df.signal(%s, %s, %s)", (instance_id, name, data)).fetchone()
    assert row is not None
    return str(row[0])


def node_status(conn: Conn, instance_id: str, node_type: str) -> list[str]:
    rows = conn.execute(
        "SELECT status FROM df.nodes WHERE instance_id = %s AND node_type = %s ORDER BY id",
        (instance_id, node_type),
    ).fetchall()
    return [r[0] for r in rows]


def wait_until_waiting(conn: Conn, instance_id: str, count: int = 1) -> None:
    """Until ``count`` fibers of the instance wait for a signal."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM df._fibers WHERE instance_id = %s AND awaiting IS NOT NULL",
            (instance_id,),
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.02)
    pytest.fail(f"instance {instance_id} never waited for a signal")


# -- the constructor ------------------------------------------------------------------------


def test_wait_for_signal_builds_pg_durables_envelope(conn: Conn) -> None:
    one = conn.execute("SELECT df.wait_for_signal('approval', 60)").fetchone()
    assert one == (
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approval\\",'
        '\\"timeout_seconds\\":60}"}',
    )
    row = conn.execute("SELECT df.wait_for_signal('go')").fetchone()
    assert row is not None
    assert json.loads(json.loads(row[0])["query"]) == {"signal_name": "go", "timeout_seconds": None}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("df.wait_for_signal('')", "Signal name cannot be empty"),
        ("df.wait_for_signal('x', 0)", "Timeout must be positive"),
        ("df.wait_for_signal('x', -5)", "Timeout must be positive"),
    ],
)
def test_wait_for_signal_rejects_bad_arguments(conn: Conn, call: str, message: str) -> None:
    with raises_exactly(errors.RaiseException, message):
        conn.execute(f"SELECT {call}")


# -- df.signal errors -----------------------------------------------------------------------


def test_signal_errors(conn: Conn, worker: WorkerThread) -> None:
    with raises_exactly(errors.RaiseException, "Instance ID cannot be empty"):
        signal(conn, "", "x")
    iid = start(conn, "df.wait_for_signal('x')")
    with raises_exactly(errors.RaiseException, "Signal name cannot be empty"):
        signal(conn, iid, "")
    with raises_exactly(errors.RaiseException, "Instance not found or access denied: 0000abcd"):
        signal(conn, "0000abcd", "x")
    done = start(conn, "'SELECT 1'")
    assert wait_for(conn, done) == "completed"
    with raises_exactly(
        errors.RaiseException,
        f"Instance {done} is completed: signals can only be sent to a pending or running instance",
    ):
        signal(conn, done, "x")
    assert signal(conn, iid, "x") == "OK"
    assert wait_for(conn, iid) == "completed"


# -- delivery -------------------------------------------------------------------------------


def test_a_signal_sent_before_the_wait_is_kept_and_delivered(conn: Conn, start_worker: Any) -> None:
    iid = start(conn, "'SELECT 1' ~> df.sleep(1) ~> df.wait_for_signal('go')")
    assert signal(conn, iid, "go", '{"n": 1}') == "OK"  # no worker yet: into the inbox
    start_worker()
    assert wait_for(conn, iid) == "completed"
    assert result_of(conn, iid) == {"signal_name": "go", "timed_out": False, "data": {"n": 1}}
    assert conn.execute("SELECT count(*) FROM df._signals").fetchone() == (0,)


def test_a_signal_sent_while_the_wait_waits_wakes_it_at_once(
    conn: Conn, worker: WorkerThread
) -> None:
    iid = start(conn, "df.wait_for_signal('go') ~> 'SELECT 2 AS two'")
    wait_until_waiting(conn, iid)
    assert node_status(conn, iid, "SIGNAL") == ["running"]
    sent = time.monotonic()
    signal(conn, iid, "go", "plain text")
    assert wait_for(conn, iid) == "completed"
    assert time.monotonic() - sent < 2
    row = conn.execute(
        "SELECT result FROM df.nodes WHERE instance_id = %s AND node_type = 'SIGNAL'", (iid,)
    ).fetchone()
    assert row == ({"signal_name": "go", "timed_out": False, "data": "plain text"},)


def _hold_fiber(dsn: str, instance_id: str, seconds: float) -> threading.Thread:
    """Lock the instance's waiting fiber for ``seconds`` from a transaction of its own, as a
    worker's claim does that read the row just before the fiber began to wait and locked it
    just after (it then skips the row, but keeps its lock until its transaction ends)."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as other:
            other.execute(
                "SELECT 1 FROM df._fibers WHERE instance_id = %s FOR UPDATE", (instance_id,)
            )
            locked.set()
            time.sleep(seconds)
            other.rollback()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return thread


def test_a_signal_wakes_a_wait_another_transaction_holds_for_a_moment(
    conn: Conn, dsn: str, worker: WorkerThread
) -> None:
    iid = start(conn, "df.wait_for_signal('go') ~> 'SELECT 2 AS two'")
    wait_until_waiting(conn, iid)
    holder = _hold_fiber(dsn, iid, 0.05)
    try:
        signal(conn, iid, "go")  # (waits for the lock: a moment)
    finally:
        holder.join()
    assert wait_for(conn, iid, 5) == "completed"


def test_a_wait_held_longer_than_the_signal_waits_is_woken_by_the_sweep(
    conn: Conn, dsn: str, worker: WorkerThread
) -> None:
    iid = start(conn, "df.wait_for_signal('go') ~> 'SELECT 2 AS two'")
    wait_until_waiting(conn, iid)
    holder = _hold_fiber(dsn, iid, 1.0)
    try:
        sent = time.monotonic()
        signal(conn, iid, "go")
        assert time.monotonic() - sent < 0.9  # df.signal does not wait for it that long
    finally:
        holder.join()
    time.sleep(0.5)
    assert conn.execute("SELECT df.status(%s)", (iid,)).fetchone() == ("running",)
    # The signal is in the fiber's inbox, and the workers' sweep wakes the fiber.
    conn.execute(query("wake_signalled"))
    assert wait_for(conn, iid, 5) == "completed"
    assert result_of(conn, iid) == {"rows": [{"two": 2}], "row_count": 1}


def test_a_wait_times_out(conn: Conn, worker: WorkerThread) -> None:
    iid = start(conn, "df.wait_for_signal('never', 1)")
    started = time.monotonic()
    assert wait_for(conn, iid) == "completed"
    assert time.monotonic() - started >= 0.9
    assert result_of(conn, iid) == {"signal_name": "never", "timed_out": True, "data": None}


def test_signals_of_one_name_are_delivered_in_order(conn: Conn, start_worker: Any) -> None:
    iid = start(
        conn,
        "(df.wait_for_signal('n') |=> 'a') ~> (df.wait_for_signal('n') |=> 'b') "
        "~> (df.wait_for_signal('n') |=> 'c') "
        "~> 'SELECT $a.data AS a, $b.data AS b, $c.data AS c'",
    )
    for n in (1, 2, 3):
        signal(conn, iid, "n", str(n))
    signal(conn, iid, "other", "0")  # another name does not get in the way
    start_worker()
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    assert result_of(conn, iid) == {"rows": [{"a": 1, "b": 2, "c": 3}], "row_count": 1}


def test_signals_reach_waits_in_join_branches(conn: Conn, worker: WorkerThread) -> None:
    iid = start(conn, "df.wait_for_signal('left') & df.wait_for_signal('right')")
    wait_until_waiting(conn, iid, 2)
    signal(conn, iid, "right", '"r"')
    signal(conn, iid, "left", '"l"')
    assert wait_for(conn, iid) == "completed"
    assert result_of(conn, iid) == [
        {"signal_name": "left", "timed_out": False, "data": "l"},
        {"signal_name": "right", "timed_out": False, "data": "r"},
    ]


def test_a_signal_goes_to_every_branch_that_waits_for_it(conn: Conn, worker: WorkerThread) -> None:
    iid = start(conn, "df.wait_for_signal('all') & df.wait_for_signal('all')")
    wait_until_waiting(conn, iid, 2)
    signal(conn, iid, "all", "1")
    assert wait_for(conn, iid) == "completed"
    assert result_of(conn, iid) == [
        {"signal_name": "all", "timed_out": False, "data": 1},
        {"signal_name": "all", "timed_out": False, "data": 1},
    ]


def test_each_iteration_of_a_loop_takes_its_own_signal(conn: Conn, start_worker: Any) -> None:
    conn.execute("CREATE TABLE got (n int)")
    iid = start(
        conn,
        "@> ((df.wait_for_signal('item') |=> 's') "
        "~> 'INSERT INTO got VALUES (($s.data)::int) RETURNING n' |=> 'last' "
        "~> ('SELECT $last >= 3' ?> df.break('$last') !> 'SELECT 0'))",
    )
    for n in (1, 2, 3, 4):
        signal(conn, iid, "item", str(n))
    start_worker(loop_min_interval=0.0)
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    assert conn.execute("SELECT array_agg(n ORDER BY n) FROM got").fetchone() == ([1, 2, 3],)
    assert result_of(conn, iid) == 3
    # The fourth is still in the inbox while the instance runs; gone once it ended.
    assert conn.execute("SELECT count(*) FROM df._signals").fetchone() == (0,)


# -- the seed article's human-in-the-loop examples --------------------------------------------


def test_approval_or_cancel_race(conn: Conn, worker: WorkerThread) -> None:
    iid = start(
        conn, "df.wait_for_signal('approval', 3600) | df.wait_for_signal('cancel')", "approve"
    )
    wait_until_waiting(conn, iid, 2)
    signal(conn, iid, "approval", '{"by": "ann"}')
    assert wait_for(conn, iid) == "completed"
    assert result_of(conn, iid) == {
        "signal_name": "approval",
        "timed_out": False,
        "data": {"by": "ann"},
    }
    inferred = conn.execute(
        "SELECT query::jsonb->>'signal_name', inferred_status FROM df.instance_nodes(%s) "
        "WHERE node_type = 'SIGNAL' ORDER BY 1",
        (iid,),
    ).fetchall()
    assert inferred == [("approval", "completed"), ("cancel", "skipped")]
    assert conn.execute(
        "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)
    ).fetchone() == (0,)


DEPLOY = """
    'INSERT INTO deployments (service, status) VALUES (''api'', ''pending'') RETURNING id'
        |=> 'deploy_id'
    ~> df.wait_for_signal('approval', {timeout}) |=> 'sig'
    ~> ('$sig.timed_out'
        ?> 'UPDATE deployments SET status = ''expired'' WHERE id = $deploy_id'
        !> 'UPDATE deployments SET status = ''approved'',
                approved_by = ($sig.data)::jsonb->>''approver'' WHERE id = $deploy_id')
"""


@pytest.fixture
def deployments(conn: Conn) -> Conn:
    conn.execute(
        "CREATE TABLE deployments (id serial PRIMARY KEY, service text, status text, "
        "approved_by text)"
    )
    return conn


def test_deployment_approval_approved(deployments: Conn, worker: WorkerThread) -> None:
    iid = start(deployments, DEPLOY.format(timeout=86400), "deploy-approval")
    wait_until_waiting(deployments, iid)
    signal(deployments, iid, "approval", '{"approver": "ann"}')
    assert wait_for(deployments, iid) == "completed", output_of(deployments, iid)
    assert deployments.execute("SELECT status, approved_by FROM deployments").fetchall() == [
        ("approved", "ann")
    ]


def test_deployment_approval_expired(deployments: Conn, worker: WorkerThread) -> None:
    iid = start(deployments, DEPLOY.format(timeout=1), "deploy-approval")
    assert wait_for(deployments, iid) == "completed", output_of(deployments, iid)
    assert deployments.execute("SELECT status, approved_by FROM deployments").fetchall() == [
        ("expired", None)
    ]


# -- roles ----------------------------------------------------------------------------------


@pytest.fixture
def two_roles(conn: Conn, dsn: str, db_name: str) -> Iterator[tuple[Conn, Conn]]:
    names = [f"sig_a_{db_name}", f"sig_b_{db_name}"]
    conns = []
    for name in names:
        password = secrets.token_hex(8)
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute("SELECT df.grant_usage(%s)", (name,))
        conns.append(psycopg.connect(role_dsn(dsn, name, password), autocommit=True))
    yield conns[0], conns[1]
    for c in conns:
        c.close()
    for name in names:
        conn.execute(f"DROP OWNED BY {name} CASCADE")
        conn.execute(f"DROP ROLE {name}")


def test_a_role_signals_its_own_instances_only(
    conn: Conn, worker: WorkerThread, two_roles: tuple[Conn, Conn]
) -> None:
    alice, bob = two_roles
    iid = start(alice, "df.wait_for_signal('go')")
    denied = f"Instance not found or access denied: {iid}"
    with raises_exactly(errors.RaiseException, denied):
        signal(bob, iid, "go")
    # Nor around df.signal: the inbox admits a role's own running instances only, and never
    # a signal addressed to a particular fiber.
    with pytest.raises(errors.InsufficientPrivilege):
        bob.execute(
            "INSERT INTO df._signals (instance_id, name, data) VALUES (%s, 'go', '1')", (iid,)
        )
    with pytest.raises(errors.InsufficientPrivilege):
        alice.execute(
            "INSERT INTO df._signals (instance_id, name, scope) VALUES (%s, 'go', %s)", (iid, iid)
        )
    with pytest.raises(errors.InsufficientPrivilege):
        alice.execute("SELECT * FROM df._signals")
    assert signal(alice, iid, "go", "1") == "OK"
    assert wait_for(conn, iid) == "completed"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('{"timeout_seconds": 5}', "Signal name cannot be empty"),
        ('{"signal_name": ""}', "Signal name cannot be empty"),
        ('{"signal_name": 7}', "Signal name cannot be empty"),
        ('{"signal_name": "x", "timeout_seconds": 0}', "Timeout must be positive"),
        ('{"signal_name": "x", "timeout_seconds": 1.5}', "Timeout must be positive"),
        ('{"signal_name": "x", "timeout_seconds": "9"}', "Timeout must be positive"),
    ],
)
def test_df_start_checks_a_hand_built_signal_node(conn: Conn, query: str, message: str) -> None:
    envelope = json.dumps(
        {
            "node_type": "THEN",
            "left_node": {"node_type": "SQL", "query": "SELECT 1"},
            "right_node": {"node_type": "SIGNAL", "query": query},
        }
    )
    with raises_exactly(
        errors.RaiseException, f"Invalid durable function graph: root.right: {message}"
    ):
        conn.execute("SELECT df.start(%s)", (envelope,))
