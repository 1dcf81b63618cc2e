"""Order processing from Python: the order and its workflow commit together — or not at all.

    PG_DURABLE_DSN=postgresql://… python examples/02_order_processing.py

`client.start` runs `df.start` in your connection's transaction: a worker sees the instance only
once that transaction commits, and a rollback leaves nothing behind. Needs a worker serving the
database, and creates its table in schema demo: run it in a scratch database.
"""

from __future__ import annotations

import os
import sys

import psycopg

from pg_durable import Workflow, client, sleep, sql


def process_order(order_id: int) -> Workflow:
    """Mark the order processing, wait a second (a durable timer), mark it completed."""
    return (
        sql(f"UPDATE demo.orders SET status = 'processing' WHERE id = {order_id:d}")
        >> sleep(1)
        >> sql(f"UPDATE demo.orders SET status = 'completed' WHERE id = {order_id:d}")
    )


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS demo")
        conn.execute("DROP TABLE IF EXISTS demo.orders")
        conn.execute(
            "CREATE TABLE demo.orders (id int PRIMARY KEY, status text NOT NULL, total numeric)"
        )

    # One transaction: the order row and its workflow commit together (on leaving the block).
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO demo.orders VALUES (7, 'pending', 99.90)")
        instance = client.start(conn, process_order(7), label="order 7")

    # Another one that changes its mind: the rollback takes the order and its workflow away.
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO demo.orders VALUES (8, 'pending', 10.00)")
        client.start(conn, process_order(8), label="order 8")
        conn.rollback()

    with psycopg.connect(dsn, autocommit=True) as conn:
        outcome = client.await_instance(conn, instance, timeout=30)
        print("order 7 workflow:", outcome.status)
        for order_id, status in conn.execute("SELECT id, status FROM demo.orders ORDER BY id"):
            print(f"order {order_id}: {status}")
        rolled_back = client.list_instances(conn, label="order 8").instances
        print("instances labelled 'order 8':", len(rolled_back))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["PG_DURABLE_DSN"])

# Expected output (tests/acceptance/test_examples.py checks it):
# order 7 workflow: completed
# order 7: completed
# instances labelled 'order 8': 0
