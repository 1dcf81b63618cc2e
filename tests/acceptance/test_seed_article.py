"""The seed article's examples, typed into psql verbatim, with the effects a reader expects.

Each example is sent to a real ``psql`` (the one beside the server binaries the suite uses)
exactly as the article prints it; a worker runs the workflows; the test then checks what the
workflow did to the tables and what the monitoring queries show.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_durable.embedded import installations
from tests.fixtures.engine import WorkerThread, wait_for

Conn = psycopg.Connection[Any]

HELLO = """SELECT df.start('SELECT ''Hello, durable world!''');"""

ETL = """SELECT df.start(
  'INSERT INTO staging_orders SELECT * FROM raw_orders WHERE NOT loaded'
  ~> 'UPDATE raw_orders SET loaded = true WHERE NOT loaded'
  ~> 'INSERT INTO order_stats (day, orders, revenue)
      SELECT current_date, count(*), sum(total) FROM staging_orders',
  'nightly-etl');"""

ORDER = """SELECT df.start(
  'SELECT id FROM orders WHERE status = ''pending'' LIMIT 1' |=> 'order_id'
  ~> 'UPDATE orders SET status = ''processing'' WHERE id = $order_id'
  ~> df.sleep(2)
  ~> 'UPDATE orders SET status = ''completed'' WHERE id = $order_id',
  'process-order');"""

DASHBOARD = """SELECT df.start(
  ('SELECT count(*) FROM orders'
   & 'SELECT count(*) FROM customers'
   & 'SELECT sum(total) FROM orders')
  ~> 'INSERT INTO dashboard_refreshes DEFAULT VALUES',
  'dashboard');"""

TIER = """SELECT df.start(
  'SELECT lifetime_value > 1000 FROM customers WHERE id = 1'
  ?> 'UPDATE customers SET tier = ''gold'' WHERE id = 1'
  !> 'UPDATE customers SET tier = ''standard'' WHERE id = 1',
  'tier-check');"""

LIST = """SELECT instance_id, label, status, execution_count
  FROM df.list_instances() ORDER BY created_at DESC LIMIT 10;"""

TABLES = """
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric NOT NULL);
CREATE TABLE customers (id int PRIMARY KEY, lifetime_value numeric NOT NULL, tier text);
CREATE TABLE raw_orders (id int, total numeric, loaded boolean NOT NULL DEFAULT false);
CREATE TABLE staging_orders (id int, total numeric, loaded boolean);
CREATE TABLE order_stats (day date, orders bigint, revenue numeric);
CREATE TABLE dashboard_refreshes (at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders VALUES (1, 'pending', 120.50), (2, 'shipped', 80);
INSERT INTO customers VALUES (1, 4200, NULL), (2, 10, NULL);
INSERT INTO raw_orders (id, total) VALUES (10, 5), (11, 7);
"""


def psql_binary() -> Path:
    for installation in installations():
        psql = installation.bin_dir / "psql"
        if psql.exists():
            return psql
    pytest.skip("no psql on this machine")


def psql(dsn: str, script: str) -> str:
    """Run ``script`` in psql as a user would type it; returns the unaligned output."""
    proc = subprocess.run(
        [str(psql_binary()), dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def start(dsn: str, example: str) -> str:
    instance_id = psql(dsn, example)
    assert len(instance_id) == 8 and int(instance_id, 16) >= 0, instance_id
    return instance_id


@pytest.fixture
def shop(conn: Conn, dsn: str) -> str:
    conn.execute(TABLES)
    return dsn


def test_hello_durable_world(shop: str, conn: Conn, worker: WorkerThread) -> None:
    iid = start(shop, HELLO)
    assert wait_for(conn, iid) == "completed"
    assert psql(shop, f"SELECT df.status('{iid}');") == "completed"
    assert json.loads(psql(shop, f"SELECT df.result('{iid}');")) == {
        "rows": [{"?column?": "Hello, durable world!"}],
        "row_count": 1,
    }


def test_etl_chain_with_a_label(shop: str, conn: Conn, worker: WorkerThread) -> None:
    iid = start(shop, ETL)
    assert wait_for(conn, iid) == "completed"
    assert conn.execute("SELECT count(*) FROM staging_orders").fetchone() == (2,)
    assert conn.execute("SELECT bool_and(loaded) FROM raw_orders").fetchone() == (True,)
    assert conn.execute("SELECT orders, revenue::text FROM order_stats").fetchone() == (2, "12")
    assert conn.execute("SELECT label FROM df.instances WHERE id = %s", (iid,)).fetchone() == (
        "nightly-etl",
    )


def test_order_processing_with_a_named_result_and_a_durable_sleep(
    shop: str, conn: Conn, worker: WorkerThread
) -> None:
    iid = start(shop, ORDER)
    # Mid-way the order is processing while the durable timer runs.
    deadline_status = None
    for _ in range(100):
        deadline_status = conn.execute("SELECT status FROM orders WHERE id = 1").fetchone()
        if deadline_status == ("processing",):
            break
        conn.execute("SELECT pg_sleep(0.02)")
    assert deadline_status == ("processing",)
    assert wait_for(conn, iid) == "completed"
    assert conn.execute("SELECT id, status FROM orders ORDER BY id").fetchall() == [
        (1, "completed"),
        (2, "shipped"),
    ]
    # The SLEEP node's stamp spans the two seconds.
    took = conn.execute(
        "SELECT extract(epoch FROM completed_at - created_at) FROM df.instances WHERE id = %s",
        (iid,),
    ).fetchone()
    assert took is not None and took[0] >= 2


def test_dashboard_fan_out_then_a_summary(shop: str, conn: Conn, worker: WorkerThread) -> None:
    iid = start(shop, DASHBOARD)
    assert wait_for(conn, iid) == "completed"
    assert conn.execute("SELECT count(*) FROM dashboard_refreshes").fetchone() == (1,)
    kinds = conn.execute(
        "SELECT node_type, count(*) FROM df.nodes WHERE instance_id = %s GROUP BY 1 ORDER BY 1",
        (iid,),
    ).fetchall()
    assert kinds == [("JOIN", 2), ("SQL", 4), ("THEN", 1)]


def test_tier_check_with_if_and_else(shop: str, conn: Conn, worker: WorkerThread) -> None:
    iid = start(shop, TIER)
    assert wait_for(conn, iid) == "completed"
    assert conn.execute("SELECT id, tier FROM customers ORDER BY id").fetchall() == [
        (1, "gold"),
        (2, None),
    ]
    # The other branch was never taken, and says so.
    skipped = conn.execute(
        "SELECT query FROM df.instance_nodes(%s) WHERE inferred_status = 'skipped'", (iid,)
    ).fetchall()
    assert skipped == [("UPDATE customers SET tier = 'standard' WHERE id = 1",)]


def test_monitoring_queries(shop: str, conn: Conn, worker: WorkerThread) -> None:
    ids = [start(shop, example) for example in (HELLO, ETL, DASHBOARD)]
    for iid in ids:
        assert wait_for(conn, iid) == "completed"
    listed = [line.split("|") for line in psql(shop, LIST).splitlines()]
    assert listed == [
        [ids[2], "dashboard", "completed", "1"],
        [ids[1], "nightly-etl", "completed", "1"],
        [ids[0], "", "completed", "1"],
    ]
    nodes = psql(
        shop,
        f"SELECT execution_id, node_id, node_type, status FROM df.instance_nodes('{ids[1]}');",
    ).splitlines()
    assert len(nodes) == 5
    assert sorted(line.split("|")[2] for line in nodes) == ["SQL", "SQL", "SQL", "THEN", "THEN"]
    assert {line.split("|")[3] for line in nodes} == {"completed"}
    assert {line.split("|")[0] for line in nodes} == {"1"}
