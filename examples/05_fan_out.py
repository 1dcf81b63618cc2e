"""Fan-out from Python: branches joined with ``&`` run in parallel; the next step sees them all.

    PG_DURABLE_DSN=postgresql://… python examples/05_fan_out.py

Needs a worker serving the database, and creates its tables in schema demo: run it in a
scratch database.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pg_durable import client, sql


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS demo")
        conn.execute("DROP TABLE IF EXISTS demo.regions, demo.region_report")
        conn.execute("CREATE TABLE demo.regions (name text PRIMARY KEY, stores int NOT NULL)")
        conn.execute("INSERT INTO demo.regions VALUES ('north', 4), ('south', 7), ('east', 2)")
        conn.execute("CREATE TABLE demo.region_report (region text, stores int)")

        # One branch per region, built in a loop; `&` joins them (Python's precedence: `>>`
        # binds tighter than `&`, so each branch is a sequence of its own).
        regions = [name for (name,) in conn.execute("SELECT name FROM demo.regions")]
        branches = [
            sql(f"SELECT stores FROM demo.regions WHERE name = {quote(conn, region)}").as_(region)
            >> "SELECT pg_sleep(0.5)"  # stands for slow work: the branches wait side by side
            for region in regions
        ]
        fan_out = branches[0]
        for branch in branches[1:]:
            fan_out = fan_out & branch
        # After the join, every branch's named result is visible: $north, $south, $east.
        load = "INSERT INTO demo.region_report VALUES " + ", ".join(
            f"({quote(conn, r)}, ${r})" for r in regions
        )
        instance = client.start(conn, fan_out >> load, label="region report")

        outcome = client.await_instance(conn, instance, timeout=30)
        print(outcome.status)
        for region, stores in conn.execute(
            "SELECT region, stores FROM demo.region_report ORDER BY region"
        ):
            print(region, stores)


def quote(conn: psycopg.Connection[Any], value: str) -> str:
    """``value`` as a SQL string literal."""
    return pgsql.Literal(value).as_string(conn)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["PG_DURABLE_DSN"])

# Expected output (tests/acceptance/test_examples.py checks it):
# completed
# east 2
# north 4
# south 7
