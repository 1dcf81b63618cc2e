"""Hello, durable world, from Python: build a one-step workflow, start it, await its result.

    PG_DURABLE_DSN=postgresql://… python examples/01_hello.py

Needs a worker serving that database (`pg-durable up`, or `pg-durable worker`).
"""

from __future__ import annotations

import json
import os
import sys

import psycopg

from pg_durable import client, sql


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # On an autocommit connection the instance is committed, and visible to workers, at once.
        instance = client.start(conn, sql("SELECT 'Hello, durable world!' AS greeting"))
        outcome = client.await_instance(conn, instance, timeout=30)
        print(outcome.status)
        # A SQL step's result: its rows, as JSON.
        print(json.dumps(outcome.result))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ["PG_DURABLE_DSN"])

# Expected output (tests/acceptance/test_examples.py checks it):
# completed
# {"rows": [{"greeting": "Hello, durable world!"}], "row_count": 1}
