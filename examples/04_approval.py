"""Approvals from Python: a workflow waits for a person's decision, with a deadline.

    PG_DURABLE_DSN=postgresql://… python examples/04_approval.py

The same workflow as 04_approval.sql, built with Python objects. Needs a worker serving the
database, and creates its table in schema demo: run it in a scratch database.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pg_durable import Workflow, client, if_, sql, wait_for_signal


def expense_approval(
    conn: psycopg.Connection[Any], employee: str, amount: int, wait: int
) -> Workflow:
    """File the expense, wait up to ``wait`` seconds for 'decision', record it or expire."""
    # Values go into step text quoted by psycopg, never pasted in by hand.
    insert = pgsql.SQL(
        "INSERT INTO demo.expenses (employee, amount) VALUES ({}, {}) RETURNING id"
    ).format(employee, amount)
    return (
        sql(insert.as_string(conn)).as_("expense")
        >> wait_for_signal("decision", timeout=wait).as_("sig")
        >> if_(
            "$sig.timed_out",
            "UPDATE demo.expenses SET status = 'expired' WHERE id = $expense",
            "UPDATE demo.expenses SET status = ($sig.data)::jsonb->>'verdict',"
            " decided_by = ($sig.data)::jsonb->>'by' WHERE id = $expense",
        )
    )


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS demo")
        conn.execute("DROP TABLE IF EXISTS demo.expenses")
        conn.execute(
            "CREATE TABLE demo.expenses (id serial PRIMARY KEY, employee text NOT NULL,"
            " amount numeric NOT NULL, status text NOT NULL DEFAULT 'submitted',"
            " decided_by text)"
        )
        ann = client.start(conn, expense_approval(conn, "ann", 250, 600), label="expense: ann")
        bob = client.start(conn, expense_approval(conn, "bob", 900, 3), label="expense: bob")

        # The decision, as JSON data; nobody decides on Bob's expense.
        client.signal(conn, ann, "decision", {"verdict": "approved", "by": "carol"})

        for instance in (ann, bob):
            print(client.await_instance(conn, instance, timeout=30).status)
        rows = conn.execute(
            "SELECT employee, status, coalesce(decided_by, '-') FROM demo.expenses"
            " ORDER BY employee"
        )
        for employee, status, decided_by in rows:
            print(employee, status, decided_by)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["PG_DURABLE_DSN"])

# Expected output (tests/acceptance/test_examples.py checks it):
# completed
# completed
# ann approved carol
# bob expired -
